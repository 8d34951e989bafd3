"""Evaluation of pretrained backbones (linear probe and kNN on frozen features, fine-tuning; the protocol is in
``probe``) and U-Net segmentation fine-tuning with Dice (``segment``)."""

from .backbones import backbone_for
from .classify import evaluate
from .probe import finetune, fit_logistic, knn_predict, label_subset, load_labelled, scores, split_indices
from .segment import dice_per_class, evaluate_segmentation, load_pairs

__all__ = [
    "backbone_for",
    "dice_per_class",
    "evaluate",
    "evaluate_segmentation",
    "finetune",
    "fit_logistic",
    "knn_predict",
    "label_subset",
    "load_labelled",
    "load_pairs",
    "scores",
    "split_indices",
]
