"""The WebAssembly renderer: canonical kernels -> LLVM IR (llvmlite) -> wasm64 object -> wasm-ld -> model.wasm.

One internal LLVM function per distinct kernel, taking one pointer per parameter, and
one exported function per program that calls its kernels in launch order with the
bound tensors' absolute addresses as i64 constants (tensors past 4 GiB are just bigger
constants): a whole program is one host-to-wasm call. Elementwise and reduce kernels
are emitted from their loop nest (tgc/ir/kpasses.py plan_nest: named axes, the cut
axis's regions); matmuls call one shared packed, register-blocked SIMD128 matmul, or
scatter a one-hot's rows; exp/log/tanh/cos are branch-free helpers
(tgc/codegen/wasm_math.py) and erf comes from tgc/ir/kmath.py. The module imports one
64-bit memory that the host sizes from manifest["wasm"]["memory_bytes"]; the matmul's
packing scratch sits above every buffer. docs/wasm.md says why each choice was made.

Not here: deciding what a kernel computes (tgc/ir/schedule.py), its loops and blocking
(tgc/ir/kpasses.py), or where tensors live (tgc/ir/memplan.py); running the module
(tgc/runtime/wasm.py).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from llvmlite import ir

from tgc.codegen.wasm_math import MathLib
from tgc.errors import TgcError
from tgc.ir import kmath
from tgc.ir.kernel import Kernel, KExpr, axis
from tgc.ir.ops import Op

TRIPLE = "wasm64-unknown-unknown"
FEATURES = "+simd128,+bulk-memory,+nontrapping-fptoint"
STACK_BYTES = 256 << 10

F32, I32, I64, VOID = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.VoidType()
V4 = ir.VectorType(F32, 4)
PF32 = F32.as_pointer()


def scratch_bytes(blocking: dict) -> int:
    """The matmul's packing scratch: an MC x KC block of A, a KC x NC panel of B, and slack."""
    return 4 * blocking["KC"] * (blocking["MC"] + blocking["NC"]) + (64 << 10)


def _c64(v) -> ir.Constant:
    return ir.Constant(I64, int(v))


def _cf(v) -> ir.Constant:
    return ir.Constant(F32, float(v))


def _flags(v, *flags):
    v.flags = list(flags)
    return v


@contextmanager
def loop(b: ir.IRBuilder, stop, start=0, step=1, name="i"):
    """for (i = start; i < stop; i += step) as i64; yields i. The body may add blocks."""
    stop, start = (_c64(x) if isinstance(x, int) else x for x in (stop, start))
    pre = b.block
    head, body, end = (b.append_basic_block(f"{name}.{s}") for s in ("head", "body", "end"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), body, end)
    b.position_at_end(body)
    yield i
    i.add_incoming(_flags(b.add(i, _c64(step)), "nuw", "nsw"), b.block)
    b.branch(head)
    b.position_at_end(end)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _transpose4(b, rows):
    """Columns of the 4 x 4 block whose rows are four <4 x float>."""
    sh = lambda x, y, m: b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, 4), m))
    lo01, hi01 = sh(rows[0], rows[1], [0, 4, 1, 5]), sh(rows[0], rows[1], [2, 6, 3, 7])
    lo23, hi23 = sh(rows[2], rows[3], [0, 4, 1, 5]), sh(rows[2], rows[3], [2, 6, 3, 7])
    return [sh(lo01, lo23, [0, 1, 4, 5]), sh(lo01, lo23, [2, 3, 6, 7]), sh(hi01, hi23, [0, 1, 4, 5]), sh(hi01, hi23, [2, 3, 6, 7])]


NO_BOUND = 1 << 40  # a Band bound that is absent: far outside any k or n


