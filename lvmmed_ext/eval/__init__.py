"""Evaluation of pretrained backbones (linear probe and kNN on frozen features, fine-tuning); the protocol is in
``probe``."""

from .cli import backbone_for, evaluate
from .probe import finetune, fit_logistic, knn_predict, label_subset, load_labelled, scores, split_indices

__all__ = [
    "backbone_for",
    "evaluate",
    "finetune",
    "fit_logistic",
    "knn_predict",
    "label_subset",
    "load_labelled",
    "scores",
    "split_indices",
]
