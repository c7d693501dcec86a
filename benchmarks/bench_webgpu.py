"""WebGPU benchmark: the generated matmul kernel and train_step per preset, each next
to PyTorch CUDA fp32 (TF32 off) on the same shapes in the same run.

    python benchmarks/bench_webgpu.py [--sizes 1024 2048 4096] [--presets tiny small ...]
                                      [--steps 20] [--skip-torch] [--skip-train]

Prints a markdown table; writes bench_webgpu.json into $OUT when it is set. Anything
that fails (no CUDA torch, a preset that does not compile) is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgc.codegen.wgsl import render_kernel
from tgc.ir.kernel import Kernel, View, canonical
from tgc.ir.kpasses import run_kernel_passes, tile_name
from tgc.ir.schedule import TensorInfo

PRESETS = ("tiny", "small", "medium", "large", "xl", "huge", "massive", "mega")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- matmul


def matmul_kernel(n: int, form: str = "nn") -> Kernel:
    """C[n, n] = A @ B as the compiler's kernel passes leave it; form nn / nt / tn picks the strides."""
    sa = (n, 1) if form[0] == "n" else (1, n)
    sb = (n, 1) if form[1] == "n" else (1, n)
    k = Kernel("bench_matmul", "matmul", n * n, a=View("A", (n, n), sa), b=View("B", (n, n), sb), out="C", M=n, N=n, K=n)
    c, order = canonical(k, {t: TensorInfo(t, (n, n), "f32", "input") for t in "ABC"})
    assert order == ["C", "A", "B"]
    run_kernel_passes({"k": c})
    return c


def bench_wgsl_matmul(gpu, n: int, reps: int = 20, form: str = "nn") -> dict:
    k = matmul_kernel(n, form)
    r = render_kernel(k, {})
    bufs = {t: gpu.buffer(4 * n * n, label=t) for t in "CAB"}  # parameters p0 = C, p1 = A, p2 = B
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    gpu.queue.write_buffer(bufs["A"], 0, (a if form[0] == "n" else np.ascontiguousarray(a.T)).tobytes())
    gpu.queue.write_buffer(bufs["B"], 0, (b if form[1] == "n" else np.ascontiguousarray(b.T)).tobytes())
    pipe, bgl = gpu.pipeline(r.name, r.source, 3, None)
    bg = gpu.device.create_bind_group(layout=bgl, entries=[
        {"binding": i, "resource": {"buffer": bufs[t], "offset": 0, "size": 4 * n * n}} for i, t in enumerate("CAB")])

    def launch(count):
        enc = gpu.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        for _ in range(count):
            cp.set_pipeline(pipe)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(*r.dispatch)
        cp.end()
        gpu.queue.submit([enc.finish()])
        gpu.device.queue.read_buffer(bufs["C"], 0, 16)  # waits for the queue

    launch(2)
    c = np.frombuffer(gpu.device.queue.read_buffer(bufs["C"]), np.float32).reshape(n, n)
    ref_rows = slice(0, min(n, 64))
    err = float(np.abs(c[ref_rows] - a[ref_rows] @ b).max())
    t = time.perf_counter()
    launch(reps)
    dt = (time.perf_counter() - t) / reps
    return {"n": n, "form": form, "ms": dt * 1e3, "gflops": 2 * n**3 / dt / 1e9, "max_err_rows0_63": err,
            "tile": tile_name(k.decisions["wgsl"]["tile"])}


def bench_torch_matmul(n: int, reps: int = 20) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    return {"n": n, "ms": dt * 1e3, "gflops": 2 * n**3 / dt / 1e9}


# ---------------------------------------------------------------- train step


def bench_wgsl_train(preset: str, steps: int, artifacts: str | None = None) -> dict:
    from tgc.compiler import compile_model
    from tgc.runtime.webgpu import WebGPURuntime

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        if artifacts:  # compiled beforehand (the GPU machine need not compile)
            d = str(Path(artifacts) / preset)
        else:
            compile_model(preset=preset, out=d, targets=("wgsl",))
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        rt = WebGPURuntime(d)
        pipelines_s = rt.prepare(["train_step"])
        open_s = time.perf_counter() - t
        rt.init_state(0)
        cfg = rt.manifest["model"]
        B, T, V = cfg["batch"], cfg["config"]["ctx"], cfg["config"]["vocab"]
        rng = np.random.default_rng(0)
        idx = rng.integers(0, V, (B, T), dtype=np.int32)
        tgt = rng.integers(0, V, (B, T), dtype=np.int32)
        u = {"lr": 3e-4, "warmup": 10, "total_steps": 1000}
        t = time.perf_counter()
        first = rt.run("train_step", {"idx": idx, "targets": tgt}, {**u, "step": 1})
        load_s = open_s + time.perf_counter() - t  # runtime opened .. first step done
        rt.run("train_step", {"idx": idx, "targets": tgt}, {**u, "step": 2})
        t = time.perf_counter()
        for s in range(steps):
            out = rt.run("train_step", {"idx": idx, "targets": tgt}, {**u, "step": 3 + s})
        dt = (time.perf_counter() - t) / steps
        n_launch = len(rt.manifest["programs"]["train_step"]["launches"])
    return {"preset": preset, "ms": dt * 1e3, "compile_s": compile_s, "first_step_s": load_s, "pipelines_s": pipelines_s,
            "kernels": len(rt.art.kernels), "launches": n_launch,
            "loss_first": float(first["loss"]), "loss_last": float(out["loss"])}