def _band_args(band) -> tuple[int, ...]:
    """tgc_matmul's band arguments (k_from_m, k_from_n, k_to_m, k_to_n, dead_above, dead_below)."""
    if band is None:
        return (-NO_BOUND, -NO_BOUND, NO_BOUND, NO_BOUND, NO_BOUND, -NO_BOUND)
    f = lambda v, d: d if v is None else v
    return (f(band.k_from_m, -NO_BOUND), f(band.k_from_n, -NO_BOUND), f(band.k_to_m, NO_BOUND),
            f(band.k_to_n, NO_BOUND), f(band.dead_above, NO_BOUND), f(band.dead_below, -NO_BOUND))  # fmt: skip


# ---------------------------------------------------------------- scalar expressions
# i32 values are carried as i64 (index math never wraps, addresses are 64-bit).

def _fcall(name, n=1):
    return lambda g, e, s: g.b.call(g.lib.intrinsic(name, F32, [F32] * n), s)


def _icmp(g, e, s):
    if e.srcs[0].dtype == "i32":
        if all(-(2**31) <= x.vmin and x.vmax < 2**31 for x in e.srcs):
            s = [g.b.trunc(x, I32) for x in s]  # i32 lanes: vectorizes 4 wide (i64x2 has no unsigned compare)
        return g.b.uitofp(g.b.icmp_signed(_CMP[e.op], *s), F32)
    return g.b.uitofp(g.b.fcmp_ordered(_CMP[e.op], *s), F32)


def _idivmod(g, e, s):
    b = g.b
    if e.srcs[0].vmin >= 0 and e.srcs[1].vmin >= 0:
        return (b.udiv if e.op is Op.IDIV else b.urem)(*s)
    q, r = b.sdiv(*s), b.srem(*s)  # floor semantics for a negative dividend
    fix = b.and_(b.icmp_signed("!=", r, _c64(0)), b.icmp_signed("<", r, _c64(0)))
    return b.sub(q, b.zext(fix, I64)) if e.op is Op.IDIV else b.select(fix, b.add(r, s[1]), r)


def _rand(g, e, s):
    """RAND: tgc/rng.py's mix (lowbias32) in wrapping i32 arithmetic; top 24 bits / 2^24."""
    b = g.b

    def mix(x):
        for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
            x = b.xor(x, b.lshr(x, ir.Constant(I32, shift)))
            if mul is not None:
                x = b.mul(x, ir.Constant(I32, mul))
        return x

    counter, key = (b.trunc(v, I32) for v in s)
    bits = mix(b.add(key, mix(counter)))
    return b.fmul(b.uitofp(b.lshr(bits, ir.Constant(I32, 8)), F32), _cf(2.0**-24))


_CMP = {Op.CMPLT: "<", Op.CMPEQ: "=="}
# op -> lowering (generator, expression, operand values), for f32 values and i32 index math
F32_OPS = {
    Op.ADD: lambda g, e, s: g.b.fadd(*s), Op.SUB: lambda g, e, s: g.b.fsub(*s),
    Op.MUL: lambda g, e, s: g.b.fmul(*s), Op.DIV: lambda g, e, s: g.b.fdiv(*s),
    Op.MAX: _fcall("llvm.maximum.f32", 2), Op.MIN: _fcall("llvm.minimum.f32", 2),  # NaN-propagating, like numpy
    Op.NEG: lambda g, e, s: g.b.fneg(s[0]), Op.RECIP: lambda g, e, s: g.b.fdiv(_cf(1.0), s[0]),
    Op.SQRT: _fcall("llvm.sqrt.f32"),
    Op.EXP: lambda g, e, s: g.b.call(g.lib.get(Op.EXP), s), Op.LOG: lambda g, e, s: g.b.call(g.lib.get(Op.LOG), s),
    Op.TANH: lambda g, e, s: g.b.call(g.lib.get(Op.TANH), s), Op.COS: lambda g, e, s: g.b.call(g.lib.get(Op.COS), s),
    Op.ERF: lambda g, e, s: g.b.call(g.kmath(Op.ERF), s),
    Op.CMPLT: _icmp, Op.CMPEQ: _icmp, Op.RAND: _rand,
    Op.WHERE: lambda g, e, s: g.b.select(g.b.fcmp_unordered("!=", s[0], _cf(0.0)), s[1], s[2]),
    Op.CAST: lambda g, e, s: _convert(g.b, s[0], e.srcs[0].dtype, e.arg),
}
I32_OPS = {
    Op.ADD: lambda g, e, s: _flags(g.b.add(*s), "nsw"), Op.SUB: lambda g, e, s: _flags(g.b.sub(*s), "nsw"),
    Op.MUL: lambda g, e, s: _flags(g.b.mul(*s), "nsw"), Op.NEG: lambda g, e, s: g.b.neg(s[0]),
    Op.MAX: lambda g, e, s: _max(g.b, *s), Op.MIN: lambda g, e, s: _min(g.b, *s),
    Op.IDIV: _idivmod, Op.MOD: _idivmod,
    Op.WHERE: lambda g, e, s: g.b.select(g.b.fcmp_unordered("!=", s[0], _cf(0.0)), s[1], s[2]),
    Op.CAST: lambda g, e, s: _convert(g.b, s[0], e.srcs[0].dtype, e.arg),
}


