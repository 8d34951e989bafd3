"""The benchmark suite: CPU smoke run of every subject (never gated on time here), JSON schema, correctness-first,
regression gate, Markdown / --write-md / --from-json, plots, profiler traces, optional peers."""

import copy
import itertools
import json

import pytest
import torch

from lvmmed_ext.bench import cli, report
from lvmmed_ext.bench.subjects import SUBJECTS


def write_qaplib_folder(folder, sizes=(4, 5, 6)):
    """Tiny QAPLIB instances (random integer flows and distances) with their optimum, found by enumeration."""
    folder.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        A = torch.randint(0, 9, (n, n), generator=gen)
        B = torch.randint(0, 9, (n, n), generator=gen)
        best = min(itertools.permutations(range(n)), key=lambda p: int((A * B[list(p)][:, list(p)]).sum()))
        value = int((A * B[list(best)][:, list(best)]).sum())
        rows = "\n".join(" ".join(map(str, r.tolist())) for r in torch.cat([A, B]))
        (folder / f"toy{n}.dat").write_text(f"{n}\n\n{rows}\n")
        (folder / f"toy{n}.sln").write_text(f"{n} {value}\n" + " ".join(str(k + 1) for k in best) + "\n")
    return folder


@pytest.fixture(scope="module")
def smoke_path(tmp_path_factory):
    """One quick CPU run of every subject (qaplib on tiny hand-made instances), shared by the tests below."""
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    folder = write_qaplib_folder(tmp_path_factory.mktemp("qaplib"))
    threads = torch.get_num_threads()
    assert cli.main(["all", "qaplib", str(folder), "--quick", "--device", "cpu", "--json", str(out)]) == 0
    # the run uses one thread (recorded below) and gives the caller's thread count back: later tests in this
    # process (the bit-exact resume tests) compare against subprocesses that use the default count
    assert torch.get_num_threads() == threads
    return out


@pytest.fixture(scope="module")
def smoke(smoke_path):
    return report.load(str(smoke_path))


def _rows(data, subject, **params):
    return [
        r for r in data["rows"] if r["subject"] == subject and all(r["params"].get(k) == v for k, v in params.items())
    ]


def test_smoke_run_writes_valid_results(smoke):
    assert smoke["schema"] == report.SCHEMA
    env = smoke["env"]
    assert env["threads"] == 1
    assert env["device_kind"] == "cpu" and env["date"] and env["quick"] is True and env["threads"] == 1
    assert {r["subject"] for r in smoke["rows"]} == set(SUBJECTS)
    assert any(r["gate"] for r in smoke["rows"]), "no rows of our own methods"
    for r in smoke["rows"]:
        assert r["time_s"] > 0 and r["subject"] and r["case"] and r["method"]


def test_smoke_covers_every_family_with_peers_side_by_side(smoke):
    assert {r["method"] for r in _rows(smoke, "affinity", op="local_affinity")} == {
        "lvmmed",
        "torch",
        "torch_sparse_bwd",
        "floor",
    }
    assert {r["method"] for r in _rows(smoke, "affinity", op="global_affinity")} == {"lvmmed", "torch"}
    assert {r["method"] for r in _rows(smoke, "loss")} == {"gm_loss", "gm_loss (alpha=1)", "infonce"}
    lv = _rows(smoke, "solver", section="lvmmed")
    assert {r["params"]["level"] for r in lv} == {"easy", "noisy"}
    assert {"ours_ls", "ours_sm", "ours_rrwm", "ours_ipfp", "lap_only"} <= {r["method"] for r in lv}
    assert {r["params"]["family"] for r in _rows(smoke, "solver", section="kb")} == {"planted", "uniform"}
    assert _rows(smoke, "solver", section="timing")
    peers = smoke["env"]["peers"]
    if peers["pygmtools"]:
        assert {"pygm_np_sm", "pygm_np_rrwm", "pygm_np_ipfp", "pygm_pt_rrwm"} <= {r["method"] for r in lv}
    if peers["scipy"]:
        assert "scipy_faq" in {r["method"] for r in _rows(smoke, "solver", section="kb")}
    for r in lv + _rows(smoke, "solver", section="kb"):
        m = r["metrics"]
        assert 0 < m["quality"] <= 1 + 1e-9 and 0 <= m["best_fraction"] <= 1
    # correctness before timing: on the easy family our default finds the best objective every time
    ours = [r for r in lv if r["method"] == "ours_ls" and r["params"]["level"] == "easy"]
    assert ours and all(r["metrics"]["best_fraction"] == 1.0 for r in ours)


def _slower(data, factor, subject=None):
    slow = copy.deepcopy(data)
    for r in slow["rows"]:
        if subject is None or r["subject"] == subject:
            r["time_s"] *= factor
    return slow


