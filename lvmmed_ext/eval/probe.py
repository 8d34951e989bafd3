"""Frozen-feature evaluation: labelled data, a grouped stratified split, linear probe and kNN, metrics, plots.

Protocol (what ``lvmmed eval`` does, fixed by the seed):

1. Labels come from one sub-folder per class or from a CSV ``path,label[,split]``. Every 2D image of a file
   (slice, frame, page) carries the file's label.
2. Split: the CSV's ``split`` column (``train``/``test``) when present; otherwise a stratified split by
   *file* (all images of one file on the same side, so slices of one volume never straddle the split) with
   ``test_frac`` of each class's files in the test set, shuffled by ``seed``.
3. Features: the frozen backbone in eval mode, pooled features of the whole image resized to ``size x size``
   (no crop, no augmentation), preprocessed exactly as in pretraining (the weights' JSON).
4. Linear probe: features standardised with the training mean/std; multinomial logistic regression with an
   L2 penalty, fitted to convergence by full-batch L-BFGS in float64. ``l2="auto"`` picks the penalty from
   {1e-3, 1e-2, 1e-1, 1} by 3-fold cross-validation on the training set (balanced accuracy).
5. kNN: cosine similarity of L2-normalised features, the ``k`` nearest training images vote with weights
   ``exp(sim / 0.07)``.
6. Metrics: accuracy, balanced accuracy (mean recall over classes), confusion matrix (rows: true class).
7. Fine-tuning (``finetune``): the whole backbone plus a linear classifier, trained on the training images (whole
   image resized, random horizontal flips) with cross-entropy by AdamW for ``epochs`` epochs (classifier lr
   ``lr``, backbone ``lr * backbone_lr_mult``, cosine decay), BatchNorm in training mode, its running statistics
   then recomputed over the training images; scored on the test images in eval mode. Deterministic on CPU for a
   fixed seed.
8. Few-shot (``label_fraction`` < 1): after the split, only that fraction of each class's training *files* keep
   their labels (at least one file per class, chosen by ``seed``); the test set is unchanged, so scores at
   different fractions are comparable.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSet, Item, LabelledImages
from ..data.io import ScanResult
from ..data.manifest import scan
from ..data.presets import Preprocessing
from ..errors import UsageError
from ..system import save_figure

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LabelledData:
    """2D images with integer labels: ``labels[i]`` is the class of ``images.items[i]``; ``groups[i]`` the file
    it came from; ``split[i]`` ``"train"``/``"test"`` when the CSV fixed it, else None."""

    images: ImageSet
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray
    split: np.ndarray | None
    skipped: list[tuple[str, str]]


def read_csv_rows(path: str, columns: tuple[str, str] = ("path", "label"), paths: int = 1):
    """Rows ``(first, second, split or None)`` of a CSV ``first,second[,split]`` (an optional header line starting
    with ``columns[0]``; ``#`` comments). The first ``paths`` columns are file paths, made absolute relative to the
    CSV's folder. Raises ``UsageError`` naming the line for a short row, an empty cell or a split other than
    train/test."""
    base = os.path.dirname(os.path.abspath(path))
    layout = f"{','.join(columns)}[,split]"
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if i == 0 and row[0].strip().lower() == columns[0]:
                continue
            if len(row) < 2:
                raise UsageError(f"{path} line {i + 1}: expected {layout}, got {row!r}")
            for k, name in enumerate(columns):
                if not row[k].strip():
                    raise UsageError(f"{path} line {i + 1}: the {name} column is empty (expected {layout})")
            split = row[2].strip().lower() if len(row) > 2 and row[2].strip() else None
            if split not in (None, "train", "test"):
                raise UsageError(f"{path} line {i + 1}: split must be train or test, got {row[2]!r}")
            first, second = (
                os.path.join(base, v.strip()) if k < paths and not os.path.isabs(v.strip()) else v.strip()
                for k, v in enumerate(row[:2])
            )
            rows.append((first, second, split))
    if not rows:
        raise UsageError(f"{path} lists no images (expected lines {layout})")
    return rows


def load_labelled(data: str, prep: Preprocessing, cache_bytes: int = 1 << 30) -> LabelledData:
    """Labelled images from a folder (one sub-folder per class) or a CSV file ``path,label[,split]``.

    Raises ``UsageError`` for a missing/empty folder, no class sub-folders, fewer than 2 classes, or no
    readable image; unreadable files are skipped and returned in ``skipped``.
    """
    if not os.path.exists(data):
        raise UsageError(f"--data {data} does not exist")
    entries: list[tuple[str, str, str | None]] = []
    if os.path.isfile(data):
        if not data.lower().endswith(".csv"):
            raise UsageError(f"--data {data} must be a folder with one sub-folder per class or a .csv file")
        entries = read_csv_rows(data)
        missing = [p for p, _, _ in entries if not os.path.exists(p)]
        if missing:
            raise UsageError(f"{data} lists {len(missing)} missing file(s), e.g. {missing[0]}")
        result = scan([p for p, _, _ in entries], axis=prep.axis, what="--data")
    else:
        folders = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)) and not d.startswith("."))
        if not folders:
            raise UsageError(
                f"--data {data} has no class sub-folders (expected {data}/<class>/<images>) and is not a CSV"
            )
        result = ScanResult([])
        for c in folders:
            sub = scan(os.path.join(data, c), axis=prep.axis, what="class folder")
            result.sources += sub.sources
            result.skipped += sub.skipped
            entries += [(s.path, c, None) for s in sub.sources]
    label_of = {os.path.abspath(p): (lab, sp) for p, lab, sp in entries}
    classes = sorted({lab for _, lab, _ in entries})
    if len(classes) < 2:
        raise UsageError(f"--data {data} has {len(classes)} class(es); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    items, labels, groups, splits = [], [], [], []
    for s, src in enumerate(result.sources):
        lab, sp = label_of[os.path.abspath(src.path)]
        for f in range(src.count):
            items.append(Item(s, f))
            labels.append(index[lab])
            groups.append(s)
            splits.append(sp)
    have_split = any(sp is not None for sp in splits)
    if have_split and any(sp is None for sp in splits):
        raise UsageError(f"{data}: give the split column for every row or for none")
    return LabelledData(
        images=ImageSet(result.sources, prep, items=items, cache_bytes=cache_bytes),
        labels=np.asarray(labels, np.int64),
        classes=classes,
        groups=np.asarray(groups, np.int64),
        split=np.asarray(splits) if have_split else None,
        skipped=result.skipped,
    )


def split_indices(labels: np.ndarray, groups: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split by group (file): per class, shuffled files go to the test set until it holds at least
    ``test_frac`` of the class's images, keeping at least one file on each side when the class has two.

    Example:
        >>> tr, te = split_indices(np.array([0, 0, 1, 1]), np.arange(4), 0.5, seed=0)
        >>> sorted(tr.tolist() + te.tolist())
        [0, 1, 2, 3]
    """
    if not 0 < test_frac < 1:
        raise UsageError(f"--test-frac must be in (0, 1), got {test_frac}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        cls_groups = np.unique(groups[labels == c])
        rng.shuffle(cls_groups)
        n_c, taken = int((labels == c).sum()), 0
        for k, g in enumerate(cls_groups):
            if taken >= test_frac * n_c or (k == len(cls_groups) - 1 and k > 0):
                break
            member = (groups == g) & (labels == c)
            test |= member
            taken += int(member.sum())
    return np.flatnonzero(~test), np.flatnonzero(test)


def label_subset(labels: np.ndarray, groups: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training indices that keep their labels at ``fraction`` (0 < fraction <= 1): per class, shuffled files
    are taken until they hold at least ``fraction`` of the class's training images (at least one file).

    Example:
        >>> label_subset(np.array([0, 0, 0, 0, 1, 1]), np.arange(6), np.arange(6), 0.5, seed=0).size
        3
    """
    if not 0 < fraction <= 1:
        raise UsageError(f"--label-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train
    rng = np.random.default_rng([seed, 1])  # not the split's stream: the same split at every fraction
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels[train]):
        in_class = train[labels[train] == c]
        cls_groups = np.unique(groups[in_class])
        rng.shuffle(cls_groups)
        taken = 0
        for g in cls_groups:
            member = in_class[groups[in_class] == g]
            keep[member] = True
            taken += member.size
            if taken >= fraction * in_class.size:
                break
    return train[keep[train]]


@torch.no_grad()
def extract_features(
    backbone: nn.Module, dataset: LabelledImages, device: torch.device, batch_size: int = 64, workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``[N, D]`` (float32) of every image, and a bool mask of the images that could be read."""
    backbone.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats, ok = [], []
    for x, idx in loader:
        pooled, _ = backbone.features(x.to(device))
        feats.append(pooled.float().cpu())
        ok.append(idx >= 0)
    return torch.cat(feats).numpy(), torch.cat(ok).numpy()


def finetune(
    backbone: nn.Module,
    dataset: LabelledImages,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    backbone_lr_mult: float = 0.1,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    workers: int = 0,
) -> np.ndarray:
    """Fine-tune ``backbone`` (in place) with a new linear classifier on ``dataset[train]``; return the predicted
    labels of ``dataset[test]`` (protocol step 7).

    ``labels [len(dataset)]`` int; ``train``/``test`` index arrays. Raises ``UsageError`` for epochs < 1 or lr <= 0.
    """
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    if not lr > 0 or not backbone_lr_mult >= 0:
        raise UsageError(f"--lr must be > 0 and --backbone-lr-mult >= 0, got {lr} and {backbone_lr_mult}")
    device = torch.device(device)
    torch.manual_seed(seed)
    backbone.to(device).eval()
    with torch.no_grad():
        dim = backbone.features(dataset[int(train[0])][0].unsqueeze(0).to(device))[0].shape[1]
    backbone.train()
    head = nn.Linear(dim, n_classes).to(device)
    opt = torch.optim.AdamW(
        [{"params": head.parameters(), "lr": lr}, {"params": backbone.parameters(), "lr": lr * backbone_lr_mult}],
        weight_decay=1e-4,
    )
    single_last = len(train) > 1 and len(train) % batch_size == 1  # BatchNorm cannot train on a batch of one
    steps_per_epoch = len(train) // batch_size if single_last else -(-len(train) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.from_numpy(labels).long()
    train_set = torch.utils.data.Subset(dataset, train.tolist())
    for _ in range(epochs):
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers, drop_last=single_last
        )
        for x, idx in loader:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            logits = head(backbone.features(x.to(device))[0])
            loss = nn.functional.cross_entropy(logits.float(), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, num_workers=workers, drop_last=single_last)
    recompute_batchnorm(backbone, (x.to(device) for x, _ in loader), backbone.features)
    preds = []
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, test.tolist()), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    with torch.no_grad():
        for x, _ in loader:
            preds.append(head(backbone.features(x.to(device))[0]).argmax(1).cpu())
    return torch.cat(preds).numpy()


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs, forward=None) -> None:
    """Replace the BatchNorm running statistics of ``model`` by exact averages over the batches ``inputs`` (run
    through ``forward``, default ``model``), then put ``model`` in eval mode.

    After a short fine-tuning the running statistics (momentum 0.1) lag far behind the weights; scoring in eval
    mode with them costs accuracy. A model without BatchNorm is only put in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        model.train()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        for x in inputs:
            (forward or model)(x)
        for m in norms:
            m.momentum = 0.1
    model.eval()


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 100):
    """Multinomial logistic regression on standardised features by full-batch L-BFGS (float64, deterministic).

    Minimises ``mean CE(x W + b, y) + l2/2 * ||W||^2``. Returns ``predict(x) -> labels``.
    """
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).double()
    yt = torch.from_numpy(y).long()
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-5, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()

    def predict(z: np.ndarray) -> np.ndarray:
        zt = torch.from_numpy((z - mean) / std).double()
        return (zt @ w_ + b_).argmax(dim=1).numpy()

    return predict


def choose_l2(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, folds: int = 3) -> float:
    """The L2 penalty from ``L2_GRID`` with the best mean balanced accuracy over ``folds`` stratified folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % folds
    best, best_score = L2_GRID[0], -1.0
    for l2 in L2_GRID:
        score = np.mean(
            [
                scores(y[fold == f], fit_logistic(x[fold != f], y[fold != f], n_classes, l2)(x[fold == f]), n_classes)[
                    "balanced_accuracy"
                ]
                for f in range(folds)
                if (fold == f).any() and (fold != f).any()
            ]
        )
        if score > best_score + 1e-12:
            best, best_score = l2, score
    return best


