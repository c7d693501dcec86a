"""The WebAssembly target against the numpy references.

Kernels: graphs built with tgc.ir.build are scheduled as the compiler does, every kernel
is rendered to wasm64 and run in wasmtime with each tensor in its own place, and every
tensor (intermediates included) is compared with the kernel interpreter
(tgc/ir/kinterp.py). Programs: whole artifacts (tiny, small) against the graph
interpreter (tgc/ir/interp.py). Memory64: a module whose tensors sit past 4 GiB.

Tolerances (one helper, `assert_close`): max |got - want| <= atol + rtol * max |want|
per tensor. Kernels: rtol 2e-6 for elementwise work (same f32 ops, our exp/log/erf/tanh/cos
within a few ulp), 1e-5 where sums are reordered (vectorized reductions, blocked matmul).
Programs: rtol 1e-4 (many reordered sums feed each other through backprop and AdamW).
"""

from __future__ import annotations

import math
import time

import harness
import numpy as np
import pytest
from helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgc.ir import build as b
from tgc.runtime.wasm import WasmRuntime

HYP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_graph(tmp_path, outputs: dict, env: dict, uniforms: dict | None = None, base=None, rtol=1e-5):
    """Compile `outputs` for wasm and run them; every tensor against the kernel interpreter."""
    c, rt = harness.run_graph(tmp_path, outputs, env, uniforms, "wasm", heap_base=base, rtol=rtol)
    return c.schedules[harness.PROGRAM], rt


def rnd(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


dims = st.integers(1, 9)


# ---------------------------------------------------------------- kernels

@HYP
@given(shape=st.lists(dims, min_size=1, max_size=4), data=st.data())
def test_elementwise_index_math(tmp_path, shape, data):
    """broadcast (expand), permute and reshape feeding one fused elementwise kernel."""
    shape = tuple(shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = b.input("x", shape)
    bshape = tuple(1 if data.draw(st.booleans()) else s for s in shape)
    y = b.input("y", bshape)
    z = b.add(b.mul(x, b.expand(y, shape)), b.scalar(0.5, x))
    z = b.permute(z, perm)
    z = b.reshape(b.exp(z), (math.prod(shape),))
    run_graph(tmp_path, {"out": z}, {"x": rnd(shape), "y": rnd(bshape, 1)}, rtol=2e-6)


@HYP
@given(bt=st.integers(1, 5), h=st.integers(1, 3), t=st.integers(1, 6), hd=st.sampled_from([1, 2, 4, 8, 12]),
       n=st.integers(2, 3))
def test_concat_of_head_layouts(tmp_path, bt, h, t, hd, n):
    """A concat (pads of n slices added) of tensors in head layout [B, H, T, hd] back to
    [B, T, n * H * hd], like the q/k/v gradient: the renderer cuts the inner loop into pieces
    where its pad masks and head divisions are affine (tgc/ir/kpasses.py `split_pieces`)."""
    from tgc.ir.kpasses import split_gid, split_pieces

    c = h * hd
    xs = [b.input(f"x{i}", (bt, h, t, hd)) for i in range(n)]
    parts = [b.reshape(b.permute(x, (0, 2, 1, 3)), (bt, t, c)) for x in xs]
    z = b.pad(parts[0], 2, 0, (n - 1) * c)
    for i, p in enumerate(parts[1:], 1):
        z = b.add(z, b.pad(p, 2, i * c, (n - 1 - i) * c))
    s, _ = run_graph(tmp_path, {"out": z}, {f"x{i}": rnd((bt, h, t, hd), i) for i in range(n)}, rtol=2e-6)
    if h >= 2 and t >= 2 and hd >= 4:  # a real head permutation for the pieces to undo
        k = next(k for k in s.kernels if k.kind == "elementwise")
        _, L, _, j, outs = split_gid(k)
        assert split_pieces(L, j, outs) is not None


@pytest.mark.parametrize("op", ["exp", "log", "tanh", "erf", "cos", "sin", "sqrt", "recip", "neg"])
def test_math_functions(tmp_path, op):
    """Each unary op over a wide range, in wasm vs numpy's f32 (f64 inside) results."""
    r = np.random.default_rng(3)
    v = np.concatenate([r.standard_normal(2000) * s for s in (0.1, 1, 3, 10, 40)]).astype(np.float32)
    if op in ("log", "sqrt"):
        v = np.abs(v) + np.float32(1e-30)
        v = np.concatenate([v, [0.0, np.inf]]).astype(np.float32)
    if op == "exp":
        v = np.concatenate([v, [-100.0, 88.0, 89.0, -np.inf, np.inf]]).astype(np.float32)
    x = b.input("x", v.shape)
    fn = {"exp": b.exp, "log": b.log, "tanh": b.tanh, "erf": b.erf, "cos": b.cos, "sin": b.sin, "sqrt": b.sqrt,
          "recip": b.recip, "neg": b.neg}[op]  # fmt: skip
    s, rt = run_graph(tmp_path, {"out": fn(x)}, {"x": v}, rtol=1e-5)
    got = rt.read_tensor(harness.PROGRAM, s.outputs["out"]).astype(np.float64)
    want64 = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "cos": np.cos, "sin": np.sin, "erf": np.vectorize(math.erf)}.get(op)
    if want64 is not None:  # the documented accuracy (docs/wasm.md): ulps of the f64 result
        with np.errstate(all="ignore"):
            w = want64(v.astype(np.float64))
        ok = (np.abs(w) > 1.2e-38) & (np.abs(w) < 3.4e38)
        ulp = np.abs(got[ok] - w[ok]) / np.spacing(np.abs(w[ok]).astype(np.float32))
        print(f"{op}: max {ulp.max():.2f} ulp")
        assert ulp.max() <= {"exp": 2, "log": 2, "tanh": 3, "cos": 2, "sin": 2, "erf": 3}[op]


@HYP
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), data=st.data())
def test_reductions(tmp_path, shape, data):
    """SUM and RMAX over the last and non-last axes (the two loop orders of the renderer)."""
    shape = tuple(shape)
    axis = data.draw(st.integers(0, len(shape) - 1))
    x = b.input("x", shape)
    outs = {"s": b.reduce_sum(b.mul(x, x), axis), "m": b.reduce_max(x, axis)}
    run_graph(tmp_path, outs, {"x": rnd(shape)})


