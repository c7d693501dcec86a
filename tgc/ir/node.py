"""The IR's one node type: an immutable (op, dtype, shape, srcs, arg) record.

A graph is the DAG reachable from some output nodes; edits build new nodes. Shapes
are static tuples of ints; runtime-varying values (step, lr, position) are UNIFORM
leaves of shape (). `loc` is the DSL source location that produced the node, so a
shape error found here points at the user's line. Construction goes through
`make`, which runs the op's shape rule (tgc/ir/rules.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from tgc.errors import Loc
from tgc.ir.ops import Op

_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Node:
    op: Op
    dtype: str
    shape: tuple[int, ...]
    srcs: tuple["Node", ...] = ()
    arg: Any = None
    loc: Loc | None = field(default=None, compare=False)
    uid: int = field(default_factory=lambda: next(_ids), compare=False)

    def __hash__(self) -> int:
        return self.uid

    def __eq__(self, other) -> bool:
        return self is other

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<{self.op.name} {self.dtype}{list(self.shape)} #{self.uid}>"


def make(op: Op, srcs: tuple[Node, ...] | list[Node] = (), arg: Any = None, loc: Loc | None = None) -> Node:
    """Build a node, inferring dtype and shape with the op's rule (raises ShapeError at `loc`)."""
    from tgc.ir.rules import infer

    srcs = tuple(srcs)
    dtype, shape = infer(op, srcs, arg, loc)
    return Node(op, dtype, tuple(int(s) for s in shape), srcs, arg, loc)


def toposort(outputs) -> list[Node]:
    """Nodes reachable from `outputs`, every node after its sources (iterative DFS)."""
    return toposort_until(outputs, ())


def toposort_until(outputs, stop) -> list[Node]:
    """Nodes reachable from `outputs`, every node after its sources (iterative DFS); nodes in
    `stop` are neither returned nor descended into."""
    order: list[Node] = []
    seen: set[int] = set()
    stack = [(n, False) for n in reversed(list(outputs)) if n not in stop]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if n.uid in seen:
            continue
        seen.add(n.uid)
        stack.append((n, True))
        for s in reversed(n.srcs):
            if s.uid not in seen and s not in stop:
                stack.append((s, False))
    return order


def substitute(outputs, mapping: dict[Node, Node]) -> list[Node]:
    """Rebuild the graph under `outputs` with nodes replaced per `mapping` (sources first)."""
    new: dict[Node, Node] = dict(mapping)
    for n in toposort(outputs):
        if n in new:
            continue
        srcs = tuple(new[s] for s in n.srcs)
        new[n] = n if all(a is b for a, b in zip(srcs, n.srcs)) else Node(n.op, n.dtype, n.shape, srcs, n.arg, n.loc)
    return [new[o] for o in outputs]
