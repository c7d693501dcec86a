"""The kernel-IR verifier: the invariants every kernel pass must keep (tests run it after each).

- parameters: every tensor a canonical kernel names is a parameter p<i>, loaded with the
  parameter's dtype and stored only where its access allows; every index whose bounds
  are known lies inside the parameter's elements; matmul views stay inside their tensor;
- expressions: operand dtypes fit each op (i32 index math, f32 values, compares of
  either giving f32), and a nest's regions use only the nest's own axes;
- nest: the regions cover the cut axis in order, from 0 to its size;
- decisions: within the browser's WebGPU limits (256 invocations, 16 KiB of workgroup
  memory, 8 storage bindings), and present for both targets once their passes ran.
"""

from __future__ import annotations

import math

from tgc.ir.kernel import INF, Kernel, KExpr, walk
from tgc.ir.ops import GroupOp, Op

MAX_STORAGE_BUFFERS = 8
MAX_WORKGROUP_BYTES = 16384
MAX_INVOCATIONS = 256
_I32_OPS = {Op.ADD, Op.SUB, Op.MUL, Op.IDIV, Op.MOD, Op.MAX, Op.MIN, Op.NEG}


class KernelVerifyError(AssertionError):
    pass


def _param(k: Kernel, name: str, where: str) -> tuple[int, object]:
    if not (isinstance(name, str) and name.startswith("p") and name[1:].isdigit() and int(name[1:]) < len(k.params)):
        raise KernelVerifyError(f"{where}: {name!r} is not a parameter of the kernel ({len(k.params)} parameters)")
    i = int(name[1:])
    return i, k.params[i]


def _check_exprs(k: Kernel, roots: list[KExpr], axes: set[str] | None, where: str) -> None:
    for e in walk(roots):
        op = e.op
        if op is Op.LOAD:
            _, p = _param(k, e.arg, where)
            if p.access == "write":
                raise KernelVerifyError(f"{where}: loads {e.arg}, a write-only parameter")
            if e.dtype != p.dtype:
                raise KernelVerifyError(f"{where}: loads {e.arg} as {e.dtype}, the parameter is {p.dtype}")
            idx = e.srcs[0]
            if idx.dtype != "i32":
                raise KernelVerifyError(f"{where}: index of {e.arg} is {idx.dtype}")
            if idx.vmin != -INF and idx.vmin < 0 or idx.vmax != INF and idx.vmax >= p.elements:
                raise KernelVerifyError(f"{where}: index of {e.arg} in [{idx.vmin}, {idx.vmax}], "
                                        f"outside its {p.elements} elements")
        elif op is Op.AXIS:
            if axes is None or e.arg not in axes:
                raise KernelVerifyError(f"{where}: axis {e.arg!r} outside a nest with it")
        elif op in (Op.GIDX, Op.RIDX):
            if axes is not None:
                raise KernelVerifyError(f"{where}: {op.name} left in a nest's region")
            if op is Op.RIDX and k.kind != "reduce":
                raise KernelVerifyError(f"{where}: RIDX in a {k.kind} kernel")
        elif e.dtype == "i32" and op not in (Op.CONST, Op.UNIFORM, Op.CAST, Op.WHERE):
            if op not in _I32_OPS or any(s.dtype != "i32" for s in e.srcs):
                raise KernelVerifyError(f"{where}: i32 {op.name} over {[s.dtype for s in e.srcs]}")
        elif op is Op.RAND:
            if e.dtype != "f32" or any(s.dtype != "i32" for s in e.srcs):
                raise KernelVerifyError(f"{where}: rand {[s.dtype for s in e.srcs]} -> {e.dtype}")
        elif e.dtype == "f32" and (op in GroupOp.Unary or op in GroupOp.Binary) and op not in (Op.CMPLT, Op.CMPEQ, Op.CAST):
            if any(s.dtype != "f32" for s in e.srcs):
                raise KernelVerifyError(f"{where}: f32 {op.name} over {[s.dtype for s in e.srcs]}")
        elif op in (Op.CMPLT, Op.CMPEQ) and (e.dtype != "f32" or e.srcs[0].dtype != e.srcs[1].dtype):
            raise KernelVerifyError(f"{where}: compare {[s.dtype for s in e.srcs]} -> {e.dtype}")


def _check_outputs(k: Kernel, outputs, where: str) -> None:
    for t, e in outputs:
        _, p = _param(k, t, where)
        if p.access == "read":
            raise KernelVerifyError(f"{where}: writes {t}, a read-only parameter")
        if e.dtype != p.dtype:
            raise KernelVerifyError(f"{where}: stores {e.dtype} into {t} ({p.dtype})")
        if p.elements < k.size:
            raise KernelVerifyError(f"{where}: writes {k.size} elements of {t}, which has {p.elements}")