@HYP
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 300), form=st.sampled_from(["nn", "tn", "nt"]),
       batch=st.sampled_from([(), (2,), (2, 3)]))  # fmt: skip
def test_matmul(tmp_path, m, n, k, form, batch):
    """A @ B, A^T @ B, A @ B^T (strided views, no copies), batched; edges of the 4x16 tile."""
    ash = batch + ((k, m) if form == "tn" else (m, k))
    bsh = batch + ((n, k) if form == "nt" else (k, n))
    a, bb = b.input("a", ash), b.input("b", bsh)
    ta = b.transpose(a) if form == "tn" else a
    tb = b.transpose(bb) if form == "nt" else bb
    s, _ = run_graph(tmp_path, {"c": b.matmul(ta, tb)}, {"a": rnd(ash), "b": rnd(bsh, 1)})
    assert [kk.kind for kk in s.kernels] == ["matmul"]


def banded_matmuls(m, n, k, c):
    """Graphs whose matmuls get every kind of Band (tgc/ir/structure.py): a causal-style mask
    with offset c zeroes A or B (either orientation) or makes the output dead."""
    def mask(r, s, off):  # [r, s]: column <= row + off
        return b.cmplt(b.iota((r, s), 1), b.add(b.iota((r, s), 0), b.full((r, s), off + 1, "i32")))

    def zero_outside(x, off):
        return b.where(mask(*x.shape, off), x, b.full_like(x, 0.0))

    a, a2, bm, bm2 = b.input("a", (m, k)), b.input("a2", (k, m)), b.input("bm", (k, n)), b.input("bm2", (n, k))
    outs = {
        "lower_a": b.matmul(zero_outside(a, c), bm),                                  # k_to_m
        "upper_a": b.matmul(b.transpose(zero_outside(a2, c)), bm),                    # k_from_m
        "lower_b": b.matmul(a, zero_outside(bm, c)),                                  # k_from_n
        "upper_b": b.matmul(a, b.transpose(zero_outside(bm2, c))),                    # k_to_n
        "dead": b.where(mask(m, n, c), b.matmul(a, bm), b.full((m, n), 0.0)),         # dead_above
        "dead_below": b.where(mask(m, n, c), b.full((m, n), 0.0), b.matmul(a, b.transpose(bm2))),  # dead_below
    }
    env = {"a": rnd((m, k)), "a2": rnd((k, m), 1), "bm": rnd((k, n), 2), "bm2": rnd((n, k), 3)}
    return outs, env


@settings(HYP, max_examples=8)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 40), c=st.integers(-12, 12))
def test_banded_matmul(tmp_path, m, n, k, c):
    """Matmuls skipping the zero and dead triangles of a Band match numpy where it matters."""
    outs, env = banded_matmuls(m, n, k, c)
    s, _ = run_graph(tmp_path, outs, env)
    bands = [kk.band for kk in s.kernels if kk.kind == "matmul"]
    assert len(bands) == 6 and all(bands), bands


