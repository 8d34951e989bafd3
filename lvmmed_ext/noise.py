"""Perturbation noise for perturb-and-MAP / IMLE, drawn on the target device from an optional generator.

- ``"gumbel"``: Gumbel(0, scale), the paper's choice (LVM-Med Alg. 1 uses scale 1; its later code 0.05).
- ``"sum_of_gamma"``: the IMLE paper's Sum-of-Gamma noise,
  (scale/kappa)·(Σ_{i=1..terms} Γ(1/kappa, kappa/i) − log terms); with kappa = 1 it approaches Gumbel as terms grows.
- ``"none"``: zeros (deterministic; the paper's "w/o Gumbel" ablation adds a ground-truth margin instead).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NOISE_KINDS = ("gumbel", "sum_of_gamma", "none")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(
            f"generator is on {generator.device} but the noise is drawn on {device}; pass a generator "
            f"created with torch.Generator(device={str(torch.device(device).type)!r})"
        )


def _uniform_open(shape, generator, device, dtype) -> Tensor:
    """Uniform samples in the open interval (0, 1)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return u.clamp_(tiny, 1.0 - torch.finfo(dtype).eps)


def gumbel(shape, *, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
    """Standard Gumbel(0, 1) samples of the given shape."""
    return -torch.log(-torch.log(_uniform_open(shape, generator, device, dtype)))


def standard_gamma(
    alpha: float, shape, *, generator=None, device="cpu", dtype=torch.float32, max_rounds: int = 64
) -> Tensor:
    """Gamma(alpha, 1) samples by Marsaglia-Tsang rejection, vectorised and capped (alpha < 1 via the
    alpha + 1 boost). Acceptance is > 95% per round, so the cap is never reached in practice; any sample still
    pending after it falls back to the distribution's mean."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    boost = alpha < 1
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.full(shape, a, device=device, dtype=dtype)
    pending = torch.ones(shape, device=device, dtype=torch.bool)
    for _ in range(max_rounds):
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        u = _uniform_open(shape, generator, device, dtype)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = ok & pending
        out = torch.where(take, d * v, out)
        pending &= ~ok
        if not bool(pending.any()):
            break
    if boost:
        out = out * _uniform_open(shape, generator, device, dtype) ** (1.0 / alpha)
    return out


def sum_of_gamma(
    shape, *, kappa: float = 1.0, terms: int = 10, generator=None, device="cpu", dtype=torch.float32
) -> Tensor:
    """Sum-of-Gamma noise with unit temperature: (1/kappa)·(Σ_{i=1..terms} Γ(1/kappa, scale=kappa/i) − log terms)."""
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    total = torch.zeros(shape, device=device, dtype=dtype)
    for i in range(1, terms + 1):
        total += standard_gamma(1.0 / kappa, shape, generator=generator, device=device, dtype=dtype) * (kappa / i)
    return (total - math.log(terms)) / kappa


def sample(kind: str, shape, *, scale: float = 1.0, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
    """``scale`` × noise of the given kind (see the module docstring), shape ``shape``."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"noise_scale must be a finite number >= 0, got {scale}")
    _check_generator(generator, device)
    if kind == "none" or scale == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    draw = gumbel if kind == "gumbel" else sum_of_gamma
    return scale * draw(shape, generator=generator, device=device, dtype=dtype)
