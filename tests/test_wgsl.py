"""The WGSL target: every kernel kind against the kernel interpreter (tgc/ir/kinterp.py),
whole programs of the tiny preset against the graph interpreter (tgc/ir/interp.py),
browser limits for every preset up to mega, and WGSL errors surfacing as TgcErrors.

GPU tests run on whatever adapter wgpu finds (lavapipe here: keep shapes small).
Tolerances: kernels compare in f32 against the kernel interpreter; only summation
order differs (tree reductions, tiled k), so rtol 1e-5 / atol 1e-5 on values of
order 1, scaled by sqrt(K) for matmuls. Programs: a fused, reordered train step
agrees with the graph interpreter to ~1e-6 absolute on loss and updated weights.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import harness
import numpy as np
import pytest
from helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgc.codegen.wgsl import MAX_DISPATCH
from tgc.compiler import compile_model
from tgc.errors import TgcError
from tgc.ir import build as b
from tgc.ir import kinterp, kpasses
from tgc.ir.interp import run_program
from tgc.ir.kernel import Kernel, View, canonical
from tgc.ir.passes import run_passes
from tgc.ir.program import Program
from tgc.ir.schedule import TensorInfo, schedule

FEW = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def gpu():
    from tgc.runtime.webgpu import GPU

    return GPU()


def check_graph(gpu, outputs: dict, env: dict, rtol=1e-5, atol=1e-5, updates=None):
    """Compile a small program for WebGPU, run it, and compare every tensor with the kernel
    interpreter (tests/harness.py); returns its schedule."""
    with tempfile.TemporaryDirectory() as d:
        c, _ = harness.run_graph(Path(d), outputs, env, target="webgpu", updates=updates, rtol=rtol, atol=atol, gpu=gpu)
    return c.schedules[harness.PROGRAM]


def rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


dims = st.integers(1, 70)

# ---------------------------------------------------------------- kernels


@pytest.mark.gpu
@FEW
@given(st.lists(dims, min_size=1, max_size=3), st.data())
def test_elementwise_broadcast_permute(gpu, shape, data):
    rng = np.random.default_rng(0)
    shape = tuple(shape)
    x = b.input("x", shape)
    bshape = tuple(s if data.draw(st.booleans()) else 1 for s in shape)
    y = b.input("y", bshape)
    z = b.mul(b.exp(b.neg(b.mul(x, x))), b.expand(y, shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    out = b.add(b.permute(z, perm), b.erf(b.tanh(b.permute(x, perm))))
    env = {"x": rand(rng, shape), "y": rand(rng, bshape)}
    check_graph(gpu, {"out": b.where(b.cmplt(out, b.full(out.shape, 0.5)), out, b.sqrt(b.maximum(out, b.full(out.shape, 0.0))))}, env)


@pytest.mark.gpu
@FEW
@given(st.lists(st.integers(1, 300), min_size=1, max_size=3), st.data())
def test_reductions(gpu, shape, data):
    rng = np.random.default_rng(1)
    shape = tuple(shape)
    axis = data.draw(st.integers(0, len(shape) - 1))
    x = b.input("x", shape)
    env = {"x": rand(rng, shape)}
    check_graph(gpu, {"s": b.reduce_sum(x, axis), "m": b.reduce_max(b.mul(x, x), axis)}, env, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_softmax_and_layernorm(gpu):
    rng = np.random.default_rng(2)
    x = b.input("x", (5, 33, 70))
    w, bias = b.input("w", (70,)), b.input("bias", (70,))
    env = {"x": rand(rng, (5, 33, 70)), "w": rand(rng, (70,)), "bias": rand(rng, (70,))}
    check_graph(gpu, {"sm": b.softmax(x), "ln": b.layernorm(x, w, bias, 1e-5), "g": b.gelu(x)}, env, atol=2e-5)


matmul_forms = st.sampled_from(["nn", "nt", "tn"])


def _matmul_graph(M, K, N, form, batch=()):
    a = b.input("a", (*batch, M, K) if form[0] == "n" else (*batch, K, M))
    w = b.input("w", (*batch, K, N) if form[1] == "n" else (*batch, N, K))
    nd = len(batch)
    tr = lambda t: b.permute(t, (*range(nd), nd + 1, nd))
    return a, w, b.matmul(a if form[0] == "n" else tr(a), w if form[1] == "n" else tr(w))


@pytest.mark.gpu
@FEW
@given(st.integers(1, 150), st.integers(1, 150), st.integers(1, 150), matmul_forms)
def test_matmul_forms(gpu, M, K, N, form):
    rng = np.random.default_rng(3)
    a, w, y = _matmul_graph(M, K, N, form)
    check_graph(gpu, {"y": y}, {"a": rand(rng, a.shape), "w": rand(rng, w.shape)}, rtol=1e-5, atol=1e-5 * np.sqrt(K))


@pytest.mark.gpu
@FEW
@given(st.lists(st.integers(1, 4), min_size=1, max_size=2), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), matmul_forms)
def test_matmul_batched(gpu, batch, M, K, N, form):
    rng = np.random.default_rng(4)
    a, w, y = _matmul_graph(M, K, N, form, tuple(batch))
    check_graph(gpu, {"y": y}, {"a": rand(rng, a.shape), "w": rand(rng, w.shape)}, rtol=1e-5, atol=1e-5 * np.sqrt(K))


@pytest.mark.gpu
@pytest.mark.parametrize("name,prefetch", [("32x32", True), ("64x64", True), ("128x128", True), ("32x32s4", True),
                                           ("128x128", False), ("32x32s4", False)])
def test_matmul_tiles_strided_views(gpu, name, prefetch):
    """Kernel built directly: view offsets, broadcast batch (stride 0) and every tile
    (split-K inside the workgroup too, with and without register prefetch), with M, N, K
    not multiples of it."""
    tile = int(name.split("x")[0])
    M, N, K = tile + 3, tile * 2 - 5, 211 if "s" in name else 37
    rng = np.random.default_rng(5)
    A = rand(rng, 2 * M * K + 7)
    B = rand(rng, N * K + 3)
    k = Kernel("k_mm", "matmul", 2 * M * N, a=View("A", (2, M, K), (M * K, K, 1), 7),
               b=View("B", (2, K, N), (0, 1, K), 3), out="C", batch=(2,), M=M, N=N, K=K)
    infos = {"A": TensorInfo("A", A.shape, "f32", "input"), "B": TensorInfo("B", B.shape, "f32", "input"),
             "C": TensorInfo("C", (2 * M * N,), "f32", "output")}
    c, order = canonical(k, infos)
    kpasses.run_kernel_passes({"k": c}, verify=True)
    c.decisions["wgsl"] = {"tile": next(t for t in kpasses.TILES if kpasses.tile_name(t) == name), "prefetch": prefetch}
    arrays = {"A": A, "B": B, "C": np.zeros(2 * M * N, np.float32)}
    got = harness.gpu_kernel(gpu, c, [arrays[t] for t in order])[order.index("C")]
    mem = {n: a.copy() for n, a in arrays.items()}
    kinterp.run_kernel(k, mem, {})
    assert_close(got, mem["C"], 1e-5, 1e-5 * np.sqrt(K), "C")


@pytest.mark.gpu
@FEW
@given(v=st.integers(1, 70), d=st.integers(1, 40), n=st.integers(1, 90), seed=st.integers(0, 99))
def test_onehot_matmul(gpu, v, d, n, seed):
    """onehot(idx)^T @ g with the one-hot computed in the tile loader, never stored."""
    rng = np.random.default_rng(seed)
    idx, g = b.input("idx", (n,), "i32"), b.input("g", (n, d))
    s = check_graph(gpu, {"dt": b.matmul(b.transpose(b.onehot(idx, v)), g)},
                    {"idx": rng.integers(-1, v + 1, n).astype(np.int32), "g": rand(rng, (n, d))})  # fmt: skip
    assert [k.a_onehot for k in s.kernels] == ["idx"]


@pytest.mark.gpu
@FEW
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 70), c=st.integers(-20, 20))
def test_banded_matmuls(gpu, m, n, k, c):
    """Matmuls carrying a Band (tgc/ir/structure.py) stay right where they are read."""
    from test_wasm import banded_matmuls

    outs, env = banded_matmuls(m, n, k, c)
    s = check_graph(gpu, outs, env, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    assert all(kk.band for kk in s.kernels if kk.kind == "matmul")


@pytest.mark.gpu
def test_embedding_gather_and_cache_write(gpu):
    rng = np.random.default_rng(6)
    table = b.input("table", (50, 24))
    idx = b.input("idx", (3, 7), "i32")
    cache = b.input("cache", (2, 16, 24), role="kv_cache")
    new = b.input("new", (2, 5, 24))
    pos = b.uniform("pos", "i32")
    emb = b.embed(table, idx)
    from tgc.ir.node import make
    from tgc.ir.ops import Op

    written = make(Op.UPDATE_SLICE, (cache, new, pos), 1)
    env = {"table": rand(rng, (50, 24)), "idx": rng.integers(0, 50, (3, 7)).astype(np.int32),
           "cache": rand(rng, (2, 16, 24)), "new": rand(rng, (2, 5, 24)), "pos": 9}
    check_graph(gpu, {"emb": b.mul(emb, emb)}, env, updates={"cache": written})


@pytest.mark.gpu
def test_large_elementwise_spills_into_y(gpu, monkeypatch, tmp_path):
    monkeypatch.setitem(kpasses.OPTIONS, "ew_multi", False)  # one output per thread: the most workgroups
    n = 256 * MAX_DISPATCH + 1000
    x = b.input("x", (n,))
    rng = np.random.default_rng(7)
    c, _ = harness.run_graph(tmp_path, {"y": b.add(b.mul(x, b.full((n,), 2.0)), b.full((n,), 1.0))},
                             {"x": rand(rng, (n,))}, target="webgpu", gpu=gpu)  # fmt: skip
    (k,) = c.manifest.kernels.values()
    assert k.wgsl["dispatch"][1] > 1


@pytest.mark.gpu
def test_elementwise_several_outputs_per_thread(gpu):
    """Large kernels give each thread 4 outputs WG apart; the last workgroup is partial."""
    rows = 4 * kpasses.WG * 512 // 7 + 11
    assert kpasses.elementwise_per_thread(rows * 7) == 4 and (rows * 7) % (4 * kpasses.WG) != 0
    x = b.input("x", (rows, 7))
    y = b.input("y", (7,))
    rng = np.random.default_rng(8)
    check_graph(gpu, {"z": b.mul(b.exp(x), b.add(y, b.full((7,), 1.0)))}, {"x": rand(rng, (rows, 7)), "y": rand(rng, (7,))})


# ---------------------------------------------------------------- programs (tiny preset)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, gpu):
    from tgc.runtime.base import initial_state
    from tgc.runtime.webgpu import WebGPURuntime

    d = tmp_path_factory.mktemp("tiny")
    c = compile_model(preset="tiny", out=d, targets=("wgsl",))
    rt = WebGPURuntime(d, gpu=gpu)
    state = initial_state(rt.manifest, 0)
    for k, v in state.items():
        rt.write(k, v)
    return c, rt, state


def batch(c, rng):
    V, T = c.config["vocab"], c.config["ctx"]
    return {"idx": rng.integers(0, V, (c.batch, T)).astype(np.int32), "targets": rng.integers(0, V, (c.batch, T)).astype(np.int32)}


@pytest.mark.gpu
def test_tiny_inference_programs(tiny):
    c, rt, state = tiny
    rng = np.random.default_rng(8)
    V, T = c.config["vocab"], c.config["ctx"]
    env = {**state, **batch(c, rng)}
    got = rt.run("eval_loss", {k: env[k] for k in ("idx", "targets")})
    want, _ = run_program(c.programs["eval_loss"], env)
    assert_close(got["loss"], want["loss"], 1e-5, 1e-5, "eval_loss")

    tokens = rng.integers(0, V, (1, T)).astype(np.int32)
    got = rt.run("forward", {"tokens": tokens})
    want, _ = run_program(c.programs["forward"], {**state, "tokens": tokens})
    assert_close(got["logits"], want["logits"], 1e-5, 1e-5, "forward logits")

    # prefill a prompt of 5 tokens, then decode two more: logits and caches match
    caches = {n: np.zeros(t["shape"], np.float32) for n, t in rt.tensors.items() if t["role"] == "kv_cache"}
    for n, v in caches.items():
        rt.write(n, v)
    env = {**state, **caches, "tokens": tokens, "len": 5}
    got = rt.run("prefill", {"tokens": tokens}, {"len": 5})
    want, upd = run_program(c.programs["prefill"], env)
    assert_close(got["logits"], want["logits"], 1e-5, 1e-5, "prefill logits")
    caches.update(upd)
    for pos in (5, 6):
        tok = tokens[:, pos : pos + 1]
        got = rt.run("decode_step", {"token": tok}, {"pos": pos})
        want, upd = run_program(c.programs["decode_step"], {**state, **caches, "token": tok, "pos": pos})
        caches.update(upd)
        assert_close(got["logits"], want["logits"], 1e-5, 1e-5, f"decode_step logits at {pos}")
    for n, v in caches.items():
        assert_close(rt.read(n), v, 1e-5, 1e-5, n)


@pytest.mark.gpu
def test_tiny_train_steps_match_interpreter(tiny):
    """Same weights, same batch (so the loss must fall): loss per step and the final weights agree."""
    c, rt, state = tiny
    rng = np.random.default_rng(9)
    ref = dict(state)
    for n, v in state.items():
        rt.write(n, v)
    u = {"lr": 1e-2, "warmup": 2, "total_steps": 20}
    losses = []
    bt = batch(c, rng)
    for step in range(1, 9):
        got = rt.run("train_step", bt, {**u, "step": step})
        assert set(got) == {"loss"}
        want, upd = run_program(c.programs["train_step"], {**ref, **bt, **u, "step": step})
        ref.update(upd)
        assert_close(got["loss"], want["loss"], 1e-5, 1e-5, f"loss at step {step}")
        losses.append(float(got["loss"]))
    assert losses[-1] < losses[0]
    for n in ("transformer.wte.weight", "transformer.h.1.mlp.c_fc.weight", "adam_v/transformer.ln_f.bias"):
        assert_close(rt.read(n), ref[n], 1e-4, 1e-5, n)
    # an arena tensor through the manifest's places: the gradient output of the last step
    g = rt.read_tensor("train_step", c.schedules["train_step"].outputs["grad/transformer.ln_f.bias"])
    assert g.shape == (c.config["d"],) and np.isfinite(g).all()


# ---------------------------------------------------------------- limits, errors


_WG_ARRAY = re.compile(r"var<workgroup>\s+\w+\s*:\s*array<(f32|vec4<f32>),\s*(\d+)>")
_WG_SIZE = re.compile(r"@workgroup_size\(([\d,\s]+)\)")


@pytest.mark.parametrize("preset", ["tiny", "small", "medium", "large", "xl", "huge", "massive", "mega"])
def test_browser_limits(preset, tmp_path):
    """Every kernel stays within the browser's default WebGPU limits, whatever binds it."""
    from tgc.artifact import read_manifest

    compile_model(preset=preset, out=tmp_path, targets=("wgsl",))
    m = read_manifest(tmp_path)
    assert all(size <= 256 << 20 for size in m.buffers.values()), "a buffer over maxBufferSize"
    for name, k in m.kernels.items():
        w = k.wgsl
        src = (tmp_path / w["file"]).read_text()
        assert sum(w["chunks"]) <= 8, name
        assert src.count("var<storage") == sum(w["chunks"]), name
        smem = sum(int(n) * (16 if t.startswith("vec4") else 4) for t, n in _WG_ARRAY.findall(src))
        assert smem <= 16384, f"{name}: {smem} bytes of workgroup memory"
        (size,) = _WG_SIZE.findall(src)
        assert np.prod([int(x) for x in size.split(",")]) <= 256, name
        assert all(1 <= d <= 65535 for d in w["dispatch"]), name
    for p in m.programs.values():  # every binding within maxStorageBufferBindingSize, 256-aligned
        for kname, tensors in p.launches:
            for t, chunks in zip(tensors, m.kernels[kname].wgsl["chunks"]):
                place = m.place(p.name, t)
                assert place.offset % 256 == 0 and place.nbytes <= chunks * m.wgsl["max_binding_bytes"], (kname, t)


