"""QAPLIB instances: the reader of the ``.dat`` / ``.sln`` files and their form for :func:`lvmmed_ext.solve_qap`.

QAPLIB (Burkard, Karisch and Rendl) is the standard benchmark of the quadratic assignment problem: minimise
``sum_ij A[i,j] B[p(i), p(j)]`` over permutations ``p``. Nothing of it ships with this package; point the reader
at a folder of its files (e.g. the ``qaplib`` folder of Debian's ``r-cran-qap`` package).

* ``NAME.dat``: ``n``, then the two ``n x n`` matrices ``A`` and ``B``, whitespace-separated numbers. QAPLIB uses
  two layouts: one matrix row per line, and rows wrapped over several lines; blank lines between the matrices or
  not. Only the order of the numbers matters.
* ``NAME.sln``: ``n``, the best known objective value, and a permutation ``p`` of ``1..n`` (row ``i`` to column
  ``p[i]``; a few files count from 0), on any number of lines, numbers separated by blanks or commas.

Errors are one :class:`QAPLIBFormatError` (a ``ValueError``) naming the file and what is wrong with it.

:func:`solve_qap` maximises, so :meth:`QAPLIBInstance.inputs` gives it ``A`` and ``-B``.

Example:
    >>> import lvmmed_ext
    >>> from lvmmed_ext import qaplib
    >>> inst = qaplib.load("qaplib/nug12.dat")  # doctest: +SKIP
    >>> X = lvmmed_ext.solve_qap(**inst.inputs(), method="its", time_limit=0.01)  # doctest: +SKIP
    >>> qaplib.gap_pct(inst.objective(X[0].argmax(1)), inst.best_value)  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["QAPLIBFormatError", "QAPLIBInstance", "read_dat", "read_sln", "load", "load_folder", "gap_pct"]


class QAPLIBFormatError(ValueError):
    """A QAPLIB file that cannot be read: the message names the file and what is wrong."""

    def __init__(self, path: str, what: str):
        super().__init__(f"QAPLIB file {path}: {what}")
        self.path = path


def _numbers(path: str) -> list[tuple[float, int]]:
    """Every number of the file with its line number (commas count as blanks)."""
    try:
        with open(path) as f:
            text = f.read()
    except UnicodeDecodeError:
        raise QAPLIBFormatError(path, "not a text file") from None
    out = []
    for line_no, line in enumerate(text.splitlines(), 1):
        for token in line.replace(",", " ").split():
            try:
                value = float(token)
            except ValueError:
                raise QAPLIBFormatError(path, f"line {line_no}: {token!r} is not a number") from None
            if not math.isfinite(value):
                raise QAPLIBFormatError(path, f"line {line_no}: {token!r} is not a finite number")
            out.append((value, line_no))
    return out


def _size(path: str, numbers: list[tuple[float, int]]) -> int:
    if not numbers:
        raise QAPLIBFormatError(path, "empty: expected the size n first")
    n, line_no = numbers[0]
    if n != int(n) or n < 1:
        raise QAPLIBFormatError(path, f"line {line_no}: the size n must be a positive integer, got {n:g}")
    return int(n)


def read_dat(path: str) -> tuple[Tensor, Tensor]:
    """The matrices of a ``.dat`` file: ``(A, B)``, float64 ``[n, n]`` each."""
    numbers = _numbers(path)
    n = _size(path, numbers)
    values = [v for v, _ in numbers[1:]]
    if len(values) != 2 * n * n:
        raise QAPLIBFormatError(path, f"expected 2 n^2 = {2 * n * n} matrix entries after n = {n}, found {len(values)}")
    mats = torch.tensor(values, dtype=torch.float64).view(2, n, n)
    return mats[0].clone(), mats[1].clone()


def read_sln(path: str) -> tuple[int, float, Tensor]:
    """The contents of a ``.sln`` file: ``(n, best known value, p)``, ``p`` int64 ``[n]`` as written (integers in
    ``0..n``: 1-based, or 0-based in a few files)."""
    numbers = _numbers(path)
    n = _size(path, numbers)
    if len(numbers) < 2:
        raise QAPLIBFormatError(path, f"expected the objective value after n = {n}, found nothing")
    value = numbers[1][0]
    perm = [v for v, _ in numbers[2:]]
    if len(perm) != n:
        raise QAPLIBFormatError(path, f"expected a permutation of n = {n} numbers after the value, found {len(perm)}")
    bad = [v for v in perm if v != int(v) or not 0 <= v <= n]
    if bad:
        raise QAPLIBFormatError(path, f"the permutation must hold integers in 1..{n}, found {bad[0]:g}")
    return n, value, torch.tensor([int(v) for v in perm], dtype=torch.int64)


@dataclass
class QAPLIBInstance:
    """One QAPLIB problem: minimise ``objective(p) = sum_ij A[i,j] B[p[i], p[j]]`` over permutations ``p``.

    ``best_value``: the best known objective (the ``.sln`` value, or its listed permutation's objective where that is
    lower), None without a ``.sln`` file; ``best_perm``: a 0-based permutation reaching it, None if the file's is not
    a permutation (it happens: ``notes`` then says so).
    """

    name: str
    A: Tensor
    B: Tensor
    best_value: float | None = None
    best_perm: Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def objective(self, perm: Tensor) -> float:
        """``sum_ij A[i,j] B[perm[i], perm[j]]`` in float64 for a 0-based permutation ``perm [n]``."""
        p = torch.as_tensor(perm, dtype=torch.int64).cpu()
        return float((self.A * self.B[p][:, p]).sum())

    def inputs(self, dtype: torch.dtype = torch.float64, device=None) -> dict:
        """``solve_qap(**inst.inputs())``: a batch of one graph, ``unary`` zero, ``A`` and ``-B`` (maximised)."""
        n = self.n
        return {
            "unary": torch.zeros(1, n, n, dtype=dtype, device=device),
            "A": self.A.to(dtype=dtype, device=device).unsqueeze(0),
            "B": (-self.B).to(dtype=dtype, device=device).unsqueeze(0),
        }


def load(dat_path: str) -> QAPLIBInstance:
    """The instance of ``NAME.dat``, with the best known solution of ``NAME.sln`` beside it when there is one."""
    A, B = read_dat(dat_path)
    name = os.path.splitext(os.path.basename(dat_path))[0]
    inst = QAPLIBInstance(name, A, B)
    sln = os.path.splitext(dat_path)[0] + ".sln"
    if not os.path.exists(sln):
        return inst
    n, value, perm = read_sln(sln)
    if n != inst.n:
        raise QAPLIBFormatError(sln, f"n = {n}, but {os.path.basename(dat_path)} has n = {inst.n}")
    inst.best_value = value
    ordered = torch.sort(perm).values
    if torch.equal(ordered, torch.arange(1, n + 1)):
        p = perm - 1
    elif torch.equal(ordered, torch.arange(n)):
        p = perm
        inst.notes.append(f"{name}.sln: the permutation counts from 0")
    else:
        inst.notes.append(f"{name}.sln: the listed solution is not a permutation; its value {value:g} is used")
        return inst
    inverse = torch.argsort(p)
    # some files list the inverse permutation; some list a solution better than their value
    f, f_inv = inst.objective(p), inst.objective(inverse)
    best, oriented = min((f, p), (f_inv, inverse), key=lambda t: t[0])
    if f != value and f_inv == value:
        inst.notes.append(f"{name}.sln: the listed permutation is inverted")
    if best < value:
        inst.notes.append(f"{name}.sln: the listed permutation scores {best:g}, below the listed {value:g}")
        inst.best_value = best
    elif best > value:
        inst.notes.append(f"{name}.sln: the listed permutation scores {best:g}, not the listed {value:g}")
        return inst
    inst.best_perm = oriented
    return inst


def load_folder(folder: str, max_n: int | None = None) -> list[QAPLIBInstance]:
    """Every ``*.dat`` instance of ``folder`` (sorted by name) of size at most ``max_n``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"QAPLIB folder {folder} does not exist")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".dat"))
    if not names:
        raise FileNotFoundError(f"QAPLIB folder {folder} holds no .dat files")
    out = []
    for name in names:
        path = os.path.join(folder, name)
        if max_n is not None and _size(path, _numbers(path)[:1]) > max_n:
            continue
        out.append(load(path))
    return out


def gap_pct(value: float, best: float) -> float:
    """The gap of an objective to the best known one, in percent of it (0 when both are 0, inf above a best of 0)."""
    if best == 0:
        return 0.0 if value == 0 else math.inf
    return 100.0 * (value - best) / abs(best)