@settings(HYP, max_examples=8)
@given(m=st.integers(1, 20), n=st.integers(1, 40), c=st.integers(-25, 25))
def test_masks_split_their_loops(tmp_path, m, n, c):
    """Masks comparing the inner (or reduction) index with a per-row bound, either way round:
    the loop is cut at the bound with the mask decided on each side."""
    x = b.input("x", (m, n))
    i, j = b.iota((m, n), 0), b.iota((m, n), 1)
    off = b.full((m, n), c, "i32")
    below, above = b.cmplt(j, b.add(i, off)), b.cmplt(b.add(i, off), j)
    outs = {
        "e": b.where(below, b.exp(x), b.full_like(x, -1e30)),
        "s": b.reduce_sum(b.where(above, b.mul(x, x), b.full_like(x, 0.0)), 1),
        "mx": b.reduce_max(b.where(below, x, b.full_like(x, -5.0)), 1),
    }
    run_graph(tmp_path, outs, {"x": rnd((m, n))})


@HYP
@given(v=st.integers(1, 40), d=st.integers(1, 20), n=st.integers(1, 60), seed=st.integers(0, 99))
def test_onehot_matmul_scatters(tmp_path, v, d, n, seed):
    """An embedding's gradient, onehot(idx)^T @ g, runs as a scatter without the one-hot
    tensor; indices outside [0, v) select nothing, as in the one-hot."""
    idx, g = b.input("idx", (n,), "i32"), b.input("g", (n, d))
    ids = np.random.default_rng(seed).integers(-1, v + 1, n).astype(np.int32)
    s, _ = run_graph(tmp_path, {"dt": b.matmul(b.transpose(b.onehot(idx, v)), g)}, {"idx": ids, "g": rnd((n, d))})
    assert [k.a_onehot for k in s.kernels] == ["idx"]


def test_matmul_large_blocks(tmp_path):
    """Sizes past one KC x NC block and MC rows: the accumulate path and every edge."""
    m, n, k = 131, 2051, 517
    a, bb = b.input("a", (m, k)), b.input("b", (k, n))
    run_graph(tmp_path, {"c": b.matmul(a, bb)}, {"a": rnd((m, k)), "b": rnd((k, n), 1)})


@HYP
@given(v=st.integers(2, 50), d=st.integers(1, 20), bt=st.integers(1, 12))
def test_embedding_gather(tmp_path, v, d, bt):
    table, idx = b.input("table", (v, d)), b.input("idx", (bt,), "i32")
    ids = np.random.default_rng(v).integers(0, v, bt).astype(np.int32)
    run_graph(tmp_path, {"e": b.embed(table, idx)}, {"table": rnd((v, d)), "idx": ids})


def test_cache_write_and_uniforms(tmp_path):
    """UPDATE_SLICE into a KV cache at a runtime position (an i32 uniform), f32 uniform math."""
    from tgc.ir.node import make
    from tgc.ir.ops import Op

    cache, new = b.input("cache", (2, 16, 8), role="kv_cache"), b.input("new", (2, 3, 8))
    pos = b.uniform("pos", "i32")
    upd = make(Op.UPDATE_SLICE, (cache, new, pos), 1)
    lr = b.uniform("lr")
    scaled = b.mul(new, b.expand(b.reshape(lr, (1, 1, 1)), (2, 3, 8)))
    for p in (0, 5, 13):
        run_graph(tmp_path / str(p), {"c": upd, "s": scaled}, {"cache": rnd((2, 16, 8)), "new": rnd((2, 3, 8), 1)}, {"pos": p, "lr": 0.25})


def test_memory64_tensors_beyond_4gib(tmp_path):
    """The module's memory is 64-bit, and kernels read and write tensors placed past 4 GiB
    (the first one straddles the boundary): matmul, reduction, elementwise with exp."""
    t0 = time.perf_counter()
    base = (4 << 30) - 2048
    a, w = b.input("a", (24, 40)), b.input("w", (40, 33))
    h = b.matmul(a, w)
    outs = {"h": h, "p": b.exp(b.sub(h, b.expand(b.reduce_max(h, 1), (24, 33)))), "s": b.reduce_sum(h, 0)}
    s, rt = run_graph(tmp_path, outs, {"a": rnd((24, 40)), "w": rnd((40, 33), 1)}, base=base)
    assert rt.is_memory64 and rt.memory.type(rt.store).is_64
    places = {n: rt.art.place(harness.PROGRAM, n) for n in s.tensors}
    addrs = {n: rt.base[p.buffer] + p.offset for n, p in places.items()}
    assert all(addr + 4 * math.prod(s.tensors[n].shape) > 4 << 30 for n, addr in addrs.items())
    assert sum(addr >= 4 << 30 for addr in addrs.values()) >= 3
    assert time.perf_counter() - t0 < 60


