"""The QAPLIB reader on hand-written files: both layouts of .dat, .sln variants, one clear error per bad file; the
objective of a known permutation; solve_qap on a read instance."""

import itertools
import math

import pytest
import torch

import lvmmed_ext
from lvmmed_ext import qaplib

# A 4 x 4 instance, A (flows) then B (distances)
A4 = [[0, 3, 0, 2], [3, 0, 0, 1], [0, 0, 0, 4], [2, 1, 4, 0]]
B4 = [[0, 22, 53, 53], [22, 0, 40, 62], [53, 40, 0, 55], [53, 62, 55, 0]]
ROWS = "4\n\n" + "\n".join(" ".join(f"{v:3d}" for v in r) for r in A4) + "\n\n"
ROWS += "\n".join(" ".join(f"{v:3d}" for v in r) for r in B4) + "\n"
# the same numbers with rows wrapped over lines of 3 numbers, no blank lines (QAPLIB's other layout)
_flat = [v for m in (A4, B4) for r in m for v in r]
WRAPPED = "   4\n" + "\n".join(" ".join(str(v) for v in _flat[k : k + 3]) for k in range(0, len(_flat), 3)) + "\n"


def objective_by_hand(p):
    return sum(A4[i][j] * B4[p[i]][p[j]] for i in range(4) for j in range(4))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_both_dat_layouts_give_the_same_matrices(tmp_path):
    A, B = qaplib.read_dat(write(tmp_path, "rows.dat", ROWS))
    A2, B2 = qaplib.read_dat(write(tmp_path, "wrapped.dat", WRAPPED))
    assert A.dtype == torch.float64 and A.shape == (4, 4)
    assert torch.equal(A, torch.tensor(A4, dtype=torch.float64)) and torch.equal(B, torch.tensor(B4).double())
    assert torch.equal(A, A2) and torch.equal(B, B2)


def test_objective_of_a_known_permutation(tmp_path):
    # p = (2, 0, 3, 1), by hand: 2 (3 B[2,0] + 2 B[2,1] + 1 B[0,1] + 4 B[3,1]) = 2 (159 + 80 + 22 + 248) = 1018
    p = [2, 0, 3, 1]
    assert objective_by_hand(p) == 1018
    write(tmp_path, "toy4.sln", "4 1018\n3, 1, 4, 2\n")
    inst = qaplib.load(write(tmp_path, "toy4.dat", ROWS))
    assert inst.name == "toy4" and inst.n == 4 and inst.best_value == 1018 and not inst.notes
    assert inst.best_perm.tolist() == p and inst.objective(torch.tensor(p)) == 1018
    # solve_qap maximises A . (-B): its objective of the same assignment is -1018
    X = torch.zeros(1, 4, 4, dtype=torch.float64)
    X[0, torch.arange(4), torch.tensor(p)] = 1
    assert lvmmed_ext.qap_objective(X, **inst.inputs()).item() == -1018


def test_solvers_reach_the_optimum_of_a_read_instance(tmp_path):
    inst = qaplib.load(write(tmp_path, "toy4.dat", WRAPPED))
    perms = [torch.tensor(q) for q in itertools.permutations(range(4))]
    best = min(inst.objective(q) for q in perms)
    for kw in ({"method": "its", "max_iter": 50}, {"method": "ls"}, {"time_limit": 0.01}):
        X = lvmmed_ext.solve_qap(**inst.inputs(), **kw)
        assert inst.objective(X[0].argmax(1)) == best


