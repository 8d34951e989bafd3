"""Random comparison of the emulated CUDA backend with the CPU kernels (not a test: a tool behind docs/CUDA_REVIEW.md).

    cd tests && python3 fuzz_emulated.py SEED SECONDS

Draws random ops, shapes, dtypes, top-k, positions, QAP methods, thread/block orders and lowered device limits, runs
each case on both backends and prints FAIL lines (float32 results are held to 2x the CPU kernel's error against
float64, plus 1e-6 of the largest value; 1-D features, F = 1 or D = 1, are left out: docs/CUDA_REVIEW.md, item 3).
"""

import random
import sys
import time
import traceback

import emulator
import torch
from emulator import emulated_cuda
from helpers import assert_matches_reference
from test_local_affinity import make_maps, make_positions
from test_qap import assert_assignment, random_problem

import lvmmed_ext

emu = emulator.load()


def close_vs_ref(ours, cpu, ref):
    """ours (emulated CUDA) as close to the float64 result as the CPU kernel, within 2x + a floor."""
    if ours.numel() == 0:
        return
    e1 = (ours.double() - ref.double()).abs().max().item()
    e2 = (cpu.double() - ref.double()).abs().max().item()
    floor = (1e-12 if ours.dtype == torch.float64 else 1e-6) * (1 + ref.double().abs().max().item())
    assert e1 <= 2 * e2 + floor, f"emulated error {e1:.3g} vs cpu {e2:.3g} (floor {floor:.2g})"


rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
t_end = time.time() + float(sys.argv[2]) if len(sys.argv) > 2 else time.time() + 120
n = 0
fails = 0
while time.time() < t_end:
    n += 1
    emu.set_schedule(rng.choice(["forward", "reverse", "shuffle"]), rng.randrange(1000))
    if rng.random() < 0.3:
        emu.set_device(
            max_grid_x=rng.choice([1, 2, 3, 7]), max_grid_y=rng.choice([1, 2, 3]), max_grid_z=rng.choice([1, 2])
        )
    if rng.random() < 0.3:
        emu.set_device(smem_per_block_optin=rng.choice([1024, 2048, 4096, 8192]))
    op = rng.choice(["local", "global", "edge", "knn", "lap", "qap", "obj"])
    dtype = rng.choice([torch.float32, torch.float64])
    try:
        if op == "local":
            G, N, M = rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 5)
            P, Q, D = rng.randint(1, 40), rng.randint(1, 40), rng.randint(2, 9)
            integer = rng.random() < 0.5
            ys, yt = make_maps(
                G,
                N,
                M,
                P,
                Q,
                D,
                dtype,
                "cpu",
                rng.randrange(10**6),
                zero=rng.random() < 0.5,
                dup=rng.random() < 0.5,
                integer=integer,
            )
            pos = (
                make_positions(G, N, M, P, Q, "cpu", rng.randrange(10**6), grid=rng.random() < 0.5)
                if rng.random() < 0.7
                else (None, None)
            )
            tl, tf = rng.randint(1, 45), rng.choice([None, rng.randint(1, 45)])
            with emulated_cuda():
                out, m = torch.ops.lvmmed.local_affinity(ys, yt, *pos, tl, tf)
                w = torch.randn_like(out)
                gs = torch.ops.lvmmed.local_affinity_backward(w, ys, yt, m, pos[0] is not None, tl, tf)
            out_c, m_c = torch.ops.lvmmed.local_affinity(ys, yt, *pos, tl, tf)
            gc = torch.ops.lvmmed.local_affinity_backward(w, ys, yt, m, pos[0] is not None, tl, tf)
            if dtype == torch.float64 or integer:
                assert_matches_reference(out, out_c, dtype)
            else:
                close_vs_ref(out, out_c, torch.ops.lvmmed.local_affinity(ys.double(), yt.double(), *pos, tl, tf)[0])
            if integer:
                assert torch.equal(m, m_c), "matches differ"
            for a, b in zip(gs, gc):
                if dtype == torch.float64:
                    assert_matches_reference(a, b, dtype)
            if dtype == torch.float32:
                gr = torch.ops.lvmmed.local_affinity_backward(
                    w.double(), ys.double(), yt.double(), m, pos[0] is not None, tl, tf
                )
                for a, b, r in zip(gs, gc, gr):
                    close_vs_ref(a, b, r)
        elif op in ("global", "edge"):
            G, N, M, F = rng.randint(0, 3), rng.randint(1, 40), rng.randint(1, 40), rng.randint(2, 70)
            zs, zt = torch.randn(G, N, F, dtype=dtype), torch.randn(G, M, F, dtype=dtype)
            if op == "global":
                with emulated_cuda():
                    o = lvmmed_ext.global_affinity(zs, zt)
                    w = torch.randn_like(o)
                    g = torch.ops.lvmmed.global_affinity_backward(w, zs, zt)
                assert_matches_reference(o, lvmmed_ext.global_affinity(zs, zt), dtype)
                ref = torch.ops.lvmmed.global_affinity_backward(w.double(), zs.double(), zt.double())
                for a, b, r in zip(g, torch.ops.lvmmed.global_affinity_backward(w, zs, zt), ref):
                    close_vs_ref(a, b, r)
            else:
                es = torch.randint(0, N, (G, rng.randint(0, 50), 2))
                et = torch.randint(0, M, (G, rng.randint(0, 50), 2))
                with emulated_cuda():
                    o = lvmmed_ext.edge_affinity(zs, es, zt, et)
                    w = torch.randn_like(o)
                    g = torch.ops.lvmmed.edge_affinity_backward(w, zs, es, zt, et)
                assert_matches_reference(o, lvmmed_ext.edge_affinity(zs, es, zt, et), dtype)
                ref = torch.ops.lvmmed.edge_affinity_backward(w.double(), zs.double(), es, zt.double(), et)
                for a, b, r in zip(g, torch.ops.lvmmed.edge_affinity_backward(w, zs, es, zt, et), ref):
                    close_vs_ref(a, b, r)
        elif op == "knn":
            G, N, F = rng.randint(0, 3), rng.randint(2, 60), rng.randint(1, 40)
            k = rng.randint(1, N - 1)
            z = torch.randint(-2, 3, (G, N, F)).to(dtype)
            with emulated_cuda():
                e = lvmmed_ext.knn_graph(z, k)
            assert torch.equal(e, lvmmed_ext.knn_graph(z, k)), "knn differs"
        elif op == "lap":
            G, N, M = rng.randint(0, 4), rng.randint(0, 30), rng.randint(0, 30)
            S = (torch.randint(-3, 4, (G, N, M)) if rng.random() < 0.5 else torch.randn(G, N, M)).to(dtype)
            partial, mx = rng.random() < 0.5, rng.random() < 0.5
            with emulated_cuda():
                X = lvmmed_ext.linear_assignment(S, maximize=mx, partial=partial)
            assert torch.equal(X, lvmmed_ext.linear_assignment(S, maximize=mx, partial=partial)), "lap differs"
        elif op == "qap":
            G, N = rng.randint(1, 3), rng.randint(1, 12)
            M = rng.randint(N, 14)
            partial = rng.random() < 0.4
            if partial:
                M = rng.randint(1, 14)
            kb = rng.random() < 0.3
            Es = rng.choice([-1, 0, rng.randint(1, 40)])
            p = random_problem(
                G,
                N,
                M,
                Es,
                rng.randint(0, 40) if Es >= 0 else -1,
                rng.randrange(10**6),
                dtype=dtype,
                kb=kb,
                loops=rng.random() < 0.5,
            )
            method = rng.choice(["lap", "ls", "ils", "ga", "faq", "sm", "rrwm", "ipfp"])
            init = None
            if method in ("ls", "ils") and rng.random() < 0.3:
                init = torch.rand(G, N, M, dtype=dtype)
            with emulated_cuda():
                X = lvmmed_ext.solve_qap(
                    **p, method=method, partial=partial, init=init, generator=torch.Generator().manual_seed(0)
                )
                X2 = lvmmed_ext.solve_qap(
                    **p, method=method, partial=partial, init=init, generator=torch.Generator().manual_seed(0)
                )
            assert torch.equal(X, X2)
            assert_assignment(X, partial)
        elif op == "obj":
            G, N, M = rng.randint(0, 3), rng.randint(1, 9), rng.randint(1, 9)
            kb = rng.random() < 0.5
            p = random_problem(
                G, N, M, rng.randint(0, 20), rng.randint(0, 20), rng.randrange(10**6), dtype=dtype, kb=kb
            )
            X = torch.rand(G, N, M, dtype=dtype)
            gr = torch.randn(G, dtype=dtype)
            args = (X, p["unary"], p["quad"], p["edges_s"], p["edges_t"], p.get("A"), p.get("B"))
            with emulated_cuda():
                f = torch.ops.lvmmed.qap_objective(*args)
                gg = torch.ops.lvmmed.qap_objective_backward(gr, *args)
            assert_matches_reference(f, torch.ops.lvmmed.qap_objective(*args), dtype)
            for a, b in zip(gg, torch.ops.lvmmed.qap_objective_backward(gr, *args)):
                assert_matches_reference(a, b, dtype)
    except Exception as e:
        fails += 1
        print("FAIL", op, dtype, repr(e)[:800])
        traceback.print_exc(limit=2)
        if fails > 5:
            break
    finally:
        emu.reset_device()
print("cases", n, "fails", fails)
