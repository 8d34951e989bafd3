"""Benchmark subjects: each module has ``run(ctx) -> list[row]`` (see ``lvmmed_ext.bench.report.row``) and
``markdown(rows) -> str`` (its tables in BENCHMARKS.md)."""

SUBJECTS = {
    "affinity": "lvmmed_ext.bench.subjects.affinity",
    "data": "lvmmed_ext.bench.subjects.data",
    "loss": "lvmmed_ext.bench.subjects.loss",
    "solver": "lvmmed_ext.bench.subjects.solver",
}
