"""Tolerances and comparisons shared by the op tests."""

from __future__ import annotations

import torch

# Absolute/relative tolerance of an op computed in `dtype` against its float64 reference.
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 1e-4)}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref.double().cpu(), atol=atol, rtol=rtol, equal_nan=True)


def assert_low_precision_ok(out: torch.Tensor, peer: torch.Tensor, ref: torch.Tensor, factor: float = 2.0) -> None:
    """fp16/bf16 rule: our max error vs the float64 reference is at most `factor` x that of a same-precision
    PyTorch computation `peer` (plus one ulp-sized floor so that an exact peer does not demand perfection)."""
    ref = ref.double().cpu()
    ours = (out.double().cpu() - ref).abs().max().item()
    theirs = (peer.double().cpu() - ref).abs().max().item()
    floor = torch.finfo(out.dtype).eps
    assert ours <= factor * theirs + floor, f"error {ours:.3g} > {factor} x peer error {theirs:.3g} (+{floor:.1g})"
