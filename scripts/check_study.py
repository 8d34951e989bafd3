"""Checks docs/STUDY.md and the README's study section against the JSON in docs/study/, so that text and data cannot
drift apart: every claim below is a fragment that must appear in its document (whitespace and line breaks aside)
and, for a claim about the data, a predicate over the JSON that must hold; every table copied from the JSON is
compared cell by cell; and every decimal number in the prose (outside code) must lie in a claim's fragment or a
checked table, so a new number cannot go unchecked.

A number written with d decimals matches a value that rounds to it (within half a unit of its last digit).
Comparisons are paired by seed (the same seed gives every configuration the same initialisation, data order, views
and test images). The few claims whose data are not in docs/study/ (start-of-run values read from logs that were
not kept, the paper's own numbers, settings) are listed as context with their source: their text is pinned, their
value is not checked.

    python scripts/check_study.py            # exit 1 and a list of failures when a claim does not hold
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
LP, KNN = "region/linear_probe_bal_acc", "region/knn_bal_acc"
TLP, TKNN = "tissue/linear_probe_bal_acc", "tissue/knn_bal_acc"
MATCH, BB = "match_acc", "backbone_match_acc"
TIE = 1e-9
CHANCE = 1 / 16  # the graph size of every gm run here
ABLATIONS = ("gm-no-edge", "gm-no-gnn", "gm-no-noise", "gm-no-local")
GCN, GRAPHCONV = ("g1-paper", "g2-demo-old", "g3-gcn"), ("g4-gc", "g5-gc-s8", "g6-gc-s8-n02", "g7-gc-norm", "g8-gc-mlp")


# ----------------------------------------------------------------------------------------------------- the data


class Study:
    """The JSON of docs/study/: each run's per-seed metrics (the two single-seed crop-0.08 runs merged into
    ``crop_0.08``), its settings, the noise-floor rows and the medium study's timings."""

    def __init__(self, folder: Path):
        self.runs: dict[str, dict[str, dict[str, dict]]] = {}
        self.options: dict[tuple[str, str], str] = {}  # (run, configuration) -> its head options as in the table
        self.parts: dict[str, int] = {}  # run -> the ablation.json files it was merged from
        self.settings: dict[str, dict] = {}
        self.per_image: dict[str, bool] = {}
        for path in sorted(folder.glob("*/ablation.json")):
            data = json.loads(path.read_text())
            name = re.sub(r"_s\d+$", "", path.parent.name)
            run = self.runs.setdefault(name, {})
            self.parts[name] = self.parts.get(name, 0) + 1
            for row in data["rows"]:
                run.setdefault(row["configuration"], {}).update(row["per_seed"])
                self.options[name, row["configuration"]] = row["options"]
            settings = self.settings.setdefault(name, dict(data["settings"], seeds=[]))
            settings["seeds"] = sorted(set(settings["seeds"]) | set(data["settings"]["seeds"]))
            self.per_image[name] = self.per_image.get(name, True) and all("per_image" in r for r in data["rows"])
        self.noise = json.loads((folder / "noise_floor.json").read_text())
        self.timings = json.loads((folder / "medium" / "timings.json").read_text())

    def per(self, run: str, config: str, metric: str = LP) -> list[float]:
        seeds = self.runs[run][config]
        return [seeds[s][metric] for s in sorted(seeds, key=int)]

    def m(self, run: str, config: str, metric: str = LP) -> float:
        values = self.per(run, config, metric)
        return sum(values) / len(values)

    def sd(self, run: str, config: str, metric: str = LP) -> float:
        values, mean = self.per(run, config, metric), self.m(run, config, metric)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0

    def pm(self, text: str, run: str, config: str, metric: str = LP) -> bool:
        """Whether ``text`` ("0.678 ± 0.050") shows the mean ± std of ``config`` in ``run``."""
        return pm(text, self.m(run, config, metric), self.sd(run, config, metric))

    def d(self, run: str, a: str, b: str, metric: str = LP) -> list[float]:
        """Paired differences a - b per seed."""
        return [x - y for x, y in zip(self.per(run, a, metric), self.per(run, b, metric))]

    def configs(self, run: str) -> list[str]:
        return [c for c in self.runs[run] if c != "random init"]

    def floor(self, quad: float, cosine: str, scale: float) -> dict:
        """The noise-floor row with this edge weight, own-view cosine (as written) and noise scale."""
        (row,) = [r for r in self.noise["rows"] if r["quad_weight"] == quad and r["noise_scale"] == scale
                  and shows(cosine, r["mean_own_view_cosine"])]  # fmt: skip
        return row

    def timed(self, how: str) -> list[dict]:
        return [e for c, seeds in self.timings.items() if isinstance(seeds, dict) for e in seeds.values()
                if e.get("pretrain") == how]  # fmt: skip


def gm_defaults() -> dict:
    """The defaults of ``gm_loss`` as shipped (the code, not the JSON)."""
    import inspect

    import lvmmed_ext

    return {k: p.default for k, p in inspect.signature(lvmmed_ext.gm_loss).parameters.items()}


def num(text: str) -> float:
    return float(text.replace("−", "-").replace("%", "").replace("+", ""))


def shows(text: str, value: float) -> bool:
    """Whether ``value`` rounds to the number written as ``text`` (a percentage with '%')."""
    digits = len(text.split(".")[1].rstrip("%")) if "." in text else 0
    value = value * 100 if text.endswith("%") else value
    return abs(num(text) - value) <= 0.5 * 10**-digits + TIE


def pm(text: str, mean: float, sd: float) -> bool:
    a, b = text.split(" ± ")
    return shows(a, mean) and shows(b, sd)


def seq(text: str, values: list[float]) -> bool:
    """``"0.668 / 0.635 / 0.733"`` or ``"+0.040, −0.038"``: each written number matches its value."""
    parts = [p for p in re.split(r"\s*/\s*|,\s*|\s+and\s+", text) if p]
    return len(parts) == len(values) and all(shows(p, v) for p, v in zip(parts, values))


def span(text: str, values: list[float]) -> bool:
    """``"0.13–0.21"``: the smallest and the largest value."""
    lo, hi = text.split("–")
    return shows(lo, min(values)) and shows(hi, max(values))


def pos(values) -> bool:
    return all(v > TIE for v in values)


