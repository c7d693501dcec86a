"""Running hand-built graphs through the real compiler back end and runtimes, for the target tests.

`run_graph` schedules a small program exactly as `tgc compile` does (graph passes,
scheduler, kernel passes with the verifier, memory plan with no memory shared so
every intermediate stays readable), writes a one-program artifact for one target,
runs it in that target's runtime, and compares every tensor, intermediates included,
with the kernel interpreter (tgc/ir/kinterp.py) running the scheduled kernels.
"""

from __future__ import annotations

import math

import numpy as np
from helpers import assert_close

from tgc.compiler import WASM_HEAP_BASE, compile_programs
from tgc.ir.kinterp import run_kernel, run_nest
from tgc.ir.program import Program

PROGRAM = "run"


def compile_graph(tmp_path, outputs: dict, updates: dict | None = None, target: str = "wasm", heap_base: int | None = None):
    prog = Program(PROGRAM, outputs, updates or {})
    code = {"wasm": "wasm", "webgpu": "wgsl"}[target]
    return compile_programs({PROGRAM: prog}, {"config": {}, "batch": 1}, out=tmp_path, targets=(code,), verify=True,
                            heap_base=heap_base or WASM_HEAP_BASE, keep_all=True)  # fmt: skip


def open_target(art, target: str, gpu=None):
    if target == "wasm":
        from tgc.runtime.wasm import WasmRuntime

        return WasmRuntime(art)
    from tgc.runtime.webgpu import WebGPURuntime

    return WebGPURuntime(art, gpu=gpu)


def reference(schedule, env: dict, uniforms: dict) -> dict[str, np.ndarray]:
    """Every tensor of the schedule after running its kernels in the kernel interpreter."""
    mem = {}
    for n, t in schedule.tensors.items():
        dt = np.int32 if t.dtype == "i32" else np.float32
        mem[n] = np.asarray(env[n], dt).reshape(-1).copy() if n in env else np.zeros(math.prod(t.shape), dt)
    for k in schedule.kernels:
        run_kernel(k, mem, uniforms)
    return {n: mem[n].reshape(t.shape) for n, t in schedule.tensors.items()}


def run_graph(tmp_path, outputs: dict, env: dict, uniforms: dict | None = None, target: str = "wasm", updates=None,
              heap_base=None, rtol=1e-5, gpu=None, atol=1e-6):
    """Compile and run `outputs` (and `updates`) on `target`; compare every tensor with the
    kernel interpreter. Returns (compiled, runtime)."""
    c = compile_graph(tmp_path, outputs, updates, target, heap_base)
    s = c.schedules[PROGRAM]
    uniforms = {**{u: env[u] for u in s.uniforms if u in env}, **(uniforms or {})}
    check_nests(c, uniforms)
    rt = open_target(tmp_path, target, gpu)
    for n, t in s.tensors.items():
        if n in c.manifest.tensors:
            dt = np.int32 if t.dtype == "i32" else np.float32
            rt.write(n, np.asarray(env[n], dt).reshape(t.shape) if n in env else np.zeros(t.shape, dt))
    rt.run(PROGRAM, uniforms=uniforms, read=[])
    want = reference(s, env, uniforms)
    dead = {k.out: k.band.masks(k.M, k.N, k.K)[2] for k in s.kernels if k.kind == "matmul" and k.band is not None}
    for n in s.tensors:
        got = rt.read(n) if n in c.manifest.tensors else rt.read_tensor(PROGRAM, n)
        w = want[n]
        if n in dead:  # a matmul's dead outputs are unspecified (kernel.Band)
            got, w = got[..., ~dead[n]], w[..., ~dead[n]]
        assert_close(got, w, rtol, atol, name=n)
    return c, rt


def check_nests(compiled, uniforms: dict, seed: int = 0) -> None:
    """Every elementwise and reduce kernel run through its loop nest (the kernel passes'
    regions) equals the kernel run flat, on random data: the passes against the kernel's meaning."""
    rng = np.random.default_rng(seed)
    for k in compiled.kernels.values():
        if k.kind == "matmul":
            continue
        mem = {f"p{i}": (rng.integers(0, 8, p.elements).astype(np.int32) if p.dtype == "i32"
                         else rng.standard_normal(p.elements).astype(np.float32)) for i, p in enumerate(k.params)}
        flat, nest = {n: a.copy() for n, a in mem.items()}, {n: a.copy() for n, a in mem.items()}
        with np.errstate(all="ignore"):
            run_kernel(k, flat, uniforms)
            run_nest(k, nest, uniforms)
        for t, _ in k.outputs:
            assert_close(nest[t], flat[t], 1e-5, 1e-6, f"{k.name}:{t} through its nest")


def gpu_kernel(gpu, k, arrays: list[np.ndarray], uniforms: dict | None = None) -> list[np.ndarray]:
    """Run one canonical kernel (after the kernel passes) on the GPU with parameter i bound to
    arrays[i] (each in a buffer of its own); returns every parameter's contents afterwards."""
    import struct

    from tgc.codegen.wgsl import render_kernel

    fields = {n: (4 * i, dt) for i, (n, dt) in enumerate((uniforms or {}).items())}
    r = render_kernel(k, {n: (o, "f32") for n, (o, _) in fields.items()})
    pipe, bgl = gpu.pipeline(k.name, r.source, sum(r.chunks), r.uniform_binding)
    bufs = [gpu.buffer(max(a.nbytes, 4)) for a in arrays]
    for buf, a in zip(bufs, arrays):
        gpu.queue.write_buffer(buf, 0, np.ascontiguousarray(a).tobytes())
    entries = [{"binding": i, "resource": {"buffer": buf, "offset": 0, "size": buf.size}} for i, buf in enumerate(bufs)]
    if r.uniform_binding is not None:
        ub = gpu.buffer(16 * (len(fields) // 4 + 1), gpu.wgpu.BufferUsage.UNIFORM | gpu.wgpu.BufferUsage.COPY_DST)
        gpu.queue.write_buffer(ub, 0, b"".join(struct.pack("<f", float(v)) for v in uniforms.values()))
        entries.append({"binding": r.uniform_binding, "resource": {"buffer": ub, "offset": 0, "size": ub.size}})
    enc = gpu.device.create_command_encoder()
    cp = enc.begin_compute_pass()
    cp.set_pipeline(pipe)
    cp.set_bind_group(0, gpu.device.create_bind_group(layout=bgl, entries=entries))
    cp.dispatch_workgroups(*r.dispatch)
    cp.end()
    gpu.queue.submit([enc.finish()])
    return [np.frombuffer(gpu.queue.read_buffer(buf, 0, a.nbytes), a.dtype).reshape(a.shape) for buf, a in zip(bufs, arrays)]
