"""Every op's rules side by side: shape/dtype inference, numpy meaning, gradient.

`RULES[op]` holds an OpRule; a missing entry fails loudly with the op's name. The
numpy functions here *are* the specification that every backend is tested
against (tgc/ir/interp.py only walks the graph and calls them). Gradient rules
build IR with tgc/ir/build.py, so the backward pass is IR like any other.
Composite ops (ATTENTION, CACHED_ATTENTION) have a `decompose` rule into
primitives instead of kernels of their own; their numpy meaning is that
decomposition, evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tgc.errors import Loc, ShapeError
from tgc.ir.ops import GroupOp, Op

try:  # scipy's erf is exact to f64; math.erf is the same function, slower
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.frompyfunc(math.erf, 1, 1)


@dataclass
class OpRule:
    shape: Callable  # (srcs, arg, loc) -> (dtype, shape)
    numpy: Callable | None = None  # (arg, *arrays) -> array
    grad: Callable | None = None  # (node, g) -> tuple of grads (None: no gradient)
    decompose: Callable | None = None  # (node) -> node of primitives


RULES: dict[Op, OpRule] = {}


def rule(*ops: Op, **kw):
    def deco(fn_shape):
        for op in ops:
            RULES[op] = OpRule(shape=fn_shape, **kw)
        return fn_shape

    return deco


def get_rule(op: Op) -> OpRule:
    try:
        return RULES[op]
    except KeyError:
        raise NotImplementedError(f"no rules registered for op {op.name}") from None


def infer(op, srcs, arg, loc):
    return get_rule(op).shape(srcs, arg, loc)


def _fail(loc: Loc | None, msg: str):
    raise ShapeError(msg, loc)


# ---------------------------------------------------------------- shape rules


def _same_shapes(srcs, loc, what):
    shapes = {s.shape for s in srcs}
    if len(shapes) != 1:
        _fail(loc, f"{what}: operand shapes {' vs '.join(str(list(s.shape)) for s in srcs)} do not match")
    return srcs[0].shape


def _leaf_shape(srcs, arg, loc):
    return arg["dtype"], tuple(arg["shape"])


def _unary_shape(srcs, arg, loc):
    return (arg if isinstance(arg, str) else srcs[0].dtype), srcs[0].shape


def _binary_shape(srcs, arg, loc):
    a, b = srcs
    shape = _same_shapes(srcs, loc, "elementwise op")
    if a.dtype != b.dtype:
        _fail(loc, f"dtype mismatch {a.dtype} vs {b.dtype}")
    return a.dtype, shape


def _cmp_shape(srcs, arg, loc):
    _binary_shape(srcs, arg, loc)
    return "f32", srcs[0].shape


def _rand_shape(srcs, arg, loc):
    shape = _same_shapes(srcs, loc, "rand")
    if any(s.dtype != "i32" for s in srcs):
        _fail(loc, f"rand takes i32 counters and key, got {[s.dtype for s in srcs]}")
    return "f32", shape


def _where_shape(srcs, arg, loc):
    c, a, b = srcs
    return a.dtype, _same_shapes(srcs, loc, "where")


def _reduce_shape(srcs, arg, loc):
    (x,) = srcs
    if not 0 <= arg < x.ndim:
        _fail(loc, f"reduction axis {arg} out of range for shape {list(x.shape)}")
    return x.dtype, x.shape[:arg] + (1,) + x.shape[arg + 1 :]


def _reshape_shape(srcs, arg, loc):
    (x,) = srcs
    if math.prod(arg) != x.size or any(s < 0 for s in arg):
        _fail(loc, f"cannot reshape {list(x.shape)} ({x.size} elements) to {list(arg)}")
    return x.dtype, tuple(arg)


def _permute_shape(srcs, arg, loc):
    (x,) = srcs
    if sorted(arg) != list(range(x.ndim)):
        _fail(loc, f"bad permutation {list(arg)} for rank {x.ndim}")
    return x.dtype, tuple(x.shape[p] for p in arg)


def _expand_shape(srcs, arg, loc):
    (x,) = srcs
    if len(arg) != x.ndim or any(s != t and s != 1 for s, t in zip(x.shape, arg)):
        _fail(loc, f"cannot broadcast {list(x.shape)} to {list(arg)}")
    return x.dtype, tuple(arg)


def _slice_shape(srcs, arg, loc):
    (x,) = srcs
    axis, start, stop = arg
    if not (0 <= axis < x.ndim and 0 <= start <= stop <= x.shape[axis]):
        _fail(loc, f"slice {start}:{stop} out of range for axis {axis} of size {x.shape[axis] if axis < x.ndim else '?'}")
    return x.dtype, x.shape[:axis] + (stop - start,) + x.shape[axis + 1 :]


def _pad_shape(srcs, arg, loc):
    (x,) = srcs
    axis, before, after = arg
    return x.dtype, x.shape[:axis] + (x.shape[axis] + before + after,) + x.shape[axis + 1 :]


def _dslice_shape(srcs, arg, loc):
    x, off = srcs
    axis, size = arg
    if off.shape != () or off.dtype != "i32":
        _fail(loc, "dynamic slice offset must be an i32 scalar")
    if not 0 < size <= x.shape[axis]:
        _fail(loc, f"dynamic slice of size {size} does not fit axis of size {x.shape[axis]}")
    return x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1 :]


def _matmul_shape(srcs, arg, loc):
    a, b = srcs
    if a.dtype != "f32" or b.dtype != "f32":
        _fail(loc, f"matmul needs f32 operands, got {a.dtype} @ {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        _fail(loc, f"matmul needs operands of rank >= 2, got {list(a.shape)} @ {list(b.shape)}")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        _fail(loc, f"matmul shapes do not agree: {list(a.shape)} @ {list(b.shape)}")
    return "f32", a.shape[:-1] + (b.shape[-1],)


def _embed_shape(srcs, arg, loc):
    table, idx = srcs
    if table.ndim != 2 or idx.dtype != "i32":
        _fail(loc, f"embed needs a [V, D] table and integer indices, got {list(table.shape)} and {idx.dtype}")
    return table.dtype, idx.shape + (table.shape[1],)


def _attention_shape(srcs, arg, loc):
    q, k, v = srcs
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        _fail(loc, f"causal_attention needs q, k, v of one shape [B, T, d], got {[list(s.shape) for s in srcs]}")
    if arg <= 0 or q.shape[2] % arg:
        _fail(loc, f"model width {q.shape[2]} is not divisible by {arg} heads")
    return q.dtype, q.shape


def _cached_attention_shape(srcs, arg, loc):
    q, kc, vc, pos = srcs
    if kc.shape != vc.shape or q.shape[0] != kc.shape[0] or q.shape[2] != kc.shape[2]:
        _fail(loc, "cached attention: cache and query shapes disagree")
    return q.dtype, q.shape


def _update_slice_shape(srcs, arg, loc):
    buf, new, pos = srcs
    return buf.dtype, buf.shape


# ---------------------------------------------------------------- numpy meaning


def _np_iota(arg):
    shape, axis = tuple(arg["shape"]), arg["axis"]
    r = np.arange(shape[axis], dtype=np.int32).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(r, shape).copy()


def _np_rand(arg, counter, key):
    """tgc/rng.py's bits at `counter` under `key` (both i32 bit patterns), as f32 in [0, 1)."""
    from tgc.rng import mix

    u32 = lambda v: (np.asarray(v).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    with np.errstate(over="ignore"):
        bits = mix(u32(key) + mix(u32(counter)))
    return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _np_cast(arg, x):
    return x.astype(np.int32 if arg == "i32" else (np.float64 if x.dtype == np.float64 else np.float32))


def _np_where(arg, c, a, b):
    return np.where(c != 0, a, b)


def _np_pad(arg, x):
    axis, before, after = arg
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths)


