"""Graph-building API over `make`: what the frontend, gradient rules, the optimizer
and decompositions use to write IR.

Binary helpers broadcast numpy-style by inserting explicit RESHAPE/EXPAND nodes,
so the IR itself never broadcasts implicitly. The model-level functions at the
bottom (layernorm, softmax, gelu, cross_entropy) are compositions of primitives:
autodiff and fusion see through them, and no backend needs a kernel of its own.
"""

from __future__ import annotations

import math

from tgc.errors import Loc, ShapeError
from tgc.ir.node import Node, make
from tgc.ir.ops import Op

# ---------------------------------------------------------------- leaves


def input(name: str, shape, dtype: str = "f32", role: str = "input", loc: Loc | None = None) -> Node:
    return make(Op.INPUT, (), {"name": name, "role": role, "dtype": dtype, "shape": tuple(shape)}, loc)


def uniform(name: str, dtype: str = "f32") -> Node:
    return make(Op.UNIFORM, (), {"name": name, "dtype": dtype, "shape": ()})


def full(shape, value, dtype: str = "f32", loc: Loc | None = None) -> Node:
    value = int(value) if dtype == "i32" else float(value)
    return make(Op.CONST, (), {"value": value, "dtype": dtype, "shape": tuple(shape)}, loc)


def full_like(x: Node, value) -> Node:
    return full(x.shape, value, x.dtype, x.loc)


def iota(shape, axis: int) -> Node:
    return make(Op.IOTA, (), {"shape": tuple(shape), "axis": axis})


# ---------------------------------------------------------------- broadcasting


def broadcast_shapes(a, b, loc=None):
    out = []
    for x, y in zip((1,) * (len(b) - len(a)) + tuple(a), (1,) * (len(a) - len(b)) + tuple(b)):
        if x != y and 1 not in (x, y):
            raise ShapeError(f"shapes {list(a)} and {list(b)} do not broadcast", loc)
        out.append(max(x, y) if 1 in (x, y) else x)
    return tuple(out)


def broadcast_to(x: Node, shape, loc=None) -> Node:
    shape = tuple(shape)
    if x.shape == shape:
        return x
    if x.ndim < len(shape):
        x = reshape(x, (1,) * (len(shape) - x.ndim) + x.shape, loc)
    return make(Op.EXPAND, (x,), shape, loc or x.loc)


def _bin(op: Op, a: Node, b: Node, loc=None) -> Node:
    loc = loc or a.loc or b.loc
    shape = broadcast_shapes(a.shape, b.shape, loc)
    return make(op, (broadcast_to(a, shape, loc), broadcast_to(b, shape, loc)), None, loc)


def add(a, b, loc=None):
    return _bin(Op.ADD, a, b, loc)


def sub(a, b, loc=None):
    return _bin(Op.SUB, a, b, loc)


def mul(a, b, loc=None):
    return _bin(Op.MUL, a, b, loc)


def div(a, b, loc=None):
    return _bin(Op.DIV, a, b, loc)


def maximum(a, b, loc=None):
    return _bin(Op.MAX, a, b, loc)


def minimum(a, b, loc=None):
    return _bin(Op.MIN, a, b, loc)


def cmplt(a, b, loc=None):
    return _bin(Op.CMPLT, a, b, loc)


def cmpeq(a, b, loc=None):
    return _bin(Op.CMPEQ, a, b, loc)


def where(c, a, b, loc=None):
    shape = broadcast_shapes(broadcast_shapes(c.shape, a.shape, loc), b.shape, loc)
    return make(Op.WHERE, tuple(broadcast_to(t, shape, loc) for t in (c, a, b)), None, loc or a.loc)


def _un(op):
    return lambda x, loc=None: make(op, (x,), None, loc or x.loc)


neg, exp, log, sqrt, recip, tanh, erf, cos = map(_un, (Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.RECIP, Op.TANH, Op.ERF, Op.COS))


