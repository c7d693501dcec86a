"""Graph-to-graph passes over a list of output nodes, each a small function.

- decompose: composite ops (ATTENTION, CACHED_ATTENTION) into primitives
- fold: constant folding and algebraic identities (x*1, x+0, reshape∘reshape, ...);
  DETACH disappears here (autodiff, which has run, is its only reader)
- cse: structurally equal nodes merged (hash-consing)
- dce: implicit in every pass (only what outputs reach is rebuilt); `dce` on a
  Program also drops inputs nothing reads.

`run_passes` is the one driver; it runs the verifier after every pass when asked
(the tests always ask).
"""

from __future__ import annotations

import numpy as np

from tgc.ir.node import Node, toposort, toposort_until
from tgc.ir.ops import GroupOp, Op
from tgc.ir.rules import get_rule


def _rewrite(outputs, fn, return_mapping=False):
    """Rebuild the graph bottom-up; fn(node_with_new_srcs) -> replacement node or None.
    A replacement may itself hold rewritable nodes (a decomposition): those are rewritten
    too, down to the nodes already settled (so a replacement costs its own size, not the
    graph's)."""
    new: dict[Node, Node] = {}
    settled: set[Node] = set()  # every node new[] returns: final, never rewritten again

    def settle(n: Node) -> Node:
        """The final form of node n, all of whose sources are settled or mapped."""
        srcs = tuple(new.get(s, s) for s in n.srcs)
        cur = n if all(a is b for a, b in zip(srcs, n.srcs)) else Node(n.op, n.dtype, n.shape, srcs, n.arg, n.loc)
        rep = fn(cur)
        if rep is None or rep is cur:
            return cur
        if rep not in settled:
            rep = _settle_graph(rep)
        assert rep.shape == n.shape and rep.dtype == n.dtype, (n, rep)
        return rep

    def _settle_graph(root: Node) -> Node:
        local: dict[Node, Node] = {}
        for m in toposort_until([root], settled):
            srcs = tuple(local.get(s, s) for s in m.srcs)
            cur = m if all(a is b for a, b in zip(srcs, m.srcs)) else Node(m.op, m.dtype, m.shape, srcs, m.arg, m.loc)
            rep = fn(cur)
            if rep is not None and rep is not cur and rep not in settled:
                rep = _settle_graph(rep)
            out = rep if rep is not None else cur
            local[m] = out
            settled.add(out)
        return local[root] if root in local else root

    for n in toposort(outputs):
        out = settle(n)
        new[n] = out
        settled.add(out)
    outs = [new[o] for o in outputs]
    return (outs, new) if return_mapping else outs


def decompose(outputs, return_mapping=False):
    def fn(n):
        if n.op in GroupOp.Composite:
            return get_rule(n.op).decompose(n)
        return None

    return _rewrite(outputs, fn, return_mapping)


def _const_value(n: Node):
    return n.arg["value"] if n.op is Op.CONST else None


def _const(shape, value, dtype, loc=None):
    return Node(Op.CONST, dtype, tuple(shape), (), {"value": value, "dtype": dtype, "shape": tuple(shape)}, loc)


def fold(outputs):
    def fn(n):
        srcs = n.srcs
        cv = [_const_value(s) for s in srcs]
        # constants through elementwise ops and movement ops stay constants
        if srcs and all(v is not None for v in cv) and (n.op in GroupOp.Elementwise or n.op in GroupOp.Movement - {Op.PAD, Op.DSLICE}):
            arrays = [np.full((), v, dtype=np.int32 if s.dtype == "i32" else np.float32) for v, s in zip(cv, srcs)]
            if n.op in GroupOp.Movement:
                return _const(n.shape, cv[0], n.dtype, n.loc)
            v = get_rule(n.op).numpy(n.arg, *arrays)
            v = int(v) if n.dtype == "i32" else float(np.float32(v))
            return _const(n.shape, v, n.dtype, n.loc)
        if n.op is Op.DETACH:  # autodiff has run: only its zero gradient mattered
            return srcs[0]
        if n.op is Op.MUL:
            for i in (0, 1):
                if cv[i] == 1.0:
                    return srcs[1 - i]
        if n.op is Op.ADD:
            for i in (0, 1):
                if cv[i] == 0 and srcs[1 - i].dtype == n.dtype:
                    return srcs[1 - i]
        if n.op is Op.SUB and cv[1] == 0:
            return srcs[0]
        if n.op is Op.DIV and cv[1] == 1.0:
            return srcs[0]
        if n.op is Op.RESHAPE:
            if srcs[0].shape == n.shape:
                return srcs[0]
            if srcs[0].op is Op.RESHAPE:
                return Node(Op.RESHAPE, n.dtype, n.shape, (srcs[0].srcs[0],), n.arg, n.loc)
        if n.op is Op.PERMUTE and srcs[0].op is Op.PERMUTE:
            inner = srcs[0].arg
            perm = tuple(inner[p] for p in n.arg)
            x = srcs[0].srcs[0]
            if perm == tuple(range(len(perm))):
                return x
            return Node(Op.PERMUTE, n.dtype, n.shape, (x,), perm, n.loc)
        if n.op is Op.EXPAND and srcs[0].shape == n.shape:
            return srcs[0]
        return None

    return _rewrite(outputs, fn)


def _key(n: Node):
    arg = n.arg
    if isinstance(arg, dict):
        arg = tuple(sorted(arg.items()))
    srcs = tuple(s.uid for s in n.srcs)
    if n.op in GroupOp.Commutative:
        srcs = tuple(sorted(srcs))
    return (n.op, n.dtype, n.shape, srcs, arg)


def cse(outputs):
    table: dict = {}

    def fn(n):
        if n.op is Op.INPUT:
            # inputs are unique by name
            k = ("input", n.arg["name"])
        else:
            k = _key(n)
        hit = table.get(k)
        if hit is not None:
            return hit
        table[k] = n
        return None

    return _rewrite(outputs, fn)


PIPELINE = (("decompose", decompose), ("fold", fold), ("cse", cse), ("fold2", fold), ("cse2", cse))


def run_passes(outputs, verify: bool = False, dump=None):
    """The pass pipeline, top to bottom. `dump(name, outputs)` sees each stage's result."""
    from tgc.ir.verify import verify_graph

    for name, p in PIPELINE:
        outputs = p(outputs)
        if verify:
            verify_graph(outputs, after=name)
        if dump is not None:
            dump(name, outputs)
    return outputs
