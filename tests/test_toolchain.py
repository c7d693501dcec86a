"""The toolchain spike: llvmlite -> wasm64 object -> wasm-ld -> wasmtime, and wgpu on lavapipe.

Proves, on the machine the tests run on, each step docs/toolchain.md describes: a SIMD128
kernel built with llvmlite's IR builder for wasm64, linked with an imported 64-bit memory
that the host sizes (here past 4 GiB), called through wasmtime -- on the engine the wasm
runtime runs artifacts on (tgc.runtime.wasm.engine) -- on data beyond 4 GiB and read back
through a zero-copy numpy view; and one WGSL compute shader run through the device,
pipeline and bind-group code of the WebGPU runtime (tgc.runtime.webgpu.GPU).
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from tgc import toolchain
from tgc.errors import TgcError

WASM_PAGE = 65536


def build_scale_object() -> tuple[bytes, str]:
    """scale(ptr: i64, n: i64, s: f32): x[0:n] *= s in place, 4 lanes at a time then a scalar tail.

    Returns the wasm64 object file and its assembly text.
    """
    import llvmlite.binding as llvm
    from llvmlite import ir

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple = "wasm64-unknown-unknown"
    tm = llvm.Target.from_triple(triple).create_target_machine(cpu="generic", features="+simd128", opt=3)

    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    v4 = ir.VectorType(f32, 4)
    mod = ir.Module(name="scale")
    mod.triple, mod.data_layout = triple, str(tm.target_data)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [i64, i64, f32]), name="scale")
    addr, n, s = fn.args
    entry, vcond, vbody, tcond, tbody, done = (
        fn.append_basic_block(name) for name in ("entry", "vcond", "vbody", "tcond", "tbody", "done")
    )
    b = ir.IRBuilder(entry)
    base = b.inttoptr(addr, f32.as_pointer())
    s1 = b.insert_element(ir.Constant(v4, ir.Undefined), s, ir.Constant(i32, 0))
    s4 = b.shuffle_vector(s1, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 4), [0] * 4))
    b.branch(vcond)

    b.position_at_end(vcond)  # while i + 4 <= n: x[i:i+4] *= s
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    b.cbranch(b.icmp_unsigned("<=", b.add(i, ir.Constant(i64, 4)), n), vbody, tcond)
    b.position_at_end(vbody)
    p = b.bitcast(b.gep(base, [i], inbounds=True), v4.as_pointer())
    b.store(b.fmul(b.load(p, align=4), s4), p, align=4)
    i.add_incoming(b.add(i, ir.Constant(i64, 4)), vbody)
    b.branch(vcond)

    b.position_at_end(tcond)  # the n % 4 floats left
    j = b.phi(i64)
    j.add_incoming(i, vcond)
    b.cbranch(b.icmp_unsigned("<", j, n), tbody, done)
    b.position_at_end(tbody)
    q = b.gep(base, [j], inbounds=True)
    b.store(b.fmul(b.load(q), s), q)
    j.add_incoming(b.add(j, ir.Constant(i64, 1)), tbody)
    b.branch(tcond)
    b.position_at_end(done)
    b.ret_void()

    m = llvm.parse_assembly(str(mod))
    m.verify()
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(m, pb)
    return tm.emit_object(m), tm.emit_assembly(m)


def link(obj: bytes, tmp_path) -> bytes:
    o, wasm = tmp_path / "scale.o", tmp_path / "scale.wasm"
    o.write_bytes(obj)
    cmd = [*toolchain.find_wasm_ld(), "-mwasm64", "--no-entry", "--import-memory",
           "--export=scale", "--export=__heap_base", "-o", str(wasm), str(o)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return wasm.read_bytes()


def test_find_wasm_ld_runs():
    cmd = toolchain.find_wasm_ld()
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True)
    assert "LLD" in out.stdout + out.stderr
    assert toolchain.find_wasm_ld() is cmd  # cached


def test_find_wasm_ld_missing_is_a_user_error(monkeypatch):
    monkeypatch.setattr(toolchain, "_runs", lambda cmd: False)
    toolchain.find_wasm_ld.cache_clear()
    try:
        with pytest.raises(TgcError, match="wasm-ld not found: pip install ziglang"):
            toolchain.find_wasm_ld()
    finally:
        toolchain.find_wasm_ld.cache_clear()


@pytest.mark.timeout(120)
def test_wasm64_simd_kernel_beyond_4gib(tmp_path):
    import wasmtime

    t0 = time.perf_counter()
    obj, asm = build_scale_object()
    assert "f32x4.mul" in asm and "v128.load" in asm, "the loop was not vectorized to SIMD128"
    wasm = link(obj, tmp_path)
    t_build = time.perf_counter() - t0

    from tgc.runtime.wasm import engine as production_engine

    engine = production_engine()  # the engine artifacts run on: memory64, SIMD, Spectre hardening off
    module = wasmtime.Module(engine, wasm)
    (imp,) = [x for x in module.imports if isinstance(x.type, wasmtime.MemoryType)]
    assert (imp.module, imp.name) == ("env", "memory")
    assert imp.type.is_64 and imp.type.limits.max is None  # the host picks any size

    off, n = (4 << 30) + 4096, 1003  # past 4 GiB; n % 4 == 3 exercises the scalar tail
    pages = -(-(off + 4 * n) // WASM_PAGE)
    store = wasmtime.Store(engine)
    memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(pages, None), is_64=True))
    inst = wasmtime.Instance(store, module, [memory])
    assert memory.type(store).is_64 and memory.data_len(store) > 4 << 30
    assert inst.exports(store)["__heap_base"].value(store) <= off  # module's own data stays below

    x = np.random.default_rng(0).standard_normal(n + 2).astype(np.float32)
    view = toolchain.memory_view(memory, store, off - 4, n + 2)  # one guard float either side
    view[:] = x
    inst.exports(store)["scale"](store, off, n, 2.5)
    want = x.copy()
    want[1:-1] *= np.float32(2.5)
    np.testing.assert_array_equal(view, want)  # one f32 multiply each: exact
    elapsed = time.perf_counter() - t0
    print(f"build+link {t_build:.3f}s, whole test {elapsed:.3f}s")
    assert elapsed < 60


def test_memory_view_bounds():
    import wasmtime

    from tgc.runtime.wasm import engine

    store = wasmtime.Store(engine())
    memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, None), is_64=True))
    assert toolchain.memory_view(memory, store, WASM_PAGE - 8, 2).shape == (2,)
    with pytest.raises(ValueError):
        toolchain.memory_view(memory, store, WASM_PAGE - 4, 2)


ADD_WGSL = """
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < arrayLength(&c)) { c[i] = a[i] + b[i]; }
}
"""


@pytest.mark.gpu
def test_webgpu_add_arrays():
    """One WGSL kernel through tgc's GPU wrapper: the device with the adapter's limits, the shared
    bind group layouts and the pipeline built as the runtime builds them, and its WGSL errors."""
    from tgc.runtime.webgpu import GPU

    gpu = GPU()
    n = 1000
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    bufs = [gpu.buffer(a.nbytes) for _ in range(3)]
    gpu.queue.write_buffer(bufs[0], 0, a.tobytes())
    gpu.queue.write_buffer(bufs[1], 0, b.tobytes())
    pipeline, layout = gpu.pipeline("add", ADD_WGSL, 3, None)
    assert gpu.bind_group_layout(3, None)[0] is layout  # one layout per binding shape, shared by kernels
    group = gpu.device.create_bind_group(layout=layout, entries=[
        {"binding": i, "resource": {"buffer": buf, "offset": 0, "size": buf.size}} for i, buf in enumerate(bufs)])
    encoder = gpu.device.create_command_encoder()
    compute = encoder.begin_compute_pass()
    compute.set_pipeline(pipeline)
    compute.set_bind_group(0, group)
    compute.dispatch_workgroups(-(-n // 64))
    compute.end()
    gpu.queue.submit([encoder.finish()])
    c = np.frombuffer(gpu.queue.read_buffer(bufs[2], 0, a.nbytes), dtype=np.float32)
    np.testing.assert_array_equal(c, a + b)  # one f32 add each: exact
    with pytest.raises(TgcError, match="WGSL error in kernel broken"):
        gpu.pipeline("broken", ADD_WGSL.replace("a[i] + b[i]", "a[i] + q[i]"), 3, None)
