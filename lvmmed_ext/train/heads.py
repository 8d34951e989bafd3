"""Compatibility module: the loss heads and their registry live in :mod:`lvmmed_ext.heads`."""

from ..heads import (  # noqa: F401
    ArkHead,
    Head,
    HeadUnavailable,
    InfoNCEHead,
    LabelBatch,
    PEACHead,
    TeacherFeatures,
    VICRegHead,
    build_head,
    head_factory,
    head_names,
    head_needs,
    head_options,
    info_nce,
    register_head,
    vicreg,
)
