"""Frozen-feature evaluation (linear probe, kNN) of pretrained backbones; the protocol is in ``probe``."""

from .cli import backbone_for, evaluate
from .probe import fit_logistic, knn_predict, load_labelled, scores, split_indices

__all__ = ["backbone_for", "evaluate", "fit_logistic", "knn_predict", "load_labelled", "scores", "split_indices"]