def rand(counter: Node, key: Node, loc=None) -> Node:
    """Uniform [0, 1) f32 from i32 counters under an i32 key (scalar keys broadcast)."""
    return make(Op.RAND, (counter, broadcast_to(key, counter.shape, loc)), None, loc)


def dropout(x: Node, p: float, loc=None) -> Node:
    """Inverted dropout of rate p, active in train_step only (tgc/ir/program.py resolves it)."""
    return x if p == 0 else make(Op.DROPOUT, (x,), float(p), loc or x.loc)


def cast(x: Node, dtype: str, loc=None) -> Node:
    return x if x.dtype == dtype else make(Op.CAST, (x,), dtype, loc or x.loc)


def scalar(value: float, like: Node) -> Node:
    return full((), value, like.dtype)


# ---------------------------------------------------------------- movement and reduction


def reshape(x, shape, loc=None):
    shape = tuple(int(s) for s in shape)
    return x if x.shape == shape else make(Op.RESHAPE, (x,), shape, loc or x.loc)


def permute(x, perm, loc=None):
    perm = tuple(perm)
    return x if perm == tuple(range(x.ndim)) else make(Op.PERMUTE, (x,), perm, loc or x.loc)


def transpose(x, loc=None):
    """Swap the last two axes."""
    if x.ndim < 2:
        raise ShapeError(f"transpose needs rank >= 2, got {list(x.shape)}", loc or x.loc)
    p = list(range(x.ndim))
    p[-1], p[-2] = p[-2], p[-1]
    return permute(x, p, loc)


def expand(x, shape, loc=None):
    return broadcast_to(x, shape, loc)


def _axis(x, axis, loc):
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis} out of range for shape {list(x.shape)}", loc or x.loc)
    return axis % x.ndim


def slice(x, axis, start, stop, loc=None):
    axis = _axis(x, axis, loc)
    if (start, stop) == (0, x.shape[axis]):
        return x
    return make(Op.SLICE, (x,), (axis, start, stop), loc or x.loc)


def pad(x, axis, before, after, loc=None):
    return x if before == after == 0 else make(Op.PAD, (x,), (axis, before, after), loc or x.loc)


def dslice(x, offset, axis, size, loc=None):
    return make(Op.DSLICE, (x, offset), (axis, size), loc or x.loc)


def reduce_sum(x, axis, keepdims=True, loc=None):
    axis = _axis(x, axis, loc)
    y = make(Op.SUM, (x,), axis, loc or x.loc)
    return y if keepdims else reshape(y, x.shape[:axis] + x.shape[axis + 1 :])


def reduce_max(x, axis, keepdims=True, loc=None):
    axis = _axis(x, axis, loc)
    y = make(Op.RMAX, (x,), axis, loc or x.loc)
    return y if keepdims else reshape(y, x.shape[:axis] + x.shape[axis + 1 :])


def detach(x, loc=None):
    """x with a zero gradient (stop_gradient)."""
    return make(Op.DETACH, (x,), None, loc or x.loc)