def neg(values) -> bool:
    return all(v < -TIE for v in values)


def n_pos(values) -> int:
    return sum(v > TIE for v in values)


def wording(diffs: list[float]) -> str:
    """The paired wording without an interval (this study's JSON has no per-image predictions)."""
    if len(diffs) >= 2 and pos(diffs):
        return "ahead on every seed"
    if len(diffs) >= 2 and neg(diffs):
        return "behind on every seed"
    return "not separated"


# ---------------------------------------------------------------------------------------------------- the claims


@dataclass
class Claim:
    doc: str  # "STUDY" or "README" (its study section)
    text: str  # must appear in the document
    check: Callable[[Study], bool] | None  # None: context whose data are not in docs/study/ (``source`` says why)
    source: str = ""


def S(text, check=None, source=""):  # noqa: N802 - a claim of docs/STUDY.md
    return Claim("STUDY", text, check, source)


def R(text, check=None, source=""):  # noqa: N802 - a claim of the README's study section
    return Claim("README", text, check, source)


M = "medium"


def _gm_learns(s: Study) -> bool:
    return s.settings[M]["steps"] == 500 and s.pm("0.39 ± 0.03", M, "gm", MATCH)


def _best_crop(s: Study) -> bool:
    def score(crop, seed=None):
        pair = [s.per(f"crop_{crop}", c) for c in ("lap", "infonce")]
        return sum(p[seed] if seed is not None else sum(p) / len(p) for p in pair) / 2

    crops = ("0.08", "0.25", "0.5")
    return (
        max(crops, key=score) == "0.25"
        and all(max(crops, key=lambda c: score(c, i)) == "0.25" for i in (0, 1))
        and shows("0.644", score("0.25"))
        and shows("0.616", score("0.08"))
        and shows("0.623", score("0.5"))
    )


def _ahead_on_seed(s: Study, run: str, chosen: str, seed: int) -> set[str]:
    """The configurations of ``run`` whose region probe beats ``chosen`` on ``seed``."""
    mine = s.per(run, chosen)[seed]
    return {c for c in s.configs(run) if s.per(run, c)[seed] > mine + TIE}


def _tuned(s: Study) -> dict[tuple[str, str], float]:
    return {(r, c): s.m(r, c) for r in ("tune_gm", "tune_infonce", "tune_vicreg") for c in s.configs(r)}


def _gm_first_and_last(s: Study) -> bool:
    group = ("gm", *ABLATIONS)
    per = {c: s.per(M, c) for c in group}
    first = all(per["gm"][i] > max(per[c][i] for c in ABLATIONS) + TIE for i in (0, 2))
    low = min(per[c][1] for c in group)
    last = {c for c in group if abs(per[c][1] - low) < TIE}
    return first and last == {"gm", "gm-no-gnn", "gm-no-noise"} and shows("0.635", low)


def _gaps(s: Study) -> list[float]:
    return [s.m(M, "gm") - s.m(M, c) for c in ("gm-no-edge", "gm-no-gnn", "gm-no-noise")]


def _gcn_vs_graphconv(s: Study) -> bool:
    gcn = [s.m("tune_gm", c, MATCH) for c in GCN]
    gc = [s.m("tune_gm", c, MATCH) for c in GRAPHCONV]
    return span("0.13–0.21", gcn) and span("0.30–0.41", gc) and max(gcn) < min(gc)


def _graphconv_above_random(s: Study) -> bool:
    t = "tune_gm"
    both = [c for c in GRAPHCONV if pos(s.d(t, c, "random init"))]
    return (
        all(s.m(t, c) > s.m(t, "random init") for c in GRAPHCONV)
        and span("0.639–0.666", [s.m(t, c) for c in GRAPHCONV])
        and both == [c for c in GRAPHCONV if c != "g8-gc-mlp"]
    )


def _gcn_below_random(s: Study) -> bool:
    t = "tune_gm"
    below = [c for c in GCN if neg(s.d(t, c, "random init"))]
    g2 = s.d(t, "g2-demo-old", "random init")
    return below == ["g1-paper", "g3-gcn"] and s.m(t, "g2-demo-old") > s.m(t, "random init") and g2[0] < 0


def _edge_noise(s: Study) -> bool:
    old, new = s.per("crop_0.25", "gc"), s.per("tune_gm", "g4-gc")
    same = s.settings["crop_0.25"]["crop_scale"] == s.settings["tune_gm"]["crop_scale"] == [0.25, 1.0]
    return (
        same
        and s.pm("0.611 ± 0.002", "crop_0.25", "gc")
        and s.pm("0.666 ± 0.012", "tune_gm", "g4-gc")
        and pos([b - a for a, b in zip(old, new)])
    )


def _paired_gm(s: Study, other: str, text: str) -> bool:
    return seq(text, s.d(M, "gm", other))


def _n_test(s: Study) -> int:
    (task,) = [t for t in s.settings[M]["tasks"] if t["name"] == "region"]
    return task["n_test"]