def test_sln_variants_and_their_notes(tmp_path):
    dat = write(tmp_path, "a.dat", ROWS)
    write(tmp_path, "a.sln", "4  1018\n 3 1\n 4 2\n")  # the permutation wrapped over lines
    assert qaplib.load(dat).best_perm.tolist() == [2, 0, 3, 1]
    # the inverse of (2, 0, 3, 1) is (1, 3, 0, 2): listed inverted, as a few QAPLIB files are
    write(tmp_path, "a.sln", "4 1018\n2 4 1 3\n")
    inst = qaplib.load(dat)
    assert inst.best_perm.tolist() == [2, 0, 3, 1] and inst.notes == ["a.sln: the listed permutation is inverted"]
    write(tmp_path, "a.sln", "4 1018\n2 0 3 1\n")  # counting from 0
    inst = qaplib.load(dat)
    assert inst.best_perm.tolist() == [2, 0, 3, 1] and "counts from 0" in inst.notes[0]
    write(tmp_path, "a.sln", "4 1100\n3 1 4 2\n")  # the listed solution beats the listed value
    inst = qaplib.load(dat)
    assert inst.best_value == 1018 and "scores 1018, below the listed 1100" in inst.notes[0]
    write(tmp_path, "a.sln", "4 1018\n1 1 2 3\n")  # not a permutation: the value stands, no solution
    inst = qaplib.load(dat)
    assert inst.best_value == 1018 and inst.best_perm is None and "not a permutation" in inst.notes[0]
    assert qaplib.read_sln(write(tmp_path, "b.sln", "4 1018 3 1 4 2"))[:2] == (4, 1018)


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("empty.dat", "", r"empty.dat: empty: expected the size n first"),
        ("size.dat", "2.5\n1 2\n", r"size.dat: line 1: the size n must be a positive integer, got 2.5"),
        ("zero.dat", "0\n", r"zero.dat: line 1: the size n must be a positive integer, got 0"),
        ("short.dat", "2\n1 2 3 4\n5 6 7\n", r"short.dat: expected 2 n\^2 = 8 matrix entries after n = 2, found 7"),
        ("long.dat", "1\n1 2 3\n", r"long.dat: expected 2 n\^2 = 2 matrix entries after n = 1, found 3"),
        ("text.dat", "2\n1 2\n3 x4\n", r"text.dat: line 3: 'x4' is not a number"),
        ("nan.dat", "1\nnan 1\n", r"nan.dat: line 2: 'nan' is not a finite number"),
    ],
)
def test_bad_dat_files_raise_one_clear_error(tmp_path, name, text, match):
    with pytest.raises(qaplib.QAPLIBFormatError, match=match):
        qaplib.read_dat(write(tmp_path, name, text))


@pytest.mark.parametrize(
    "text, match",
    [
        ("4\n", r"x.sln: expected the objective value after n = 4, found nothing"),
        ("4 1018\n3 1 4\n", r"x.sln: expected a permutation of n = 4 numbers after the value, found 3"),
        ("4 1018\n3 1 4 7\n", r"x.sln: the permutation must hold integers in 1..4, found 7"),
        ("4 1018\n3 1 4 2.5\n", r"x.sln: the permutation must hold integers in 1..4, found 2.5"),
        ("3 1018\n3 1 2\n", r"x.sln: n = 3, but x.dat has n = 4"),
    ],
)
def test_bad_sln_files_raise_one_clear_error(tmp_path, text, match):
    write(tmp_path, "x.sln", text)
    with pytest.raises(qaplib.QAPLIBFormatError, match=match):
        qaplib.load(write(tmp_path, "x.dat", ROWS))
    assert issubclass(qaplib.QAPLIBFormatError, ValueError)


def test_load_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qaplib.load_folder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="holds no .dat files"):
        qaplib.load_folder(str(tmp_path))
    write(tmp_path, "b4.dat", ROWS)
    write(tmp_path, "a1.dat", "1\n5\n7\n")
    write(tmp_path, "notes.txt", "not an instance")
    assert [i.name for i in qaplib.load_folder(str(tmp_path))] == ["a1", "b4"]
    assert [i.name for i in qaplib.load_folder(str(tmp_path), max_n=2)] == ["a1"]
    assert qaplib.load_folder(str(tmp_path))[0].best_value is None  # no .sln


def test_gap():
    assert qaplib.gap_pct(101.0, 100.0) == pytest.approx(1.0)
    assert qaplib.gap_pct(100.0, 100.0) == 0.0
    assert qaplib.gap_pct(-99.0, -100.0) == pytest.approx(1.0)  # a best known below 0 (maximised problems)
    assert qaplib.gap_pct(0.0, 0.0) == 0.0 and math.isinf(qaplib.gap_pct(5.0, 0.0))