class ExprGen:
    """Emits a KExpr DAG once per node (memoized) into the current block: loads through the
    kernel's pointer arguments, uniforms from the uniform block's fixed address; `sym` maps
    leaves (loop axes, a math function's argument) to values."""

    def __init__(self, mod: "ModuleGen", b, ptrs: dict, sym: dict):
        self.mod, self.b, self.lib, self.ptrs, self.sym, self.memo = mod, b, mod.lib, ptrs, sym, {}

    def kmath(self, op: Op) -> ir.Function:
        return self.mod.kmath(op)

    def __call__(self, e: KExpr):
        v = self.memo.get(e)
        if v is None:
            v = self.memo[e] = self._gen(e)
        return v

    def _gen(self, e: KExpr):
        b, op = self.b, e.op
        if e in self.sym:
            return self.sym[e]
        if op is Op.CONST:
            return _c64(e.arg) if e.dtype == "i32" else _cf(e.arg)
        if op is Op.UNIFORM:
            addr, dt = self.mod.uniforms[e.arg]
            v = b.load(b.inttoptr(_c64(addr), (I32 if dt == "i32" else F32).as_pointer()))
            return _convert(b, v, dt, e.dtype)
        if op is Op.LOAD:
            v = b.load(b.gep(self.ptrs[e.arg], [self(e.srcs[0])], inbounds=True))
            return b.sext(v, I64) if e.dtype == "i32" else v
        table = I32_OPS if e.dtype == "i32" else F32_OPS
        fn = table.get(op)
        if fn is None:
            raise NotImplementedError(f"LLVM renderer has no lowering for {op.name} ({e.dtype})")
        return fn(self, e, [self(x) for x in e.srcs])


def _convert(b, v, src: str, dst: str):
    if src == dst:
        return b.sext(v, I64) if src == "i32" and v.type == I32 else v
    if dst == "f32":
        return b.sitofp(v, F32)
    return b.call(b.module.globals.get("llvm.fptosi.sat.i64.f32") or ir.Function(b.module, ir.FunctionType(I64, [F32]), "llvm.fptosi.sat.i64.f32"), [v])


# ---------------------------------------------------------------- module builder

