"""global_affinity vs the PyTorch peer (normalize + bmm), forward and forward+backward, same run.

python benchmarks/bench_global_affinity.py [--device cpu|cuda] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import functools

import torch
from timing import environment, time_fn, write_json

import lvmmed_ext


def peer(z_s, z_t):
    return torch.nn.functional.normalize(z_s, dim=-1) @ torch.nn.functional.normalize(z_t, dim=-1).transpose(1, 2)


def forward(fn, a, b):
    with torch.no_grad():
        return fn(a, b)


def forward_backward(fn, a, b):
    return torch.autograd.grad(fn(a, b).sum(), (a, b))


MODES = {"fwd": forward, "fwd+bwd": forward_backward}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    for G, N, F in [(12, 16, 128), (64, 32, 128), (4, 256, 256)]:
        z_s = torch.randn(G, N, F, device=args.device, dtype=dtype, requires_grad=True)
        z_t = torch.randn(G, N, F, device=args.device, dtype=dtype, requires_grad=True)
        torch.testing.assert_close(lvmmed_ext.global_affinity(z_s, z_t), peer(z_s, z_t), atol=1e-3, rtol=1e-3)
        for mode, run in MODES.items():
            res = {}
            for name, fn in (("lvmmed", lvmmed_ext.global_affinity), ("torch", peer)):
                res[name] = time_fn(functools.partial(run, fn, z_s, z_t), args.device)["median_s"]
            rows.append(
                {
                    "G": G,
                    "N": N,
                    "F": F,
                    "mode": mode,
                    "lvmmed_us": 1e6 * res["lvmmed"],
                    "torch_us": 1e6 * res["torch"],
                    "speedup_vs_torch": res["torch"] / res["lvmmed"],
                }
            )
    write_json(
        args.json, {"benchmark": "global_affinity", "dtype": args.dtype, **environment(args.device), "rows": rows}
    )


if __name__ == "__main__":
    main()
