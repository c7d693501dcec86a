"""The kernel IR between the scheduler and the renderers: dedup, the kernel passes, the verifier,
and the op tables of both renderers.

- dedup: a model's launches use far fewer distinct kernels (every layer shares its
  kernels), and a canonical kernel names no tensor and no place.
- the loop passes (plan_nest: pieces, mask halves, column reductions) are checked
  against the kernel's own meaning: every distinct kernel of tiny and small, run
  through its nest by the kernel interpreter (kinterp.run_nest), equals the same
  kernel run flat (kinterp.run_kernel) on random data (rtol 1e-5: a reduction's terms
  are summed in another order).
- the verifier catches what a broken pass would do (mutations below).
- every op has its numpy rule, its gradient and a lowering in both renderers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import assert_close
from tgc.compiler import compile_model
from tgc.ir import kinterp
from tgc.ir.kernel import INF, KExpr, Region, axis, const
from tgc.ir.kverify import KernelVerifyError, verify_kernel
from tgc.ir.ops import GroupOp, Op

UNIFORMS = {"pos": 5, "len": 7, "step": 3.0, "lr": 1e-2, "warmup": 2.0, "total_steps": 10.0}


@pytest.fixture(scope="module", params=["tiny", "small"])
def compiled(request):
    return compile_model(preset=request.param, targets=(), verify=True)


def _random_params(k, rng):
    mem = {}
    for i, p in enumerate(k.params):
        if p.dtype == "i32":
            mem[f"p{i}"] = rng.integers(0, 64, p.elements).astype(np.int32)
        else:
            mem[f"p{i}"] = rng.standard_normal(p.elements).astype(np.float32)
    return mem


def test_layers_share_kernels(compiled):
    launches = sum(len(v) for v in compiled.launches.values())
    assert len(compiled.kernels) < launches / 2, (len(compiled.kernels), launches)
    for k in compiled.kernels.values():
        assert all(t.startswith("p") and t[1:].isdigit() for t, _ in k.outputs), k.name
        loads = [e.arg for e in _walk(k) if e.op is Op.LOAD]
        assert all(t.startswith("p") and t[1:].isdigit() for t in loads), k.name
    # the manifest's launches bind as many tensors as each kernel has parameters
    for p, ls in compiled.launches.items():
        for kname, tensors in ls:
            assert len(tensors) == len(compiled.kernels[kname].params), (p, kname)


def _walk(k):
    from tgc.ir.kernel import walk

    return walk([e for _, e in k.outputs])


def test_nests_compute_what_the_kernels_mean(compiled):
    rng = np.random.default_rng(0)
    kinds = set()
    for k in compiled.kernels.values():
        if k.kind == "matmul":
            continue
        kinds.add((k.kind, k.nest.cut, min(len(k.nest.regions), 3)))
        mem = _random_params(k, rng)
        flat, nest = copy.deepcopy(mem), copy.deepcopy(mem)
        kinterp.run_kernel(k, flat, UNIFORMS)
        kinterp.run_nest(k, nest, UNIFORMS)
        for t, _ in k.outputs:
            assert_close(nest[t], flat[t], 1e-5, 1e-6, f"{k.name}:{t}")
    # the passes made every kind of nest somewhere in the model: pieces, mask halves, column layout
    assert ("elementwise", "j", 3) in kinds and ("reduce", "r", 2) in kinds, kinds


def test_verifier_catches_broken_kernels(compiled):
    ks = [k for k in compiled.kernels.values() if k.kind == "elementwise" and len(k.nest.regions) >= 2]
    k = copy.deepcopy(ks[0])
    verify_kernel(k)
    # regions that leave a gap
    bad = copy.deepcopy(k)
    r0 = bad.nest.regions[0]
    bad.nest = type(bad.nest)(bad.nest.axes, bad.nest.cut, (Region(r0.lo, const(0), r0.outputs), *bad.nest.regions[1:]))
    with pytest.raises(KernelVerifyError, match="gap"):
        verify_kernel(bad)
    # a load past a parameter's end
    bad = copy.deepcopy(k)
    t, _ = bad.outputs[0]
    p = next(i for i, q in enumerate(bad.params) if q.access != "write")
    idx = KExpr(Op.GIDX, "i32", (), None, 0, bad.params[p].elements)
    bad.outputs = [(t, KExpr(Op.LOAD, bad.params[p].dtype, (idx,), f"p{p}"))] + bad.outputs[1:]
    with pytest.raises(KernelVerifyError, match="outside"):
        verify_kernel(bad)
    # a store into a read-only parameter
    bad = copy.deepcopy(k)
    ro = next(i for i, q in enumerate(bad.params) if q.access == "read")
    bad.outputs = [(f"p{ro}", bad.outputs[0][1])] + bad.outputs[1:]
    with pytest.raises(KernelVerifyError, match="read-only"):
        verify_kernel(bad)
    # an axis the nest does not have
    bad = copy.deepcopy(k)
    reg = bad.nest.regions[-1]
    t, e = reg.outputs[0]
    stray = KExpr(Op.ADD, "f32", (e, KExpr(Op.CAST, "f32", (axis("q", 4),), "f32")))
    bad.nest = type(bad.nest)(bad.nest.axes, bad.nest.cut, (*bad.nest.regions[:-1], Region(reg.lo, reg.hi, ((t, stray), *reg.outputs[1:]))))
    with pytest.raises(KernelVerifyError, match="axis"):
        verify_kernel(bad)
    # a tile beyond the browser's workgroup limits
    mm = copy.deepcopy(next(k for k in compiled.kernels.values() if k.kind == "matmul"))
    mm.decisions["wgsl"]["tile"] = {**mm.decisions["wgsl"]["tile"], "TY": 32, "TX": 32}
    with pytest.raises(KernelVerifyError, match="tile"):
        verify_kernel(mm)
    assert INF > 0


def test_every_op_has_its_rules_and_both_lowerings():
    """A new primitive op needs its numpy rule and gradient (tgc/ir/rules.py) and a lowering
    in each renderer's table; this fails in CI, not when a model first uses the op."""
    from tgc.codegen.llvm import F32_OPS, I32_OPS
    from tgc.codegen.wgsl import OPS
    from tgc.ir import kmath
    from tgc.ir.rules import RULES

    no_gradient = {Op.CMPLT, Op.CMPEQ, Op.CAST}  # piecewise constant or integer: zero gradient by definition
    for op in GroupOp.Elementwise:
        r = RULES.get(op)
        assert r is not None and r.numpy is not None, f"{op.name}: no numpy rule"
        assert r.grad is not None or op in no_gradient, f"{op.name}: no gradient rule"
        assert op in OPS or op is Op.CAST, f"{op.name}: no WGSL lowering"
        assert op in F32_OPS, f"{op.name}: no LLVM lowering"
    for op in kmath.FUNCTIONS:
        assert op in OPS and op in F32_OPS, f"{op.name}: its tgc/ir/kmath.py definition is not called by a renderer"
    for op in (Op.IDIV, Op.MOD, Op.ADD, Op.MUL, Op.MAX, Op.MIN):  # i32 index math
        assert op in OPS and op in I32_OPS, op.name
