"""The IR verifier: re-derives every node's dtype and shape from its op's rule and
checks the graph's invariants. The tests run it after every pass."""

from __future__ import annotations

from tgc.ir.node import Node, toposort
from tgc.ir.ops import GroupOp, Op
from tgc.ir.rules import get_rule


class VerifyError(AssertionError):
    pass


def verify_graph(outputs: list[Node], after: str = "") -> None:
    where = f" after {after}" if after else ""
    inputs: dict[str, Node] = {}
    for n in toposort(outputs):
        if not isinstance(n.op, Op):
            raise VerifyError(f"{n}: op is not an Op{where}")
        rule = get_rule(n.op)
        if n.op in GroupOp.Leaf and n.srcs:
            raise VerifyError(f"{n}: leaf with sources{where}")
        dtype, shape = rule.shape(n.srcs, n.arg, n.loc)
        if (dtype, tuple(shape)) != (n.dtype, n.shape):
            raise VerifyError(f"{n}: stored {n.dtype}{list(n.shape)} but rule gives {dtype}{list(shape)}{where}")
        if n.op is Op.INPUT:
            name = n.arg["name"]
            other = inputs.setdefault(name, n)
            if other is not n and (other.shape, other.dtype) != (n.shape, n.dtype):
                raise VerifyError(f"input {name!r} appears with two shapes{where}")
        if any(s < 0 for s in n.shape):
            raise VerifyError(f"{n}: negative dimension{where}")


def verify_program(prog, after: str = "") -> None:
    verify_graph(list(prog.outputs.values()) + list(prog.updates.values()), after)
    for name, node in prog.updates.items():
        state = prog.inputs.get(name)
        if state is None:
            raise VerifyError(f"{prog.name}: update of {name!r}, which is not an input")
        if (state.shape, state.dtype) != (node.shape, node.dtype):
            raise VerifyError(f"{prog.name}: update of {name!r} changes its shape or dtype")
