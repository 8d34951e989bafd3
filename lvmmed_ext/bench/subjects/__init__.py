"""Benchmark subjects: each module has ``run(ctx) -> list[row]`` (see ``lvmmed_ext.bench.report.row``)."""

SUBJECTS = {
    "affinity": "lvmmed_ext.bench.subjects.affinity",
    "loss": "lvmmed_ext.bench.subjects.loss",
}
