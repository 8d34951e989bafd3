"""What a benchmark subject receives: device, size preset, timing with profiler/NVTX ranges, correctness checks."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from .timing import interleaved, nvtx_range, peaks, time_fn


class BenchmarkCorrectnessError(AssertionError):
    """A benchmarked implementation disagreed with its reference: nothing is timed."""


@dataclass
class Context:
    """Settings of one ``lvmmed bench`` run, handed to every subject's ``run(ctx)``.

    ``quick`` selects the small sizes of the CI smoke run (and 3 repeats / rounds); ``profile`` wraps every timed
    call in a named range (NVTX on CUDA, ``record_function`` in the torch.profiler trace); ``memory`` enables the
    fresh-process peak-memory probes (slow: one Python start per probe). Subjects add one-line ``notes`` (e.g. a
    peer that is not installed) that the report prints.
    """

    device: torch.device
    quick: bool = False
    profile: bool = False
    repeats: int = 20  # timed calls per case with ctx.time (median reported)
    rounds: int = 7  # interleaved rounds with ctx.interleave (medians and per-round ratios reported)
    budget_s: float = 3.0  # stop repeating a case after this long (at least 3 samples)
    memory: bool = True
    only: str | None = None  # run only the cases whose name contains this (case-insensitive)
    verbose: bool = True
    profiler: object = None  # the running torch.profiler.profile, set by the CLI under --profile
    profile_peers: bool = False  # also trace slow per-graph peers (pygmtools, scipy)
    data: dict[str, str] = field(default_factory=dict)  # the folder of each subject that reads data (NEEDS_DATA)
    budgets: list[str] | None = None  # per-instance budgets of the subjects that take them (qaplib)
    max_n: int | None = None  # the largest instances of the qaplib subject
    notes: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Record (once) and print a note for the report, e.g. 'pygmtools is not importable: its peers skipped'."""
        if text not in self.notes:
            self.notes.append(text)
            self.log(f"note: {text}")

    def selected(self, case: str) -> bool:
        """Whether the case named ``case`` is to run (``--only``)."""
        return self.only is None or self.only.lower() in case.lower()

    def _activities(self):
        acts = [torch.profiler.ProfilerActivity.CPU]
        return acts + ([torch.profiler.ProfilerActivity.CUDA] if self.device.type == "cuda" else [])

    def collect(self, enable: bool) -> None:
        """Switch the profiler's collection on/off (no-op unless profiling)."""
        if self.profiler is not None:
            self.profiler.toggle_collection_dynamic(enable, self._activities())

    def ranged(self, name: str, fn):
        """``fn`` wrapped for profiling: every call runs inside a range ``name`` (record_function in the trace,
        NVTX on CUDA) with the profiler collecting. Outside such calls the CLI keeps collection off, so a trace
        holds exactly the timed calls (not input generation, reference checks or peers' setup)."""
        if not self.profile:
            return fn

        def wrapped():
            self.collect(True)
            try:
                with nvtx_range(name, True):
                    return fn()
            finally:
                self.collect(False)

        return wrapped

    def peer(self, name: str, fn):
        """A slow per-graph peer (pygmtools, scipy): traced only with ``profile_peers``."""
        return self.ranged(name, fn) if self.profile_peers else fn

    def time(self, name: str, fn) -> float:
        """Median seconds per call of fn (see timing.time_fn); every call inside a profiler range named `name`."""
        with nvtx_range(name, self.profile):
            res = time_fn(
                self.ranged(name + " call", fn),
                self.device,
                repeats=3 if self.quick else self.repeats,
                budget_s=self.budget_s,
            )
        return res["median_s"]

    def interleave(self, case: str, fns: dict, budget_s: float | None = None) -> dict:
        """Interleaved rounds of every ``fns[method]()`` (see timing.interleaved): ``{method: [s per round]}``.
        Each call runs inside a profiler range ``"<case> | <method>"``."""
        ranged = {m: self.ranged(f"{case} | {m}", fn) for m, fn in fns.items()}
        with nvtx_range(case, self.profile):
            return interleaved(
                ranged,
                self.device,
                rounds=3 if self.quick else self.rounds,
                budget_s=self.budget_s * len(fns) if budget_s is None else budget_s,
            )

    def check(self, name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> None:
        try:
            torch.testing.assert_close(ours.double().cpu(), ref.double().cpu(), atol=atol, rtol=rtol)
        except AssertionError as err:
            raise BenchmarkCorrectnessError(f"{name}: result differs from its reference, not timing it\n{err}") from err

    def require(self, name: str, ok: bool, detail: str) -> None:
        """Fail the run (nothing more is timed) unless ``ok``: a correctness invariant of ``name``."""
        if not ok:
            raise BenchmarkCorrectnessError(f"{name}: {detail}")

    def peak_fraction(self, flops: float, seconds: float, precision: str = "fp32") -> float | None:
        """Achieved FLOP/s over the device's datasheet peak (None where the peak is unknown, e.g. CPUs)."""
        p = peaks(self.device)
        return None if p is None or seconds <= 0 else flops / seconds / p[f"{precision}_flops"]

    def bandwidth_fraction(self, nbytes: float, seconds: float) -> float | None:
        """Achieved bytes/s over the device's datasheet memory bandwidth (None where unknown)."""
        p = peaks(self.device)
        return None if p is None or seconds <= 0 else nbytes / seconds / p["hbm_bytes_per_s"]
