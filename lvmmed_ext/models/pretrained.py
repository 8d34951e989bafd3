"""Loading weights into a backbone tolerantly (prefixes, 1<->3-channel stems, classifier heads) with a report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

_CLASSIFIER_PREFIXES = ("fc.", "heads.")
_STEM_KEYS = ("conv1.weight", "conv_proj.weight")
_WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "_orig_mod.")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: tensors loaded, and the keys it could not or did not use.

    ``missing``: model keys the weights did not provide; ``unexpected``: weight keys the model has no slot for;
    ``mismatched``: keys present in both with incompatible shapes (skipped), as ``"key: file [..] vs model [..]"``;
    ``adapted``: keys converted to fit (stem channels, ViT position-embedding grid).
    """

    source: str
    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded}/{self.total} tensors from {self.source}"]
        for name in ("missing", "unexpected", "mismatched", "adapted"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


def backbone_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The backbone's ``state_dict`` without a classifier (``fc.*`` / ``heads.*``), tensors detached on the CPU.

    Example:
        >>> from lvmmed_ext.models import resnet18, backbone_state_dict
        >>> sorted(backbone_state_dict(resnet18(num_classes=10)))[:2]
        ['bn1.bias', 'bn1.num_batches_tracked']
    """
    return {
        k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(_CLASSIFIER_PREFIXES)
    }


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state_dict from ``path``: a plain state_dict, an ``lvmmed export`` file, an ``lvmmed pretrain``
    checkpoint (its backbone), or a dict wrapping one under ``state_dict`` / ``model`` / ``backbone``.
    Raises ``UsageError`` (one readable line) when the file is missing, unreadable or holds no tensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure is a bad file for the user)
        raise UsageError(f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(obj, dict) and obj.get("format") == "lvmmed-pretrain-checkpoint":
        obj = obj.get("backbone")
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UsageError(f"weights {path} hold no state_dict (expected a dict of tensors, got {type(obj).__name__})")
    return obj


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _adapt(key: str, src: Tensor, dst: Tensor) -> tuple[Tensor, str] | None:
    """Convert ``src`` to ``dst``'s shape where that has a standard meaning, else None."""
    if key in _STEM_KEYS and src.dim() == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]:
        if src.shape[1] == 3 and dst.shape[1] == 1:  # RGB stem -> gray: a gray image is R = G = B
            return src.sum(dim=1, keepdim=True), f"{key} (3 -> 1 input channels, summed)"
        if src.shape[1] == 1 and dst.shape[1] == 3:
            return src.repeat(1, 3, 1, 1) / 3, f"{key} (1 -> 3 input channels, split)"
    if key == "encoder.pos_embedding" and src.dim() == 3 and src.shape[2] == dst.shape[2]:
        n_src, n_dst = src.shape[1] - 1, dst.shape[1] - 1
        g_src, g_dst = int(round(n_src**0.5)), int(round(n_dst**0.5))
        if g_src * g_src == n_src and g_dst * g_dst == n_dst:
            grid = src[:, 1:].reshape(1, g_src, g_src, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(g_dst, g_dst), mode="bicubic", align_corners=False)
            out = torch.cat([src[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n_dst, -1)], dim=1)
            return out, f"{key} ({g_src}x{g_src} -> {g_dst}x{g_dst} grid, interpolated)"
    return None


def load_pretrained(
    model: nn.Module, weights: str | os.PathLike | dict[str, Tensor], strict: bool = False, verbose: bool = True
) -> LoadReport:
    """Load pretrained weights into ``model`` and report what matched.

    Tolerates the usual differences: ``module.`` / ``backbone.`` / ``model.`` prefixes, a wrapping checkpoint
    (``lvmmed pretrain`` checkpoints, ``{"state_dict": ...}``), a 3-channel stem loaded into a 1-channel model
    (weights summed over RGB) or the reverse, a ViT position embedding of another grid (interpolated), and a
    classifier head of another size (skipped, reported as mismatched). Everything else that differs is
    reported, not silently dropped.

    Args:
        model: the target ``nn.Module`` (any device/dtype; tensors are copied into its parameters).
        weights: a path (``.pth``/``.pt`` from ``lvmmed export``, a checkpoint, a torchvision state_dict)
            or a state_dict.
        strict: raise ``UsageError`` unless every key matched (no missing, unexpected or mismatched keys).
        verbose: print the one-line report.

    Returns:
        ``LoadReport`` with ``missing``, ``unexpected``, ``mismatched`` and ``adapted`` key lists.

    Raises:
        UsageError: unreadable file, no tensors, no key in common with the model, or ``strict`` violations.

    Example:
        >>> import lvmmed_ext
        >>> from lvmmed_ext.models import resnet18
        >>> report = lvmmed_ext.load_pretrained(resnet18(num_classes=1000), resnet18().state_dict(), verbose=False)
        >>> report.missing
        ['fc.weight', 'fc.bias']
    """
    source = "state_dict" if isinstance(weights, dict) else os.fspath(weights)
    state = _strip_wrappers(dict(weights) if isinstance(weights, dict) else read_state_dict(weights))
    target = model.state_dict()
    usable, mismatched, adapted, mismatched_keys = {}, [], [], set()
    for key, value in state.items():
        if key not in target:
            continue
        if value.shape != target[key].shape:
            converted = _adapt(key, value, target[key])
            if converted is None:
                mismatched.append(f"{key}: file {list(value.shape)} vs model {list(target[key].shape)}")
                mismatched_keys.add(key)
                continue
            value, note = converted
            adapted.append(note)
        usable[key] = value
    if not usable:
        example = next(iter(state))
        raise UsageError(
            f"none of the {len(state)} tensors in {source} matches the model's parameter names (file has "
            f"{example!r}, model expects e.g. {next(iter(target))!r}): wrong file or wrong --arch?"
        )
    result = model.load_state_dict(usable, strict=False)
    report = LoadReport(
        source=source,
        loaded=len(usable),
        total=len(target),
        missing=[k for k in result.missing_keys if k not in mismatched_keys],
        unexpected=[k for k in state if k not in target],
        mismatched=mismatched,
        adapted=adapted,
    )
    if verbose:
        print(f"load_pretrained: {report}")
    if strict and not report.ok:
        raise UsageError(f"strict load failed: {report}")
    return report
