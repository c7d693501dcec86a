"""WebAssembly benchmark: the generated matmul in wasmtime (one thread) next to numpy's
BLAS on one thread, and train_step per preset next to PyTorch CPU on one thread, in the
same run on the same machine.

    python benchmarks/bench_wasm.py [--sizes 256 512 1024] [--presets tiny small ...]
                                    [--steps 5] [--skip-torch] [--skip-train] [--profile PRESET]

Prints markdown tables; writes bench_wasm.json into $OUT (or the current directory).
--profile times every kernel of one preset's train_step (one export per kernel) and
prints where the time goes by kernel kind.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads BLAS
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgc.runtime.wasm import WasmRuntime  # noqa: E402

PRESETS = ("tiny", "small", "medium", "large", "xl", "huge", "massive", "mega")
UNIFORMS = {"lr": 3e-4, "step": 1.0, "warmup": 10.0, "total_steps": 100.0}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timeit(fn, min_s=1.0, min_reps=3) -> float:
    """Best of several batches, seconds per call (the machine is shared; best is the signal)."""
    fn()
    best, total, reps = math.inf, 0.0, 0
    while total < min_s or reps < min_reps:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def bench_matmul(n: int, tmp: Path) -> dict:
    """The compiled matmul kernel, C = A @ B, through the compiler and the wasm runtime."""
    from tgc.compiler import compile_programs
    from tgc.ir import build as B
    from tgc.ir.program import Program

    prog = Program("run", {"c": B.matmul(B.input("a", (n, n)), B.input("b", (n, n)))})
    c = compile_programs({"run": prog}, {"config": {}, "batch": 1}, out=tmp / f"mm{n}", targets=("wasm",))
    rt = WasmRuntime(tmp / f"mm{n}")
    r = np.random.default_rng(0)
    a, b = r.standard_normal((n, n), np.float32), r.standard_normal((n, n), np.float32)
    rt.write("a", a)
    rt.write("b", b)
    rt.call("run")
    err = float(np.abs(rt.read_tensor("run", c.schedules["run"].outputs["c"]) - a @ b).max())
    t_wasm = timeit(lambda: rt.call("run"))
    t_np = timeit(lambda: a @ b)
    flops = 2 * n**3
    return {"n": n, "wasm_gflops": flops / t_wasm / 1e9, "numpy_1t_gflops": flops / t_np / 1e9,
            "ratio": t_np / t_wasm, "max_abs_err": err}  # fmt: skip


def compile_preset(preset: str, tmp: Path, profile=False):
    from tgc.compiler import compile_model

    t = time.perf_counter()
    c = compile_model(preset=preset, out=tmp / preset, targets=("wasm",), profile=profile)
    return c, time.perf_counter() - t


def bench_wasm_train(preset: str, steps: int, tmp: Path) -> dict:
    c, compile_s = compile_preset(preset, tmp)
    rt = WasmRuntime(tmp / preset)
    rt.init_state(0)
    r = np.random.default_rng(0)
    B, T = c.batch, c.config["ctx"]
    batch = {k: r.integers(0, 256, (B, T)).astype(np.int32) for k in ("idx", "targets")}
    u = {k: v for k, v in UNIFORMS.items() if k in c.schedules["train_step"].uniforms}
    first = float(rt.run("train_step", batch, u)["loss"])
    dt = timeit(lambda: rt.run("train_step", batch, u), min_s=2.0, min_reps=steps)
    return {"preset": preset, "ms": dt * 1e3, "compile_s": compile_s, "kernels": len(c.launches["train_step"]),
            "memory_mib": rt.memory_bytes / 2**20, "loss_first": first}  # fmt: skip


def profile_train(preset: str, tmp: Path) -> dict:
    c, _ = compile_preset(preset, tmp, profile=True)
    rt = WasmRuntime(tmp / preset)
    rt.init_state(0)
    rt.set_uniforms(UNIFORMS)
    ex = rt.instance.exports(rt.store)
    by_kind: dict[str, float] = {}
    rows = []
    for i, (kname, _) in enumerate(c.launches["train_step"]):
        k = c.kernels[kname]
        f = ex[f"train_step#{i}"]
        dt = timeit(lambda: f(rt.store), min_s=0.0, min_reps=3)
        by_kind[k.kind] = by_kind.get(k.kind, 0.0) + dt * 1e3
        flops = 2 * k.M * k.N * k.K * math.prod(k.batch) if k.kind == "matmul" else 0
        rows.append((dt * 1e3, k.name, k.kind, flops / dt / 1e9 if flops else 0.0))
    rows.sort(reverse=True)
    mm_flops = sum(2 * k.M * k.N * k.K * math.prod(k.batch) for k in (c.kernels[n] for n, _ in c.launches["train_step"])
                   if k.kind == "matmul")
    return {"preset": preset, "ms_by_kind": by_kind, "matmul_gflop": mm_flops / 1e9,
            "matmul_gflops_avg": mm_flops / (by_kind.get("matmul", 1e-9) * 1e-3) / 1e9, "top": rows[:15]}  # fmt: skip


def bench_torch_train(preset: str, steps: int, attention: str = "sdpa") -> dict:
    """The same model in PyTorch CPU, one thread (benchmarks/torch_gpt.py)."""
    import torch
    from torch_gpt import make_train_step

    torch.set_num_threads(1)
    step = make_train_step(preset, "cpu", attention)
    dt = timeit(step, min_s=2.0, min_reps=steps)
    return {"preset": preset, "ms": dt * 1e3, "attention": attention}


def attempt(what, fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # a benchmark row that fails is reported, not fatal
        log(f"{what}: skipped ({type(e).__name__}: {e})")
        traceback.print_exc(file=sys.stderr)
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024])
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    result = {"machine": f"{os.cpu_count()} cores", "matmul": [], "train": [], "profile": None}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in args.sizes:
            log(f"matmul {n}")
            row = attempt(f"matmul {n}", bench_matmul, n, tmp)
            if row:
                result["matmul"].append(row)
        if not args.skip_train:
            for p in args.presets:
                log(f"train_step {p}")
                row = attempt(f"wasm {p}", bench_wasm_train, p, args.steps, tmp) or {"preset": p}
                if not args.skip_torch:
                    t = attempt(f"torch {p}", bench_torch_train, p, args.steps)
                    row["torch_ms"] = t["ms"] if t else None
                    t = attempt(f"torch {p} (manual attention)", bench_torch_train, p, args.steps, "manual")
                    row["torch_manual_ms"] = t["ms"] if t else None
                result["train"].append(row)
        if args.profile:
            result["profile"] = attempt("profile", profile_train, args.profile, tmp)

    print("| n | wasm GFLOP/s | numpy 1 thread GFLOP/s | wasm / numpy |\n|---|---|---|---|")
    for r in result["matmul"]:
        print(f"| {r['n']} | {r['wasm_gflops']:.1f} | {r['numpy_1t_gflops']:.1f} | {r['ratio']:.2f} |")
    if result["train"]:
        print("\n| preset | wasm train_step ms | PyTorch CPU 1 thread ms (SDPA) | ratio | PyTorch, attention written out | ratio | kernels | memory MiB |\n|---|---|---|---|---|---|---|---|")
        for r in result["train"]:
            ms, tm, tmm = r.get("ms"), r.get("torch_ms"), r.get("torch_manual_ms")
            f = lambda v, s=".1f": format(v, s) if v is not None else "—"
            print(f"| {r['preset']} | {f(ms)} | {f(tm)} | {f(ms / tm if ms and tm else None, '.2f')} | {f(tmm)} | {f(ms / tmm if ms and tmm else None, '.2f')} | {r.get('kernels', '—')} | {f(r.get('memory_mib'), '.0f')} |")
    if result["profile"]:
        pr = result["profile"]
        print(f"\nprofile {pr['preset']}: ms by kind {({k: round(v, 2) for k, v in pr['ms_by_kind'].items()})}, "
              f"matmul {pr['matmul_gflop']:.2f} GFLOP at {pr['matmul_gflops_avg']:.1f} GFLOP/s")  # fmt: skip
        for ms, name, kind, gf in pr["top"]:
            print(f"  {ms:7.3f} ms {name:24s} {kind:12s} {gf:5.1f} GFLOP/s")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "bench_wasm.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
