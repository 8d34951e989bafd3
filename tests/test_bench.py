"""The benchmark suite: CPU smoke run (never gated on time here), JSON schema, regression gate, plots."""

import copy
import json

import pytest

from lvmmed_ext.bench import cli, report


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One quick CPU run of every subject, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    assert cli.main(["all", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    return report.load(str(out))


def test_smoke_run_writes_valid_results(smoke):
    assert smoke["schema"] == report.SCHEMA
    assert smoke["env"]["device_kind"] == "cpu" and smoke["env"]["date"]
    gated = [r for r in smoke["rows"] if r["gate"]]
    assert gated, "no rows of our own methods"
    for r in smoke["rows"]:
        assert r["time_s"] > 0 and r["subject"] and r["case"] and r["method"]


def _slower(data, factor):
    slow = copy.deepcopy(data)
    for r in slow["rows"]:
        r["time_s"] *= factor
    return slow


def test_gate_fails_on_synthetic_regression_with_readable_diff(smoke):
    ok, text = report.compare(smoke, _slower(smoke, 1.5), max_regression=0.10)
    assert not ok
    assert "FAILED" in text and "SLOWER (limit +10%)" in text and "+50.0%" in text
    assert "| subject | case | method | baseline | current | change | verdict |" in text


def test_gate_passes_within_threshold_and_flags_quality_drops(smoke):
    ok, text = report.compare(smoke, _slower(smoke, 1.05), max_regression=0.10)
    assert ok and "PASSED" in text
    worse = copy.deepcopy(smoke)
    base = copy.deepcopy(smoke)
    r_base = next(r for r in base["rows"] if r["gate"])
    r_worse = next(r for r in worse["rows"] if r["gate"])
    r_base["metrics"]["quality"], r_worse["metrics"]["quality"] = 1.0, 0.9
    ok, text = report.compare(base, worse, max_regression=0.10)
    assert not ok and "WORSE quality 1.0000 -> 0.9000" in text


def test_gate_refuses_other_device_kinds(smoke):
    other = copy.deepcopy(smoke)
    other["env"]["device_kind"] = "H100"
    ok, text = report.compare(other, smoke, 0.1)
    assert not ok and "different devices" in text


def test_cli_exits_nonzero_on_regression(smoke, tmp_path, capsys):
    fast = _slower(smoke, 1e-3)  # a baseline 1000x faster than anything we can run
    base = tmp_path / "fast.json"
    base.write_text(json.dumps(fast))
    code = cli.main(["affinity", "--quick", "--device", "cpu", "--baseline", str(base), "--max-regression", "10%"])
    assert code == 1
    assert "benchmark regression gate: FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("text, value", [("10%", 0.1), ("0.25", 0.25), ("0%", 0.0)])
def test_parse_fraction(text, value):
    assert report.parse_fraction(text) == pytest.approx(value)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["nonsense", "--quick"]) == 2
    assert "unknown subject" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["affinity", "--quick", "--baseline", str(bad)]) == 2
    assert "not an lvmmed benchmark result" in capsys.readouterr().err


def test_plots_and_markdown(smoke, tmp_path):
    from lvmmed_ext.bench import plots

    made = plots.write_all(smoke["rows"], str(tmp_path))
    assert made and all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in made)
    table = report.markdown_table(smoke)
    assert table.startswith("Device: ") and "| subject | case | method |" in table
