"""Labelled datasets for supervised pretraining (``lvmmed pretrain --loss ark --labels NAME=CSV``).

A label CSV lists one image file per row (a multi-frame file or volume gives every frame the row's labels):

* one label column, ``path,label[,split]`` (header optional): one class per image, trained with softmax
  cross-entropy (``kind = "single"``); the classes are the distinct values;
* several label columns, with a header ``path,<name1>,<name2>,...[,split]``: multi-label 0/1 targets, trained with
  binary cross-entropy (``kind = "multi"``). A value -1 (uncertain, as CheXpert and MIMIC-CXR write it) or a
  blank cell (not mentioned) follows the ``uncertain`` policy (``UNCERTAIN_POLICIES``): refused by default;
  ``ignore`` leaves the cell out of the loss (NaN target); ``ones``/``zeros`` and Ark's label-smoothing
  ``lsr-ones``/``lsr-zeros`` replace -1 (a soft value drawn once per cell from U(0.55, 0.85) / U(0, 0.3), a pure
  function of the dataset name and the row), and read a blank cell as 0.

Relative paths are relative to the CSV's folder. Rows whose ``split`` is ``test`` are left out, so that pretraining
never sees the images an evaluation would test on; other split values (``train``, empty) are used.
"""

from __future__ import annotations

import csv
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .datasets import ImageSet, Item
from .manifest import scan
from .presets import Preprocessing

UNCERTAIN_POLICIES = ("error", "ignore", "ones", "zeros", "lsr-ones", "lsr-zeros")
_UNCERTAIN = ("-1", "-1.0")
_LSR = {"lsr-ones": (0.55, 0.85), "lsr-zeros": (0.0, 0.3)}


def uncertain_value(value: str, policy: str, rng: np.random.Generator) -> float:
    """The target of one multi-label cell ``value`` (``"0"``, ``"1"``, ``"-1"`` or ``""``) under ``policy``;
    ``ValueError`` for a value the policy does not accept."""
    if value in ("0", "1", "0.0", "1.0"):
        return float(value)
    if policy == "error" or value not in (*_UNCERTAIN, ""):
        raise ValueError(value)
    if policy == "ignore":
        return float("nan")
    if value == "":  # not mentioned: a negative (Ark's loaders read a blank cell as 0)
        return 0.0
    if policy in _LSR:
        return float(rng.uniform(*_LSR[policy]))
    return 1.0 if policy == "ones" else 0.0


@dataclass
class LabelSet:
    """One labelled dataset: ``targets[i]`` is the target of ``images.items[i]`` (float32 ``[K]`` 0/1 for
    ``"multi"``, an int64 class index for ``"single"``)."""

    name: str
    path: str
    kind: str
    classes: list[str]
    images: ImageSet
    targets: np.ndarray
    skipped: list[tuple[str, str]]

    def spec(self) -> dict:
        """The task description the Ark head is built from."""
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes)}


def parse_label_spec(text: str) -> tuple[str, str]:
    """``"NAME=CSV"`` -> ``(name, csv path)``; ``UsageError`` naming the argument otherwise."""
    name, sep, path = str(text).partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise UsageError(f"--labels must be NAME=CSV (e.g. tissue=labels.csv), got {text!r}")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"--labels name must use letters, digits, '-', '_' or '.', got {name!r}")
    return name, path


