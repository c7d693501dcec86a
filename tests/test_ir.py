"""The compiler core: autodiff against finite differences, the interpreter's GPT
against an independent numpy GPT-2, training in the interpreter, the verifier
after every pass, the memory plan's bound, and the scheduler against the
interpreter.

Tolerances (float64 throughout the gradient checks): central differences with
h = 1e-6 have truncation error ~h^2 * f''' and rounding error ~1e-16 / h, so
agreement to rtol 1e-6 (plus atol 1e-8 for values near zero) is what a correct
gradient gives and a wrong one never does.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpt2_numpy import cross_entropy, gpt2_logits
from helpers import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from tgc.ir import build as b
from tgc.ir.autodiff import grad
from tgc.ir.interp import evaluate, run_program
from tgc.ir.passes import PIPELINE, run_passes
from tgc.ir.verify import verify_graph, verify_program


def gradcheck(make, shapes, rng, positive=(), h=1e-6, rtol=1e-6, atol=1e-8, int_inputs=None):
    """make(*input_nodes) -> node; checks d sum(out * w) / d inputs against central differences."""
    xs = [b.input(f"x{i}", s) for i, s in enumerate(shapes)]
    env = {}
    for i, s in enumerate(shapes):
        v = rng.normal(size=s)
        env[f"x{i}"] = np.abs(v) + 0.5 if i in positive else v
    extra = {}
    if int_inputs:
        for name, (shape, high) in int_inputs.items():
            extra[name] = b.input(name, shape, "i32")
            env[name] = rng.integers(0, high, shape)
    out = make(*xs, **extra)
    w = b.input("w", out.shape)
    env["w"] = rng.normal(size=out.shape)
    loss = b.sum_all(b.mul(out, w))
    grads = grad(loss, xs)
    verify_graph(grads + [loss])
    got = evaluate(grads, env, np.float64)
    for i, x in enumerate(xs):
        fd = np.zeros(shapes[i])
        flat = env[f"x{i}"].reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + h
            (lp,) = evaluate([loss], env, np.float64)
            flat[j] = old - h
            (lm,) = evaluate([loss], env, np.float64)
            flat[j] = old
            fd.reshape(-1)[j] = (lp - lm) / (2 * h)
        assert_close(got[i], fd, rtol, atol + 1e-7 * np.abs(fd).max(), f"grad of input {i}")


small = st.integers(1, 4)
UNARY = {
    "neg": (b.neg, False), "exp": (b.exp, False), "log": (b.log, True), "sqrt": (b.sqrt, True),
    "recip": (b.recip, True), "tanh": (b.tanh, False), "erf": (b.erf, False), "cos": (b.cos, False),
    "sin": (b.sin, False),
}
BINARY = {"add": b.add, "sub": b.sub, "mul": b.mul, "div": b.div, "max": b.maximum, "min": b.minimum}


@settings(max_examples=8, deadline=None)
@given(op=st.sampled_from(sorted(UNARY)), m=small, n=small, seed=st.integers(0, 2**16))
def test_unary_gradients(op, m, n, seed):
    fn, pos = UNARY[op]
    gradcheck(lambda x: fn(x), [(m, n)], np.random.default_rng(seed), positive=(0,) if pos else ())


@settings(max_examples=12, deadline=None)
@given(op=st.sampled_from(sorted(BINARY)), m=small, n=small, bcast=st.booleans(), seed=st.integers(0, 2**16))
def test_binary_gradients_with_broadcasting(op, m, n, bcast, seed):
    shapes = [(m, n), (n,) if bcast else (m, n)]
    gradcheck(lambda x, y: BINARY[op](x, y), shapes, np.random.default_rng(seed), positive=(1,) if op == "div" else ())


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(small, min_size=1, max_size=3), seed=st.integers(0, 2**16), data=st.data())
def test_reduction_gradients(shape, seed, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    rng = np.random.default_rng(seed)
    gradcheck(lambda x: b.reduce_sum(x, axis), [tuple(shape)], rng)
    gradcheck(lambda x: b.reduce_max(x, axis), [tuple(shape)], rng)


@settings(max_examples=10, deadline=None)
@given(a=small, c=small, d=small, seed=st.integers(0, 2**16))
def test_movement_gradients(a, c, d, seed):
    rng = np.random.default_rng(seed)
    gradcheck(lambda x: b.permute(x, (2, 0, 1)), [(a, c, d)], rng)
    gradcheck(lambda x: b.reshape(x, (a * c, d)), [(a, c, d)], rng)
    gradcheck(lambda x: b.expand(x, (a, c, d)), [(a, 1, d)], rng)
    gradcheck(lambda x: b.slice(x, 1, 0, max(1, c - 1)), [(a, c, d)], rng)
    gradcheck(lambda x: b.pad(x, 2, 1, 2), [(a, c, d)], rng)
    gradcheck(lambda x: b.where(b.cmplt(x, b.full(x.shape, 0.0)), x, b.mul(x, x)), [(a, c)], rng)


@settings(max_examples=10, deadline=None)
@given(batch=st.sampled_from([(), (2,), (2, 3)]), m=small, k=small, n=small, seed=st.integers(0, 2**16))
def test_matmul_gradients(batch, m, k, n, seed):
    rng = np.random.default_rng(seed)
    gradcheck(lambda x, y: b.matmul(x, y), [batch + (m, k), batch + (k, n)], rng)
    gradcheck(lambda x, y: b.matmul(b.transpose(x), y), [batch + (k, m), batch + (k, n)], rng)
    gradcheck(lambda x, y: b.matmul(x, b.transpose(y)), [batch + (m, k), batch + (n, k)], rng)


@settings(max_examples=6, deadline=None)
@given(v=st.integers(2, 6), d=small, t=small, seed=st.integers(0, 2**16))
def test_embedding_gradient(v, d, t, seed):
    gradcheck(lambda tab, idx: b.embed(tab, idx), [(v, d)], np.random.default_rng(seed), int_inputs={"idx": ((2, t), v)})


@settings(max_examples=6, deadline=None)
@given(bt=st.integers(1, 2), t=st.integers(1, 4), heads=st.integers(1, 2), hs=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_attention_gradient(bt, t, heads, hs, seed):
    d = heads * hs
    gradcheck(lambda q, k, v: b.attention(q, k, v, heads), [(bt, t, d)] * 3, np.random.default_rng(seed))


@settings(max_examples=6, deadline=None)
@given(m=small, n=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_model_function_gradients(m, n, seed):
    rng = np.random.default_rng(seed)
    gradcheck(lambda x: b.softmax(x), [(m, n)], rng)
    gradcheck(lambda x, w, c: b.layernorm(x, w, c, 1e-5), [(m, n), (n,), (n,)], rng)
    gradcheck(lambda x: b.gelu(x), [(m, n)], rng)
    gradcheck(lambda x: b.gelu_tanh(x), [(m, n)], rng)
    gradcheck(lambda x, targets: b.cross_entropy(x, targets), [(m, n)], rng, int_inputs={"targets": ((m,), n)})


def test_detach_stops_the_gradient_and_folds_away():
    """DETACH is the identity with a zero gradient; softmax and cross-entropy detach their
    max shift (its exact gradient is zero), so the shift costs no backward kernels."""
    from tgc.ir.node import toposort
    from tgc.ir.ops import Op

    rng = np.random.default_rng(0)
    x, y = b.input("x", (3, 4)), b.input("y", (3, 4))
    env = {"x": rng.normal(size=(3, 4)), "y": rng.normal(size=(3, 4))}
    loss = b.sum_all(b.mul(b.detach(x), y))
    gx, gy = evaluate(grad(loss, [x, y]), env, np.float64)
    assert not gx.any() and np.array_equal(gy, env["x"])
    out = run_passes([loss, *grad(loss, [x, y])], verify=True)
    assert not any(n.op is Op.DETACH for n in toposort(out))
    # the softmax backward has no path through the max (which would select the argmax by CMPEQ)
    sm_grad = run_passes(grad(b.sum_all(b.mul(b.softmax(x), y)), [x]))
    assert not any(n.op is Op.CMPEQ for n in toposort(sm_grad))


# ---------------------------------------------------------------- the GPT


@pytest.fixture(scope="module")
def tiny():
    from tgc.compiler import compile_model

    return compile_model(preset="tiny", targets=(), verify=True)


def _params(compiled, seed=0):
    from tgc.runtime.base import init_value

    return {p.name: init_value({"name": p.name, "shape": p.shape, "init": list(p.init)}, seed) for p in compiled.params}


def test_forward_matches_independent_numpy_gpt2(tiny):
    params = {k: v.astype(np.float64) for k, v in _params(tiny).items()}
    # larger weights than init so that every layer matters to the logits
    rng = np.random.default_rng(3)
    params = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in params.items()}
    cfg = tiny.config
    tokens = rng.integers(0, 256, (1, cfg["ctx"]))
    prog = tiny.programs["forward"]
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        out, _ = run_program(prog, {**params, "tokens": tokens}, dtype)
        ref = gpt2_logits(params, tokens, cfg["layers"], cfg["heads"])
        err = np.abs(out["logits"] - ref).max() / np.abs(ref).max()
        assert err < rtol, f"{dtype.__name__}: relative error {err:.3g}"


def test_tiny_gpt_loss_gradients_match_finite_differences(tiny):
    """d loss / d every parameter, in float64: a random direction per tensor and a few entries."""
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) + 0.05 * rng.normal(size=v.shape) for k, v in _params(tiny).items()}
    B, T = tiny.batch, tiny.config["ctx"]
    data = rng.integers(0, 256, (B, T + 1))
    env = {**params, "idx": data[:, :-1], "targets": data[:, 1:]}
    prog = tiny.programs["train_step"]
    names = [p.name for p in tiny.params]
    loss_node = prog.outputs["loss"]
    grads = evaluate([prog.outputs[f"grad/{n}"] for n in names], env, np.float64)

    def loss_at(e):
        return evaluate([loss_node], e, np.float64)[0]

    ref = cross_entropy(gpt2_logits(params, env["idx"], tiny.config["layers"], tiny.config["heads"]), env["targets"])
    assert abs(loss_at(env) - ref) < 1e-10
    h = 1e-5
    for name, g in zip(names, grads):
        u = rng.normal(size=g.shape)
        e = dict(env)
        e[name] = params[name] + h * u
        lp = loss_at(e)
        e[name] = params[name] - h * u
        lm = loss_at(e)
        fd = (lp - lm) / (2 * h)
        an = float((g * u).sum())
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), f"{name}: directional {an} vs fd {fd}"
        for j in rng.choice(g.size, size=2, replace=False):
            e = dict(env)
            x = params[name].copy()
            x.reshape(-1)[j] += h
            e[name] = x
            lp = loss_at(e)
            x.reshape(-1)[j] -= 2 * h
            lm = loss_at(e)
            fd = (lp - lm) / (2 * h)
            assert abs(fd - g.reshape(-1)[j]) <= 1e-7 + 1e-5 * abs(fd), f"{name}[{j}]"


FIXTURE_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them. To die -- to sleep,\n"
    "No more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\n"
    "That flesh is heir to: 'tis a consummation\n"
    "Devoutly to be wish'd.\n"
)


def test_200_train_steps_in_the_interpreter_reduce_the_loss(tiny):
    from tgc import rng as hrng

    data = np.frombuffer(FIXTURE_TEXT.encode(), np.uint8).astype(np.int32)
    B, T = tiny.batch, tiny.config["ctx"]
    env = _params(tiny)
    for p in tiny.params:
        env[f"adam_m/{p.name}"] = np.zeros(p.shape, np.float32)
        env[f"adam_v/{p.name}"] = np.zeros(p.shape, np.float32)
    prog = tiny.programs["train_step"]
    prog = type(prog)(prog.name, {"loss": prog.outputs["loss"]}, prog.updates)
    losses = []
    for step in range(1, 201):
        off = hrng.randint(0, "batches", B, len(data) - T - 1, start=step * B)
        rows = np.stack([data[o : o + T + 1] for o in off])
        env.update(idx=rows[:, :-1], targets=rows[:, 1:], step=float(step), lr=3e-3, warmup=20.0, total_steps=200.0)
        out, upd = run_program(prog, env)
        env.update(upd)
        losses.append(float(out["loss"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    print(f"interpreter tiny: loss {first:.3f} -> {last:.3f} over 200 steps")
    assert first > 5.0 and last < 0.5 * first, (first, last)


def test_verifier_runs_after_every_pass(tiny):
    from tgc.frontend import load_model
    from tgc.ir.program import build_programs
    from tgc.presets import default_model_path

    seen = []
    model = load_model(default_model_path(), tiny.config)
    for prog in build_programs(model, 2).values():
        verify_program(prog, "build")
        run_passes(prog.nodes(), verify=True, dump=lambda name, outs: seen.append(name))
    assert seen and set(seen) == {name for name, _ in PIPELINE}


def test_verifier_rejects_a_broken_node():
    from tgc.ir.node import Node
    from tgc.ir.ops import Op
    from tgc.ir.verify import VerifyError

    x = b.input("x", (2, 3))
    bad = Node(Op.SUM, "f32", (2, 3), (x,), 1)  # should be (2, 1)
    with pytest.raises(VerifyError):
        verify_graph([bad])


def test_schedule_matches_interpreter_on_every_program(tiny):
    from tgc.ir.kinterp import run_schedule

    rng = np.random.default_rng(0)
    env = _params(tiny)
    for t in (t for s in tiny.schedules.values() for t in s.tensors.values() if t.role in ("optimizer_state", "kv_cache")):
        env[t.name] = rng.normal(size=t.shape).astype(np.float32) ** 2
    B, T = tiny.batch, tiny.config["ctx"]
    env.update(
        idx=rng.integers(0, 256, (B, T)), targets=rng.integers(0, 256, (B, T)), tokens=rng.integers(0, 256, (1, T)),
        token=rng.integers(0, 256, (1, 1)), step=3.0, lr=1e-3, warmup=2.0, total_steps=10.0, len=7, pos=5,
    )
    for name, prog in tiny.programs.items():
        ref_out, ref_upd = run_program(prog, env)
        out, upd = run_schedule(tiny.schedules[name], env)
        for k in ref_out:
            assert_close(out[k], ref_out[k], 1e-4, 1e-5, f"{name}.{k}")
        for k in ref_upd:
            assert_close(upd[k], ref_upd[k], 1e-4, 1e-5, f"{name} update {k}")


def test_matmul_bands_hold_in_every_program(tiny):
    """The triangular structure the scheduler gives attention's matmuls (tgc/ir/structure.py)
    is true: operands are exactly zero where a Band says so, and garbage written into the
    outputs' dead parts changes no program output or state update."""
    from tgc.ir.kinterp import run_kernel

    rng = np.random.default_rng(1)
    env = _params(tiny)
    for t in (t for s in tiny.schedules.values() for t in s.tensors.values() if t.role in ("optimizer_state", "kv_cache")):
        env[t.name] = rng.normal(size=t.shape).astype(np.float32) ** 2
    B, T = tiny.batch, tiny.config["ctx"]
    env.update(idx=rng.integers(0, 256, (B, T)), targets=rng.integers(0, 256, (B, T)), tokens=rng.integers(0, 256, (1, T)),
               token=rng.integers(0, 256, (1, 1)), step=3.0, lr=1e-3, warmup=2.0, total_steps=10.0, len=7, pos=5)  # fmt: skip
    banded = 0
    for name, sched in tiny.schedules.items():
        results = []
        for garbage in (False, True):
            mem = {n: (np.asarray(env[n], np.int32 if t.dtype == "i32" else np.float32).reshape(-1).copy() if n in env
                       else np.zeros(int(np.prod(t.shape)), np.int32 if t.dtype == "i32" else np.float32))
                   for n, t in sched.tensors.items()}  # fmt: skip
            for k in sched.kernels:
                run_kernel(k, mem, env)
                if k.kind != "matmul" or k.band is None:
                    continue
                banded += name == "train_step" and not garbage
                az, bz, dead = k.band.masks(k.M, k.N, k.K)
                a, bm = (np.lib.stride_tricks.as_strided(mem[v.tensor][v.offset:], v.shape, [s * 4 for s in v.strides]) for v in (k.a, k.b))
                assert not a[..., az].any() and not bm[..., bz].any(), f"{name}.{k.name}: {k.band} operands not zero"
                if garbage:
                    out = mem[k.out].reshape(*k.batch, k.M, k.N)
                    out[..., dead] = rng.normal(size=out[..., dead].shape) * 1e3
            results.append(({o: mem[t].copy() for o, t in sched.outputs.items()}, {s: mem[t].copy() for s, t in sched.updates.items()}))
        (o0, u0), (o1, u1) = results
        for key, v in o0.items():
            assert np.array_equal(v, o1[key]), f"{name}.{key} reads a dead matmul output"
        for key, v in u0.items():
            assert np.array_equal(v, u1[key]), f"{name} update {key} reads a dead matmul output"
    assert banded == 6 * tiny.config["layers"], banded  # train_step: all six attention matmuls of every layer


