"""Triangular structure: which parts of a tensor's last two axes are known zero, and which
are never read. Causal attention makes both: the probabilities are zero above the
diagonal, and the scores there are masked away. A matmul that knows it skips that work
(tgc/ir/kernel.py `Band`): about half of every attention product, forward and backward.

A region is `(lower, c)` over the last two axes (i, j): lower = True is {j > i + c}, the
part above a diagonal; lower = False is {j < i + c}, the part below one.

- zero(x): x is 0 in the region. Exact zeros come from `where(mask, a, 0)` with a mask
  that is an affine comparison of the two axes' iotas; products and quotients with a
  zero numerator keep them, and so do movements that keep or swap the last two axes.
  (0 * x and 0 / x are taken as 0, as a BLAS that skips known zeros does; they differ
  only where x is inf, NaN or, for the quotient, 0.)
- dead(x): no reader of x looks at the region: `where` ignores the arm it does not
  select, a product ignores its other factor where one factor is zero, and an
  elementwise op or a movement passes its own dead region on to its source. Program
  outputs, reductions and matmul operands read everything.

Both are sound under-approximations: a region missing from the result costs speed, never
correctness.
"""

from __future__ import annotations

from tgc.ir.node import Node
from tgc.ir.ops import GroupOp, Op

Region = tuple[bool, int]  # (lower, c): {j > i + c} if lower else {j < i + c}


def complement(r: Region) -> Region:
    lower, c = r
    return (False, c + 1) if lower else (True, c - 1)


def transpose(r: Region) -> Region:
    """The region of x seen in x's transpose (last two axes swapped)."""
    lower, c = r
    return (not lower, -c)


def union(a: Region | None, b: Region | None) -> Region | None:
    """A region inside both's union (the larger one when they face the same way)."""
    if a is None or b is None:
        return a or b
    if a[0] != b[0]:
        return a
    return (a[0], min(a[1], b[1])) if a[0] else (a[0], max(a[1], b[1]))


def intersect(a: Region | None, b: Region | None) -> Region | None:
    if a is None or b is None or a[0] != b[0]:
        return None
    return (a[0], max(a[1], b[1])) if a[0] else (a[0], min(a[1], b[1]))


def _affine(n: Node, memo: dict) -> tuple[int, int, int] | None:
    """n[..., i, j] = p i + q j + r for an i32 expression of iotas and constants broadcast
    over the last two axes, else None."""
    if n in memo:
        return memo[n]
    res = None
    if n.dtype == "i32" and n.ndim >= 2 or n.op is Op.CONST:
        if n.op is Op.CONST and isinstance(n.arg["value"], int):
            res = (0, 0, n.arg["value"])
        elif n.op is Op.IOTA:
            ax = n.arg["axis"] - n.ndim  # -2: i, -1: j; other axes vary along neither
            res = {-2: (1, 0, 0), -1: (0, 1, 0)}.get(ax)
        elif n.op in (Op.ADD, Op.SUB):
            a, b = (_affine(s, memo) for s in n.srcs)
            if a and b:
                s = 1 if n.op is Op.ADD else -1
                res = (a[0] + s * b[0], a[1] + s * b[1], a[2] + s * b[2])
        elif n.op in (Op.RESHAPE, Op.EXPAND) and _keeps_last2(n):
            res = _affine(n.srcs[0], memo)
    memo[n] = res
    return res


def _keeps_last2(n: Node) -> bool:
    x = n.srcs[0]
    return x.ndim >= 2 and n.ndim >= 2 and x.shape[-2:] == n.shape[-2:]


def _permute_keeps(n: Node) -> bool:
    return n.op is Op.PERMUTE and n.ndim >= 2 and tuple(n.arg[-2:]) == (n.ndim - 2, n.ndim - 1)


def _swaps_last2(n: Node) -> bool:
    nd = n.ndim
    return n.op is Op.PERMUTE and nd >= 2 and tuple(n.arg[-2:]) == (nd - 1, nd - 2)


def _false_region(cond: Node, memo: dict) -> Region | None:
    """Where a causal-style mask `cond` is false, if it is (j - i) compared with a constant."""
    while cond.op in (Op.RESHAPE, Op.EXPAND) and _keeps_last2(cond):
        cond = cond.srcs[0]
    if cond.op is not Op.CMPLT:
        return None
    a, b = (_affine(s, memo) for s in cond.srcs)
    if a is None or b is None:
        return None
    p, q, r = a[0] - b[0], a[1] - b[1], a[2] - b[2]  # true iff p i + q j + r < 0
    if (p, q) == (-1, 1):  # j - i < -r: false where j > i - r - 1
        return (True, -r - 1)
    if (p, q) == (1, -1):  # i - j < -r, i.e. j > i + r: false where j < i + r + 1
        return (False, r + 1)
    return None


def _is_zero(n: Node) -> bool:
    return n.op is Op.CONST and n.arg["value"] == 0


def analyze(order: list[Node], roots) -> tuple[dict[Node, Region], dict[Node, Region]]:
    """(zero, dead) regions of the nodes in `order` (topological) under `roots`."""
    memo: dict = {}
    zero: dict[Node, Region] = {}
    for n in order:
        if n.ndim < 2 or n.dtype != "f32":
            continue
        z = None
        s = n.srcs
        if n.op is Op.WHERE:
            f = _false_region(s[0], memo)
            if f is not None:
                if _is_zero(s[2]):
                    z = f
                elif _is_zero(s[1]):
                    z = complement(f)
            if z is None and s[1] in zero and zero.get(s[1]) == zero.get(s[2]):
                z = zero[s[1]]
        elif n.op is Op.MUL:
            z = union(zero.get(s[0]), zero.get(s[1]))
        elif n.op in (Op.DIV, Op.NEG) or n.op in (Op.RESHAPE, Op.EXPAND) and _keeps_last2(n) or _permute_keeps(n):
            z = zero.get(s[0])
        elif _swaps_last2(n) and s[0] in zero:
            z = transpose(zero[s[0]])
        if z is not None:
            zero[n] = z

    users: dict[Node, list[Node]] = {}
    for n in order:
        for s in n.srcs:
            users.setdefault(s, []).append(n)
    rootset = set(roots)
    dead: dict[Node, Region] = {}
    for x in reversed(order):
        if x in rootset or x.ndim < 2 or x not in users:
            continue
        d: Region | None = None
        for i, u in enumerate(users[x]):
            r = _ignored(x, u, zero, dead, memo)
            d = r if i == 0 else intersect(d, r)
            if d is None:
                break
        if d is not None:
            dead[x] = d
    return zero, dead


def _ignored(x: Node, u: Node, zero, dead, memo) -> Region | None:
    """The region of x that reader u never looks at."""
    s = u.srcs
    if s.count(x) != 1 or u.ndim < 2:
        return None
    own = dead.get(u)
    if u.op is Op.WHERE:
        if x is s[0]:
            return None
        f = _false_region(s[0], memo)
        arm = None if f is None else (f if x is s[1] else complement(f))
        return union(arm, own)
    if u.op is Op.MUL:
        return union(zero.get(s[1] if x is s[0] else s[0]), own)
    if u.op in GroupOp.Elementwise and x.shape == u.shape:
        return own
    if u.op in (Op.RESHAPE, Op.EXPAND) and _keeps_last2(u):
        return own
    if _permute_keeps(u):
        return own
    if _swaps_last2(u):
        return None if own is None else transpose(own)
    return None
