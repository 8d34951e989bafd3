"""Options declared once: a row per setting (its key, flag, type, default, help, constraint and what it applies to),
from which the command-line parsers, the validation of ``--config`` files and of the settings, ``--help`` and the
saved ``config.json`` are all generated (:mod:`lvmmed_ext.train.config` holds the pretraining table,
:mod:`lvmmed_ext.data.presets` the preprocessing rows it shares with ``lvmmed prepare``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UsageError

_TYPES = {"int": int, "float": float, "str": str}


@dataclass(frozen=True)
class Option:
    """One setting.

    Attributes:
        key: its name in ``config.json``, ``--config`` files and the settings object (the parser's ``dest``).
        flag: its command-line spelling (``--image-size``), or None for a setting without a flag of its own.
        default: its value when not given (the one place it is written).
        help: what it does, for ``--help`` (the default is appended in parentheses unless ``show_default`` is off).
        annotation: its type as written in Python (``int``, ``float | None``, ``tuple[float, float]``,
            ``list[str]``, ``dict``, ``str``, ``bool``): the parser's type and the check of ``--config`` values.
        group: the ``--help`` section.
        choices, metavar: as for argparse; ``append``: a repeatable flag collecting a list; ``switch``: a flag
            without a value (``store_true``).
        applies: the losses or data modes it applies to (``--loss gm``, ``--arch unet3d``), shown in ``--help``.
        commands: the commands whose parser has it.
        help_for: ``((command, help), ...)`` where a command describes it differently.
        check, requirement: a constraint on the value and the message that states it (``must be >= 2``); without
            them, ``choices`` is the constraint.
        setting: False for flags that are not saved settings (``--resume``, ``--config``; handled by the command).
        parse: converts one command-line value (e.g. ``KEY=VALUE`` of ``--head-opt``) when the annotation's type
            does not.
        head_option: the loss-head option the flag sets (``--graph-size`` sets ``graph_size`` of the gm head): the
            value given, or ``const`` for a switch.
        const: with ``switch`` and ``head_option``, the value the switch sets.
    """

    key: str
    flag: str | None
    default: Any
    help: str
    annotation: str = "str"
    group: str = "options"
    choices: tuple | None = None
    metavar: Any = None
    append: bool = False
    switch: bool = False
    applies: str = ""
    commands: tuple[str, ...] = ("pretrain", "ablate")
    help_for: tuple[tuple[str, str], ...] = ()
    check: Callable[[Any], bool] | None = None
    requirement: str = ""
    setting: bool = True
    parse: Callable[[str], Any] | None = None
    show_default: bool = True
    head_option: str | None = None
    const: Any = None

    def help_text(self, command: str) -> str:
        text = dict(self.help_for).get(command, self.help)
        if self.applies:
            text += f" [{self.applies}]"
        if self.head_option is not None:
            shown = f"sets {self.head_option}={self.const!r}" if self.switch else f"{self.head_option}={self.default!r}"
            return f"{text} [{shown}]".replace("%", "%%")
        if self.show_default and not self.switch and not self.append and self.default not in (None, "", [], {}):
            default = self.default
            shown = " ".join(str(v) for v in default) if isinstance(default, (tuple, list)) else str(default)
            text += f" ({shown})"
        return text.replace("%", "%%")

    def argparse_kwargs(self, command: str) -> dict:
        kw: dict = {"dest": self.key, "default": argparse.SUPPRESS, "help": self.help_text(command)}
        if self.switch:
            kw["action"] = "store_true"
            return kw
        base = self.annotation.removesuffix("| None").strip()
        if base.startswith("tuple["):
            items = [t.strip() for t in base[len("tuple[") : -1].split(",")]
            kw["nargs"] = len(items)
            kw["type"] = _TYPES[items[0]]
        elif base.startswith("list["):
            kw["type"] = _TYPES[base[len("list[") : -1]]
        elif base in _TYPES:
            kw["type"] = _TYPES[base]
        if self.parse is not None:
            kw["type"] = self.parse
        if self.append:
            kw["action"] = "append"
        if self.choices is not None:
            kw["choices"] = self.choices
        if self.metavar is not None:
            kw["metavar"] = self.metavar
        return kw


def add_arguments(
    parser: argparse.ArgumentParser, options, command: str, groups: dict | None = None, order: tuple = ()
) -> dict:
    """Adds every option of ``options`` that ``command`` has to ``parser`` (in sections by ``group``, the sections
    named in ``order`` first; options left out are absent from the namespace, so defaults and other sources can be
    merged later). Returns the sections."""
    groups = {} if groups is None else groups
    for name in order:
        if name not in groups and any(o.group == name and o.flag and command in o.commands for o in options):
            groups[name] = parser.add_argument_group(name)
    for o in options:
        if o.flag is None or command not in o.commands:
            continue
        if o.group not in groups:
            groups[o.group] = parser.add_argument_group(o.group)
        groups[o.group].add_argument(o.flag, **o.argparse_kwargs(command))
    return groups


def value_fits(value, annotation: str) -> bool:
    """Whether a JSON value suits a setting annotated ``annotation``."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        return optional
    if base.startswith("tuple["):
        items = [t.strip() for t in base[len("tuple[") : -1].split(",")]
        if not isinstance(value, list) or len(value) != len(items):
            return False
        return all(value_fits(v, t) for v, t in zip(value, items))
    if base.startswith("list["):
        return isinstance(value, list) and all(value_fits(v, base[len("list[") : -1]) for v in value)
    if isinstance(value, bool):
        return base == "bool"
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "dict": (dict,), "bool": (bool,)}
    return isinstance(value, kinds.get(base, (object,)))


def check_values(options, values: dict) -> None:
    """``UsageError`` with the option's requirement for the first value in ``values`` that breaks its constraint."""
    for o in options:
        if o.key not in values:
            continue
        value = values[o.key]
        if o.check is not None:
            ok, requirement = o.check(value), o.requirement
        elif o.choices is not None and not o.append:  # the choices are the constraint (a --config value too)
            ok = value in o.choices or (value is None and o.default is None)  # None: not given
            requirement = f"must be one of {', '.join(map(str, o.choices))}"
        else:
            continue
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value
            raise UsageError(f"{o.flag or o.key} {requirement}, got {shown!r}")