@pytest.mark.gpu
def test_invalid_wgsl_names_the_kernel(gpu, tmp_path):
    with pytest.raises(TgcError, match=r"train_step\.k7_oops"):
        gpu.pipeline("train_step.k7_oops", "@compute @workgroup_size(1) fn main() { let x: f32 = 1; undefined_fn(x); }", 0, None)
    # through the runtime: a corrupted kernel file of an artifact
    from tgc.artifact import read_manifest
    from tgc.runtime.webgpu import WebGPURuntime

    compile_model(preset="tiny", out=tmp_path, targets=("wgsl",))
    m = read_manifest(tmp_path)
    first = m.programs["forward"].launches[0][0]
    (tmp_path / m.kernels[first].wgsl["file"]).write_text("fn main( {")
    rt = WebGPURuntime(tmp_path, gpu=gpu)
    with pytest.raises(TgcError, match=re.escape(first)):
        rt.run("forward", {"tokens": np.zeros((1, m.model["config"]["ctx"]), np.int32)})


def test_kernels_bind_at_most_eight_tensors():
    """A sum of nine inputs is one expression, but no kernel may bind more than eight
    storage buffers: the scheduler stores part of it."""
    srcs = [b.input(f"x{i}", (4,)) for i in range(9)]
    y = srcs[0]
    for s_ in srcs[1:]:
        y = b.add(y, s_)
    s = schedule(Program("p", {"y": y}).map_graph(run_passes))
    assert len(s.kernels) == 2
    assert all(len(k.loads() | set(k.writes())) <= 8 for k in s.kernels)
    env = {f"x{i}": np.full(4, i, np.float32) for i in range(9)}
    out, _ = kinterp.run_schedule(s, env)
    assert_close(out["y"], np.full(4, 36.0, np.float32), 1e-5, 1e-5, "y")


@pytest.mark.gpu
def test_tensors_over_the_binding_limit_are_split(gpu, tmp_path, monkeypatch):
    """A tensor larger than the binding limit is bound in chunks and read and written through
    an accessor: an embedding table, its lm-head matmul and an elementwise op over it, with
    the limit lowered to 64 KiB so that the tensors here (100-200 KiB) take 2-4 bindings."""
    from tgc.ir import schedule as S

    monkeypatch.setattr(S, "MAX_BINDING_BYTES", 64 << 10)
    rng = np.random.default_rng(11)
    V, D, T = 600, 40, 12
    table, idx = b.input("table", (V, D)), b.input("idx", (T,), "i32")
    x = b.embed(table, idx)
    logits = b.matmul(x, b.transpose(table))
    c, _ = harness.run_graph(tmp_path, {"logits": logits, "scaled": b.mul(table, table)},
                             {"table": rand(rng, (V, D)), "idx": rng.integers(0, V, T).astype(np.int32)},
                             target="webgpu", gpu=gpu, atol=1e-5)  # fmt: skip
    chunks = [k.wgsl["chunks"] for k in c.manifest.kernels.values()]
    assert any(max(ch) >= 2 for ch in chunks), chunks