def test_gate_fails_on_synthetic_regression_with_readable_diff(smoke):
    ok, text = report.compare(smoke, _slower(smoke, 1.5), max_regression=0.10)
    assert not ok
    assert "FAILED" in text and "SLOWER (limit +10%)" in text and "+50.0%" in text
    assert "| subject | case | method | baseline | current | change | verdict |" in text


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_gate_catches_a_regression_in_each_subject(smoke, subject):
    ok, text = report.compare(smoke, _slower(smoke, 1.3, subject), max_regression=0.10)
    assert not ok
    bad = [line for line in text.splitlines() if "SLOWER" in line]
    assert bad and all(line.startswith(f"| {subject} |") for line in bad)


def test_gate_passes_within_threshold_and_flags_quality_drops(smoke):
    ok, text = report.compare(smoke, _slower(smoke, 1.05), max_regression=0.10)
    assert ok and "PASSED" in text
    worse = copy.deepcopy(smoke)
    row = next(r for r in worse["rows"] if r["gate"] and r["subject"] == "solver" and "quality" in r["metrics"])
    qb = row["metrics"]["quality"]
    row["metrics"]["quality"] = qb - 0.1
    ok, text = report.compare(smoke, worse, max_regression=0.10)
    assert not ok and f"WORSE quality {qb:.4f} -> {qb - 0.1:.4f}" in text


def test_gate_refuses_other_device_kinds(smoke):
    other = copy.deepcopy(smoke)
    other["env"]["device_kind"] = "H100"
    ok, text = report.compare(other, smoke, 0.1)
    assert not ok and "different devices" in text


def test_cli_exits_nonzero_on_regression(smoke, tmp_path, capsys):
    fast = _slower(smoke, 1e-3)  # a baseline 1000x faster than anything we can run
    base = tmp_path / "fast.json"
    base.write_text(json.dumps(fast))
    code = cli.main(["loss", "--quick", "--device", "cpu", "--baseline", str(base), "--max-regression", "10%"])
    assert code == 1
    assert "benchmark regression gate: FAILED" in capsys.readouterr().out


def test_from_json_gates_a_saved_result(smoke, smoke_path, tmp_path, capsys):
    base = tmp_path / "fast.json"
    base.write_text(json.dumps(_slower(smoke, 0.5, "solver")))
    assert cli.main(["--from-json", str(smoke_path), "--baseline", str(base)]) == 1
    assert "| solver |" in capsys.readouterr().out
    assert cli.main(["--from-json", str(smoke_path), "--baseline", str(smoke_path)]) == 0


@pytest.mark.parametrize("text, value", [("10%", 0.1), ("0.25", 0.25), ("0%", 0.0)])
def test_parse_fraction(text, value):
    assert report.parse_fraction(text) == pytest.approx(value)


def test_qaplib_rows_budgets_and_sections(smoke, tmp_path, capsys):
    rows = _rows(smoke, "qaplib")
    per = [r for r in rows if r["case"] != "all"]
    assert {r["case"] for r in per} == {"toy4", "toy5", "toy6"}
    assert {r["method"] for r in per} >= {"ours_its", "ours_ls", "ours_ils"}
    summary = {(r["method"], r["params"]["budget"]): r for r in rows if r["case"] == "all"}
    assert summary[("ours_its", "1ms")]["gate"] and not summary.get(("scipy_faq", "default"), {"gate": False})["gate"]
    for r in summary.values():
        m = r["metrics"]
        assert {"gap_pct", "median_gap_pct", "exact_frac", "max_gap_pct"} <= set(m) and r["time_s"] > 0
        assert r["params"]["instances"] == 3 and 0 <= m["exact_frac"] <= 1
    # a move budget: reproducible, and enough for the optimum of these; the tables go to their own section
    folder = write_qaplib_folder(tmp_path / "q")
    out, md = tmp_path / "q.json", tmp_path / "B.md"
    begin, end = report.markers("qaplib cpu")
    md.write_text(f"{begin}\nold\n{end}\n")
    argv = ["qaplib", str(folder), "--quick", "--budgets", "300it", "--json", str(out), "--write-md", str(md)]
    assert cli.main(argv) == 0
    result = report.load(str(out))
    its = next(r for r in result["rows"] if r["case"] == "all" and r["method"] == "ours_its")
    assert its["params"]["budget"] == "300it" and its["metrics"]["gap_pct"] == 0 and its["metrics"]["exact_frac"] == 1
    assert "#### QAPLIB, n <= 20: 3 instances" in md.read_text() and "| **ours_its** | 300it | 0.00 %" in md.read_text()


