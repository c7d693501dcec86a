"""Affine forms of i32 index expressions in one loop index, for the kernel passes.

An index expression of the kernel IR (tgc/ir/kernel.py) is affine in a loop index j
over a range of j when every IDIV/MOD/MIN/MAX in it that depends on j does not switch
on that range: then it equals sum(c * term) + cj * j + k with terms free of j. The
loop passes (tgc/ir/kpasses.py) use this to cut a loop where its index math switches
(a head split, a concat's pad mask) and to find a causal mask's split point, so that
every load in each piece walks memory with a constant stride.
"""

from __future__ import annotations

import math

from tgc.ir.kernel import KExpr, const
from tgc.ir.ops import Op


class Aff:
    """sum(coef * term) + cj * jj + k: terms are i32 expressions free of the piece index jj."""

    def __init__(self, terms=None, cj=0, k=0):
        self.terms, self.cj, self.k = {t: c for t, c in (terms or {}).items() if c}, cj, k

    def __add__(self, o):
        t = dict(self.terms)
        for x, c in o.terms.items():
            t[x] = t.get(x, 0) + c
        return Aff(t, self.cj + o.cj, self.k + o.k)

    def scale(self, c):
        return Aff({x: v * c for x, v in self.terms.items()}, self.cj * c, self.k * c)


def multiple_of(e: KExpr) -> int:
    """A known divisor of every value of e (1 when unknown)."""
    if e.op is Op.CONST:
        return abs(e.arg) or 1 << 30
    if e.op is Op.MUL and e.srcs[1].op is Op.CONST:
        return multiple_of(e.srcs[0]) * abs(e.srcs[1].arg)
    if e.op is Op.ADD:
        return math.gcd(multiple_of(e.srcs[0]), multiple_of(e.srcs[1]))
    return 1


class Unresolved(Exception):
    pass


class AffineIn:
    """Affine forms (`Aff`) of i32 index expressions in the loop index j over
    j in [j0, j0 + P): IDIV/MOD/MIN/MAX of j resolve where they do not switch on that
    range (P None: unknown range, so they never do). Raises Unresolved otherwise."""

    def __init__(self, j: KExpr, j0: int = 0, P: int | None = None):
        self.j, self.j0, self.P = j, j0, P
        self.dep, self.memo = {}, {}

    def has_j(self, e) -> bool:
        if e not in self.dep:
            self.dep[e] = e is self.j or e == self.j or any(self.has_j(s) for s in e.srcs)
        return self.dep[e]

    def _span(self, a: Aff) -> tuple[int, int]:
        if self.P is None:
            raise Unresolved
        return tuple(sorted((a.k, a.k + a.cj * (self.P - 1))))

    def __call__(self, e) -> Aff:
        if e in self.memo:
            return self.memo[e]
        op, has_j = e.op, self.has_j
        if not has_j(e):
            r = Aff(k=e.arg) if op is Op.CONST else Aff({e: 1})
        elif e == self.j:
            r = Aff(cj=1, k=self.j0)
        elif op is Op.ADD:
            r = self(e.srcs[0]) + self(e.srcs[1])
        elif op is Op.SUB:
            r = self(e.srcs[0]) + self(e.srcs[1]).scale(-1)
        elif op is Op.NEG:
            r = self(e.srcs[0]).scale(-1)
        elif op is Op.MUL and not has_j(e.srcs[1]) and e.srcs[1].op is Op.CONST:
            r = self(e.srcs[0]).scale(e.srcs[1].arg)
        elif op is Op.MUL and not has_j(e.srcs[0]) and e.srcs[0].op is Op.CONST:
            r = self(e.srcs[1]).scale(e.srcs[0].arg)
        elif op in (Op.IDIV, Op.MOD) and e.srcs[1].op is Op.CONST:
            a, d = self(e.srcs[0]), e.srcs[1].arg
            lo, hi = self._span(a)
            if d <= 0 or lo // d != hi // d or any((c * multiple_of(t)) % d for t, c in a.terms.items()):
                raise Unresolved
            q = lo // d
            if op is Op.IDIV:
                r = Aff({to_expr(Aff(a.terms)) // d: 1} if a.terms else {}, 0, q)  # the terms are a multiple of d
            else:
                r = Aff({}, a.cj, a.k - q * d)
        elif op in (Op.MAX, Op.MIN):
            d = self(e.srcs[0]) + self(e.srcs[1]).scale(-1)
            if d.terms:
                raise Unresolved
            lo, hi = self._span(d)
            if lo >= 0 or hi <= 0:
                first = (lo >= 0) == (op is Op.MAX)
                r = self(e.srcs[0] if first else e.srcs[1])
            else:
                raise Unresolved
        else:
            raise Unresolved
        self.memo[e] = r
        return r


def to_expr(a: Aff, jj: KExpr | None = None) -> KExpr:
    """The expression of an affine form, with jj for the loop index (unused when cj is 0)."""
    x = const(a.k)
    for t, c in sorted(a.terms.items(), key=lambda tc: str(tc[0])):
        x = t * c + x
    return x + jj * a.cj if a.cj else x


