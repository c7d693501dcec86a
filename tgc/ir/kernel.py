"""The kernel IR (.kir): what the scheduler hands to the kernel passes and the code generators.

A Kernel is one computation over an index space and, per output, a scalar expression
tree (KExpr) over loads of tensors at computed flat indices. There are three kinds:

- elementwise: for gid in [0, size): out_j[gid] = expr_j(gid)
- reduce:      for gid in [0, size): out[gid] = SUM/RMAX over r in [0, R) of expr(gid, r)
- matmul:      out[b, m, n] = sum_k A[b, m, k] * B[b, k, n], A and B strided views

KExprs use the IR's Op enum (arithmetic, CONST, UNIFORM, WHERE, ...) plus the
kernel-only ops LOAD, GIDX, RIDX, AXIS, IDIV, MOD. Index arithmetic is simplified as it
is built, using value bounds, so that a contiguous view folds back to `gid` and
renderers emit no division where none is needed.

The scheduler's kernels name the tensors they touch. `canonical` turns one into a
kernel of *parameters* p0, p1, ... (written tensors first, then read ones) plus the
tensor bound to each: identical computations on different tensors (every layer's
copy) become one kernel and several launches, and nothing in a kernel says where a
tensor lives. The kernel passes (tgc/ir/kpasses.py) then add the iteration structure
a CPU loop nest needs (`Nest`: named axes, a cut axis split into regions) and the
launch decisions (`decisions`: tiles, reduction layout, outputs per thread, blocking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tgc.ir.ops import Op

INF = 1 << 62


@dataclass(frozen=True)
class KExpr:
    op: Op
    dtype: str
    srcs: tuple["KExpr", ...] = ()
    arg: Any = None
    vmin: int = field(default=-INF, compare=False)
    vmax: int = field(default=INF, compare=False)  # inclusive bounds, for i32 index math

    def __hash__(self):
        h = self.__dict__.get("_h")
        if h is None:
            h = hash((self.op, self.dtype, self.srcs, self.arg))
            object.__setattr__(self, "_h", h)
        return h

    # operator sugar for index arithmetic
    def __add__(self, o):
        return iadd(self, o)

    def __mul__(self, o):
        return imul(self, o)

    def __floordiv__(self, o):
        return idiv(self, o)

    def __mod__(self, o):
        return imod(self, o)


def const(v, dtype="i32") -> KExpr:
    v = int(v) if dtype == "i32" else float(v)
    b = v if dtype == "i32" else -INF
    return KExpr(Op.CONST, dtype, (), v, b if dtype == "i32" else -INF, b if dtype == "i32" else INF)


def _c(x) -> KExpr:
    return x if isinstance(x, KExpr) else const(x)


def _cv(x: KExpr):
    return x.arg if x.op is Op.CONST else None


def gidx(size: int) -> KExpr:
    return KExpr(Op.GIDX, "i32", (), None, 0, size - 1)


def ridx(size: int) -> KExpr:
    return KExpr(Op.RIDX, "i32", (), None, 0, size - 1)


def axis(name: str, size: int) -> KExpr:
    """An index of a loop nest, in [0, size)."""
    return KExpr(Op.AXIS, "i32", (), name, 0, size - 1)


def iadd(a, b) -> KExpr:
    a, b = _c(a), _c(b)
    if _cv(a) is not None and _cv(b) is not None:
        return const(a.arg + b.arg)
    if _cv(a) == 0:
        return b
    if _cv(b) == 0:
        return a
    if _cv(a) is not None:
        a, b = b, a
    # (x // (c*k)) * k + (x // c) % k  ->  x // c   (c = 1: (x // k) * k + x % k -> x)
    for p, q in ((a, b), (b, a)):
        if p.op is Op.MUL and q.op is Op.MOD and p.srcs[0].op is Op.IDIV and _cv(p.srcs[1]) is not None:
            x, c1 = _divparts(p.srcs[0])
            y, c0 = _divparts(q.srcs[0])
            k = p.srcs[1].arg
            if x == y and _cv(q.srcs[1]) == k and c1 == c0 * k:
                return idiv(x, c0)
    # fold constants: (x + c1) + c2
    if _cv(b) is not None and a.op is Op.ADD and _cv(a.srcs[1]) is not None:
        return iadd(a.srcs[0], a.srcs[1].arg + b.arg)
    return KExpr(Op.ADD, "i32", (a, b), None, a.vmin + b.vmin, a.vmax + b.vmax)


def _divparts(e: KExpr) -> tuple[KExpr, int]:
    """e as (x, c) with e == x // c (c = 1 when e is not a constant division)."""
    if e.op is Op.IDIV and _cv(e.srcs[1]) is not None:
        return e.srcs[0], e.srcs[1].arg
    return e, 1