class ModuleGen:
    """One LLVM module: kernels by name, programs as exported functions.

    uniforms: name -> (absolute address in linear memory, dtype); scratch: the address of
    the matmul's packing scratch; blocking: the matmul's blocking (tgc/ir/kpasses.py)."""

    def __init__(self, uniforms: dict, scratch: int, blocking: dict, profile: bool = False):
        import llvmlite.binding as llvm

        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        self.llvm = llvm
        self.tm = llvm.Target.from_triple(TRIPLE).create_target_machine(cpu="generic", features=FEATURES, opt=3)
        self.mod = ir.Module(name="tgc")
        self.mod.triple, self.mod.data_layout = TRIPLE, str(self.tm.target_data)
        self.lib = MathLib(self.mod)
        self.uniforms, self.scratch, self.profile = uniforms, scratch, profile
        self.MR, self.NR, self.KC, self.MC, self.NC = (blocking[x] for x in ("MR", "NR", "KC", "MC", "NC"))
        assert self.MR == 4 and self.NR % 4 == 0 and self.MC % self.MR == 0  # A's column is one v128
        self.kernels: dict[str, ir.Function] = {}
        self._mm_fn = None
        self._kmath: dict[Op, ir.Function] = {}

    def kmath(self, op: Op) -> ir.Function:
        """The tgc/ir/kmath.py definition of `op` as an internal, always-inlined function."""
        fn = self._kmath.get(op)
        if fn is None:
            fn = self._kmath[op] = ir.Function(self.mod, ir.FunctionType(F32, [F32]), name=f"tgc_{op.name.lower()}f")
            fn.linkage = "internal"
            fn.attributes.add("alwaysinline")
            b = ir.IRBuilder(fn.append_basic_block())
            b.ret(ExprGen(self, b, {}, {kmath.ARG: fn.args[0]})(kmath.FUNCTIONS[op]))
        return fn

    # ---- kernels
    def kernel(self, k: Kernel) -> ir.Function:
        if k.name in self.kernels:
            return self.kernels[k.name]
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [(I32 if p.dtype == "i32" else F32).as_pointer() for p in k.params]),
                         name=k.name)  # fmt: skip
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for a in fn.args:  # tensors live in one kernel never overlap (memory plan): distinct pointers
            a.add_attribute("noalias")
        ptrs = {f"p{i}": a for i, a in enumerate(fn.args)}
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        getattr(self, "_" + k.kind)(b, k, ptrs)
        b.ret_void()
        self.kernels[k.name] = fn
        return fn

    def _regions(self, b, nest, ptrs, sym, body):
        """Loop over the cut axis region by region; body(region, generator, index value)."""
        ax = axis(nest.cut, nest.size(nest.cut))
        for h, reg in enumerate(nest.regions):
            g0 = ExprGen(self, b, ptrs, dict(sym))
            lo, hi = g0(reg.lo), g0(reg.hi)
            with loop(b, hi, start=lo, name=f"{nest.cut}{h}_") as v:
                body(reg, ExprGen(self, b, ptrs, {**sym, ax: v}), v)

    def _elementwise(self, b, k, ptrs):
        n = k.nest
        (_, rows), (_, L) = n.axes
        row = axis("row", rows)

        def body(reg, g, jv):
            vals = [g(e) for _, e in reg.outputs]  # every value first: an output may alias an input in place
            at = _flags(b.add(b.mul(g.sym[row], _c64(L)), jv), "nuw", "nsw")
            for (t, _), v in zip(reg.outputs, vals):
                b.store(b.trunc(v, I32) if v.type == I64 else v, b.gep(ptrs[t], [at], inbounds=True))

        with loop(b, rows, name="row") as r:
            self._regions(b, n, ptrs, {row: r}, body)

    def _reduce(self, b, k, ptrs):
        n = k.nest
        sizes = dict(n.axes)
        rows, L, R = sizes["row"], sizes["j"], sizes["r"]
        row, j, r_ax = axis("row", rows), axis("j", L), axis("r", R)
        ((t, _),) = k.outputs
        is_max = k.reduce_op is Op.RMAX
        init = _cf(-math.inf if is_max else 0.0)
        maximum = self.lib.intrinsic("llvm.maximum.f32", F32, [F32, F32])
        if [a for a, _ in n.axes] == ["row", "r", "j"]:
            # reduce over a non-contiguous axis: the output row is the accumulator, j innermost
            with loop(b, rows, name="row") as rv:
                base = b.gep(ptrs[t], [b.mul(rv, _c64(L))], inbounds=True)
                with loop(b, L, name="j0") as jj:
                    b.store(init, b.gep(base, [jj], inbounds=True))
                with loop(b, R, name="r") as ri:
                    def body(reg, g, jv):
                        ((_, e),) = reg.outputs
                        p = b.gep(base, [jv], inbounds=True)
                        acc, v = b.load(p), g(e)
                        b.store(b.call(maximum, [acc, v]) if is_max else b.fadd(acc, v), p)

                    self._regions(b, n, ptrs, {row: rv, r_ax: ri}, body)
            return
        # one accumulator per output, vectorized over r (cut where a causal mask switches)
        acc = b.alloca(F32)

        def combine(a, v):
            if is_max:
                return b.call(maximum, [a, v], fastmath=("nnan", "nsz", "reassoc"))
            return _flags(b.fadd(a, v), "reassoc", "nsz")

        def body(reg, g, rv):
            ((_, e),) = reg.outputs
            b.store(combine(b.load(acc), g(e)), acc)

        with loop(b, rows, name="row") as rv:
            with loop(b, L, name="j") as jv:
                b.store(init, acc)
                self._regions(b, n, ptrs, {row: rv, j: jv}, body)
                at = _flags(b.add(b.mul(rv, _c64(L)), jv), "nuw", "nsw")
                b.store(b.load(acc), b.gep(ptrs[t], [at], inbounds=True))

    def _matmul(self, b, k, ptrs):
        if k.a_onehot is not None:
            return self._onehot_matmul(b, k, ptrs)
        mm = self.matmul_fn()
        a, bv = k.a, k.b
        nb = math.prod(k.batch)
        with loop(b, nb, name="batch") as bi:
            idx, x = [], bi
            for s in reversed(k.batch):  # unflatten the batch index
                idx.append(b.urem(x, _c64(s)))
                x = b.udiv(x, _c64(s))
            idx = idx[::-1]
            offs = []
            for v in (a, bv):
                o = _c64(v.offset)
                for i, st in zip(idx, v.strides[:-2]):
                    o = b.add(o, b.mul(i, _c64(st)))
                offs.append(o)
            pa = b.bitcast(b.gep(ptrs[a.tensor], [offs[0]], inbounds=True), PF32)
            pb = b.bitcast(b.gep(ptrs[bv.tensor], [offs[1]], inbounds=True), PF32)
            pc = b.gep(ptrs[k.out], [b.mul(bi, _c64(k.M * k.N))], inbounds=True)
            b.call(mm, [pa, pb, pc] + [_c64(v) for v in (k.M, k.N, k.K, a.strides[-2], a.strides[-1], bv.strides[-2], bv.strides[-1])]
                   + [_c64(v) for v in _band_args(k.band)])  # fmt: skip

    def _onehot_matmul(self, b, k, ptrs):
        """C = onehot(idx)^T @ B as the scatter it is: C = 0, then row idx[k] of C += row k of
        B for k in order (indices outside [0, M) select nothing, as in the one-hot)."""
        C, Bp, idx = ptrs[k.out], ptrs[k.b.tensor], ptrs[k.a_onehot]
        sbk, sbn = k.b.strides
        with loop(b, k.M * k.N, name="z") as z:
            b.store(_cf(0.0), b.gep(C, [z], inbounds=True))
        src = b.gep(Bp, [_c64(k.b.offset)], inbounds=True)
        with loop(b, k.K, name="k") as kk:
            v = b.sext(b.load(b.gep(idx, [kk], inbounds=True)), I64)
            with b.if_then(b.and_(b.icmp_signed(">=", v, _c64(0)), b.icmp_signed("<", v, _c64(k.M)))):
                row = b.gep(C, [b.mul(v, _c64(k.N))], inbounds=True)
                with loop(b, k.N, name="n") as nn:
                    p = b.gep(row, [nn], inbounds=True)
                    x = b.load(b.gep(src, [b.add(b.mul(kk, _c64(sbk)), b.mul(nn, _c64(sbn)))], inbounds=True))
                    b.store(b.fadd(b.load(p), x), p)

    def matmul_fn(self) -> ir.Function:
        if self._mm_fn is not None:
            return self._mm_fn
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [PF32] * 3 + [I64] * 13), name="tgc_matmul")
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for a in fn.args[:3]:
            a.add_attribute("noalias")
        A, B, C, M, N, K, sam, sak, sbk, sbn, kfm, kfn, ktm, ktn, dab, dbe = fn.args
        pack_a, pack_b, micro = self._pack_fn("a"), self._pack_fn("b"), self._micro_fn()
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        Ap = b.inttoptr(_c64(self.scratch), PF32)
        Bp = b.inttoptr(_c64(self.scratch + 4 * self.MC * self.KC), PF32)
        with loop(b, N, step=self.NC, name="jc") as jc:
            nc = _min(b, _c64(self.NC), b.sub(N, jc))
            with loop(b, K, step=self.KC, name="pc") as pc:
                kc = _min(b, _c64(self.KC), b.sub(K, pc))
                bsrc = b.gep(B, [b.add(b.mul(pc, sbk), b.mul(jc, sbn))], inbounds=True)
                b.call(pack_b, [Bp, bsrc, kc, nc, sbk, sbn])
                accumulate = b.icmp_signed(">", pc, _c64(0))
                with loop(b, M, step=self.MC, name="ic") as ic:
                    mc = _min(b, _c64(self.MC), b.sub(M, ic))
                    asrc = b.gep(A, [b.add(b.mul(ic, sam), b.mul(pc, sak))], inbounds=True)
                    b.call(pack_a, [Ap, asrc, kc, mc, sak, sam])
                    with loop(b, nc, step=self.NR, name="jr") as jr:
                        with loop(b, mc, step=self.MR, name="ir") as i_r:
                            rows, cols = _min(b, _c64(self.MR), b.sub(mc, i_r)), _min(b, _c64(self.NR), b.sub(nc, jr))
                            m0, n0 = b.add(ic, i_r), b.add(jc, jr)
                            m_last, n_last = b.add(m0, b.sub(rows, _c64(1))), b.add(n0, b.sub(cols, _c64(1)))
                            # the band: k in [lo, hi) within this pc slice; dead tiles get 0
                            lo = _max(b, _max(b, pc, b.add(m0, kfm)), b.add(n0, kfn))
                            hi = _min(b, _min(b, b.add(pc, kc), b.add(m_last, ktm)), b.add(n_last, ktn))
                            dead = b.or_(b.icmp_signed(">", n0, b.add(m_last, dab)), b.icmp_signed("<", n_last, b.add(m0, dbe)))
                            live = b.and_(b.icmp_signed("<", lo, hi), b.not_(dead))
                            off = b.select(live, b.sub(lo, pc), _c64(0))
                            klen = b.select(live, b.sub(hi, lo), _c64(0))
                            ctile = b.gep(C, [b.add(b.mul(m0, N), n0)], inbounds=True)
                            b.call(micro, [b.gep(Ap, [b.add(b.mul(i_r, kc), b.mul(off, _c64(self.MR)))]),
                                           b.gep(Bp, [b.add(b.mul(jr, kc), b.mul(off, _c64(self.NR)))]), ctile, klen, N,
                                           rows, cols, accumulate])  # fmt: skip
        b.ret_void()
        self._mm_fn = fn
        return fn

    def _pack_fn(self, which: str) -> ir.Function:
        """dst[p][k][w] = src[k * s_k + (p * W + w) * s_w] (zero past `n`): A with W = self.MR
        (s_w = row stride), B with W = self.NR (s_w = column stride)."""
        W = self.MR if which == "a" else self.NR
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [PF32, PF32, I64, I64, I64, I64]), name=f"tgc_pack_{which}")
        fn.linkage = "internal"
        for a in fn.args[:2]:
            a.add_attribute("noalias")
        dst, src, kc, n, sk, sw = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with loop(b, n, step=W, name="p") as p:
            out = b.gep(dst, [b.mul(p, kc)])
            full = b.and_(b.icmp_signed("<=", b.add(p, _c64(W)), n), b.icmp_signed("==", sw, _c64(1)))
            with b.if_else(full) as (then, other):
                with then:  # unit stride and a whole sliver: vector copies
                    with loop(b, kc, name="kv") as kk:
                        s = b.gep(src, [b.add(b.mul(kk, sk), p)])
                        d = b.gep(out, [b.mul(kk, _c64(W))])
                        for q in range(0, W, 4):
                            v = b.load(b.bitcast(b.gep(s, [_c64(q)]), V4.as_pointer()), align=4)
                            b.store(v, b.bitcast(b.gep(d, [_c64(q)]), V4.as_pointer()), align=4)
                with other:
                    # k contiguous and a whole sliver (a row-major A, a transposed B): 4 x 4
                    # blocks loaded along k and transposed in registers; the rest scalar
                    kt = b.select(b.and_(b.icmp_signed("<=", b.add(p, _c64(W)), n), b.icmp_signed("==", sk, _c64(1))),
                                  b.and_(kc, _c64(-4)), _c64(0))  # fmt: skip
                    with loop(b, kt, step=4, name="kt") as kk:
                        for w0 in range(0, W, 4):
                            rows = [b.load(b.bitcast(b.gep(src, [b.add(kk, b.mul(b.add(p, _c64(w0 + r)), sw))]), V4.as_pointer()), align=4)
                                    for r in range(4)]  # fmt: skip
                            for t, col in enumerate(_transpose4(b, rows)):
                                d = b.gep(out, [b.add(b.mul(b.add(kk, _c64(t)), _c64(W)), _c64(w0))])
                                b.store(col, b.bitcast(d, V4.as_pointer()), align=4)
                    with loop(b, kc, start=kt, name="k") as kk:
                        for w in range(W):
                            col = b.add(p, _c64(w))
                            inside = b.icmp_signed("<", col, n)
                            safe = b.select(inside, col, _c64(0))
                            v = b.load(b.gep(src, [b.add(b.mul(kk, sk), b.mul(safe, sw))]))
                            b.store(b.select(inside, v, _cf(0.0)), b.gep(out, [b.add(b.mul(kk, _c64(W)), _c64(w))]))
        b.ret_void()
        return fn

    def _micro_fn(self) -> ir.Function:
        """C[0:rows, 0:cols] (+)= Ap[kc][self.MR] @ Bp[kc][self.NR]: self.MR x self.NR/4 vector accumulators."""
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [PF32, PF32, PF32, I64, I64, I64, I64, ir.IntType(1)]), name="tgc_micro")
        fn.linkage = "internal"
        for a in fn.args[:3]:
            a.add_attribute("noalias")
        Ap, Bp, C, kc, ldc, rows, cols, accumulate = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        nv = self.NR // 4
        accs = [[b.alloca(V4) for _ in range(nv)] for _ in range(self.MR)]
        zero = ir.Constant(V4, [0.0] * 4)
        for row in accs:
            for a in row:
                b.store(zero, a)
        with loop(b, kc, name="k") as kk:
            bvec = [b.load(b.bitcast(b.gep(Bp, [b.add(b.mul(kk, _c64(self.NR)), _c64(4 * q))]), V4.as_pointer()), align=16) for q in range(nv)]
            arow = b.load(b.bitcast(b.gep(Ap, [b.mul(kk, _c64(self.MR))]), V4.as_pointer()), align=16)
            for i in range(self.MR):  # lane i of A's column, broadcast (one pshufd)
                ai = b.shuffle_vector(arow, ir.Constant(V4, ir.Undefined), ir.Constant(ir.VectorType(I32, 4), [i] * 4))
                for q in range(nv):
                    b.store(b.fadd(b.load(accs[i][q]), b.fmul(ai, bvec[q])), accs[i][q])
        full = b.and_(b.icmp_signed("==", rows, _c64(self.MR)), b.icmp_signed("==", cols, _c64(self.NR)))
        with b.if_else(full) as (then, other):
            with then:
                for i in range(self.MR):
                    for q in range(nv):
                        p = b.bitcast(b.gep(C, [b.add(b.mul(_c64(i), ldc), _c64(4 * q))]), V4.as_pointer())
                        v = b.load(accs[i][q])
                        old = b.load(p, align=4)
                        b.store(b.select(accumulate, b.fadd(old, v), v), p, align=4)
            with other:  # an edge tile: spill the tile to the stack, copy the part inside C
                tile = b.alloca(ir.ArrayType(F32, self.MR * self.NR))
                tp = b.bitcast(tile, PF32)
                for i in range(self.MR):
                    for q in range(nv):
                        b.store(b.load(accs[i][q]), b.bitcast(b.gep(tp, [_c64(i * self.NR + 4 * q)]), V4.as_pointer()), align=4)
                with loop(b, rows, name="ei") as ei:
                    with loop(b, cols, name="ej") as ej:
                        v = b.load(b.gep(tp, [b.add(b.mul(ei, _c64(self.NR)), ej)]))
                        p = b.gep(C, [b.add(b.mul(ei, ldc), ej)])
                        b.store(b.select(accumulate, b.fadd(b.load(p), v), v), p)
        b.ret_void()
        return fn


    # ---- programs
    def program(self, pname: str, launches: list[tuple[Kernel, list[int]]]) -> str:
        """The exported function of a program: each launch's kernel called with the absolute
        addresses of its tensors. With `profile`, one export per launch too, for timing."""
        calls = [(self.kernel(k), addrs) for k, addrs in launches]
        wrappers = [(pname, calls)] + ([(f"{pname}#{i}", [c]) for i, c in enumerate(calls)] if self.profile else [])
        for export, body in wrappers:
            fn = ir.Function(self.mod, ir.FunctionType(VOID, []), name=export)
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            for kfn, addrs in body:
                b.call(kfn, [b.inttoptr(_c64(a), p.type) for a, p in zip(addrs, kfn.args)])
            b.ret_void()
        return pname

    def compile(self) -> tuple[bytes, str, str]:
        text = str(self.mod)
        m = self.llvm.parse_assembly(text)
        m.verify()
        pb = self.llvm.create_pass_builder(self.tm, self.llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(m, pb)
        return self.tm.emit_object(m), text, str(m)


def link(obj: bytes, exports: list[str], out: Path) -> None:
    from tgc.toolchain import find_wasm_ld

    with tempfile.TemporaryDirectory() as d:
        o = Path(d) / "model.o"
        o.write_bytes(obj)
        cmd = [*find_wasm_ld(), "-mwasm64", "--no-entry", "--import-memory", "--stack-first",
               "-z", f"stack-size={STACK_BYTES}", "--export=__heap_base",
               *(f"--export={e}" for e in exports), "-o", str(out), str(o)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise TgcError(f"wasm-ld failed: {r.stderr.strip() or r.stdout.strip()}")


def build(kernels: dict[str, Kernel], programs: dict[str, list[tuple[str, list[int]]]], uniforms: dict, scratch: int,
          out_path, dump_dir=None, profile: bool = False) -> list[str]:
    """Render, optimize, link into out_path (model.wasm). programs: name -> launches as
    (kernel name, absolute address of each parameter's tensor); uniforms: name ->
    (absolute address, dtype); scratch: where the matmul's packing scratch starts.
    Returns the exports."""
    blocking = next((k.decisions["wasm"] for k in kernels.values() if k.decisions.get("wasm", {}).get("form") == "blocked"),
                    None) or {"MR": 4, "NR": 8, "KC": 256, "MC": 128, "NC": 2048}  # fmt: skip
    gen = ModuleGen(uniforms, scratch, blocking, profile)
    exports = []
    for pname, launches in programs.items():
        gen.program(pname, [(kernels[kn], addrs) for kn, addrs in launches])
        exports.append(pname)
        if profile:
            exports += [f"{pname}#{i}" for i in range(len(launches))]
    obj, text, opt = gen.compile()
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / "model.ll").write_text(text)
        (Path(dump_dir) / "model.opt.ll").write_text(opt)
    link(obj, exports, Path(out_path))
    return exports