def test_qaplib_arguments_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["qaplib", "--quick"]) == 2
    assert "qaplib needs a folder of QAPLIB .dat/.sln files: lvmmed bench qaplib DIR" in capsys.readouterr().err
    assert cli.main(["qaplib", str(tmp_path / "nowhere"), "--quick"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["qaplib", str(tmp_path), "--quick"]) == 2
    assert "holds no .dat files" in capsys.readouterr().err
    folder = write_qaplib_folder(tmp_path / "q", sizes=(4,))
    assert cli.main(["qaplib", str(folder), "--quick", "--budgets", "fast"]) == 2
    assert "a budget is a time per instance ('10ms', '0.5s') or a move budget ('5000it'), got 'fast'" in (
        capsys.readouterr().err
    )
    (folder / "toy4.dat").write_text("4\n1 2 3\n")
    assert cli.main(["qaplib", str(folder), "--quick"]) == 2
    assert "toy4.dat: expected 2 n^2 = 32 matrix entries after n = 4, found 3" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["nonsense", "--quick"]) == 2
    assert "unknown subject" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["affinity", "--quick", "--baseline", str(bad)]) == 2
    assert "not an lvmmed benchmark result" in capsys.readouterr().err
    assert cli.main(["affinity", "--quick", "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_markdown_from_json_and_write_md(smoke, smoke_path, tmp_path, capsys):
    text = report.markdown_report(smoke, smoke["env"].get("json"))
    for heading in ("### affinity (cpu)", "### loss (cpu)", "### solver (cpu)", "#### local_affinity", "#### Dense"):
        assert heading in text
    assert text.count(f"commit `{smoke['env']['commit']}`") == len(SUBJECTS)  # every section tagged
    assert cli.main(["--from-json", str(smoke_path), "--markdown"]) == 0
    assert capsys.readouterr().out == text + "\n"
    begin, end = report.markers("cpu")
    md = tmp_path / "B.md"
    md.write_text(f"# title\n\n{begin}\nold tables\n{end}\n\nhand-written notes\n")
    assert cli.main(["--from-json", str(smoke_path), "--write-md", str(md)]) == 0
    assert md.read_text() == f"# title\n\n{begin}\n{text}{end}\n\nhand-written notes\n"
    nomark = tmp_path / "C.md"
    nomark.write_text("# no markers\n")
    assert cli.main(["--from-json", str(smoke_path), "--write-md", str(nomark)]) == 2
    assert "has no '<!-- lvmmed bench: cpu tables begin" in capsys.readouterr().err


def test_correctness_is_checked_before_timing(monkeypatch, capsys):
    from lvmmed_ext.bench.subjects import affinity

    monkeypatch.setattr(affinity, "global_affinity", lambda a, b: affinity.cosine_peer(a, b) + 1e-2)
    assert cli.main(["affinity", "--quick", "--only", "global_affinity"]) == 1
    assert "global_affinity: result differs from its reference, not timing it" in capsys.readouterr().err


def test_missing_peers_are_skipped_and_said(monkeypatch, tmp_path):
    from lvmmed_ext.bench.subjects import solver

    monkeypatch.setattr(solver, "pygm", None)
    monkeypatch.setattr(solver, "quadratic_assignment", None)
    out = tmp_path / "r.json"
    assert cli.main(["solver", "--quick", "--only", "easy", "--json", str(out)]) == 0
    data = report.load(str(out))
    assert {r["method"] for r in data["rows"]} <= {name for name, _ in solver.OURS_LVMMED}
    notes = " ".join(data["env"]["notes"])
    assert "pygmtools is not importable" in notes and "scipy is not importable" in notes
    assert "note: pygmtools is not importable" in report.markdown_report(data)


def test_profile_writes_a_trace_with_named_ranges(tmp_path):
    prof = tmp_path / "prof"
    assert cli.main(["affinity", "--quick", "--only", "global_affinity", "--profile", str(prof)]) == 0
    trace = json.loads((prof / "trace_affinity_cpu.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "global_affinity G=12 N=16 F=128 fwd | lvmmed" in names
    assert "global_affinity G=12 N=16 F=128 fwd+bwd | torch" in names
    assert "lvmmed::global_affinity" in names
    assert (prof / "summary_affinity_cpu.txt").read_text().strip()


def test_fresh_process_peak_memory_probe():
    from lvmmed_ext.bench.memory import fresh_process_peak_mb

    kwargs = {"impl": "torch", "mode": "fwd+bwd", "shape": "small", "device": "cpu", "threads": 1}
    mb = fresh_process_peak_mb("lvmmed_ext.bench.subjects.affinity:memory_case", kwargs)
    assert mb is not None and mb >= 0
    assert fresh_process_peak_mb("lvmmed_ext.bench.subjects.affinity:no_such_function", kwargs) is None


def test_plots(smoke, tmp_path):
    from lvmmed_ext.bench import plots

    made = plots.write_all(smoke["rows"], str(tmp_path))
    names = {p.rsplit("/", 1)[-1] for p in made}
    assert {"solver_time_vs_n.png", "solver_quality_vs_time.png"} <= names
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in made)