def bench_torch_train(preset: str, steps: int) -> dict:
    import torch
    from torch_gpt import make_train_step

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    step = make_train_step(preset, "cuda")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    return {"preset": preset, "ms": dt * 1e3}


# ---------------------------------------------------------------- profile


def _kernel_sig(rt, kernel: str) -> str:
    """A kernel's kind, shape and launch decisions, from the manifest."""
    k = rt.art.kernels[kernel]
    d, w = k.decisions.get("wgsl", {}), k.wgsl
    head = (rt.dir / w["file"]).read_text().splitlines()
    mm = next((ln for ln in head if ln.startswith("// ") and "sum_k" in ln), None)
    if mm:
        return f"matmul {mm.split(';', 1)[1].strip()} tile={tile_name(d['tile'])}"
    if k.kind == "reduce":
        loop = next((ln for ln in head if "ridx <" in ln), "")
        r = loop.split("ridx <")[1].split(";")[0].strip() if loop else "?"
        return f"reduce R={r} lanes={d.get('lanes')} groups={w['dispatch']}"
    return f"elementwise groups={w['dispatch']} wg={w['workgroup_size']}"


def profile_program(art, program: str = "train_step", reps: int = 5) -> dict:
    """Per-launch GPU time from timestamp queries written between the dispatches of the
    program's one compute pass (needs timestamp-query-inside-passes), grouped by kernel
    kind and by shape; plus the host's encode time and the step's wall time."""
    from tgc.runtime.webgpu import GPU, WebGPURuntime

    art = Path(art)
    gpu = GPU(features=("timestamp-query", "timestamp-query-inside-passes"))
    rt = WebGPURuntime(art, gpu=gpu)
    rt.init_state(0)
    m = rt.manifest
    B, T, V = m["model"]["batch"], m["model"]["config"]["ctx"], m["model"]["config"]["vocab"]
    rng = np.random.default_rng(0)
    inputs = {"idx": rng.integers(0, V, (B, T), dtype=np.int32), "targets": rng.integers(0, V, (B, T), dtype=np.int32)}
    u = {"lr": 3e-4, "warmup": 10, "total_steps": 1000}
    launches = rt.art.programs[program].launches  # (kernel, tensors)
    t = time.perf_counter()
    rt.run(program, inputs, {**u, "step": 1})
    first_s = time.perf_counter() - t
    for s in range(3):
        rt.run(program, inputs, {**u, "step": 2 + s})
    t = time.perf_counter()
    for s in range(reps * 2):
        rt.run(program, inputs, {**u, "step": 5 + s})
    step_ms = (time.perf_counter() - t) / (reps * 2) * 1e3
    plan = rt._load_program(program)
    # host encode cost alone
    t = time.perf_counter()
    for _ in range(3):
        rt._encode(plan, [])
    encode_ms = (time.perf_counter() - t) / 3 * 1e3
    res = {"program": program, "launches": len(plan), "first_run_s": first_s, "step_ms": step_ms, "encode_ms": encode_ms,
           "features": sorted(gpu.features)}
    if "timestamp-query-inside-passes" not in gpu.features:
        res["error"] = "no timestamp-query-inside-passes"
        return res
    n = len(plan) + 1
    qs = gpu.device.create_query_set(type=gpu.wgpu.QueryType.timestamp, count=n)
    u_ = gpu.wgpu.BufferUsage
    qbuf = gpu.device.create_buffer(size=8 * n, usage=u_.QUERY_RESOLVE | u_.COPY_SRC)
    per = np.zeros(len(plan))
    spans = []
    for _ in range(reps):
        enc = gpu.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        for i, (pipe, bg, (x, y, z)) in enumerate(plan):
            cp._write_timestamp(qs, i)
            cp.set_pipeline(pipe)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(x, y, z)
        cp._write_timestamp(qs, len(plan))
        cp.end()
        enc.resolve_query_set(qs, 0, n, qbuf, 0)
        t = time.perf_counter()
        gpu.queue.submit([enc.finish()])
        ts = np.frombuffer(gpu.queue.read_buffer(qbuf), dtype=np.uint64).astype(np.float64)
        wall = time.perf_counter() - t
        d = np.diff(ts)
        per += d / reps
        spans.append(((ts[-1] - ts[0]) / 1e6, wall * 1e3))
    res["gpu_span_ms"] = float(np.median([a for a, _ in spans]))
    res["submit_wait_ms"] = float(np.median([b for _, b in spans]))
    kinds, shapes = {}, {}
    for (kname, _), dt in zip(launches, per):
        k = kinds.setdefault(rt.art.kernels[kname].kind, [0, 0.0])
        k[0] += 1
        k[1] += dt / 1e6
        sig = _kernel_sig(rt, kname)
        sh = shapes.setdefault(sig, [0, 0.0, kname])
        sh[0] += 1
        sh[1] += dt / 1e6
    res["kinds"] = {k: {"count": c, "ms": round(ms, 3)} for k, (c, ms) in kinds.items()}
    top = sorted(shapes.items(), key=lambda kv: -kv[1][1])[:40]
    res["top_shapes"] = [{"sig": s_, "count": c, "ms": round(ms, 3), "example": ex} for s_, (c, ms, ex) in top]
    res["top_launches"] = sorted(({"kernel": l_[0], "us": round(float(dt) / 1e3, 1)} for l_, dt in zip(launches, per)),
                                 key=lambda r: -r["us"])[:25]
    return res


