"""The loss-head interface and registry.

A head is an ``nn.Module`` whose ``forward(h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None, **extra)``
returns a scalar loss for one pair of views:

* ``h_s``, ``h_t``: pooled backbone features ``[B, D]`` of the two views (float32, this rank's images);
* ``y_s``, ``y_t``: backbone feature maps flattened to ``[B, P, D]`` (P = R*S cells, row-major; 7x7 = 49 for a
  ResNet at 224 px), passed only when the head sets ``needs_maps = True`` (otherwise ``None`` and the trainer
  neither computes nor moves them);
* ``pos_s``, ``pos_t``: ``[B, P, 2]`` cell centres (y, x) in original-image pixels (mirrored when a view was
  flipped), same condition;
* ``teacher=TeacherFeatures(h_s, h_t, y_s, y_t)``: the same features from the EMA teacher backbone (no gradient),
  passed only when the head sets ``needs_teacher = True``;
* ``labels=LabelBatch(task, target)``: the batch's dataset index and targets, passed only when the head sets
  ``needs_labels = True`` (supervised heads; see :mod:`lvmmed_ext.data.labelsets`).

Restoration heads (``needs_encoder = True``, e.g. ``genesis``) are called instead as ``forward(encoder, x_in,
x_target)`` with the backbone and the two "views" that their ``pair_config`` (an object with ``make_pair(view,
rng) -> (input, target)``, run in the data loader) made from one crop; they are built with ``stages`` (the
backbone's stage strides and channels) and own only a decoder.

Attributes a head may set (defaults on ``Head``): ``needs_maps``, ``needs_teacher``, ``needs_labels``,
``needs_encoder`` (default False), ``symmetric`` (True when ``loss(s, t) == loss(t, s)``, so the trainer evaluates
each unordered pair of global views once), ``find_unused_parameters`` (DDP: some parameters get no gradient in some
steps), ``min_grid`` (the smallest feature grid side the head accepts; checked before training), ``ema_momentum``
(the base momentum of the teacher, with ``needs_teacher``), ``ema_every`` ("step" or "epoch") and ``ema_schedule``
("cosine" or "constant") for when and how the teacher moves, ``pair_config`` (the head's data-loader hook:
``make_pair`` for restoration heads, or ``distort(view, rng, grid) -> (view, extra)``, whose arrays reach
``forward`` as ``extra=`` when ``needs_extra``), ``view_pairing`` ("independent", "same-crop" or "grid": how the two
global views relate, see :class:`lvmmed_ext.data.views.MultiViewConfig`) with ``view_overrides`` (view settings
the head fixes), ``options_class`` (a dataclass of its options) and ``recipes`` (named :class:`Recipe` s for
``--recipe``). A head with a teacher may override ``ema_update(momentum)`` for its own teacher modules; the trainer
updates the teacher backbone itself. Before each optimizer step the trainer calls ``set_progress(Progress(...))``
(schedules such as Ark's ramp read ``self.progress``); ``chance_loss()`` gives the loss of a random matching
where one exists (the progress bar shows it). A factory that takes ``geometry`` gets the views' feature grid, side
and channels.

Diagnostics: a head may have a ``stats`` attribute (``lvmmed_ext.diagnostics.StepStats``) into which each forward
records ``match_acc`` and ``margin`` of its embeddings (``Head.record_matching`` does it for the baselines); the
trainer pops it once per optimizer step into log.csv, TensorBoard and the progress bar.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Callable, NamedTuple

from torch import Tensor, nn

from ..diagnostics import StepStats, cosine_matching
from ..errors import UsageError


class HeadUnavailable(UsageError):
    """The requested head cannot be built in this installation."""


class TeacherFeatures(NamedTuple):
    """The EMA teacher backbone's outputs for the two views of a pair (``y_*`` None unless the head needs maps)."""

    h_s: Tensor
    h_t: Tensor
    y_s: Tensor | None = None
    y_t: Tensor | None = None


class LabelBatch(NamedTuple):
    """The labels of a batch: ``task`` the index of its labelled dataset (every image of a batch comes from one
    dataset; -1 for unlabelled images), ``target`` ``[B, K]`` float 0/1 (multi-label) or ``[B]`` int64 (one class
    per image), None when unlabelled."""

    task: int
    target: Tensor | None


