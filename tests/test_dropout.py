"""Dropout: RAND draws the host RNG's numbers on the device, and DROPOUT is active in
train_step only, identically on numpy, WebAssembly and WebGPU."""

from __future__ import annotations

import numpy as np
import pytest
from harness import run_graph
from helpers import assert_close

from tgc import rng
from tgc.ir import build as B
from tgc.ir.ops import Op
from tgc.ir.rules import get_rule

KEY = int(rng.key(7, "dropout"))  # a uint32 with the top bit set: the i32 key is negative


def _i32(u: int) -> np.int32:
    return np.array([u], np.uint32).view(np.int32)[0]


def test_rand_is_the_host_rngs_bits():
    """RAND(counter, key) is tgc/rng.py's bits(seed, stream, counter) under that stream's key."""
    counters = np.arange(0, 5000, dtype=np.int32)
    got = get_rule(Op.RAND).numpy(None, counters, np.full_like(counters, _i32(KEY)))
    want = (rng.bits(7, "dropout", 0, 5000) >> np.uint32(8)).astype(np.float64) / 2**24
    np.testing.assert_array_equal(got.astype(np.float64), want)
    assert got.dtype == np.float32 and 0 <= got.min() and got.max() < 1
    assert abs(got.mean() - 0.5) < 0.02  # uniform


@pytest.mark.parametrize("target", ["wasm", pytest.param("webgpu", marks=pytest.mark.gpu)])
def test_rand_bitwise_on_targets(tmp_path, target):
    """Every target computes the same bits: counters up to 2**31 - 1, a negative key."""
    n = 3000
    c = B.input("c", (n,), "i32")
    key = B.uniform("key", "i32")
    counters = np.concatenate([np.arange(n - 3, dtype=np.int32), np.array([2**31 - 1, 2**31 - 2, 123456789], np.int32)])
    # tolerance 0: run_graph compares every tensor with the kernel interpreter
    run_graph(tmp_path, {"u": B.rand(c, key)}, {"c": counters}, {"key": _i32(KEY)}, target=target, rtol=0, atol=0)


def _compiled(pdrop: float, targets=()):
    from tgc.compiler import compile_model

    return compile_model(None, "tiny", targets=targets, overrides={"pdrop": pdrop})


def test_dropout_only_in_train_step():
    c = _compiled(0.25)
    for name, prog in c.programs.items():
        ops = {n.op for n in _walk(prog)}
        assert Op.DROPOUT not in ops, name
        assert (Op.RAND in ops) == (name == "train_step"), name
        assert ("dropout_key" in prog.uniforms) == (name == "train_step"), name
    plain = _compiled(0.0)
    assert all(Op.RAND not in {n.op for n in _walk(p)} for p in plain.programs.values())


def _walk(prog):
    from tgc.ir.node import toposort

    return toposort(prog.nodes())


def test_dropout_mask_rate_and_scale():
    """On the reference: the loss moves with the key, eval_loss does not see dropout, and a
    rate of 0.25 keeps about 75% of the embedding's elements, scaled by 1 / 0.75."""
    from tgc.reference import ReferenceRuntime

    drop, plain = ReferenceRuntime(_compiled(0.25)), ReferenceRuntime(_compiled(0.0))
    for rt in (drop, plain):
        rt.init_state(0)
    r = np.random.default_rng(0)
    idx = r.integers(0, 256, (16, 32)).astype(np.int32)
    tgt = r.integers(0, 256, (16, 32)).astype(np.int32)
    uni = {"step": 1.0, "lr": 0.0, "warmup": 1.0, "total_steps": 1.0}
    ev = lambda rt: float(rt.run("eval_loss", {"idx": idx, "targets": tgt}, {})["loss"])
    assert ev(drop) == ev(plain)
    losses = {float(drop.run("train_step", {"idx": idx, "targets": tgt}, {**uni, "dropout_key": _i32(k)})["loss"])
              for k in (1, 2, 3)}
    assert len(losses) == 3 and all(abs(v - ev(plain)) < 0.5 for v in losses)
    # the first site is the embedding sum: counters 0 .. B*T*d - 1
    n = 16 * 32 * 48
    u = get_rule(Op.RAND).numpy(None, np.arange(n, dtype=np.int32), np.full(n, _i32(KEY), np.int32))
    kept = (u >= 0.25).mean()
    assert 0.74 < kept < 0.76


def test_dropout_gradient_matches_finite_differences():
    """With the key fixed, the dropped-out loss is a deterministic function of the weights:
    its gradient (autodiff through the mask) matches central differences. A gradient that
    ignored the mask, or drew another one, is off by tens of percent."""
    from tgc.ir.interp import run_program

    c = _compiled(0.3)
    prog = c.programs["train_step"]
    from tgc.runtime.base import initial_state

    state = initial_state(c.manifest.to_json(), 0)
    r = np.random.default_rng(1)
    env = {**state, "idx": r.integers(0, 256, (16, 32)).astype(np.int32), "targets": r.integers(0, 256, (16, 32)).astype(np.int32),
           "step": 1.0, "lr": 0.0, "warmup": 1.0, "total_steps": 1.0, "dropout_key": _i32(KEY)}  # fmt: skip
    name = "transformer.h.0.mlp.c_fc.weight"
    outs, _ = run_program(prog, env)
    g = outs[f"grad/{name}"]
    w = env[name]
    for flat in np.argsort(-np.abs(g).ravel())[:4]:  # the interpreter computes in f32: the largest gradients
        i = np.unravel_index(flat, w.shape)
        eps = 1e-2
        vals = []
        for s in (1, -1):
            w2 = w.copy()
            w2[i] += s * eps
            vals.append(float(run_program(prog, {**env, name: w2})[0]["loss"]))
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert_close(np.array([g[i]]), np.array([fd]), 2e-2, 1e-6, name=f"{name}{i}")


@pytest.mark.gpu
def test_dropout_parity_across_targets(tmp_path):
    """train_step with dropout: loss and gradients on wasm and WebGPU against numpy."""
    from tgc.compiler import compile_model
    from tgc.parity import open_targets

    c = compile_model(None, "tiny", out=tmp_path, overrides={"pdrop": 0.2})
    rts = open_targets(tmp_path, c, with_interpreter=True)
    for rt in rts.values():
        rt.init_state(0)
    r = np.random.default_rng(2)
    idx = r.integers(0, 256, (16, 32)).astype(np.int32)
    tgt = r.integers(0, 256, (16, 32)).astype(np.int32)
    uni = {"step": 1.0, "lr": 1e-3, "warmup": 1.0, "total_steps": 10.0, "dropout_key": _i32(KEY)}
    reads = ["loss", "grad/transformer.wte.weight", "grad/transformer.h.1.mlp.c_fc.weight"]
    res = {n: rt.run("train_step", {"idx": idx, "targets": tgt}, uni, read=reads) for n, rt in rts.items()}
    for other in ("wasm", "webgpu"):
        assert_close(res[other]["loss"], res["numpy"]["loss"], 1e-5, 1e-6, name=f"{other} loss")
        for k in reads[1:]:
            assert_close(res[other][k], res["numpy"][k], 1e-3, 1e-6, name=f"{other} {k}")
