"""docs/STUDY.md and the README's study section agree with the JSON in docs/study/ (scripts/check_study.py), and
the checker notices a changed number, a changed comparison, an unchecked new number and changed data."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_study.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_study"] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("check_study", None)


@pytest.fixture(scope="module")
def docs():
    return (ROOT / "docs" / "STUDY.md").read_text(encoding="utf-8"), (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_claim_holds(checker, docs):
    failures, counts = checker.check(*docs, ROOT / "docs" / "study")
    assert failures == []
    assert counts["claims"] >= 70 and counts["checked"] >= counts["claims"] - 10 and counts["table cells"] > 300


def test_the_script_exits_0():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok: ")


def _replace(checker, text: str, old: str, new: str) -> str:
    """``old`` replaced by ``new`` once, across the Markdown source's line breaks."""
    changed, n = checker._pattern(old).subn(new.replace("\\", "\\\\"), text, count=1)
    assert n == 1, old
    return changed


@pytest.mark.parametrize(
    "doc, old, new, expect",
    [
        ("STUDY", "gm's probe is **0.678 ± 0.050**", "gm's probe is **0.679 ± 0.050**", "missing text"),
        ("STUDY", "tied for last on seed 1", "last but one on seed 1", "missing text"),
        ("STUDY", "| tune_gm | g3-gcn | gnn='gcn'¹, noise_scale=0.1 | 0.127 ± 0.026",
         "| tune_gm | g3-gcn | gnn='gcn'¹, noise_scale=0.1 | 0.137 ± 0.026", "table row 'g3-gcn'"),
        ("STUDY", "| vicreg | −0.058 | −0.028 / −0.028 / −0.120 | behind on every seed |",
         "| vicreg | −0.058 | −0.028 / −0.028 / −0.120 | not separated |", "paired row 'vicreg'"),
        ("STUDY", "## 6. What changed", "gm reaches 0.701 on a fourth seed.\n\n## 6. What changed", "the number 0.701"),
        ("README", "and ahead of VICReg on every seed", "and ahead of InfoNCE on every seed", "missing text"),
        ("README", "| gm-no-edge | w/o second-order term: linear assignment | 20.37 ± 1.03",
         "| gm-no-edge | w/o second-order term: linear assignment | 20.47 ± 1.03", "table row 'gm-no-edge'"),
    ],
)  # fmt: skip
def test_a_changed_text_fails(checker, docs, doc, old, new, expect):
    study, readme = docs
    if doc == "STUDY":
        study = _replace(checker, study, old, new)
    else:
        readme = _replace(checker, readme, old, new)
    failures, _ = checker.check(study, readme, ROOT / "docs" / "study")
    assert any(expect in f for f in failures), failures


def test_changed_data_fails(checker, docs, tmp_path):
    """Swap gm's and InfoNCE's seed-1 results: the sentences about them no longer hold."""
    data = tmp_path / "study"
    shutil.copytree(ROOT / "docs" / "study", data)
    path = data / "medium" / "ablation.json"
    results = json.loads(path.read_text())
    rows = {r["configuration"]: r for r in results["rows"]}
    a, b = rows["gm"]["per_seed"]["1"], rows["infonce"]["per_seed"]["1"]
    a["region/linear_probe_bal_acc"], b["region/linear_probe_bal_acc"] = (
        b["region/linear_probe_bal_acc"],
        a["region/linear_probe_bal_acc"],
    )
    path.write_text(json.dumps(results))
    failures, _ = checker.check(*docs, data)
    held = [f for f in failures if "does not hold" in f]
    assert any("ahead of InfoNCE (0.646 ± 0.024) on the mean only" in f for f in held), failures
    assert any("table row 'gm'" in f for f in failures)


def test_helpers(checker):
    assert checker.shows("0.058", 0.0575) and checker.shows("0.057", 0.0575) and not checker.shows("0.056", 0.0575)
    assert checker.shows("14%", 0.1445) and checker.shows("−0.005", -0.005) and not checker.shows("0.59", 0.6)
    assert checker.span("0.13–0.21", [0.127, 0.2094, 0.17]) and not checker.span("0.13–0.21", [0.12, 0.2])
    assert checker.seq("+0.040, −0.038 and +0.095", [0.04, -0.0375, 0.095])
    assert checker.wording([0.01, 0.02]) == "ahead on every seed" and checker.wording([0.01, 0.0]) == "not separated"