# ---------------------------------------------------------------- whole programs

def _program_env(compiled, rt, seed=0):
    from tgc.runtime.base import initial_state

    state = initial_state(rt.manifest, seed)
    for name, value in state.items():
        rt.write(name, value)
    r = np.random.default_rng(seed)
    B, T = compiled.batch, compiled.config["ctx"]
    batch = {"idx": r.integers(0, 256, (B, T)).astype(np.int32), "targets": r.integers(0, 256, (B, T)).astype(np.int32)}
    return state, batch


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_programs_match_interpreter(tmp_path, preset):
    from tgc.compiler import compile_model
    from tgc.ir.interp import run_program

    c = compile_model(preset=preset, out=tmp_path / "art", targets=("wasm",))
    rt = WasmRuntime(tmp_path / "art")
    assert rt.is_memory64
    state, batch = _program_env(c, rt)
    T = c.config["ctx"]
    u = {"lr": 3e-4, "step": 1.0, "warmup": 10.0, "total_steps": 100.0}

    def check(pname, inputs, uniforms, env_state):
        want_out, want_upd = run_program(c.programs[pname], {**env_state, **inputs, **uniforms})
        got = rt.run(pname, inputs, uniforms, read=list(want_out))
        for name, w in want_out.items():
            assert_close(got[name], w, 1e-4, atol=1e-6, name=f"{pname}:{name}")
        for name, w in want_upd.items():
            assert_close(rt.read(name), w, 1e-4, atol=1e-6, name=f"{pname}:{name}")
        return want_upd

    check("eval_loss", batch, {}, state)
    check("forward", {"tokens": batch["idx"][:1]}, {}, state)
    used = {k: v for k, v in u.items() if k in c.schedules["train_step"].uniforms}
    new_state = check("train_step", batch, used, state)
    state = {**state, **new_state}
    n = T // 2
    tokens = np.zeros((1, T), np.int32)
    tokens[0, :n] = batch["idx"][0, :n]
    caches = check("prefill", {"tokens": tokens}, {"len": n}, state)
    state = {**state, **caches}
    check("decode_step", {"token": batch["idx"][:1, n : n + 1]}, {"pos": n}, state)


@pytest.mark.slow
def test_behemoth_train_step(tmp_path):
    """24 layers, d=1280, ctx 512: about 7.5 GiB of memory, most of the state past 4 GiB. One
    train_step; its loss matches the graph interpreter's loss on the same weights."""
    import resource

    from tgc.compiler import compile_model
    from tgc.ir.interp import run_program

    t0 = time.perf_counter()
    c = compile_model(preset="behemoth", out=tmp_path / "art", targets=("wasm",))
    t_compile = time.perf_counter() - t0
    from tgc.runtime.base import init_value, load_manifest

    # the interpreter first (it keeps every intermediate), then free it before wasm's 7.5 GiB
    params = {t["name"]: init_value(t, 0) for t in load_manifest(tmp_path / "art")["tensors"] if t["role"] == "parameter"}
    r = np.random.default_rng(0)
    batch = {k: r.integers(0, 256, (1, 512)).astype(np.int32) for k in ("idx", "targets")}
    want = float(run_program(c.programs["eval_loss"], {**params, **batch})[0]["loss"])
    rt = WasmRuntime(tmp_path / "art")
    assert rt.is_memory64 and rt.memory_bytes > 6 << 30  # 7.5 GiB: most state past 4 GiB
    for name in list(params):  # moments stay as the fresh memory's zeros
        rt.write(name, params.pop(name))
    u = {k: v for k, v in {"lr": 3e-4, "step": 1.0, "warmup": 10.0, "total_steps": 100.0}.items() if k in c.schedules["train_step"].uniforms}
    t1 = time.perf_counter()
    loss = float(rt.run("train_step", batch, u)["loss"])
    t_step = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"behemoth: compile {t_compile:.1f}s, train_step {t_step:.1f}s, loss {loss:.5f} vs {want:.5f}, peak RSS {peak:.2f} GiB")
    assert 5.0 < loss < 6.5  # near ln(256) = 5.545 at init
    assert abs(loss - want) < 1e-3