def print_profile(res: dict) -> None:
    print(f"\n### {res.get('artifact', '')} {res['program']}: {res['launches']} launches, step {res['step_ms']:.2f} ms, "
          f"host encode {res['encode_ms']:.2f} ms, GPU span {res.get('gpu_span_ms', float('nan')):.2f} ms, "
          f"submit+wait {res.get('submit_wait_ms', float('nan')):.2f} ms, first run {res['first_run_s']:.1f} s")
    for k, v in res.get("kinds", {}).items():
        print(f"- {k}: {v['count']} launches, {v['ms']:.2f} ms")
    print("| ms | count | shape | example |\n|---|---|---|---|")
    for r in res.get("top_shapes", []):
        print(f"| {r['ms']:.3f} | {r['count']} | {r['sig']} | {r['example']} |")


# ---------------------------------------------------------------- driver


def attempt(what, fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 -- a benchmark skips what fails, with a message
        log(f"skipped {what}: {type(e).__name__}: {e}")
        if os.environ.get("TGC_BENCH_DEBUG"):
            traceback.print_exc()
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    ap.add_argument("--forms", nargs="*", default=["nn"], help="matmul transpose forms: nn nt tn")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--artifacts", help="DIR/<preset> compiled beforehand (wgsl target) instead of compiling here")
    ap.add_argument("--profile", nargs="*", default=[], metavar="ART",
                    help="artifact dirs to profile (per-launch timestamps of train_step), then exit")
    args = ap.parse_args(argv)

    if args.profile:
        allres = []
        for art in args.profile:
            r = attempt(f"profile {art}", profile_program, art)
            if r is not None:
                r["artifact"] = art
                print_profile(r)
                allres.append(r)
        out = os.environ.get("OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            name = os.environ.get("TGC_PROFILE_NAME", "profile")
            (Path(out) / f"{name}.json").write_text(json.dumps(allres, indent=1))
        return 0

    from tgc.runtime.webgpu import GPU

    gpu = GPU()
    info = dict(gpu.adapter.info)
    log(f"adapter: {info.get('device')} ({info.get('backend_type')})")
    has_torch = False
    if not args.skip_torch:
        try:
            import torch

            has_torch = torch.cuda.is_available()
            if not has_torch:
                log("skipped PyTorch: no CUDA device")
        except Exception as e:  # noqa: BLE001 -- no torch or a broken CUDA: skip it
            log(f"skipped PyTorch: {e}")
    result = {"adapter": info.get("device"), "matmul": [], "train_step": []}

    lines = ["| matmul | tile | WGSL GFLOP/s | cuBLAS fp32 GFLOP/s | WGSL / cuBLAS | max err |", "|---|---|---|---|---|---|"]
    for n in args.sizes:
        tr = attempt(f"torch matmul {n}", bench_torch_matmul, n) if has_torch else None
        for form in args.forms:
            w = attempt(f"WGSL matmul {n} {form}", bench_wgsl_matmul, gpu, n, 20, form)
            if w is None:
                continue
            ratio = f"{w['gflops'] / tr['gflops']:.0%}" if tr else "—"
            tg = f"{tr['gflops']:,.0f}" if tr else "—"
            lines.append(f"| {n}³ {form} | {w['tile']} | {w['gflops']:,.0f} | {tg} | {ratio} | {w['max_err_rows0_63']:.1e} |")
            result["matmul"].append({"wgsl": w, "torch": tr})
            log(lines[-1])
    print("\n".join(lines) + "\n")

    if not args.skip_train:
        lines = ["| preset | launches | WGSL train_step ms | PyTorch CUDA ms | ratio | loss first → last |", "|---|---|---|---|---|---|"]
        for p in args.presets:
            w = attempt(f"WGSL train_step {p}", bench_wgsl_train, p, args.steps, args.artifacts)
            tr = attempt(f"torch train_step {p}", bench_torch_train, p, args.steps) if has_torch else None
            if w is None:
                continue
            tms = f"{tr['ms']:.2f}" if tr else "—"
            ratio = f"{w['ms'] / tr['ms']:.1f}×" if tr else "—"
            lines.append(f"| {p} | {w['launches']} | {w['ms']:.2f} | {tms} | {ratio} | {w['loss_first']:.3f} → {w['loss_last']:.3f} |")
            result["train_step"].append({"wgsl": w, "torch": tr})
            log(lines[-1])
        print("\n".join(lines))

    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_webgpu.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
