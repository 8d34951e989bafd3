"""gm_loss vs InfoNCE, forward+backward, at the paper's per-GPU shape (200 images, graphs of 16, 7x7x2048 maps).

python benchmarks/bench_gm_loss.py [--device cpu|cuda] [--json OUT.json]      (= lvmmed bench loss ...)
"""

import sys

from lvmmed_ext.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["loss", *sys.argv[1:]]))