def knn_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, k: int = 20, temperature: float = 0.07
) -> np.ndarray:
    """Weighted kNN on cosine similarity: the ``k`` nearest training features vote ``exp(sim / temperature)``."""
    a = torch.nn.functional.normalize(torch.from_numpy(x_train).double(), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(x_test).double(), dim=1)
    sim = q @ a.t()
    k = min(k, a.shape[0])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(q.shape[0], n_classes, dtype=torch.float64)
    votes.scatter_add_(1, torch.from_numpy(y_train)[idx], (top / temperature).exp())
    return votes.argmax(dim=1).numpy()


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present), the confusion matrix, and the per-image
    ``test_labels`` and ``predictions`` (class indices in test order; ``lvmmed ablate`` pairs two backbones' answers
    on the same test images with them).

    Example:
        >>> s = scores(np.array([0, 0, 1]), np.array([0, 1, 1]), 2)
        >>> round(s["accuracy"], 3), s["balanced_accuracy"], s["confusion"], s["predictions"]
        (0.667, 0.75, [[1, 1], [0, 1]], [0, 1, 1])
    """
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    present = cm.sum(axis=1) > 0
    recall = np.diag(cm)[present] / cm.sum(axis=1)[present]
    return {
        "accuracy": float(np.diag(cm).sum() / max(cm.sum(), 1)),
        "balanced_accuracy": float(recall.mean()) if recall.size else 0.0,
        "confusion": cm.tolist(),
        "test_labels": [int(v) for v in y_true],
        "predictions": [int(v) for v in y_pred],
    }


def plot_confusion(cm, classes: list[str], path: str, title: str) -> str | None:
    """Confusion matrix as a PNG (rows: true class, columns: predicted; counts in the cells)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * n, 1.8 + 0.6 * n), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=30, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def run_probe(
    method: str,
    feats: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    seed: int = 0,
    l2: float | str = "auto",
    k: int = 20,
) -> dict:
    """Fit ``method`` ("linear-probe" or "knn") on ``feats[train]`` and score it on ``feats[test]``."""
    x_tr, y_tr, x_te, y_te = feats[train], labels[train], feats[test], labels[test]
    extra: dict = {}
    if method == "linear-probe":
        penalty = choose_l2(x_tr, y_tr, n_classes, seed) if l2 == "auto" else float(l2)
        pred = fit_logistic(x_tr, y_tr, n_classes, penalty)(x_te)
        extra["l2"] = penalty
    elif method == "knn":
        pred = knn_predict(x_tr, y_tr, x_te, n_classes, k=k)
        extra["k"] = min(k, len(train))
    else:
        raise UsageError(f"method must be linear-probe or knn, got {method!r}")
    return {
        "method": method,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        **extra,
        **scores(y_te, pred, n_classes),
    }