def _check_view(k: Kernel, v, where: str) -> None:
    _, p = _param(k, v.tensor, where)
    hi = v.offset + sum((n - 1) * s for n, s in zip(v.shape, v.strides))
    if v.offset < 0 or min(v.strides, default=0) < 0 or hi >= p.elements:
        raise KernelVerifyError(f"{where}: view {v} reaches element {hi} of {v.tensor} ({p.elements})")


def _check_nest(k: Kernel, where: str) -> None:
    n = k.nest
    sizes = dict(n.axes)
    if math.prod(s for a, s in n.axes if a != "r") != k.size or (k.kind == "reduce") != ("r" in sizes):
        raise KernelVerifyError(f"{where}: nest axes {n.axes} do not cover the kernel's {k.size} outputs")
    if k.kind == "reduce" and sizes["r"] != k.reduce_len:
        raise KernelVerifyError(f"{where}: axis r of {sizes['r']} for a reduction over {k.reduce_len}")
    if n.cut not in sizes or not n.regions:
        raise KernelVerifyError(f"{where}: cut axis {n.cut!r} has no regions")
    first, last = n.regions[0].lo, n.regions[-1].hi
    if not (first.op is Op.CONST and first.arg == 0 and last.op is Op.CONST and last.arg == sizes[n.cut]):
        raise KernelVerifyError(f"{where}: regions do not span {n.cut} from 0 to {sizes[n.cut]}")
    for a, b in zip(n.regions, n.regions[1:]):
        if not (a.hi is b.lo or a.hi == b.lo):
            raise KernelVerifyError(f"{where}: regions of {n.cut} leave a gap or overlap")
        if a.hi.op is Op.CONST and a.lo.op is Op.CONST and a.hi.arg < a.lo.arg:
            raise KernelVerifyError(f"{where}: an empty-backwards region")
    axes = set(sizes)
    outer = {a for a, _ in n.axes[: [a for a, _ in n.axes].index(n.cut)]}  # what region bounds may depend on
    for i, r in enumerate(n.regions):
        _check_exprs(k, [r.lo, r.hi], outer, f"{where} region {i} bounds")
        _check_exprs(k, [e for _, e in r.outputs], axes, f"{where} region {i}")
        if [t for t, _ in r.outputs] != [t for t, _ in k.outputs]:
            raise KernelVerifyError(f"{where}: region {i} writes other tensors than the kernel")


def _check_decisions(k: Kernel, where: str) -> None:
    w = k.decisions.get("wgsl")
    if w is not None:
        from tgc.ir.schedule import MAX_BINDING_BYTES, MAX_CHUNKS

        big = MAX_CHUNKS * MAX_BINDING_BYTES  # past this a tensor counts as one (tgc/ir/schedule.py `bindings`)
        bindings = sum(n if 4 * p.elements <= big else 1 for n, p in zip(w.get("chunks", [1] * len(k.params)), k.params))
        if bindings > MAX_STORAGE_BUFFERS:
            raise KernelVerifyError(f"{where}: {bindings} storage bindings (WebGPU allows {MAX_STORAGE_BUFFERS})")
        if k.kind == "matmul":
            t = w["tile"]
            threads = t["TY"] * t["TX"] * t["S"]
            smem = 4 * t["BK"] * t["S"] * (t["BM"] + t["BN"])
            if threads > MAX_INVOCATIONS or smem > MAX_WORKGROUP_BYTES or t["BM"] % (4 * t["QM"]) or t["BN"] % (4 * t["QN"]):
                raise KernelVerifyError(f"{where}: tile {t} ({threads} threads, {smem} bytes)")
        elif w["workgroup"] > MAX_INVOCATIONS or w.get("per_thread", 1) not in (1, 2, 4):
            raise KernelVerifyError(f"{where}: wgsl decisions {w}")
        elif k.kind == "reduce" and (w["lanes"] & (w["lanes"] - 1) or w["lanes"] > w["workgroup"]):
            raise KernelVerifyError(f"{where}: {w['lanes']} lanes per output")


def verify_kernel(k: Kernel, after: str = "") -> None:
    where = f"kernel {k.name}" + (f" after {after}" if after else "")
    if k.kind not in ("elementwise", "reduce", "matmul") or k.size < 1:
        raise KernelVerifyError(f"{where}: kind {k.kind!r}, size {k.size}")
    if not k.params:
        raise KernelVerifyError(f"{where}: not canonical (no parameters)")
    if k.kind == "matmul":
        _param(k, k.out, where)
        if k.a is not None:
            _check_view(k, k.a, where)
        else:
            _param(k, k.a_onehot, where)
        _check_view(k, k.b, where)
        if k.size != math.prod(k.batch) * k.M * k.N:
            raise KernelVerifyError(f"{where}: size {k.size} is not batch x M x N")
    else:
        _check_outputs(k, k.outputs, where)
        _check_exprs(k, [e for _, e in k.outputs], None, where)
        if k.nest is not None:
            _check_nest(k, where)
    _check_decisions(k, where)
