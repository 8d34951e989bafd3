"""Training output: a dependency-free progress bar on stderr, a CSV log, optional TensorBoard, a loss plot."""

from __future__ import annotations

import collections
import csv
import os
import sys
import time

from ..system import save_figure

CSV_FIELDS = ["step", "epoch", "loss", "lr", "lr_backbone", "images_per_s", "elapsed_s", "skipped_files",
              "match_acc", "margin", "grad_nodes", "backbone_match_acc"]  # fmt: skip
# The diagnostics columns (lvmmed_ext.diagnostics): empty where a loss does not report one (grad_nodes: gm only).


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class ProgressBar:
    """``pretrain  41% |######      | 123/300 [01:02<01:29] loss 19.92 (chance 30)  match 0.39 (chance 0.06)
    78.1 img/s  lr 2.0e-03``: ``loss`` and ``match`` (the noise-free matching accuracy, when the loss reports one)
    are moving averages over the last tenth of the run's steps, beside their chance levels where known (a random
    matching; ``chance_loss`` / ``chance_match``). ``loss_avg`` and ``match_avg`` hold the latest averages.

    On a terminal the line is redrawn in place; otherwise (CI logs, files) a line is printed about every
    ``total / 20`` steps so logs stay short.
    """

    def __init__(self, total: int, start: int = 0, label: str = "pretrain", stream=None, enabled: bool = True,
                 chance_loss: float | None = None, chance_match: float | None = None):  # fmt: skip
        self.total, self.start, self.label, self.enabled = max(1, total), start, label, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.every = max(1, self.total // 20)
        self._last = ""
        self.chance_loss, self.chance_match = chance_loss, chance_match
        window = max(1, self.total // 10)
        self._losses: collections.deque = collections.deque(maxlen=window)
        self._matches: collections.deque = collections.deque(maxlen=window)
        self.loss_avg: float | None = None
        self.match_avg: float | None = None

    @property
    def tail_steps(self) -> int:
        """The steps in the moving averages."""
        return len(self._losses)

    def update(self, step: int, loss: float, images_per_s: float, lr: float, match: float | None = None) -> None:
        self._losses.append(loss)
        self.loss_avg = sum(self._losses) / len(self._losses)
        if match is not None:
            self._matches.append(match)
            self.match_avg = sum(self._matches) / len(self._matches)
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        frac = step / self.total
        bar = "#" * int(frac * 24)
        chance = "" if self.chance_loss is None else f" (chance {self.chance_loss:g})"
        shown = f"loss {self.loss_avg:.4f}{chance}  "
        if match is not None:
            chance = "" if self.chance_match is None else f" (chance {self.chance_match:.2f})"
            shown += f"match {self.match_avg:.2f}{chance}  "
        line = (
            f"{self.label} {frac:4.0%} |{bar:<24}| {step}/{self.total} [{_fmt_time(elapsed)}<{_fmt_time(eta)}] "
            f"{shown}{images_per_s:.1f} img/s  lr {lr:.1e}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last)))
            self.stream.flush()
        elif step % self.every == 0 or step == self.total or step == self.start + 1:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last = line

    def close(self) -> None:
        if self.enabled and self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


class CsvLog:
    """Appends one row per optimizer step (``CSV_FIELDS``), flushed each time so a killed run keeps its log."""

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=CSV_FIELDS)
        if fresh:
            self._w.writeheader()
            self._f.flush()

    def _truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (lost with the process that was killed after the checkpoint)."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        self._w.writerow(row)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardLog:
    """Scalars to TensorBoard when ``tensorboard`` is installed; a no-op otherwise (``available`` says which)."""

    KEYS = ("loss", "lr", "lr_backbone", "images_per_s", "match_acc", "margin", "grad_nodes", "backbone_match_acc")

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._w = SummaryWriter(folder)
        except Exception:  # noqa: BLE001  (tensorboard missing or broken: logging is optional)
            self._w = None

    @property
    def available(self) -> bool:
        return self._w is not None

    def write(self, step: int, row: dict) -> None:
        if self._w is not None:
            for key in self.KEYS:
                if key in row:
                    self._w.add_scalar(f"pretrain/{key}", row[key], step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _moving_average(values: list[float], k: int) -> list[float]:
    return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def plot_loss(csv_path: str, png_path: str, title: str = "pretraining loss") -> str | None:
    """Loss per step (light) and a moving average (dark) from the CSV log; when the log has the matching
    diagnostics, a second panel with the noise-free matching accuracy of the head (``match_acc``) and of the
    backbone features (``backbone_match_acc``). Written atomically as a PNG. Returns the path, or None when
    matplotlib is missing or the log is empty."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_csv(csv_path)
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    k = max(1, len(loss) // 25)
    curves = {}
    for key, label in (("match_acc", "head embeddings"), ("backbone_match_acc", "backbone features")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            curves[label] = pts
    panels = 2 if curves else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.6), dpi=110, squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, loss, color="#9ecae1", lw=1, label="loss")
    ax.plot(steps, _moving_average(loss, k), color="#08519c", lw=2, label=f"moving average ({k} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if curves:
        ax = axes[0][1]
        for (label, pts), colour in zip(curves.items(), ("#08519c", "#d94801")):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour, lw=0.8, alpha=0.35)
            ax.plot(xs, _moving_average(list(ys), k), color=colour, lw=2, label=label)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("noise-free matching accuracy")
        ax.set_title("own-view matches (chance = 1 / graph size)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, png_path)
    plt.close(fig)
    return png_path