def _np_dslice(arg, x, off):
    axis, size = arg
    o = int(off)
    if not 0 <= o <= x.shape[axis] - size:
        raise IndexError(f"dynamic slice offset {o} out of range")
    return np.take(x, np.arange(o, o + size), axis=axis)


def _np_update_slice(arg, buf, new, pos):
    out = buf.copy()
    p = int(pos)
    out[:, p : p + new.shape[1]] = new
    return out


def _float(a, like):
    return a.astype(like.dtype) if like.dtype.kind == "f" else a.astype(np.float32)


# ---------------------------------------------------------------- gradients
# Each returns one entry per source: an IR node, or None where no gradient flows.


def _b():
    from tgc.ir import build

    return build


def _g_neg(n, g):
    return (_b().neg(g),)


def _g_exp(n, g):
    return (_b().mul(g, n),)


def _g_log(n, g):
    return (_b().div(g, n.srcs[0]),)


def _g_sqrt(n, g):
    b = _b()
    return (b.div(b.mul(g, b.full_like(g, 0.5)), n),)


def _g_recip(n, g):
    b = _b()
    return (b.neg(b.mul(g, b.mul(n, n))),)


def _g_tanh(n, g):
    b = _b()
    return (b.mul(g, b.sub(b.full_like(n, 1.0), b.mul(n, n))),)


