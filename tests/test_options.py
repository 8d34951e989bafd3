"""Options are declared once: every flag of the ``pretrain``, ``ablate`` and ``prepare`` parsers, every
``TrainConfig`` field and every ``config.json`` key comes from a row of the option tables."""

from __future__ import annotations

import argparse
import json

import pytest

from lvmmed_ext.data import shards
from lvmmed_ext.data.presets import PREP_KEYS, PREP_OPTIONS
from lvmmed_ext.errors import UsageError
from lvmmed_ext.options import Option, check_values, value_fits
from lvmmed_ext.train import ablate, cli
from lvmmed_ext.train.config import SETTINGS, TRAIN_OPTIONS, TrainConfig, load_config_file


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _rows(options, command: str) -> dict[str, Option]:
    return {o.flag: o for o in options if o.flag is not None and command in o.commands}


@pytest.mark.parametrize(
    "command, make, tables",
    [("pretrain", cli.parser, (TRAIN_OPTIONS,)), ("ablate", ablate.parser, (TRAIN_OPTIONS, ablate.ABLATE_OPTIONS))],
)
def test_every_parser_flag_is_a_table_row(command, make, tables):
    actions = _actions(make())
    rows = {flag: o for table in tables for flag, o in _rows(table, command).items()}
    assert set(actions) == set(rows), (
        f"flags not in the table: {sorted(set(actions) - set(rows))}; rows missing from the parser: "
        f"{sorted(set(rows) - set(actions))}"
    )
    for flag, action in actions.items():
        o = rows[flag]
        assert action.dest == o.key, flag
        assert action.help == o.help_text(command), flag
        assert action.default is argparse.SUPPRESS, f"{flag}: the default lives in the table, not the parser"


def test_prepare_shares_the_preprocessing_rows():
    actions = _actions(shards.parser())
    rows = _rows(PREP_OPTIONS, "prepare")
    assert rows and set(rows) <= set(actions)
    own = {"--data", "--out", "--shard-size", "--bits", "--compression", "--workers", "--seed"}
    assert set(actions) - set(rows) == own  # the flags of prepare alone
    pretrain_rows = _rows(TRAIN_OPTIONS, "pretrain")
    for flag, o in rows.items():  # the same row object in both tables: one default, one help
        assert pretrain_rows[flag] is o
        assert actions[flag].help == o.help_text("prepare")


def test_train_config_is_generated_from_the_table():
    keys = [o.key for o in SETTINGS]
    assert list(TrainConfig.__dataclass_fields__) == keys
    cfg = TrainConfig()
    for o in SETTINGS:
        if o.key != "preprocessing":
            assert getattr(cfg, o.key) == o.default, o.key
    saved = cfg.to_json()
    assert list(saved) == keys
    assert set(PREP_KEYS) <= set(saved["preprocessing"])
    assert TrainConfig.from_json(json.loads(json.dumps(saved))) == cfg


def test_every_setting_default_fits_its_annotation_and_constraint():
    for o in (*SETTINGS, *PREP_OPTIONS):
        if o.key == "preprocessing":
            continue
        as_json = json.loads(json.dumps(o.default))  # what a config file holds
        assert value_fits(as_json, o.annotation), f"{o.key}: default {o.default!r} is not {o.annotation}"
        if o.check is not None and o.default is not None:
            assert o.check(o.default), f"{o.key}: default {o.default!r} breaks '{o.requirement}'"
    check_values(SETTINGS, {o.key: getattr(TrainConfig(), o.key) for o in SETTINGS})


def test_validate_states_the_requirement_from_the_table():
    row = next(o for o in SETTINGS if o.check is not None and o.annotation == "int")
    cfg = TrainConfig()
    setattr(cfg, row.key, -(10**6))
    with pytest.raises(UsageError, match=row.requirement):
        cfg.validate()


def test_config_file_keys_are_checked_against_the_table(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 8, "preprocessing": {"preset": "ct"}}))
    assert load_config_file(str(path)) == {"batch_size": 8, "preset": "ct"}
    path.write_text(json.dumps({"batch_sise": 8}))
    with pytest.raises(UsageError, match="batch_sise"):
        load_config_file(str(path))
    path.write_text(json.dumps({"batch_size": "eight"}))
    with pytest.raises(UsageError, match="batch_size"):
        load_config_file(str(path))


def test_choices_are_the_constraint_where_a_row_has_no_check():
    rows = [o for o in (*SETTINGS, *PREP_OPTIONS) if o.choices is not None and o.check is None and not o.append]
    assert {"amp", "optimizer", "arch"} <= {o.key for o in rows}
    for o in rows:
        check_values([o], {o.key: o.choices[0]})
        with pytest.raises(UsageError, match=f"{o.flag} must be one of .*, got 'nope'"):
            check_values([o], {o.key: "nope"})
