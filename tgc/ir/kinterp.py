"""A numpy interpreter for the kernel IR: runs a Schedule's kernels over flat arrays.

It checks the scheduler (fusion, index arithmetic, in-place updates) against the
graph interpreter without any GPU or wasm, and is the reference the code
generators' kernels are compared with. `run_nest` runs an elementwise or reduce
kernel through its loop nest instead (tgc/ir/kpasses.py: the regions of the cut
axis, each with its specialised expressions), which checks the loop passes against
the kernel's own meaning.
"""

from __future__ import annotations

import numpy as np

from tgc.ir.kernel import Kernel, KExpr
from tgc.ir.ops import Op
from tgc.ir.rules import get_rule

_INT_OPS = {
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.IDIV: np.floor_divide,
    Op.MOD: np.mod, Op.MAX: np.maximum, Op.MIN: np.minimum,
}


def eval_expr(e: KExpr, mem: dict, uniforms: dict, gid, rid, memo: dict, axes: dict | None = None):
    if e in memo:
        return memo[e]
    op = e.op
    if op is Op.GIDX:
        v = gid
    elif op is Op.RIDX:
        v = rid
    elif op is Op.AXIS:
        v = axes[e.arg]
    elif op is Op.CONST:
        v = np.int64(e.arg) if e.dtype == "i32" else np.float32(e.arg)
    elif op is Op.UNIFORM:
        v = np.int64(uniforms[e.arg]) if e.dtype == "i32" else np.float32(uniforms[e.arg])
    elif op is Op.LOAD:
        i = eval_expr(e.srcs[0], mem, uniforms, gid, rid, memo, axes)
        buf = mem[e.arg]
        v = buf[np.asarray(i, dtype=np.int64)]
        v = v.astype(np.int64) if e.dtype == "i32" else v
    else:
        srcs = [eval_expr(s, mem, uniforms, gid, rid, memo, axes) for s in e.srcs]
        if e.dtype == "i32" and op in _INT_OPS:
            v = _INT_OPS[op](*srcs)
        elif op is Op.CAST:
            v = np.asarray(srcs[0]).astype(np.int64 if e.arg == "i32" else np.float32)
        else:
            v = get_rule(op).numpy(e.arg, *(np.asarray(s) for s in srcs))
            if e.dtype == "f32":
                v = np.asarray(v, dtype=np.float32)
    memo[e] = v
    return v


def run_kernel(k: Kernel, mem: dict, uniforms: dict) -> None:
    if k.kind == "matmul":
        def view(v):
            flat = mem[v.tensor]
            return np.lib.stride_tricks.as_strided(flat[v.offset:], v.shape, [s * flat.itemsize for s in v.strides])
        a = view(k.a) if k.a is not None else (mem[k.a_onehot][None, :] == np.arange(k.M)[:, None]).astype(np.float32)
        out = np.matmul(a, view(k.b))
        mem[k.out][...] = out.reshape(-1)
        return
    gid = np.arange(k.size, dtype=np.int64)
    if k.kind == "reduce":
        gid2, rid = gid[:, None], np.arange(k.reduce_len, dtype=np.int64)[None, :]
        (t, e), = k.outputs
        v = np.broadcast_to(eval_expr(e, mem, uniforms, gid2, rid, {}), (k.size, k.reduce_len))
        mem[t][...] = v.sum(axis=1) if k.reduce_op is Op.SUM else v.max(axis=1)
        return
    memo: dict = {}
    vals = [np.broadcast_to(eval_expr(e, mem, uniforms, gid, None, memo), (k.size,)).copy() for _, e in k.outputs]
    for (t, _), v in zip(k.outputs, vals):
        mem[t][...] = v


def run_nest(k: Kernel, mem: dict, uniforms: dict) -> None:
    """An elementwise or reduce kernel through its nest: every region evaluated at the
    points of the axes' grid it covers (values are computed for all points first, then
    stored, as one parallel launch would)."""
    n = k.nest
    names = [a for a, _ in n.axes]
    grid = np.meshgrid(*[np.arange(s, dtype=np.int64) for _, s in n.axes], indexing="ij")
    at = dict(zip(names, grid))
    L = n.size("j")
    pending = []
    for reg in n.regions:
        lo = np.broadcast_to(eval_expr(reg.lo, mem, uniforms, None, None, {}, at), grid[0].shape)
        hi = np.broadcast_to(eval_expr(reg.hi, mem, uniforms, None, None, {}, at), grid[0].shape)
        inside = (lo <= at[n.cut]) & (at[n.cut] < hi)
        pts = {a: g[inside] for a, g in at.items()}
        gid = pts["row"] * L + pts["j"]
        memo: dict = {}
        vals = [np.broadcast_to(eval_expr(e, mem, uniforms, None, None, memo, pts), gid.shape) for _, e in reg.outputs]
        pending.append((gid, vals))
    if k.kind == "elementwise":
        for gid, vals in pending:
            for (t, _), v in zip(k.outputs, vals):
                mem[t][gid] = v
        return
    (t, _), = k.outputs
    acc = np.full(k.size, -np.inf if k.reduce_op is Op.RMAX else 0.0, np.float32)
    for gid, (v,) in pending:
        (np.maximum if k.reduce_op is Op.RMAX else np.add).at(acc, gid, v.astype(np.float32))
    mem[t][...] = acc


def run_schedule(sched, env: dict) -> tuple[dict, dict]:
    """env: name -> array for inputs/state/uniforms. Returns (outputs, new state)."""
    mem = {}
    for name, t in sched.tensors.items():
        dt = np.int32 if t.dtype == "i32" else np.float32
        mem[name] = np.asarray(env[name], dtype=dt).reshape(-1).copy() if name in env else np.full(int(np.prod(t.shape)), np.nan if t.dtype == "f32" else -1, dtype=dt)
    for k in sched.kernels:
        run_kernel(k, mem, env)
    shape = lambda n: sched.tensors[n].shape
    outs = {o: mem[t].reshape(shape(t)) for o, t in sched.outputs.items()}
    upd = {s: mem[t].reshape(shape(t)) for s, t in sched.updates.items()}
    return outs, upd