def _g_erf(n, g):
    b = _b()
    x = n.srcs[0]
    return (b.mul(g, b.mul(b.full_like(x, 2.0 / math.sqrt(math.pi)), b.exp(b.neg(b.mul(x, x))))),)


def _g_cos(n, g):
    b = _b()
    x = n.srcs[0]
    return (b.neg(b.mul(g, b.cos(b.sub(x, b.full_like(x, math.pi / 2))))),)


def _g_cast(n, g):
    return (None,)


def _g_add(n, g):
    return (g, g)


def _g_sub(n, g):
    return (g, _b().neg(g))


def _g_mul(n, g):
    b = _b()
    x, y = n.srcs
    return (b.mul(g, y), b.mul(g, x))


def _g_div(n, g):
    b = _b()
    x, y = n.srcs
    return (b.div(g, y), b.neg(b.div(b.mul(g, n), y)))


def _g_max(n, g):  # ties send the gradient to the first operand
    b = _b()
    x, y = n.srcs
    zero = b.full_like(g, 0.0)
    y_wins = b.cmplt(x, y) if n.op is Op.MAX else b.cmplt(y, x)
    return (b.where(y_wins, zero, g), b.where(y_wins, g, zero))


def _g_none2(n, g):
    return (None, None)


def _g_where(n, g):
    b = _b()
    c = n.srcs[0]
    zero = b.full_like(g, 0.0)
    return (None, b.where(c, g, zero), b.where(c, zero, g))


def _g_sum(n, g):
    return (_b().expand(g, n.srcs[0].shape),)


def _g_rmax(n, g):
    b = _b()
    x = n.srcs[0]
    return (b.mul(b.expand(g, x.shape), b.cmpeq(x, b.expand(n, x.shape))),)


def _g_reshape(n, g):
    return (_b().reshape(g, n.srcs[0].shape),)


def _g_permute(n, g):
    inv = [0] * len(n.arg)
    for i, p in enumerate(n.arg):
        inv[p] = i
    return (_b().permute(g, inv),)


def _g_expand(n, g):
    b = _b()
    x = n.srcs[0]
    for ax, (s, t) in enumerate(zip(x.shape, n.shape)):
        if s != t:
            g = b.reduce_sum(g, ax)
    return (g,)


def _g_slice(n, g):
    axis, start, stop = n.arg
    return (_b().pad(g, axis, start, n.srcs[0].shape[axis] - stop),)


def _g_pad(n, g):
    axis, before, _ = n.arg
    return (_b().slice(g, axis, before, before + n.srcs[0].shape[axis]),)


def _g_matmul(n, g):
    b = _b()
    x, y = n.srcs
    return (b.matmul(g, b.transpose(y)), b.matmul(b.transpose(x), g))


