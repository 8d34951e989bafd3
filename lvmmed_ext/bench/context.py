"""What a benchmark subject receives: device, size preset, timing with NVTX ranges, correctness checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .timing import nvtx_range, peaks, time_fn


class BenchmarkCorrectnessError(AssertionError):
    """A benchmarked implementation disagreed with its reference: nothing is timed."""


@dataclass
class Context:
    device: torch.device
    quick: bool = False  # small sizes, few repeats: the CI smoke run
    profile: bool = False  # NVTX ranges around every timed case
    repeats: int = 20
    budget_s: float = 3.0

    def time(self, name: str, fn) -> float:
        """Median seconds per call of fn (see timing.time_fn), inside an NVTX range named `name`."""
        with nvtx_range(name, self.profile):
            res = time_fn(fn, self.device, repeats=3 if self.quick else self.repeats, budget_s=self.budget_s)
        return res["median_s"]

    def check(self, name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> None:
        try:
            torch.testing.assert_close(ours.double().cpu(), ref.double().cpu(), atol=atol, rtol=rtol)
        except AssertionError as err:
            raise BenchmarkCorrectnessError(f"{name}: result differs from its reference, not timing it\n{err}") from err

    def peak_fraction(self, flops: float, seconds: float, precision: str = "fp32") -> float | None:
        p = peaks(self.device)
        return None if p is None or seconds <= 0 else flops / seconds / p[f"{precision}_flops"]