def sum_all(x):
    """Sum of every element, as a scalar. Large sums go in two stages (rows, then the
    row sums), so that no single reduction runs serially over a million elements: the
    gradient-norm sums of big parameters would otherwise occupy one GPU workgroup each."""
    n = x.size
    rows = max((a for a in range(1, math.isqrt(n) + 1) if n % a == 0), default=1) if n >= 16384 else 1
    if rows >= 16:
        partial = reduce_sum(reshape(x, (rows, n // rows)), 1, keepdims=False)
        return reduce_sum(partial, 0, keepdims=False)
    return reduce_sum(reshape(x, (n,)), 0, keepdims=False)


def mean(x, axis, keepdims=True, loc=None):
    s = reduce_sum(x, axis, keepdims, loc)
    return mul(s, full((), 1.0 / x.shape[_axis(x, axis, loc)]), loc)


# ---------------------------------------------------------------- contraction, indexing


def matmul(a, b, loc=None):
    """numpy matmul semantics; a rank-2 right operand is shared across a's leading dims
    by folding them into rows, so the IR's MATMUL always sees equal batch dims."""
    loc = loc or a.loc or b.loc
    if a.ndim >= 2 and b.ndim == 2 and a.ndim > 2:
        lead = a.shape[:-1]
        if a.shape[-1] != b.shape[0]:
            raise ShapeError(f"matmul shapes do not agree: {list(a.shape)} @ {list(b.shape)}", loc)
        y = make(Op.MATMUL, (reshape(a, (math.prod(lead), a.shape[-1]), loc), b), None, loc)
        return reshape(y, lead + (b.shape[1],), loc)
    return make(Op.MATMUL, (a, b), None, loc)


def embed(table, idx, loc=None):
    return make(Op.EMBED, (table, idx), None, loc or table.loc)


def onehot(idx, n, loc=None):
    """f32 [..., n] with 1.0 where the last index equals idx."""
    shape = idx.shape + (n,)
    i = expand(reshape(idx, idx.shape + (1,)), shape)
    return cmpeq(i, iota(shape, len(shape) - 1), loc)


def attention(q, k, v, heads, loc=None):
    return make(Op.ATTENTION, (q, k, v), int(heads), loc or q.loc)


# ---------------------------------------------------------------- model-level functions


def softmax(x, axis=-1, loc=None):
    axis = _axis(x, axis, loc)
    # the shift by the row max only keeps exp in range: softmax does not depend on it, so
    # its gradient is exactly zero and is not derived (it would cost two kernels per softmax)
    m = detach(reduce_max(x, axis, loc=loc), loc)
    e = exp(sub(x, m, loc), loc)
    return div(e, reduce_sum(e, axis, loc=loc), loc)


def layernorm(x, weight, bias, eps, loc=None):
    mu = mean(x, -1, loc=loc)
    xc = sub(x, mu, loc)
    var = mean(mul(xc, xc, loc), -1, loc=loc)
    y = mul(xc, recip(sqrt(add(var, full((), eps), loc), loc), loc), loc)
    y = mul(y, weight, loc)
    return add(y, bias, loc) if bias is not None else y


def gelu(x, loc=None):
    """Exact GELU: x/2 (1 + erf(x / sqrt 2))."""
    half = full((), 0.5)
    return mul(mul(half, x, loc), add(full((), 1.0), erf(mul(x, full((), 1 / math.sqrt(2)), loc), loc), loc), loc)


def gelu_tanh(x, loc=None):
    """GPT-2's tanh approximation: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    inner = mul(full((), math.sqrt(2 / math.pi)), add(x, mul(full((), 0.044715), mul(x, mul(x, x, loc), loc), loc), loc), loc)
    return mul(mul(full((), 0.5), x, loc), add(full((), 1.0), tanh(inner, loc), loc), loc)


def cross_entropy(logits, targets, loc=None):
    """Mean over positions of logsumexp(logits) - logits[target]; logits [..., V], targets [...] i32."""
    if logits.ndim == 0:
        raise ShapeError("cross_entropy needs logits of rank >= 1", loc)
    V = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ShapeError(
            f"cross_entropy: targets {list(targets.shape)} do not match logits {list(logits.shape)} without the last axis", loc
        )
    N = targets.size
    x = reshape(logits, (N, V), loc)
    m = detach(reduce_max(x, 1, loc=loc), loc)  # a shift logsumexp does not depend on (see softmax)
    lse = add(log(reduce_sum(exp(sub(x, m, loc), loc), 1, loc=loc), loc), m, loc)  # [N, 1]
    picked = reduce_sum(mul(x, onehot(reshape(targets, (N,)), V, loc), loc), 1, loc=loc)  # [N, 1]
    return mul(sum_all(sub(lse, picked, loc)), full((), 1.0 / N), loc)


def split(x, n, axis=-1, loc=None):
    axis = _axis(x, axis, loc)
    if n <= 0 or x.shape[axis] % n:
        raise ShapeError(f"cannot split axis of size {x.shape[axis]} into {n} equal parts", loc or x.loc)
    s = x.shape[axis] // n
    return [slice(x, axis, i * s, (i + 1) * s, loc) for i in range(n)]
