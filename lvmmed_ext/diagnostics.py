"""Training diagnostics that make progress visible for every loss: how well the two views of a batch match.

Every loss head reports, per optimizer step (means over its view pairs and micro-steps):

* ``match_acc``: the fraction of nodes that the noise-free matching maps to their own other view. For ``gm`` the
  matching is the unperturbed solve of the head's own problem (QAP or LAP, no noise, no margin); for the other
  heads it is the linear assignment on the cosines of their embeddings in groups of ``graph_size`` images, so
  curves of different losses can be drawn side by side. Chance is ``1 / graph_size``.
* ``margin``: the mean over nodes of the diagonal affinity minus the best off-diagonal one in its row (positive
  when a node's own other view is its most similar node).
* ``grad_nodes`` (gm only): the fraction of nodes that carried gradient, i.e. whose row of the perturbed matching
  differs from the target solve's (IMLE's gradient is zero on the other rows).

Exact ties are broken at random (a fixed seed), never towards the identity: a collapsed embedding (every cosine
equal) scores chance, not 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .qap import linear_assignment

#: The diagnostics every head reports, in log.csv column order.
FIELDS = ("match_acc", "margin", "grad_nodes")

_TIE_SEED = 20231  # the fixed column shuffle that keeps exact ties from favouring the identity


def matching_accuracy(X: Tensor) -> Tensor:
    """``[G, N, M]`` matchings (N <= M) -> the fraction of rows i matched to column i (a 0-d tensor)."""
    return X.diagonal(dim1=-2, dim2=-1).float().mean()


def affinity_margin(score: Tensor) -> Tensor:
    """``[G, N, N]`` affinities -> mean over rows of ``score[i, i] - max_{a != i} score[i, a]`` (0-d)."""
    n = score.shape[-1]
    if n < 2:
        raise ValueError(f"affinity_margin needs at least 2 columns, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=score.device)
    off = score.masked_fill(eye, float("-inf")).amax(-1)
    return (score.diagonal(dim1=-2, dim2=-1) - off).float().mean()


def tie_shuffle(n: int, device) -> Tensor:
    """The fixed permutation of ``n`` columns applied before a diagnostic solve (see the module docstring)."""
    g = torch.Generator().manual_seed(_TIE_SEED + n)
    return torch.randperm(n, generator=g).to(device)


def unshuffled_solve(solve, score: Tensor) -> Tensor:
    """Solve with the columns of ``score [G, N, M]`` in a fixed shuffled order and map the answer back, so that a
    deterministic solver's tie rule picks a fixed random permutation among equal answers, not the identity.

    ``solve(shuffled_score, new_label)`` gets the shuffled scores and the int64 ``[M]`` map from an original
    column index to its shuffled position (to relabel target-graph edges, ``new_label[edges_t]``)."""
    perm = tie_shuffle(score.shape[-1], score.device)
    new_label = torch.empty_like(perm)
    new_label[perm] = torch.arange(perm.numel(), device=perm.device)
    X = solve(score[..., perm], new_label)
    out = torch.empty_like(X)
    out[..., perm] = X
    return out


@torch.no_grad()
def cosine_matching(z_s: Tensor, z_t: Tensor, graph_size: int = 16) -> dict[str, float]:
    """``match_acc`` and ``margin`` of the linear assignment on cosine affinities of two views' embeddings
    ``[B, F]``, cut into graphs of ``graph_size`` consecutive rows (a remainder is left out; fewer than one graph
    gives ``{}``). The noise-free matching accuracy of any embedding, comparable with gm's."""
    n = min(graph_size, z_s.shape[0])
    G = z_s.shape[0] // n if n >= 2 else 0
    if G == 0:
        return {}
    zs = torch.nn.functional.normalize(z_s[: G * n].detach().float().reshape(G, n, -1), dim=-1)
    zt = torch.nn.functional.normalize(z_t[: G * n].detach().float().reshape(G, n, -1), dim=-1)
    score = zs @ zt.transpose(1, 2)
    X = unshuffled_solve(lambda s, _: linear_assignment(s, maximize=True), score)
    return {"match_acc": float(matching_accuracy(X)), "margin": float(affinity_margin(score))}


class StepStats:
    """Collects the diagnostics of one optimizer step: each loss evaluation records a dict with ``record`` (which its
    backward may still fill in, e.g. ``grad_nodes``); ``pop`` returns each key's mean over the records that hold
    it and starts over.

    Example:
        >>> s = StepStats()
        >>> _ = s.record({"match_acc": 0.5}), s.record({"match_acc": 1.0, "margin": 0.2})
        >>> s.pop()
        {'match_acc': 0.75, 'margin': 0.2}
    """

    def __init__(self, keep: int = 1024):
        self._records: list[dict] = []
        self.keep = keep  # a head used outside the trainer (nobody pops) holds at most this many records

    def record(self, values: dict | None = None) -> dict:
        """Keep ``values`` (a new empty dict when None) until the next ``pop``; returns it for filling in."""
        values = {} if values is None else values
        self._records.append(values)
        if len(self._records) > self.keep:
            del self._records[: -self.keep]
        return values

    def pop(self) -> dict[str, float]:
        keys = [k for k in FIELDS if any(k in r for r in self._records)]
        keys += sorted({k for r in self._records for k in r} - set(keys))
        out = {}
        for key in keys:
            vals = [float(r[key]) for r in self._records if key in r]
            out[key] = sum(vals) / len(vals)
        self._records = []
        return out
