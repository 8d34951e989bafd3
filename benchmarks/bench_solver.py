"""QAP solvers side by side on the same instances (solve_qap vs pygmtools SM/RRWM/IPFP, scipy FAQ, the LAP floor;
LVM-Med-shaped and Koopmans-Beckmann families): a thin wrapper of the suite (the families, peers and checks live in
``lvmmed_ext/bench/subjects/solver.py``).

python benchmarks/bench_solver.py [--device cpu|cuda] [--threads 1] [--quick] [--json OUT.json] [--plots DIR] [...]
    (= lvmmed bench solver ...; see lvmmed bench --help)
"""

import sys

from lvmmed_ext.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["solver", *sys.argv[1:]]))