CLAIMS: list[Claim] = [
    # ---- summary
    S("this study's JSON predates them, §7", lambda s: not s.per_image[M]),
    S("at the end of its 500 steps its noise-free matching accuracy is 0.39 ± 0.03 (0.35–0.41 on the three seeds, "
      "last 50 steps; chance 1/16 = 0.06)",
      lambda s: _gm_learns(s) and span("0.35–0.41", s.per(M, "gm", MATCH)) and shows("0.06", CHANCE)),
    S("up from about 0.2 over the first 25 steps", None, "the runs' log.csv (not kept; curves.png shows it)"),
    S("training loss is 19.9 ± 1.2 (last 50 steps; at most 32, a random matching 30)",
      lambda s: s.pm("19.9 ± 1.2", M, "gm", "final_loss") and 2 * 16 == 32
      and 2 * (16 - 1) == 30),  # a random permutation keeps 1 node in place on average: 15 of 16 rows differ
    S("down from about 25.7 over the first 25 steps", None, "the runs' log.csv (not kept)"),
    S("the matching ends at 0.11–0.14, about twice chance, and the loss at 28.8 ± 0.5",
      lambda s: span("0.11–0.14", s.per(M, "gm-before", MATCH)) and 1.8 < s.m(M, "gm-before", MATCH) / CHANCE < 2.2
      and s.pm("28.8 ± 0.5", M, "gm-before", "final_loss")),
    S("gm's probe is **0.678 ± 0.050** against random init 0.592 ± 0.015, ahead of it on every seed (+0.058 to +0.143)",
      lambda s: s.pm("0.678 ± 0.050", M, "gm")
      and s.pm("0.592 ± 0.015", M, "random init")
      and pos(s.d(M, "gm", "random init")) and span("+0.058–+0.143", s.d(M, "gm", "random init"))),
    S("gm is ahead of VICReg (0.620 ± 0.018) on every seed (+0.028 to +0.120)",
      lambda s: s.pm("0.620 ± 0.018", M, "vicreg") and pos(s.d(M, "gm", "vicreg"))
      and span("+0.028–+0.120", s.d(M, "gm", "vicreg"))),
    S("ahead of InfoNCE (0.646 ± 0.024) on the mean only (+0.040, −0.038 and +0.095 on seeds 0, 1 and 2): not "
      "separated",
      lambda s: s.pm("0.646 ± 0.024", M, "infonce") and s.m(M, "gm") > s.m(M, "infonce")
      and _paired_gm(s, "infonce", "+0.040, −0.038 and +0.095")
      and wording(s.d(M, "gm", "infonce")) == "not separated"),
    S("**0.678 ± 0.050 against 0.667 ± 0.040**, ahead on 2 of the 3 seeds (+0.015, −0.003, +0.020): not separated",
      lambda s: s.pm("0.667 ± 0.040", M, "gm-no-edge")
      and n_pos(s.d(M, "gm", "gm-no-edge")) == 2 and _paired_gm(s, "gm-no-edge", "+0.015, −0.003, +0.020")),
    S("On the mean full gm is also ahead of gm without message passing (0.656 ± 0.032) and without the noise "
      "(0.661 ± 0.033), the direction of the paper's Table 6, but it ties both on seed 1",
      lambda s: s.pm("0.656 ± 0.032", M, "gm-no-gnn")
      and s.pm("0.661 ± 0.033", M, "gm-no-noise")
      and all(s.m(M, "gm") > s.m(M, c) and abs(s.d(M, "gm", c)[1]) < TIE for c in ("gm-no-gnn", "gm-no-noise"))),
    S("without the local term gm does as well (0.679 ± 0.024). No ablation is behind full gm on every seed",
      lambda s: s.pm("0.679 ± 0.024", M, "gm-no-local")
      and abs(s.m(M, "gm-no-local") - s.m(M, "gm")) < 0.005 and not any(pos(s.d(M, "gm", c)) for c in ABLATIONS)),
    S("no pretraining is ahead of random init's linear probe (0.851): gm-no-local ties it on the mean and every other "
      "configuration is lower",
      lambda s: shows("0.851", s.m(M, "random init", TLP))
      and abs(s.m(M, "gm-no-local", TLP) - s.m(M, "random init", TLP)) < TIE
      and all(s.m(M, c, TLP) < s.m(M, "random init", TLP) for c in s.configs(M) if c != "gm-no-local")
      and not any(pos(s.d(M, c, "random init", TLP)) for c in s.configs(M))),
    # ---- 1. setup
    S("(137 axial slices of the MNI152 T1 template, 53 DICOM frames of 14 CT/MR/radiograph/ultrasound/NM scans, 73 "
      "NIfTI slices)", lambda s: 137 + 53 + 73 == 263, "the demo data (lvmmed pretrain --demo); the sum is checked"),
    S("ResNet-18 of half width (`--width 32`, 2.8 M parameters), 1 channel, 96-px views",
      lambda s: all(s.settings[r]["arch"] == "resnet18" and s.settings[r]["width"] == 32
                    and s.settings[r]["image_size"] == 96 for r in s.runs), "the parameter count: the model"),
    S("random resized crops per image (area 0.25–1 after the pilot of §3, aspect 3/4–4/3), flips, brightness/contrast "
      "jitter 0.4, blur; batch 32 (2 graphs of 16 for gm); Adam lr 2e-3 halved 4 times",
      lambda s: all(s.settings[r]["crop_scale"] == [0.25, 1.0] for r in (M, "tune_gm", "tune_infonce", "tune_vicreg"))
      and all(s.settings[r]["batch_size"] == 32 and s.settings[r]["lr"] == 2e-3 and s.settings[r]["halvings"] == 4
              for r in s.runs), "aspect, flips, jitter, blur: the view settings of the demo"),
    S("kNN (cosine, k = 20)", lambda s: all(s.settings[r]["eval_k"] == 20 for r in s.runs)),
    S("600 train / 400 test patches, balanced",
      lambda s: [(t["n_train"], t["n_test"]) for t in s.settings[M]["tasks"] if t["name"] == "region"] == [(600, 400)]),
    # ---- 2. why
    S("whose differences have a standard deviation of 1.8", lambda s: shows("1.8", math.pi / math.sqrt(3))),
    S("a Hamming loss of 27.4 against a random permutation's 30 (14% of the nodes matched, chance 6%)",
      lambda s: shows("27.4", s.floor(0.0, "1.00", 1.0)["hamming"])
      and shows("14%", s.floor(0.0, "1.00", 1.0)["perturbed_match_acc"]) and shows("6%", CHANCE)),
    S("the QAP row reaches 9.8, 69% matched) but not good ones: at an own-view cosine of 0.8 it is back at 24.7",
      lambda s: shows("9.8", s.floor(0.5, "1.00", 1.0)["hamming"])
      and shows("69%", s.floor(0.5, "1.00", 1.0)["perturbed_match_acc"])
      and shows("24.7", s.floor(0.5, "0.80", 1.0)["hamming"])),
    S("Mean Hamming loss per graph of 16 (0 = every image matched to its own other view, 30 = a random permutation, "
      "32 = the maximum) for views `z + σ·noise` of random 128-d embeddings (other images' cosines ≈ 0 ± 0.09",
      lambda s: s.noise["graph_size"] == 16 and s.noise["dim"] == 128 and shows("0.09", 1 / math.sqrt(128))),
    S("With `noise_scale` 0.1 (the authors' later code used 0.05) perfect and good embeddings reach zero loss and poor "
      "ones do not",
      lambda s: all(s.floor(q, c, 0.1)["hamming"] == 0 for q in (0.0, 0.5) for c in ("1.00", "0.80"))
      and all(s.floor(q, "0.50", 0.1)["hamming"] > 0 for q in (0.0, 0.5)),
      "the authors' code for 0.05"),
    S("ends the 300 tuning steps at 0.13–0.17 (configurations g2, g3 below, noise 0.1; 0.21 with the paper's noise, "
      "g1), two to three times chance but below every GraphConv row (0.30–0.41)",
      lambda s: s.settings["tune_gm"]["steps"] == 300
      and span("0.13–0.17", [s.m("tune_gm", c, MATCH) for c in ("g2-demo-old", "g3-gcn")])
      and shows("0.21", s.m("tune_gm", "g1-paper", MATCH)) and _gcn_vs_graphconv(s)
      and all(2 <= s.m("tune_gm", c, MATCH) / CHANCE <= 3 for c in ("g2-demo-old", "g3-gcn"))),
    S("`gm_loss`'s default `noise_scale` is now 0.1", lambda s: gm_defaults()["noise_scale"] == 0.1),
    S("(0.5 × a cosine)", lambda s: gm_defaults()["quad_weight"] == 0.5),
    S("a `quad_weight` of 0.01 left the edge term pure noise", None, "an earlier configuration, not in docs/study/"),
    S("(g4: 0.34)", lambda s: shows("0.34", s.m("tune_gm", "g4-gc", MATCH))),
    S("0.25–1, 2 seeds, 300 steps: region linear probe 0.611 ± 0.002 with the old edge noise (§3 pilot, `gc`) against "
      "0.666 ± 0.012 with the new (g4), higher on both seeds (+0.06 and +0.05)",
      lambda s: _edge_noise(s) and seq("+0.06 and +0.05", [b - a for a, b in zip(s.per("crop_0.25", "gc"),
                                                                                   s.per("tune_gm", "g4-gc"))])),
    # ---- 3. crop pilot
    S("the 0.08 seeds ran as two commands", lambda s: s.parts["crop_0.08"] == 2),
    S("Seeds 0 and 1, 300 steps, balanced accuracies",
      lambda s: all(s.settings[f"crop_{c}"]["seeds"] == [0, 1] and s.settings[f"crop_{c}"]["steps"] == 300
                    for c in ("0.08", "0.25", "0.5"))),
    S("backbone match accuracy rises with the crop area for both losses",
      lambda s: all(s.m("crop_0.08", c, BB) < s.m("crop_0.25", c, BB) < s.m("crop_0.5", c, BB)
                    for c in ("lap", "infonce"))),
    S("InfoNCE's best is at 0.25",
      lambda s: max(("0.08", "0.25", "0.5"), key=lambda c: s.m(f"crop_{c}", "infonce")) == "0.25"),
    S("0.25–1 is the best mean of the two (0.644 against 0.616 and 0.623), and the best on each of the two seeds",
      _best_crop),
    # ---- 4. tuning
    S("Each method got **8 settings**, each trained for 300 steps with seeds 0 and 1",
      lambda s: all(len(s.configs(r)) == 8 and s.settings[r]["steps"] == 300 and s.settings[r]["seeds"] == [0, 1]
                    for r in ("tune_gm", "tune_infonce", "tune_vicreg"))),
    S("the GCN rows (g1–g3) match at 0.13–0.21, two to three and a half times chance (1/16) but below every GraphConv "
      "row (0.30–0.41)",
      lambda s: _gcn_vs_graphconv(s) and all(2 <= s.m("tune_gm", c, MATCH) / CHANCE <= 3.5 for c in GCN)),
    S("the worst setting is g3, the GCN with noise 0.1 (0.545 ± 0.014), then the paper's settings g1 (0.551 ± 0.009); "
      "both are below random init (0.593) on each seed, while g2 (0.614 ± 0.044) is above it on the mean and below "
      "it on seed 0",
      lambda s: sorted(_tuned(s), key=_tuned(s).get)[:2] == [("tune_gm", "g3-gcn"), ("tune_gm", "g1-paper")]
      and s.pm("0.545 ± 0.014", "tune_gm", "g3-gcn")
      and s.pm("0.551 ± 0.009", "tune_gm", "g1-paper")
      and shows("0.593", s.m("tune_gm", "random init"))
      and s.pm("0.614 ± 0.044", "tune_gm", "g2-demo-old") and _gcn_below_random(s)),
    S("Every GraphConv row is above random init on the mean (0.639–0.666), and on both seeds except g8 (−0.005 on "
      "seed 0; g7 is +0.003 there)",
      lambda s: _graphconv_above_random(s) and shows("−0.005", s.d("tune_gm", "g8-gc-mlp", "random init")[0])
      and shows("+0.003", s.d("tune_gm", "g7-gc-norm", "random init")[0])),
    S("For InfoNCE the 64-d output (i7, 0.595 ± 0.004) is the weakest setting, the head defaults (projector 2048, i1, "
      "0.599 ± 0.048) the next, and the demo's narrower projector (i2) the best, ahead of i1 on both seeds",
      lambda s: [c for c in sorted(s.configs("tune_infonce"), key=lambda c: s.m("tune_infonce", c))][:2]
      == ["i7-o64", "i1-defaults"]
      and max(s.configs("tune_infonce"), key=lambda c: s.m("tune_infonce", c)) == "i2-demo"
      and s.pm("0.595 ± 0.004", "tune_infonce", "i7-o64")
      and s.pm("0.599 ± 0.048", "tune_infonce", "i1-defaults")
      and pos(s.d("tune_infonce", "i2-demo", "i1-defaults"))),
    S("VICReg's own defaults (an expander of 2048) reach a backbone match accuracy of only 0.25 in 300 steps; every "
      "narrower expander matches better (0.47–0.62) and probes higher on the mean",
      lambda s: shows("0.25", s.m("tune_vicreg", "v1-defaults", BB))
      and span("0.47–0.62", [s.m("tune_vicreg", c, BB) for c in s.configs("tune_vicreg") if c != "v1-defaults"])
      and all(s.m("tune_vicreg", c, BB) > s.m("tune_vicreg", "v1-defaults", BB)
              and s.m("tune_vicreg", c) > s.m("tune_vicreg", "v1-defaults") for c in s.configs("tune_vicreg")
              if c != "v1-defaults")),
    S("the best-matching rows are InfoNCE's (0.52–0.66) without the best probe, and gm's best probe (g4) matches at "
      "0.34",
      lambda s: max(_tuned(s), key=lambda k: s.m(*k, MATCH))[0] == "tune_infonce"
      and span("0.52–0.66", [s.m("tune_infonce", c, MATCH) for c in s.configs("tune_infonce")])
      and max(_tuned(s), key=_tuned(s).get)[0] != "tune_infonce"
      and max(s.configs("tune_gm"), key=lambda c: s.m("tune_gm", c)) == "g4-gc"
      and shows("0.34", s.m("tune_gm", "g4-gc", MATCH))),
    S("Chosen: gm `g4-gc` (GraphConv, noise 0.1, samples 1, linear projector: 0.666 ± 0.012), InfoNCE `i2-demo` "
      "(projector 512 → 128, temperature 0.2: 0.647 ± 0.004), VICReg `v8-var10` (expander 512, variance weight 10: "
      "0.659 ± 0.005, tied with `v4-inv50` at 0.65875 and ahead of it on the region kNN, 0.565 against 0.526",
      lambda s: s.pm("0.666 ± 0.012", "tune_gm", "g4-gc")
      and s.pm("0.647 ± 0.004", "tune_infonce", "i2-demo")
      and s.pm("0.659 ± 0.005", "tune_vicreg", "v8-var10")
      and abs(s.m("tune_vicreg", "v8-var10") - s.m("tune_vicreg", "v4-inv50")) < TIE
      and shows("0.65875", s.m("tune_vicreg", "v4-inv50"))
      and s.m("tune_vicreg", "v8-var10") >= max(s.m("tune_vicreg", c) for c in s.configs("tune_vicreg")) - TIE
      and shows("0.565", s.m("tune_vicreg", "v8-var10", KNN)) and shows("0.526", s.m("tune_vicreg", "v4-inv50", KNN)),
      "the head options: the configurations' names and the tuning commands"),
    S("A choice by the mean of 2 seeds separates little: g4 trails g7 and g8 on seed 1, i2 trails i4 on seed 0 and i5 "
      "and i6 on seed 1, and v8 trails v4 and v6 on seed 0 and v5 on seed 1.",
      lambda s: _ahead_on_seed(s, "tune_gm", "g4-gc", 0) == set()
      and _ahead_on_seed(s, "tune_gm", "g4-gc", 1) == {"g7-gc-norm", "g8-gc-mlp"}
      and _ahead_on_seed(s, "tune_infonce", "i2-demo", 0) == {"i4-t0.5"}
      and _ahead_on_seed(s, "tune_infonce", "i2-demo", 1) == {"i5-t0.07", "i6-t0.3"}
      and _ahead_on_seed(s, "tune_vicreg", "v8-var10", 0) == {"v4-inv50", "v6-l2"}
      and _ahead_on_seed(s, "tune_vicreg", "v8-var10", 1) == {"v5-cov4"}),
    # ---- 5. the study
    S("`gm-before` is gm with the defaults this work replaced (GCN, noise 0.1, edge noise at the full scale)",
      lambda s: s.options[M, "gm-before"] == "edge_noise_scale=0.1, gnn='gcn', noise_scale=0.1"),
    S("500 steps (`--budget medium`: the half-width ResNet-18, about 60 epochs of the 263 images), seeds 0, 1, 2",
      lambda s: s.settings[M]["steps"] == 500 and s.settings[M]["budget"] == "medium"
      and s.settings[M]["seeds"] == [0, 1, 2] and round(500 * 32 / 263) in (60, 61)),
    S("Per seed (region linear probe): random init 0.608 / 0.578 / 0.590; gm 0.668 / 0.635 / 0.733; gm-no-edge "
      "0.653 / 0.638 / 0.713; InfoNCE 0.628 / 0.673 / 0.638; VICReg 0.640 / 0.608 / 0.613",
      lambda s: all(seq(t, s.per(M, c)) for t, c in (("0.608 / 0.578 / 0.590", "random init"),
                    ("0.668 / 0.635 / 0.733", "gm"), ("0.653 / 0.638 / 0.713", "gm-no-edge"),
                    ("0.628 / 0.673 / 0.638", "infonce"), ("0.640 / 0.608 / 0.613", "vicreg")))),  # fmt: skip
    S("With 400 test patches from 5 slabs a single accuracy has a standard error of about 0.024",
      lambda s: _n_test(s) == 400 and abs(math.sqrt(0.65 * 0.35 / 400) - 0.024) < 0.0024,
      "p = 0.65, the middle of the table's accuracies; the slab count: the task's construction (§1)"),
    S("The JSON holds no per-image predictions, so there are no bootstrap intervals: a configuration is behind gm only "
      "where it is behind on every seed.", lambda s: not s.per_image[M]),
    S("0.20–0.22 (first 25 steps, from the logs that were not kept) → 0.35–0.41 (last 50), every seed",
      lambda s: span("0.35–0.41", s.per(M, "gm", MATCH)), "the start: the runs' log.csv (not kept)"),
    S("gm ≥ random init + 0.05 | 0.678 vs 0.592 + 0.05 = 0.642; paired +0.058 to +0.143, every seed | yes",
      lambda s: shows("0.642", s.m(M, "random init") + 0.05) and s.m(M, "gm") >= s.m(M, "random init") + 0.05
      and pos(s.d(M, "gm", "random init")) and span("+0.058–+0.143", s.d(M, "gm", "random init"))),
    S("0.678 vs 0.646 − 0.024 = 0.622 | yes (also above InfoNCE's mean, but ahead on 2 of 3 seeds only)",
      lambda s: shows("0.622", s.m(M, "infonce") - s.sd(M, "infonce")) and s.m(M, "gm") > s.m(M, "infonce")
      and n_pos(s.d(M, "gm", "infonce")) == 2),
    S("0.678 vs 0.667; paired +0.015 / −0.003 / +0.020 | yes on the mean; not separated",
      lambda s: _paired_gm(s, "gm-no-edge", "+0.015 / −0.003 / +0.020") and s.m(M, "gm") >= s.m(M, "gm-no-edge")
      and wording(s.d(M, "gm", "gm-no-edge")) == "not separated"),
    S("Per seed (region linear probe): gm 0.668 / 0.635 / 0.733; without the edge term 0.653 / 0.638 / 0.713; without "
      "message passing 0.640 / 0.635 / 0.693; without noise (margin 1) 0.650 / 0.635 / 0.698; without the local term "
      "0.658 / 0.675 / 0.705",
      lambda s: all(seq(t, s.per(M, c)) for t, c in (("0.668 / 0.635 / 0.733", "gm"),
                    ("0.653 / 0.638 / 0.713", "gm-no-edge"), ("0.640 / 0.635 / 0.693", "gm-no-gnn"),
                    ("0.650 / 0.635 / 0.698", "gm-no-noise"), ("0.658 / 0.675 / 0.705", "gm-no-local")))),  # fmt: skip
    S("Full gm is first on seeds 0 and 2 and tied for last on seed 1 (0.635, with gm-no-gnn and gm-no-noise); on the "
      "mean it is ahead of three ablations by 0.011–0.022 and level with the fourth, but paired by seed it is ahead "
      "of none of them on every seed",
      lambda s: _gm_first_and_last(s) and span("0.011–0.022", _gaps(s)) and min(_gaps(s)) > 0
      and abs(s.m(M, "gm-no-local") - s.m(M, "gm")) < 0.005 and not any(pos(s.d(M, "gm", c)) for c in ABLATIONS)),
    S("The paper reports +5.3 points for the second-order term on 1.3 M images", None, "the LVM-Med paper, Table 6"),
    S("The old defaults (`gm-before`, the GCN) probe at random init's level (0.592 ± 0.011 against 0.592 ± 0.015; "
      "paired −0.020 / +0.008 / +0.015) and match at 0.13, about twice chance",
      lambda s: s.pm("0.592 ± 0.011", M, "gm-before")
      and s.pm("0.592 ± 0.015", M, "random init")
      and seq("−0.020 / +0.008 / +0.015", s.d(M, "gm-before", "random init"))
      and shows("0.13", s.m(M, "gm-before", MATCH)) and 1.8 < s.m(M, "gm-before", MATCH) / CHANCE < 2.2),
    S("InfoNCE matches the two views best (0.71) and VICReg next, yet both probe below gm on the anatomical task on "
      "the mean (VICReg on every seed, InfoNCE on 2 of 3)",
      lambda s: sorted(s.configs(M), key=lambda c: -s.m(M, c, MATCH))[:2] == ["infonce", "vicreg"]
      and shows("0.71", s.m(M, "infonce", MATCH)) and pos(s.d(M, "gm", "vicreg"))
      and n_pos(s.d(M, "gm", "infonce")) == 2 and s.m(M, "gm") > max(s.m(M, "infonce"), s.m(M, "vicreg"))),
    S("its accuracy keeps rising at 500 steps", None, "curves.png (the runs' log.csv, not kept)"),
    S("`gm-no-edge` matches better than gm on every seed (0.51 against 0.39)",
      lambda s: pos(s.d(M, "gm-no-edge", "gm", MATCH)) and shows("0.51", s.m(M, "gm-no-edge", MATCH))
      and shows("0.39", s.m(M, "gm", MATCH))),
    # ---- 6. defaults
    S("| 1.0 (the paper) | 0.1 | §2a: with 1.0 perfect embeddings sit at a loss of 27.4 of 32 without the edge "
      "term, good ones (cosine 0.8) at 24.7 with it; g1 probes below random init on both seeds (0.551 ± 0.009; "
      "only g3, 0.545, is lower)",
      lambda s: shows("27.4", s.floor(0.0, "1.00", 1.0)["hamming"])
      and shows("24.7", s.floor(0.5, "0.80", 1.0)["hamming"])
      and neg(s.d("tune_gm", "g1-paper", "random init"))
      and s.pm("0.551 ± 0.009", "tune_gm", "g1-paper")
      and [k for k, v in _tuned(s).items() if v < s.m("tune_gm", "g1-paper")] == [("tune_gm", "g3-gcn")]
      and shows("0.545", s.m("tune_gm", "g3-gcn")) and gm_defaults()["noise_scale"] == 0.1
      and "noise_scale=1.0" in s.options["tune_gm", "g1-paper"]),
    S("every GCN row matches at 0.13–0.21 against 0.30–0.41 for GraphConv; two of the three probe below random init on "
      "both seeds (g2 is above it on the mean, below on seed 0); every GraphConv row is above random init on the "
      "mean, all but g8 on both seeds",
      lambda s: _gcn_vs_graphconv(s) and _gcn_below_random(s) and _graphconv_above_random(s)),
    S("0.611 ± 0.002 → 0.666 ± 0.012 on the region probe (GraphConv, 2 seeds), higher on both", _edge_noise),
    S("| 0.08–1 | 0.25–1 | §3: best mean of gm-LAP and InfoNCE, on both seeds",
      lambda s: _best_crop(s) and s.settings["crop_0.08"]["crop_scale"] == [0.08, 1.0]
      and s.settings[M]["crop_scale"] == [0.25, 1.0]),
    S("Left as they were, because the tuning did not show a gain across both seeds: `samples` 1 (8 samples: "
      "0.639 ± 0.044), `noise_scale` 0.1 rather than 0.2 (0.640 ± 0.018 with 8 samples), the linear projector (an MLP "
      "projector: 0.639 ± 0.051), no node normalisation (0.649 ± 0.055)",
      lambda s: s.pm("0.639 ± 0.044", "tune_gm", "g5-gc-s8")
      and s.pm("0.640 ± 0.018", "tune_gm", "g6-gc-s8-n02")
      and s.pm("0.639 ± 0.051", "tune_gm", "g8-gc-mlp")
      and s.pm("0.649 ± 0.055", "tune_gm", "g7-gc-norm")
      and not any(pos(s.d("tune_gm", a, b)) for a, b in (("g5-gc-s8", "g4-gc"), ("g6-gc-s8-n02", "g5-gc-s8"),
                                                         ("g8-gc-mlp", "g4-gc"), ("g7-gc-norm", "g4-gc")))),
    S("`quad_weight` 0.5, `alpha` 0.8, `lam` 80 and the graph size 16 (not tried)",
      lambda s: [gm_defaults()[k] for k in ("quad_weight", "alpha", "lam", "graph_size")] == [0.5, 0.8, 80, 16]
      and not any(k in s.options["tune_gm", c] for c in s.configs("tune_gm")
                  for k in ("quad_weight", "alpha", "lam", "graph_size"))),
    S("The paper's claims are about 1.3 M images, 100 epochs and ResNet-50", None, "the LVM-Med paper"),
    # ---- 7. limits
    S("500 steps of 32 images is about 60 epochs", lambda s: 55 < 500 * 32 / 263 < 65),
    S("with 3 seeds, \"ahead on every seed\" is what a coin would give 1 time in 8",
      lambda s: len(s.settings[M]["seeds"]) == 3 and 0.5**3 == 1 / 8),
    S("none of the gaps of 0.01–0.02 above should be read as a ranking", lambda s: span("0.01–0.02", _gaps(s))),
    S("has the training time of only the 4 runs trained by the command's last invocation (146–226 s each",
      lambda s: len(s.timed("trained")) == 4 and span("146–226", [e["wall_s"] for e in s.timed("trained")])),
    S("the other 20 were reused from earlier invocations, whose timings and logs were not kept, and `lvmmed ablate` "
      "then recorded the reuse check (0.02 s) in their place",
      lambda s: len(s.timed("reused")) == 20 and all(e["pretrain_s"] is None for e in s.timed("reused"))
      and sorted(e["wall_s"] for e in s.timed("reused"))[10] == 0.02),
    # ---- README, the study section
    R("wrote (mean ± std over seeds 0, 1, 2; balanced accuracies; 2026-11-30)",
      lambda s: s.settings[M]["seeds"] == [0, 1, 2], "the date: when the study ran"),
    R("its noise-free matching accuracy ends the 500 steps at 0.35–0.41 on every seed, up from about 0.2 at the start; "
      "with the previous defaults, `gm-before`, it ends at 0.11–0.14, about twice chance",
      lambda s: _gm_learns(s) and span("0.35–0.41", s.per(M, "gm", MATCH))
      and span("0.11–0.14", s.per(M, "gm-before", MATCH)) and 1.8 < s.m(M, "gm-before", MATCH) / CHANCE < 2.2,
      "the start value: the runs' log.csv (not kept)"),
    R("Its anatomical probe is ahead of random init on every seed (+0.058 to +0.143) and ahead of VICReg on every seed "
      "(+0.028 to +0.120); it is above InfoNCE on the mean only (+0.040, −0.038 and +0.095 on seeds 0, 1 and 2), so "
      "gm and InfoNCE are not separated",
      lambda s: pos(s.d(M, "gm", "random init")) and span("+0.058–+0.143", s.d(M, "gm", "random init"))
      and pos(s.d(M, "gm", "vicreg")) and span("+0.028–+0.120", s.d(M, "gm", "vicreg"))
      and s.m(M, "gm") > s.m(M, "infonce") and _paired_gm(s, "infonce", "+0.040, −0.038 and +0.095")
      and wording(s.d(M, "gm", "infonce")) == "not separated"),
    R("Full gm is ahead of gm without the edge term, without message passing and without noise on the mean (by "
      "0.011–0.022) but of none of them on every seed, and gm without the local term does as well (0.679 against "
      "0.678), so the benefit of the second-order term (the paper's +5.3 points) is not demonstrated",
      lambda s: span("0.011–0.022", _gaps(s)) and min(_gaps(s)) > 0
      and not any(pos(s.d(M, "gm", c)) for c in ABLATIONS)
      and shows("0.679", s.m(M, "gm-no-local")) and shows("0.678", s.m(M, "gm")),
      "+5.3: the LVM-Med paper, Table 6"),
    R("anything about the paper's scale (1.3 M images, ResNet-50, 100 epochs)", None, "the LVM-Med paper"),
    R("random init ties with gm-no-local for the strongest linear probe (0.851) and is ahead of gm on every seed",
      lambda s: shows("0.851", s.m(M, "random init", TLP))
      and abs(s.m(M, "gm-no-local", TLP) - s.m(M, "random init", TLP)) < TIE
      and s.m(M, "random init", TLP) >= max(s.m(M, c, TLP) for c in s.configs(M)) - TIE
      and pos(s.d(M, "random init", "gm", TLP))),
    R("The study's JSON predates the per-image predictions, so these comparisons have no bootstrap interval",
      lambda s: not s.per_image[M]),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the tables


def _cell(s: Study, run: str, config: str, metric: str, text: str) -> bool:
    """A table cell: ``mean ± std`` (or a plain mean) of ``metric``, or '-' where the run has no such value."""
    have = all(metric in m for m in s.runs[run][config].values())
    if text.strip() == "-":
        return not have
    if not have:
        return False
    parts = text.split(" ± ")
    return shows(parts[0], s.m(run, config, metric)) and (len(parts) == 1 or shows(parts[1], s.sd(run, config, metric)))


@dataclass
class Table:
    doc: str
    header: str  # the header line starts with this
    key: Callable[[list[str]], tuple[str, str]]  # cells -> (run, configuration)
    columns: dict[int, str]  # cell index -> metric
    complete: str | None = None  # this run's every configuration must have a row


SIX = [MATCH, BB, LP, KNN, TLP, TKNN]
TABLES = [
    Table("STUDY", "| crop area | configuration |",
          lambda c: ("crop_0.25" if c[0] == "-" else f"crop_{c[0]}", c[1]),
          dict(enumerate([BB, LP, KNN, TLP, TKNN], start=2))),
    Table("STUDY", "| run | configuration | head options |", lambda c: (c[0], c[1]), dict(enumerate(SIX, start=3))),
    Table("STUDY", "| configuration | loss | head options | what it tests | final loss¹",
          lambda c: (M, c[0]), dict(enumerate(["final_loss", *SIX], start=4)), complete=M),
    Table("README", "| configuration | what it tests | final loss¹ |",
          lambda c: (M, c[0]), dict(enumerate(["final_loss", MATCH, LP, KNN, TLP, TKNN], start=2)), complete=M),
]  # fmt: skip


def _rows(text: str, header: str) -> list[tuple[str, list[str]]]:
    """The (line, cells) of the table whose header line starts with ``header`` (the separator line skipped)."""
    lines = text.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(header)] or [None]
    if start is None:
        return []
    out = [(lines[start], [])]  # the header line: checked as a table line, no cells
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        out.append((line, [c.strip() for c in line.strip().strip("|").split("|")]))
    return out