class Progress(NamedTuple):
    """Where a run stands when a step's forward runs: optimizer ``step`` (1-based) of ``total``; ``epoch``, the
    passes over the data completed before this step (a float), of ``epochs`` in the whole run. With
    ``--task-cycle epoch`` a pass is one labelled dataset's (so a run has epochs x datasets of them, as Ark
    counts)."""

    step: int
    total: int
    epoch: float
    epochs: float = 0.0


@dataclass(frozen=True)
class Recipe:
    """A named set of defaults for one loss (``lvmmed pretrain --loss L --recipe NAME``): the head options and the
    run settings (keys of ``lvmmed_ext.train.config.TRAIN_OPTIONS`` or of the preprocessing) that make a published
    recipe. Options given explicitly (flags, ``--head-opt``, ``--config``) still override them. ``about`` is one
    line for ``--help``; ``docs/METHODS.md`` lists each recipe's components and sources."""

    about: str
    head_opts: Mapping = field(default_factory=dict)
    settings: Mapping = field(default_factory=dict)


class Head(nn.Module):
    """Base class of loss heads (see the module docstring for the ``forward`` contract). What a head needs from the
    trainer is declared here, with the defaults every head starts from; the trainer reads nothing else."""

    needs_maps: bool = False
    needs_teacher: bool = False
    needs_labels: bool = False
    needs_encoder: bool = False
    symmetric: bool = False
    find_unused_parameters: bool = False
    min_grid: int = 1  # the smallest feature grid side (cells) the head accepts
    ema_momentum: float = 0.996  # with needs_teacher: the teacher's base momentum
    pair_config = None  # restoration heads: makes (input, target) pairs of a crop in the data loader
    options_class = None  # a dataclass of the head's options, when they are not its constructor's keywords
    needs_extra: bool = False  # forward gets extra=, the batch's arrays from the pair_config's distort hook
    view_pairing: str = "independent"  # how the two global views relate: "independent", "same-crop" or "grid"
    view_overrides: Mapping = {}  # ViewConfig fields the head sets for its views (e.g. no flips)
    ema_every: str = "step"  # with needs_teacher: update the teacher after every "step" or at each new "epoch"
    ema_schedule: str = "cosine"  # "cosine": ema_momentum rising to 1 over the run (BYOL); "constant"
    graph_size: int = 16  # group size of the matching diagnostics (gm's default graph size)
    recipes: Mapping[str, Recipe] = {}  # named recipes (--recipe), e.g. "paper"

    def __init__(self):
        super().__init__()
        self.stats = StepStats()
        self.progress = Progress(0, 0, 0.0)  # set by the trainer before each step's forward (set_progress)

    def chance_loss(self) -> float | None:
        """The loss a random matching of the views would score, where the loss has such a level (shown beside the
        moving average of the loss in the progress bar); None by default."""
        return None

    def set_progress(self, progress: Progress) -> None:
        """Called by the trainer before each optimizer step's forward; heads with schedules (loss-weight ramps)
        read ``self.progress``."""
        self.progress = progress

    def ema_update(self, momentum: float) -> None:
        """Updates the head's own teacher modules (with needs_teacher) after an optimizer step; none by default."""

    def record_matching(self, z_s: Tensor, z_t: Tensor) -> None:
        """Record the noise-free matching diagnostics of two views' embeddings ``[B, F]`` (LAP on cosines in
        groups of ``graph_size``; see :func:`lvmmed_ext.diagnostics.cosine_matching`)."""
        self.stats.record(cosine_matching(z_s, z_t, self.graph_size))

    def forward(self, h_s: Tensor, h_t: Tensor, y_s=None, y_t=None, pos_s=None, pos_t=None, **extra) -> Tensor:
        raise NotImplementedError


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear (no bias) -> BatchNorm -> ReLU -> Linear: the projector/predictor of the InfoNCE, PEAC and Ark heads
    (SimCLR's projector shape)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


_HEADS: dict[str, Callable[..., nn.Module]] = {}
_DECODERS: dict[str, Callable[..., nn.Module]] = {}


def register_decoder(name: str):
    """Decorator: register a decoder factory ``f(encoder_shape, out_channels, decoder_channels) -> nn.Module`` for
    the heads that own a decoder (``genesis``). The models register theirs (:mod:`lvmmed_ext.models.unet`): the
    heads sit below the models and never import them."""

    def wrap(factory):
        _DECODERS[name] = factory
        return factory

    return wrap


def decoder_factory(name: str) -> Callable[..., nn.Module]:
    """The decoder factory registered as ``name`` (``UsageError`` when the models are not loaded)."""
    if name not in _DECODERS:
        raise UsageError(f"no decoder {name!r} is registered (import lvmmed_ext.models first)")
    return _DECODERS[name]


def register_head(name: str):
    """Decorator: register a head factory ``f(in_dim, **cfg) -> nn.Module`` (usually the head class) under
    ``name``. The factory's keyword parameters are the head's options (``lvmmed pretrain --help`` lists them)."""

    def wrap(factory):
        _HEADS[name] = factory
        return factory

    return wrap


def head_names() -> list[str]:
    return sorted(_HEADS)


def head_factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory of ``name`` (a class for most heads: its ``needs_*`` attributes can be read before
    building it). Raises ``HeadUnavailable`` for an unknown name."""
    if name not in _HEADS:
        raise HeadUnavailable(f"unknown --loss {name!r}; available: {', '.join(head_names())}")
    return _HEADS[name]


def head_needs(name: str, what: str) -> bool:
    """Whether head ``name`` declares ``needs_<what>`` (``"labels"``, ``"teacher"``) on its factory."""
    return bool(getattr(head_factory(name), f"needs_{what}", False))


def head_accepts(name: str, param: str) -> bool:
    """Whether head ``name``'s factory takes the keyword ``param`` (what the trainer passes besides the options:
    ``tasks``, ``stages``, ``geometry``)."""
    factory = head_factory(name)
    target = factory.__init__ if inspect.isclass(factory) else factory
    return param in inspect.signature(target).parameters


def head_options(name: str) -> dict[str, object]:
    """The keyword options of head ``name`` with their defaults (``in_dim`` and supervised-task specs excluded)."""
    factory = head_factory(name)
    options_class = getattr(factory, "options_class", None)
    if options_class is not None:
        return {f.name: f.default for f in fields(options_class)}
    target = factory.__init__ if inspect.isclass(factory) else factory
    options = {}
    for pname, p in inspect.signature(target).parameters.items():
        if pname in ("self", "in_dim", "tasks", "stages", "geometry") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        options[pname] = None if p.default is inspect.Parameter.empty else p.default
    return options


def head_recipes(name: str) -> Mapping[str, Recipe]:
    """The named recipes of head ``name`` (``--recipe``), possibly none."""
    return getattr(head_factory(name), "recipes", {}) or {}


def head_recipe(name: str, recipe: str) -> Recipe:
    """Recipe ``recipe`` of head ``name``; ``UsageError`` naming the recipes it has."""
    recipes = head_recipes(name)
    if recipe not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise UsageError(f"--recipe {recipe!r} is not a recipe of --loss {name} (its recipes: {known})")
    return recipes[recipe]


def build_head(name: str, in_dim: int, **cfg) -> nn.Module:
    """Build the loss head ``name`` for backbone features of width ``in_dim``.

    Args:
        name: ``"gm"`` (the graph-matching loss, :class:`lvmmed_ext.LVMMedHead`), ``"infonce"``, ``"vicreg"``,
            ``"peac"``, ``"ark"`` or another registered name (see :func:`head_names`).
        in_dim: D, the backbone's pooled feature width.
        **cfg: head options (e.g. ``temperature=0.2`` for infonce).

    Raises:
        HeadUnavailable (a ``UsageError``): unknown name. UsageError: a bad option.

    Example:
        >>> import torch
        >>> head = build_head("infonce", 512, hidden_dim=256, out_dim=64)
        >>> head(torch.randn(8, 512), torch.randn(8, 512)).shape
        torch.Size([])
    """
    factory = head_factory(name)
    try:
        return factory(in_dim, **cfg)
    except TypeError as e:
        raise UsageError(f"bad option for --loss {name}: {e}") from None
