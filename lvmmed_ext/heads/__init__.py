"""Loss heads, one module per method, and their registry.

``gm`` (:mod:`.gm`, the LVM-Med graph-matching loss), ``infonce`` (:mod:`.infonce`, SimCLR), ``vicreg``
(:mod:`.vicreg`), ``peac`` (:mod:`.peac`, anatomical consistency with an EMA teacher) and ``ark`` (:mod:`.ark`,
supervised accrual of knowledge from several labelled datasets). :mod:`.base` holds the interface and the
registry, :mod:`.ema` the EMA-teacher helpers shared by the teacher heads.

Adding a method: a module here that defines a ``Head`` subclass decorated with ``@register_head("name")``. Every
module of this package is imported below, so the new loss is available to ``lvmmed pretrain --loss``, ``lvmmed
ablate --configs`` and :func:`build_head` without touching anything else.
"""

import importlib
import pkgutil

from .base import (
    Head,
    HeadUnavailable,
    LabelBatch,
    Progress,
    Recipe,
    TeacherFeatures,
    build_head,
    head_accepts,
    head_factory,
    head_names,
    head_needs,
    head_options,
    head_recipe,
    head_recipes,
    register_head,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",):
        importlib.import_module(f"{__name__}.{_module.name}")

from .ark import ArkHead  # noqa: E402
from .gm import GCN, GraphConv, LVMMedHead  # noqa: E402
from .infonce import InfoNCEHead, info_nce  # noqa: E402
from .peac import PEACHead  # noqa: E402
from .vicreg import VICRegHead, vicreg  # noqa: E402

__all__ = [
    "ArkHead",
    "GCN",
    "GraphConv",
    "Head",
    "HeadUnavailable",
    "InfoNCEHead",
    "LVMMedHead",
    "LabelBatch",
    "Progress",
    "Recipe",
    "PEACHead",
    "TeacherFeatures",
    "VICRegHead",
    "build_head",
    "head_accepts",
    "head_factory",
    "head_names",
    "head_needs",
    "head_options",
    "head_recipe",
    "head_recipes",
    "info_nce",
    "register_head",
    "vicreg",
]