def _check_tables(s: Study, docs: dict[str, str]) -> tuple[list[str], set[str], int]:
    failures, checked, cells = [], set(), 0
    for t in TABLES:
        rows = _rows(docs[t.doc], t.header)
        if not rows:
            failures.append(f"{t.doc}: no table with header {t.header!r}")
            continue
        seen = set()
        for line, c in rows:
            checked.add(line)
            if not c:
                continue
            run, config = t.key(c)
            if config not in s.runs.get(run, {}):
                failures.append(f"{t.doc}: table row {config!r}: no configuration {config!r} in docs/study/{run}")
                continue
            seen.add(config)
            for i, metric in t.columns.items():
                cells += 1
                if not _cell(s, run, config, metric, c[i]):
                    failures.append(f"{t.doc}: table row {config!r}, {metric}: {c[i]!r} is not the JSON's "
                                    f"{s.m(run, config, metric):.4f} ± {s.sd(run, config, metric):.4f}")  # fmt: skip
        if t.complete and seen != set(s.runs[t.complete]):
            failures.append(f"{t.doc}: table {t.header!r} lacks {sorted(set(s.runs[t.complete]) - seen)}")
    # the noise floor: one row per edge weight and own-view cosine, one column per noise scale
    scales = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    for line, c in _rows(docs["STUDY"], "| edge term (`quad_weight`) |"):
        checked.add(line)
        if not c:
            continue
        quad = 0.5 if "QAP" in c[0] else 0.0
        for scale, text in zip(scales, c[2:]):
            cells += 1
            if not shows(text, s.floor(quad, c[1], scale)["hamming"]):
                failures.append(f"STUDY: noise-floor row {c[0]} {c[1]} at {scale}: {text} is not the JSON's")
    # the paired table of section 5: configuration - gm on each seed, and the wording that follows from it
    paired = _rows(docs["STUDY"], "| configuration | mean difference | seeds 0 / 1 / 2 | wording |")
    checked |= {line for line, _ in paired}
    paired = [(line, c) for line, c in paired if c]
    if {c[0] for _, c in paired} != set(s.configs(M)) - {"gm"} | {"random init"}:
        failures.append("STUDY: the paired table does not list every configuration but gm")
    for _, c in paired:
        cells += 3
        diffs = s.d(M, c[0], "gm")
        if not (shows(c[1], sum(diffs) / len(diffs)) and seq(c[2], diffs) and c[3] == wording(diffs)):
            failures.append(f"STUDY: paired row {c[0]!r}: {c[1:]} is not {diffs} ({wording(diffs)})")
    return failures, checked, cells


