"""Float64 oracles written from the papers' equations, independent of the heads' modules: networks are evaluated
from their parameter tensors (``state_dict`` entries) with explicit arithmetic, losses element by element.

Nothing here calls a head's ``forward``, its ``nn.Module`` layers or a ``torch.nn.functional`` loss.
"""

from __future__ import annotations

import math

import torch


def linear(x, state: dict, prefix: str):
    """``x @ W.T + b`` (no bias when the state has none)."""
    out = x @ state[f"{prefix}.weight"].T
    bias = state.get(f"{prefix}.bias")
    return out if bias is None else out + bias


def batchnorm_eval(x, state: dict, prefix: str, eps: float = 1e-5):
    """BatchNorm with its running statistics: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""
    mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
    return (x - mean) / torch.sqrt(var + eps) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def layernorm(x, state: dict, prefix: str, eps: float = 1e-5):
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * gamma + beta`` (biased variance)."""
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.shape[-1]
    return (x - mean) / torch.sqrt(var + eps) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def relu(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def bn_mlp(x, state: dict, prefix: str):
    """Linear (no bias) -> BatchNorm (eval) -> ReLU -> Linear: SimCLR's projector shape."""
    return linear(relu(batchnorm_eval(linear(x, state, f"{prefix}.0"), state, f"{prefix}.1")), state, f"{prefix}.3")


def ln_mlp(x, state: dict, prefix: str):
    """(Linear -> LayerNorm -> ReLU) twice, then Linear without bias: the PEAC authors' projectors."""
    h = relu(layernorm(linear(x, state, f"{prefix}.0"), state, f"{prefix}.1"))
    h = relu(layernorm(linear(h, state, f"{prefix}.3"), state, f"{prefix}.4"))
    return linear(h, state, f"{prefix}.6")


def mean_squared(a, b):
    """``sum (a - b)^2 / n`` over every element, as a loop."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    return sum((fa[k] - fb[k]) ** 2 for k in range(fa.numel())) / fa.numel()


def unit(v):
    return v / torch.sqrt((v * v).sum())


def sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def bce_with_logits(logit, y):
    """``-(y log s + (1 - y) log(1 - s))``, s the logistic of one logit."""
    s = sigmoid(logit)
    return -(y * torch.log(s) + (1 - y) * torch.log(1 - s))


def cross_entropy(logits, k: int):
    """``-log softmax(logits)[k]`` of one row."""
    return -(logits[k] - torch.log(torch.exp(logits).sum()))


def cosine_ramp(k: int, total: int, top: float) -> float:
    """Ark's consistency weight at dataset pass k of K (written from its description: a half cosine from 0 to top)."""
    return top - top / 2 * (1 + math.cos(math.pi * k / total))