@pytest.mark.parametrize("preset", ["tiny", "small", "medium", pytest.param("large", marks=pytest.mark.slow),
                                    pytest.param("xl", marks=pytest.mark.slow), pytest.param("huge", marks=pytest.mark.slow),
                                    pytest.param("massive", marks=pytest.mark.slow), pytest.param("mega", marks=pytest.mark.slow)])
def test_planned_peak_within_bound(preset):
    """planned train_step bytes <= 1.3 x (params + grads + optimizer state + max live activations)."""
    from tgc.compiler import compile_model

    c = compile_model(preset=preset, targets=())
    r = c.plan.reports["train_step"]
    assert r.planned_bytes <= 1.3 * r.lower_bound, (r.planned_bytes, r.lower_bound)
    for p, s in c.schedules.items():
        for t in s.tensors:
            assert c.plan.place(p, t)[1] % 256 == 0


def test_kv_cache_decoding_matches_forward(tiny):
    rng = np.random.default_rng(1)
    params = _params(tiny)
    T = tiny.config["ctx"]
    tokens = rng.integers(0, 256, (1, T))
    full, _ = run_program(tiny.programs["forward"], {**params, "tokens": tokens})
    env = dict(params)
    d = tiny.config["d"]
    for i in range(tiny.config["layers"]):
        for kv in "kv":
            env[f"kv_cache/{i}/{kv}"] = np.zeros((1, T, d), np.float32)
    n = 5
    out, upd = run_program(tiny.programs["prefill"], {**env, "tokens": tokens, "len": n})
    env.update(upd)
    assert_close(out["logits"][0], full["logits"][0, n - 1], 1e-5, 1e-6, "prefill")
    for pos in range(n, T):
        out, upd = run_program(tiny.programs["decode_step"], {**env, "token": tokens[:, pos : pos + 1], "pos": pos})
        env.update(upd)
        assert_close(out["logits"][0], full["logits"][0, pos], 1e-4, 1e-5, f"decode at {pos}")
