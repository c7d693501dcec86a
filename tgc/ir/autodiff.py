"""Reverse-mode autodiff over the IR: every gradient of the model is derived here.

`grad(y, xs)` walks the graph under the scalar `y` backwards in topological
order, asking each op's gradient rule (tgc/ir/rules.py) for the cotangents of its
sources and summing contributions. Composite ops are decomposed first, so the
backward of attention is the backward of its matmuls and softmax. Nothing here
knows about GPTs.
"""

from __future__ import annotations

from tgc.ir import build
from tgc.ir.node import Node, toposort
from tgc.ir.passes import decompose
from tgc.ir.rules import get_rule


def grad(y: Node, xs: list[Node]) -> list[Node]:
    if y.shape not in ((), (1,)):
        raise ValueError(f"grad needs a scalar, got shape {list(y.shape)}")
    (y,), mapping = decompose([y], return_mapping=True)
    xs = [mapping.get(x, x) for x in xs]
    cot: dict[Node, Node] = {y: build.full(y.shape, 1.0)}
    wanted = set(xs)
    # only nodes between xs and y need cotangents
    order = toposort([y])
    reaches: set[Node] = set()
    for n in order:
        if n in wanted or any(s in reaches for s in n.srcs):
            reaches.add(n)
    for n in reversed(order):
        g = cot.get(n)
        if g is None or not n.srcs or n not in reaches:
            continue
        rule = get_rule(n.op)
        if rule.grad is None:
            raise NotImplementedError(f"op {n.op.name} has no gradient rule")
        for s, gs in zip(n.srcs, rule.grad(n, g)):
            if gs is None or s not in reaches or s.dtype != "f32":
                continue
            assert gs.shape == s.shape, (n.op, gs.shape, s.shape)
            cot[s] = build.add(cot[s], gs) if s in cot else gs
    return [cot.get(x) if x in cot else build.full(x.shape, 0.0) for x in xs]