def _rows(name: str, path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(label column names, rows as [path, labels..., split or ""], line numbers) of a label CSV."""
    arg = f"--labels {name}={path}"
    if not os.path.isfile(path):
        raise UsageError(f"{arg}: no such file")
    with open(path, newline="") as f:
        lines = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f))]
    lines = [(n, r) for n, r in lines if r and any(r) and not r[0].startswith("#")]
    if not lines:
        raise UsageError(f"{arg} lists no images (expected path,label or a header path,<label names>)")
    header = None
    if lines[0][1][0].lower() == "path":
        header, lines = [c for c in lines[0][1][1:]], lines[1:]
    has_split = header is not None and header and header[-1].lower() == "split"
    if header is None:  # path,label[,split]
        widths = {len(r) for _, r in lines}
        if not widths <= {2, 3}:
            n, r = next((n, r) for n, r in lines if len(r) not in (2, 3))
            raise UsageError(
                f"{arg} line {n}: expected path,label[,split] (several label columns need a header "
                f"path,<name1>,<name2>,...), got {len(r)} columns"
            )
        labels, has_split = ["label"], True  # a missing split cell reads as empty (train)
    else:
        labels = header[:-1] if has_split else header
        if not labels:
            raise UsageError(f"{arg}: the header names no label column (expected path,<label>[,...])")
    width = 1 + len(labels) + (1 if has_split else 0)
    rows, numbers = [], []
    for n, r in lines:
        if header is None and len(r) == 2:
            r = r + [""]
        if len(r) != width:
            cols = ",".join(["path", *labels] + (["split"] if has_split else []))
            raise UsageError(f"{arg} line {n}: expected {width} columns ({cols}), got {len(r)}")
        rows.append(r if has_split else r + [""])
        numbers.append(n)
    return labels, rows, numbers


def load_label_set(spec: str, prep: Preprocessing, cache_bytes: int = 1 << 30, uncertain: str = "error") -> LabelSet:
    """Read ``NAME=CSV`` (see the module docstring) into a :class:`LabelSet`; ``uncertain`` is the policy for
    multi-label values -1 and blank cells (``UNCERTAIN_POLICIES``).

    Raises:
        UsageError: a malformed spec or CSV (a row with the wrong number of columns, a multi-label value other than
            0/1 or one the ``uncertain`` policy refuses, an unknown split), a listed file that does not exist, fewer
            than 2 classes in a single-label set, or no image left after dropping the test rows; the message names
            the argument and the line.
    """
    name, path = parse_label_spec(spec)
    arg = f"--labels {name}={path}"
    if uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    label_names, rows, numbers = _rows(name, path)
    # the soft labels of lsr-*: one draw per cell, a function of the dataset name and the row only
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    base = os.path.dirname(os.path.abspath(path))
    kept: list[tuple[str, list[str]]] = []
    for n, r in zip(numbers, rows):
        split = r[-1].lower()
        if split not in ("", "train", "test"):
            raise UsageError(f"{arg} line {n}: split must be train or test, got {r[-1]!r}")
        if len(label_names) > 1:
            values = []
            for v in r[1:-1]:
                try:
                    values.append(uncertain_value(v, uncertain, rng))
                except ValueError:
                    what = "0 or 1" if uncertain == "error" else "0, 1, -1 or blank"
                    hint = " (-1 / blank: pass --uncertain POLICY)" if v in (*_UNCERTAIN, "") else ""
                    raise UsageError(f"{arg} line {n}: multi-label values must be {what}, got {v!r}{hint}") from None
            r = [r[0], *values, r[-1]]
        elif not r[1]:
            raise UsageError(f"{arg} line {n}: empty label")
        if split != "test":
            p = r[0] if os.path.isabs(r[0]) else os.path.join(base, r[0])
            kept.append((os.path.abspath(p), r[1:-1]))
    missing = [p for p, _ in kept if not os.path.exists(p)]
    if missing:
        raise UsageError(f"{arg} lists {len(missing)} missing file(s), e.g. {missing[0]}")
    if not kept:
        raise UsageError(f"{arg} has no training rows (every row has split = test)")
    if len(label_names) > 1:
        kind, classes = "multi", list(label_names)
    else:
        kind, classes = "single", sorted({v[0] for _, v in kept})
        if len(classes) < 2:
            raise UsageError(f"{arg} has {len(classes)} class(es) among its training rows; softmax needs >= 2")
    index = {c: i for i, c in enumerate(classes)}
    result = scan([p for p, _ in kept], axis=prep.axis, what=arg)
    value_of = {p: v for p, v in kept}
    items, targets = [], []
    for s, src in enumerate(result.sources):
        v = value_of[os.path.abspath(src.path)]
        t = np.asarray(v, np.float32) if kind == "multi" else np.int64(index[v[0]])
        for f in range(src.count):
            items.append(Item(s, f))
            targets.append(t)
    if not items:
        raise UsageError(f"{arg}: no readable image among its {len(kept)} training rows")
    return LabelSet(
        name=name,
        path=path,
        kind=kind,
        classes=classes,
        images=ImageSet(result.sources, prep, items=items, cache_bytes=cache_bytes),
        targets=np.stack(targets) if kind == "multi" else np.asarray(targets, np.int64),
        skipped=result.skipped,
    )


def load_label_sets(
    specs: list[str], prep: Preprocessing, cache_bytes: int = 1 << 30, uncertain: str = "error"
) -> list[LabelSet]:
    """:func:`load_label_set` for each spec; ``UsageError`` for a name used twice."""
    names = [parse_label_spec(s)[0] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"--labels name {dup[0]!r} is used more than once")
    per = max(cache_bytes // max(len(specs), 1), 64 << 20)
    return [load_label_set(s, prep, per, uncertain) for s in specs]
