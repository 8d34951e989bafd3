"""global_affinity vs the PyTorch peer (normalize + bmm), forward and forward+backward: a thin wrapper of the
suite's affinity subject restricted to the global_affinity cases.

python benchmarks/bench_global_affinity.py [--device cpu|cuda] [--json OUT.json] [...]
    (= lvmmed bench affinity --only global_affinity ...)
"""

import sys

from lvmmed_ext.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["affinity", "--only", "global_affinity", *sys.argv[1:]]))
