"""Merge the ``ablation.json`` of several ``lvmmed ablate`` runs into one Markdown table (docs/STUDY.md): one row
per configuration with the noise-free matching accuracies and the balanced accuracies of every evaluation task,
mean ± std over the run's seeds, and each run's random-init row once.

    python benchmarks/study_report.py runs/tune_gm runs/tune_infonce runs/tune_vicreg > table.md
"""

from __future__ import annotations

import argparse
import json
import os

from lvmmed_ext.train.ablate import _cell


def rows_of(folder: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(folder, "ablation.json")) as f:
        data = json.load(f)
    return data["settings"], data["rows"]


def report(folders: list[str], sort_key: str | None = None) -> str:
    settings, _ = rows_of(folders[0])
    tasks = [t["name"] for t in settings["tasks"]]
    header = ["run", "configuration", "head options", "match acc.", "backbone match acc."]
    for t in tasks:
        header += [f"{t}: linear probe", f"{t}: kNN"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    seen_random = set()
    for folder in folders:
        s, rows = rows_of(folder)
        if sort_key:
            rows = [rows[0]] + sorted(rows[1:], key=lambda r: -r["mean"].get(sort_key, 0.0))
        for r in rows:
            if r["configuration"] == "random init":
                key = json.dumps(r["per_seed"], sort_keys=True)
                if key in seen_random:
                    continue
                seen_random.add(key)
            cells = [os.path.basename(folder.rstrip("/")), r["configuration"], r["options"], _cell(r, "match_acc"),
                     _cell(r, "backbone_match_acc")]  # fmt: skip
            for t in tasks:
                cells += [_cell(r, f"{t}/linear_probe_bal_acc"), _cell(r, f"{t}/knn_bal_acc")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="lvmmed ablate output folders (each with ablation.json)")
    p.add_argument("--sort", default=None, help="sort each run's configurations by this mean metric, descending")
    args = p.parse_args(argv)
    print(report(args.folders, args.sort), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
