"""The numpy interpreter: the living specification every target is tested against.

It walks a graph in topological order and applies each op's numpy meaning from
tgc/ir/rules.py. `float_dtype=np.float64` runs the same graph in double precision,
which is how gradients are checked against finite differences.
"""

from __future__ import annotations

import numpy as np

from tgc.ir.node import Node, toposort
from tgc.ir.ops import Op
from tgc.ir.rules import get_rule


def evaluate(outputs: list[Node], env: dict, float_dtype=np.float32) -> list[np.ndarray]:
    """Values of `outputs`, given `env`: name -> array for every INPUT and UNIFORM leaf."""
    vals: dict[int, np.ndarray] = {}

    def as_dtype(a, dtype):
        return np.asarray(a, dtype=np.int32 if dtype == "i32" else float_dtype)

    for n in toposort(outputs):
        if n.op in (Op.INPUT, Op.UNIFORM):
            name = n.arg["name"]
            if name not in env:
                raise KeyError(f"no value given for {n.op.name.lower()} {name!r}")
            v = as_dtype(env[name], n.dtype)
            if v.shape != n.shape:
                raise ValueError(f"{name}: expected shape {list(n.shape)}, got {list(v.shape)}")
        elif n.op is Op.CONST:
            v = np.full(n.shape, n.arg["value"], dtype=np.int32 if n.dtype == "i32" else float_dtype)
        else:
            v = get_rule(n.op).numpy(n.arg, *(vals[s.uid] for s in n.srcs))
            v = as_dtype(v, n.dtype)
        vals[n.uid] = v
    return [vals[o.uid] for o in outputs]


def run_program(prog, env: dict, float_dtype=np.float32) -> tuple[dict, dict]:
    """Run a Program: returns (outputs by name, new state values by name)."""
    names = list(prog.outputs) + list(prog.updates)
    nodes = list(prog.outputs.values()) + list(prog.updates.values())
    vals = evaluate(nodes, env, float_dtype)
    out = dict(zip(names[: len(prog.outputs)], vals[: len(prog.outputs)]))
    upd = dict(zip(names[len(prog.outputs) :], vals[len(prog.outputs) :]))
    return out, upd
