"""Benchmark subjects: each module has ``run(ctx) -> list[row]`` (see ``lvmmed_ext.bench.report.row``) and
``markdown(rows) -> str`` (its tables in BENCHMARKS.md). Subjects in NEEDS_DATA read a folder the user names after
them (``lvmmed bench qaplib DIR``) and are not part of ``all``."""

SUBJECTS = {
    "affinity": "lvmmed_ext.bench.subjects.affinity",
    "data": "lvmmed_ext.bench.subjects.data",
    "loss": "lvmmed_ext.bench.subjects.loss",
    "qaplib": "lvmmed_ext.bench.subjects.qaplib",
    "solver": "lvmmed_ext.bench.subjects.solver",
}
NEEDS_DATA = {"qaplib": "a folder of QAPLIB .dat/.sln files"}
ALL = [name for name in sorted(SUBJECTS) if name not in NEEDS_DATA]