def _g_embed(n, g):
    # d table[v] = sum over positions p with idx[p] == v of g[p]: a one-hot matmul, deterministic
    b = _b()
    table, idx = n.srcs
    V, D = table.shape
    N = idx.size
    onehot = b.onehot(b.reshape(idx, (N,)), V)  # [N, V]
    return (b.matmul(b.transpose(onehot), b.reshape(g, (N, D))), None)


# ---------------------------------------------------------------- decompositions


def _split_heads(x, heads):
    b = _b()
    B, T, d = x.shape
    return b.permute(b.reshape(x, (B, T, heads, d // heads)), (0, 2, 1, 3))  # (B, nh, T, hs)


def _merge_heads(y):
    b = _b()
    B, H, T, hs = y.shape
    return b.reshape(b.permute(y, (0, 2, 1, 3)), (B, T, H * hs))


def _masked_softmax_attention(q, k, v, heads, q_offset):
    """softmax(q k^T / sqrt(hs) + causal mask) v, where query row i sits at absolute position
    q_offset + i and may see keys at positions <= it. q_offset is None or an i32 scalar node."""
    b = _b()
    qh, kh, vh = (_split_heads(t, heads) for t in (q, k, v))
    B, H, Tq, hs = qh.shape
    S = kh.shape[2]
    att = b.matmul(qh, b.transpose(kh))  # (B, nh, Tq, S)
    att = b.mul(att, b.full_like(att, 1.0 / math.sqrt(hs)))
    qpos = b.iota((Tq, S), 0)
    if q_offset is not None:
        qpos = b.add(qpos, b.expand(b.reshape(q_offset, (1, 1)), (Tq, S)))
    visible = b.cmplt(b.iota((Tq, S), 1), b.add(qpos, b.full((Tq, S), 1, "i32")))  # key <= query
    visible = b.expand(b.reshape(visible, (1, 1, Tq, S)), att.shape)
    att = b.where(visible, att, b.full_like(att, -1e30))
    # the probabilities of hidden keys are exp(-1e30 - max) = 0 already; saying so with an
    # exact zero lets the matmuls skip them (tgc/ir/structure.py)
    p = b.where(visible, b.softmax(att, axis=3), b.full_like(att, 0.0))
    return _merge_heads(b.matmul(p, vh))


def _decompose_attention(n):
    q, k, v = n.srcs
    return _masked_softmax_attention(q, k, v, n.arg, None)


def _decompose_cached_attention(n):
    q, kc, vc, pos = n.srcs
    return _masked_softmax_attention(q, kc, vc, n.arg, pos)


def _np_composite(op: Op, decompose):
    """The numpy meaning of a composite op: its decomposition, evaluated."""

    def run(arg, *arrays):
        from tgc.ir import build
        from tgc.ir.interp import evaluate
        from tgc.ir.node import Node

        leaves = [build.input(f"_{i}", a.shape, "i32" if a.dtype.kind == "i" else "f32") for i, a in enumerate(arrays)]
        out = decompose(Node(op, "f32", (), tuple(leaves), arg))
        fdt = next((a.dtype for a in arrays if a.dtype.kind == "f"), np.float32)
        return evaluate([out], {f"_{i}": a for i, a in enumerate(arrays)}, fdt)[0]

    return run


# ---------------------------------------------------------------- the table

rule(Op.INPUT, Op.CONST, Op.UNIFORM)(_leaf_shape)
RULES[Op.IOTA] = OpRule(shape=lambda s, a, l: ("i32", tuple(a["shape"])), numpy=_np_iota)
RULES[Op.NEG] = OpRule(_unary_shape, lambda a, x: -x, _g_neg)
RULES[Op.EXP] = OpRule(_unary_shape, lambda a, x: np.exp(x), _g_exp)
RULES[Op.LOG] = OpRule(_unary_shape, lambda a, x: np.log(x), _g_log)
RULES[Op.SQRT] = OpRule(_unary_shape, lambda a, x: np.sqrt(x), _g_sqrt)
RULES[Op.RECIP] = OpRule(_unary_shape, lambda a, x: 1 / x, _g_recip)
RULES[Op.TANH] = OpRule(_unary_shape, lambda a, x: np.tanh(x), _g_tanh)
RULES[Op.ERF] = OpRule(_unary_shape, lambda a, x: np.asarray(_erf(x), dtype=x.dtype), _g_erf)
RULES[Op.COS] = OpRule(_unary_shape, lambda a, x: np.cos(x), _g_cos)
RULES[Op.CAST] = OpRule(_unary_shape, _np_cast, _g_cast)
RULES[Op.ADD] = OpRule(_binary_shape, lambda a, x, y: x + y, _g_add)
RULES[Op.SUB] = OpRule(_binary_shape, lambda a, x, y: x - y, _g_sub)
RULES[Op.MUL] = OpRule(_binary_shape, lambda a, x, y: x * y, _g_mul)
RULES[Op.DIV] = OpRule(_binary_shape, lambda a, x, y: x / y, _g_div)
RULES[Op.MAX] = OpRule(_binary_shape, lambda a, x, y: np.maximum(x, y), _g_max)
RULES[Op.MIN] = OpRule(_binary_shape, lambda a, x, y: np.minimum(x, y), _g_max)
RULES[Op.CMPLT] = OpRule(_cmp_shape, lambda a, x, y: _float(x < y, x), _g_none2)
RULES[Op.CMPEQ] = OpRule(_cmp_shape, lambda a, x, y: _float(x == y, x), _g_none2)
RULES[Op.WHERE] = OpRule(_where_shape, _np_where, _g_where)
RULES[Op.SUM] = OpRule(_reduce_shape, lambda a, x: x.sum(axis=a, keepdims=True), _g_sum)
RULES[Op.RMAX] = OpRule(_reduce_shape, lambda a, x: x.max(axis=a, keepdims=True), _g_rmax)
RULES[Op.RESHAPE] = OpRule(_reshape_shape, lambda a, x: x.reshape(a), _g_reshape)
RULES[Op.PERMUTE] = OpRule(_permute_shape, lambda a, x: np.ascontiguousarray(x.transpose(a)), _g_permute)
RULES[Op.EXPAND] = OpRule(_expand_shape, lambda a, x: np.broadcast_to(x, a).copy(), _g_expand)
RULES[Op.SLICE] = OpRule(_slice_shape, lambda a, x: np.take(x, np.arange(a[1], a[2]), axis=a[0]), _g_slice)
RULES[Op.PAD] = OpRule(_pad_shape, _np_pad, _g_pad)
RULES[Op.DSLICE] = OpRule(_dslice_shape, _np_dslice)
RULES[Op.MATMUL] = OpRule(_matmul_shape, lambda a, x, y: np.matmul(x, y), _g_matmul)
RULES[Op.EMBED] = OpRule(_embed_shape, lambda a, t, i: t[i], _g_embed)
RULES[Op.RAND] = OpRule(_rand_shape, _np_rand, _g_none2)
RULES[Op.DROPOUT] = OpRule(_unary_shape, lambda a, x: x)  # its numpy meaning outside train_step; no gradient rule:
# train_step resolves it (tgc/ir/program.py) before autodiff
RULES[Op.DETACH] = OpRule(_unary_shape, lambda a, x: x, lambda n, g: (None,))
RULES[Op.UPDATE_SLICE] = OpRule(_update_slice_shape, _np_update_slice)
RULES[Op.ATTENTION] = OpRule(_attention_shape, decompose=_decompose_attention)
RULES[Op.CACHED_ATTENTION] = OpRule(_cached_attention_shape, decompose=_decompose_cached_attention)
RULES[Op.ATTENTION].numpy = _np_composite(Op.ATTENTION, _decompose_attention)
RULES[Op.CACHED_ATTENTION].numpy = _np_composite(Op.CACHED_ATTENTION, _decompose_cached_attention)

_missing = (set(GroupOp.Elementwise) | GroupOp.Reduce | GroupOp.Movement) - {op for op, r in RULES.items() if r.numpy}
assert not _missing, f"ops without numpy meaning: {_missing}"
