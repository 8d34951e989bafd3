"""Training curves of several ``lvmmed ablate`` configurations side by side (docs/STUDY.md): the noise-free
matching accuracy of the head and of the backbone features per step, a moving average of the mean over the
seeds, with the band between the seeds' lowest and highest moving averages.

    python benchmarks/study_curves.py runs/study --configs gm,gm-no-edge,infonce,vicreg --out curves.png
"""

from __future__ import annotations

import argparse
import glob
import os

from lvmmed_ext.train.ablate import folder_name
from lvmmed_ext.train.progress import _moving_average, read_csv


def curves(folder: str, config: str, key: str) -> tuple[list[int], list[list[float]]]:
    """Steps and one list of ``key`` values per seed run of ``config`` in the ablate folder ``folder``."""
    runs = sorted(glob.glob(os.path.join(folder, "runs", folder_name(config), "seed*", "log.csv")))
    series, steps = [], []
    for path in runs:
        rows = [r for r in read_csv(path) if r.get(key) not in (None, "")]
        steps = [int(r["step"]) for r in rows]
        series.append([float(r[key]) for r in rows])
    return steps, series


def plot(folder: str, configs: list[str], out: str, window: int = 25) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("match_acc", "head embeddings (gm: its own noise-free solve)"), ("backbone_match_acc", "backbone"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, keys):
        for config, colour in zip(configs, colours):
            steps, series = curves(folder, config, key)
            if not series:
                continue
            smooth = [_moving_average(s, window) for s in series]
            mean = [sum(v) / len(v) for v in zip(*smooth)]
            seeds = f"{len(series)} seed{'s' if len(series) > 1 else ''}"
            ax.plot(steps, mean, color=colour, lw=2, label=f"{config} ({seeds})")
            ax.fill_between(steps, [min(v) for v in zip(*smooth)], [max(v) for v in zip(*smooth)], color=colour,
                            alpha=0.15, lw=0)  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("noise-free matching accuracy")
        ax.set_title(f"{title}; chance = 1/16", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="an lvmmed ablate output folder")
    p.add_argument("--configs", required=True, help="comma-separated configuration names")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--window", type=int, default=25, help="moving-average window in steps (25)")
    args = p.parse_args(argv)
    print(plot(args.folder, [c.strip() for c in args.configs.split(",") if c.strip()], args.out, args.window))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