def imul(a, b) -> KExpr:
    a, b = _c(a), _c(b)
    if _cv(a) is not None and _cv(b) is not None:
        return const(a.arg * b.arg)
    if _cv(a) is not None:
        a, b = b, a
    c = _cv(b)
    if c == 0:
        return const(0)
    if c == 1:
        return a
    if c is not None and a.op is Op.MUL and _cv(a.srcs[1]) is not None:
        return imul(a.srcs[0], a.srcs[1].arg * c)
    lo, hi = sorted((a.vmin * b.vmin, a.vmax * b.vmax)) if a.vmin >= 0 and b.vmin >= 0 else (-INF, INF)
    return KExpr(Op.MUL, "i32", (a, b), None, lo, hi)


def idiv(a, c: int) -> KExpr:
    a = _c(a)
    if c == 1:
        return a
    if _cv(a) is not None:
        return const(a.arg // c)
    if 0 <= a.vmin and a.vmax < c:
        return const(0)
    if a.op is Op.IDIV and _cv(a.srcs[1]) is not None:
        return idiv(a.srcs[0], a.srcs[1].arg * c)
    # (x * k + y) // c with k % c == 0 and 0 <= y < c  ->  x * (k // c) + y // c ... only the exact case
    if a.op is Op.ADD:
        p, q = a.srcs
        if p.op is Op.MUL and _cv(p.srcs[1]) is not None and p.srcs[1].arg % c == 0 and 0 <= q.vmin and q.vmax < c:
            return imul(p.srcs[0], p.srcs[1].arg // c)
    if a.op is Op.MUL and _cv(a.srcs[1]) is not None and a.srcs[1].arg % c == 0:
        return imul(a.srcs[0], a.srcs[1].arg // c)
    return KExpr(Op.IDIV, "i32", (a, const(c)), None, a.vmin // c if a.vmin >= 0 else -INF, a.vmax // c if a.vmin >= 0 else INF)


def imod(a, c: int) -> KExpr:
    a = _c(a)
    if c == 1:
        return const(0)
    if _cv(a) is not None:
        return const(a.arg % c)
    if 0 <= a.vmin and a.vmax < c:
        return a
    if a.op is Op.ADD:
        p, q = a.srcs
        if p.op is Op.MUL and _cv(p.srcs[1]) is not None and p.srcs[1].arg % c == 0 and 0 <= q.vmin and q.vmax < c:
            return q
    if a.op is Op.MUL and _cv(a.srcs[1]) is not None and a.srcs[1].arg % c == 0:
        return const(0)
    return KExpr(Op.MOD, "i32", (a, const(c)), None, 0, c - 1)


def unflatten(flat: KExpr, shape) -> list[KExpr]:
    """Row-major multi-index of `flat` in `shape`, built innermost-first so that
    flatten(unflatten(x)) simplifies back to x."""
    idx = []
    x = flat
    for s in reversed(shape[1:]):
        idx.append(imod(x, s))
        x = idiv(x, s)
    idx.append(x)
    return idx[::-1]


def flatten(idx, shape) -> KExpr:
    x = const(0)
    for i, s in zip(idx, shape):
        x = iadd(imul(x, s), i)
    return x


def expr(op: Op, dtype: str, *srcs: KExpr, arg=None) -> KExpr:
    """A value (non-index) expression node; constants fold for a few cheap cases."""
    return KExpr(op, dtype, tuple(srcs), arg)


def load(tensor: str, index: KExpr, dtype: str, size: int) -> KExpr:
    return KExpr(Op.LOAD, dtype, (index,), tensor, 0 if dtype == "i32" else -INF, INF)


def select(cond: KExpr, a: KExpr, b: KExpr) -> KExpr:
    """cond (f32 0/1) ? a : b; bounds of the result span both arms."""
    return KExpr(Op.WHERE, a.dtype, (cond, a, b), None, min(a.vmin, b.vmin), max(a.vmax, b.vmax))


def walk(roots):
    """Every node of the expression DAG under `roots`, once each (no order promised)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(e.srcs)


@dataclass(frozen=True)
class View:
    """A strided view of a tensor: element (i0, i1, ...) is at offset + sum(i_k * strides[k])."""

    tensor: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0


@dataclass(frozen=True)
class Band:
    """Triangular structure a matmul may exploit (tgc/ir/structure.py). For output (m, n)
    only k in [max(m + k_from_m, n + k_from_n), min(m + k_to_m, n + k_to_n)) can
    contribute (the operands are zero elsewhere; None: no bound), and outputs with
    n > m + dead_above or n < m + dead_below are never read: a backend may leave them
    unspecified but finite (whole tiles of them are written as zeros)."""

    k_from_m: int | None = None
    k_from_n: int | None = None
    k_to_m: int | None = None
    k_to_n: int | None = None
    dead_above: int | None = None
    dead_below: int | None = None

    @staticmethod
    def of(a_zero, b_zero, out_dead) -> Band | None:
        """From structure regions (lower, c) of A [m, k], B [k, n] and the output [m, n]."""
        f = {}
        if a_zero is not None:  # A[m, k] = 0 for k > m + c (lower) or k < m + c
            f["k_to_m" if a_zero[0] else "k_from_m"] = a_zero[1] + 1 if a_zero[0] else a_zero[1]
        if b_zero is not None:  # B[k, n] = 0 for n > k + c, i.e. k < n - c (lower), or k > n - c
            f["k_from_n" if b_zero[0] else "k_to_n"] = -b_zero[1] if b_zero[0] else 1 - b_zero[1]
        if out_dead is not None:
            f["dead_above" if out_dead[0] else "dead_below"] = out_dead[1]
        return Band(**f) if f else None

    def masks(self, M: int, N: int, K: int):
        """Boolean masks (A [M, K] zero, B [K, N] zero, output [M, N] dead) for tests."""
        import numpy as np

        m, k, n = np.arange(M)[:, None], np.arange(K), np.arange(N)
        none = lambda v, d: d if v is None else v
        big = 1 << 40
        a_zero = (k >= m + none(self.k_to_m, big)) | (k < m + none(self.k_from_m, -big))
        b_zero = (k[:, None] >= n + none(self.k_to_n, big)) | (k[:, None] < n + none(self.k_from_n, -big))
        dead = (n > m + none(self.dead_above, big)) | (n < m + none(self.dead_below, -big))
        return a_zero, b_zero, dead


@dataclass
class Kernel:
    name: str
    kind: str  # "elementwise" | "reduce" | "matmul"
    size: int  # number of output elements each output has (the gid range)
    outputs: list[tuple[str, KExpr]] = field(default_factory=list)  # (tensor, value at gid)
    reduce_op: Op | None = None  # SUM or RMAX, reduce kernels
    reduce_len: int = 0
    # matmul: out[batch..., M, N] = A[batch..., M, K] @ B[batch..., K, N]
    a: View | None = None
    b: View | None = None
    out: str | None = None
    batch: tuple[int, ...] = ()
    M: int = 0
    N: int = 0
    K: int = 0
    band: Band | None = None  # triangular structure the matmul may skip
    a_onehot: str | None = None  # A[m, k] = (this i32 tensor[k] == m), never stored (a is None)
    # filled in by `canonical` and the kernel passes
    params: tuple["Param", ...] = ()  # a canonical kernel's tensors are p0, p1, ...: what each is
    nest: "Nest | None" = None  # the loop nest of elementwise and reduce kernels (kpasses.plan_nest)
    decisions: dict = field(default_factory=dict)  # launch decisions, plain data (kpasses)

    def loads(self) -> set[str]:
        out = {e.arg for e in walk(e for _, e in self.outputs) if e.op is Op.LOAD}
        if self.kind == "matmul":
            out |= {self.a_onehot if self.a is None else self.a.tensor, self.b.tensor}
        return out

    def writes(self) -> list[str]:
        return [self.out] if self.kind == "matmul" else [t for t, _ in self.outputs]

    def uniforms(self) -> set[str]:
        return {e.arg for e in walk(e for _, e in self.outputs) if e.op is Op.UNIFORM}


@dataclass(frozen=True)
class Param:
    """A parameter of a canonical kernel: the tensor bound to it at launch has this dtype and
    number of elements; access says whether the kernel reads it, writes it, or both."""

    dtype: str
    elements: int
    access: str  # "read" | "write" | "read_write"


@dataclass(frozen=True)
class Region:
    """A range [lo, hi) of a nest's cut axis, with the outputs specialised to it (the index
    math that switches at the range's ends resolved, a mask decided). lo and hi are
    expressions of the outer axes and uniforms."""

    lo: KExpr
    hi: KExpr
    outputs: tuple[tuple[str, KExpr], ...]


@dataclass(frozen=True)
class Nest:
    """The loop nest of an elementwise or reduce kernel, outer axis first. The flat output
    index is gid = row * L + j for axes row < size / L, j < L; a reduce kernel's ridx is
    the axis r. `cut` is the axis split into `regions`, which cover it in order; every
    other axis runs whole. Expressions use AXIS leaves named like the axes."""

    axes: tuple[tuple[str, int], ...]
    cut: str
    regions: tuple[Region, ...]

    def size(self, name: str) -> int:
        return dict(self.axes)[name]


def tensors_in_order(k: Kernel) -> list[str]:
    """The tensors a kernel touches, in parameter order: those written (output order), then
    those only read, in order of first appearance (a depth-first walk of the outputs)."""
    order = list(k.writes())
    seen = set(order)

    def visit(e: KExpr, done: set):
        stack = [e]
        while stack:
            x = stack.pop()
            if id(x) in done:
                continue
            done.add(id(x))
            if x.op is Op.LOAD and x.arg not in seen:
                seen.add(x.arg)
                order.append(x.arg)
            stack.extend(reversed(x.srcs))

    done: set = set()
    for _, e in k.outputs:
        visit(e, done)
    if k.kind == "matmul":
        for t in (k.a_onehot if k.a is None else k.a.tensor, k.b.tensor):
            if t not in seen:
                seen.add(t)
                order.append(t)
    return order


def rebuild(e: KExpr, post, memo: dict, pre=None) -> KExpr:
    """e rebuilt bottom-up, each node once (iterative post-order: kernels of long fused chains
    are deep). pre(x) -> a replacement taken as it is (its sources are not visited) or None;
    post(x, new sources) -> the node that stands for x. `memo` maps id(old) -> new."""
    stack = [e]
    while stack:
        x = stack[-1]
        if id(x) in memo:
            stack.pop()
            continue
        rep = pre(x) if pre is not None else None
        if rep is not None:
            memo[id(x)] = rep
            stack.pop()
            continue
        todo = [s for s in x.srcs if id(s) not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        memo[id(x)] = post(x, tuple(memo[id(s)] for s in x.srcs))
    return memo[id(e)]


class Interner:
    """Hash-consing of expressions: structurally equal KExprs become one object, so equal
    kernels compare by identity (a DAG compared structurally revisits shared nodes)."""

    def __init__(self):
        self.table: dict = {}

    def __call__(self, e: KExpr, names: dict[str, str] | None = None, memo: dict | None = None) -> KExpr:
        """e interned, with every LOAD's tensor renamed through `names`."""

        def post(x: KExpr, srcs: tuple) -> KExpr:
            arg = names.get(x.arg, x.arg) if names and x.op is Op.LOAD else x.arg
            key = (x.op, x.dtype, tuple(id(s) for s in srcs), arg, x.vmin, x.vmax)
            hit = self.table.get(key)
            if hit is None:
                hit = self.table[key] = KExpr(x.op, x.dtype, srcs, arg, x.vmin, x.vmax)
            return hit

        return rebuild(e, post, {} if memo is None else memo)


def canonical(k: Kernel, tensors: dict, intern: Interner | None = None) -> tuple[Kernel, list[str]]:
    """(the kernel over parameters p0, p1, ..., the tensors bound to them). `tensors`: name ->
    TensorInfo (shape, dtype). Equal computations give equal canonical kernels (`kernel_key`)."""
    intern = intern or Interner()
    order = tensors_in_order(k)
    names = {t: f"p{i}" for i, t in enumerate(order)}
    writes, reads = set(k.writes()), k.loads()
    params = tuple(Param(tensors[t].dtype, math.prod(tensors[t].shape),
                         "read_write" if t in writes and t in reads else "write" if t in writes else "read")
                   for t in order)  # fmt: skip
    memo: dict = {}
    view = lambda v: None if v is None else View(names[v.tensor], v.shape, v.strides, v.offset)
    c = Kernel(k.name, k.kind, k.size, [(names[t], intern(e, names, memo)) for t, e in k.outputs], k.reduce_op,
               k.reduce_len, view(k.a), view(k.b), names.get(k.out), k.batch, k.M, k.N, k.K, k.band,
               names.get(k.a_onehot), params)  # fmt: skip
    return c, order


def kernel_key(k: Kernel) -> tuple:
    """Everything a canonical kernel computes: two kernels with equal keys are one kernel."""
    return (k.kind, k.size, tuple(k.outputs), k.reduce_op, k.reduce_len, k.a, k.b, k.out, k.batch, k.M, k.N, k.K,
            k.band, k.a_onehot, k.params)


def format_expr_dag(roots: list[KExpr]) -> tuple[list[str], dict]:
    """SSA lines for the expression DAG under roots; returns (lines, names)."""
    names: dict[KExpr, str] = {}
    lines: list[str] = []

    def visit(e: KExpr) -> str:
        if e in names:
            return names[e]
        if e.op is Op.CONST:
            return repr(e.arg)
        if e.op in (Op.GIDX, Op.RIDX):
            return e.op.name.lower()
        srcs = [visit(s) for s in e.srcs]
        n = f"v{len(lines)}"
        arg = f" {e.arg!r}" if e.arg is not None else ""
        lines.append(f"  {n}: {e.dtype} = {e.op.name}{arg}({', '.join(srcs)})")
        names[e] = n
        return n

    for r in roots:
        visit(r)
    return lines, names


def format_kernel(k: Kernel) -> str:
    if k.kind == "matmul":
        return (
            f"kernel {k.name} matmul batch={list(k.batch)} M={k.M} N={k.N} K={k.K}\n"
            f"  A = {k.a if k.a is not None else f'onehot({k.a_onehot})[k] == m'}\n  B = {k.b}\n  {k.out}[b, m, n] = sum_k A[b, m, k] * B[b, k, n]\n"
            + (f"  {k.band}\n" if k.band is not None else "")
        )
    head = f"kernel {k.name} {k.kind} gid < {k.size}"
    if k.kind == "reduce":
        head += f" {k.reduce_op.name} over ridx < {k.reduce_len}"
    lines, names = format_expr_dag([e for _, e in k.outputs])
    outs = []
    for t, e in k.outputs:
        ref = names.get(e, "gidx" if e.op is Op.GIDX else repr(e.arg))
        outs.append(f"  {t}[gid] = {ref}")
    return "\n".join([head] + lines + outs) + "\n"
