"""local_affinity and global_affinity vs their pure-PyTorch peers (and the bare Gram floor), interleaved rounds,
peak memory in a fresh process: a thin wrapper of the suite (the cases, peers and checks live in
``lvmmed_ext/bench/subjects/affinity.py``).

python benchmarks/bench_affinity.py [--device cpu|cuda] [--json OUT.json] [--only local_affinity] [...]
    (= lvmmed bench affinity ...; see lvmmed bench --help)
"""

import sys

from lvmmed_ext.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["affinity", *sys.argv[1:]]))