# ---------------------------------------------------------------------------------------------------- the checker


def _pattern(text: str) -> re.Pattern:
    """``text`` as a pattern that matches it across any whitespace (line breaks of the Markdown source)."""
    return re.compile(r"\s+".join(re.escape(t) for t in text.split()))


def readme_section(readme: str) -> str:
    """The README's study section: from '**The study**' to the next '## ' heading."""
    start = readme.find("**The study**")
    if start < 0:
        return ""
    end = readme.find("\n## ", start)
    return readme[start : end if end >= 0 else len(readme)]


NUMBER = re.compile(r"(?<![\w.])[+−-]?\d+\.\d+%?")


def _masked(text: str, tables: set[str]) -> list[tuple[int, int]]:
    """Spans of ``text`` that are not prose: fenced code, inline code, the checked tables' lines."""
    spans = [m.span() for m in re.finditer(r"```.*?```", text, flags=re.S)]
    spans += [m.span() for m in re.finditer(r"`[^`\n]*`", text)]
    at = 0
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") in tables:
            spans.append((at, at + len(line)))
        at += len(line)
    return spans


def check(study_md: str, readme: str, data: Path) -> tuple[list[str], dict]:
    """Failures (empty when every claim holds) and counts."""
    s = Study(data)
    docs = {"STUDY": study_md, "README": readme_section(readme)}
    failures = [] if docs["README"] else ["README: no '**The study**' section"]
    claimed: dict[str, list[tuple[int, int]]] = {doc: [] for doc in docs}
    for c in CLAIMS:
        found = [m.span() for m in _pattern(c.text).finditer(docs[c.doc])]
        claimed[c.doc] += found
        if not found:
            failures.append(f"{c.doc}: missing text: {c.text!r}")
        elif c.check is not None:
            try:
                ok = c.check(s)
            except (KeyError, ValueError, IndexError, ZeroDivisionError) as e:
                ok, c.source = False, f"{type(e).__name__}: {e}"
            if not ok:
                failures.append(f"{c.doc}: does not hold against docs/study/: {c.text!r}")
    table_failures, table_lines, cells = _check_tables(s, docs)
    failures += table_failures
    # every decimal number of the prose lies in a claim's text
    for doc, text in docs.items():
        skip = _masked(text, table_lines) + claimed[doc]
        for m in NUMBER.finditer(text):
            if not any(a <= m.start() and m.end() <= b for a, b in skip):
                line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end())]
                failures.append(f"{doc}: the number {m.group()} is in no claim: {line.strip()[:150]!r}")
    counts = {"claims": len(CLAIMS), "checked": sum(c.check is not None for c in CLAIMS),
              "context": sum(c.check is None for c in CLAIMS), "table rows": len(table_lines),
              "table cells": cells}  # fmt: skip
    return failures, counts


def main() -> int:
    failures, counts = check((ROOT / "docs" / "STUDY.md").read_text(encoding="utf-8"),
                             (ROOT / "README.md").read_text(encoding="utf-8"), ROOT / "docs" / "study")  # fmt: skip
    for f in failures:
        print(f"FAIL {f}")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"{'FAILED' if failures else 'ok'}: {summary}; context (not in docs/study/): "
          + "; ".join(f"{c.text[:40]!r}: {c.source}" for c in CLAIMS if c.check is None))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
