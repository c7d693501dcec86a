"""The WebAssembly renderer: kernel IR -> LLVM IR (llvmlite) -> wasm64 object -> wasm-ld -> model.wasm.

One LLVM function per kernel, built from three templates (elementwise, reduce, matmul),
one exported function per program that calls its kernels in order with the tensors'
absolute addresses as i64 constants (the layout's wasm_base: tensors past 4 GiB are just
bigger constants), and a few shared helpers: a packed, register-blocked SIMD128 matmul
and branch-free f32 exp/log/tanh/erf/cos (wasm has no such instructions). The module
imports one 64-bit memory that the host sizes from manifest["wasm"]["memory_bytes"];
the matmul's packing scratch sits above every buffer of the layout. docs/wasm.md says
why each choice was made and how accurate the math functions are.

Not here: deciding what a kernel computes (tgc/ir/schedule.py) or where tensors live
(tgc/ir/memplan.py, tgc/compiler.make_layouts); running the module (tgc/runtime/wasm.py).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from llvmlite import ir

from tgc.codegen.base import UNIFORM_BLOCK, Layout
from tgc.errors import TgcError
from tgc.ir.kernel import KExpr, Kernel, const
from tgc.ir.ops import Op

TRIPLE = "wasm64-unknown-unknown"
FEATURES = "+simd128,+bulk-memory,+nontrapping-fptoint"
HEAP_BASE = 1 << 20  # tgc.compiler.WASM_HEAP_BASE: the module's stack and data stay below
STACK_BYTES = 256 << 10

F32, I32, I64, VOID = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.VoidType()
V4 = ir.VectorType(F32, 4)
PF32 = F32.as_pointer()

# matmul blocking (see docs/wasm.md): an MR x NR register tile of <4 x float> accumulators,
# A packed in MC x KC blocks (L2), B in KC x NC panels (L3), an NR-wide B sliver in L1.
# 4 x 8 keeps the 8 accumulators, 2 B vectors, A's column and its broadcast in x86's 16
# vector registers under Cranelift (4 x 16 spilled half its accumulators every k step).
MR, NR, KC, MC, NC = 4, 8, 256, 128, 2048
assert MR == 4 and NR % 4 == 0 and MC % MR == 0  # A's column is one v128; packing copies whole v128s
SCRATCH_A = MC * KC * 4
SCRATCH_BYTES = SCRATCH_A + KC * NC * 4 + (64 << 10)


MAGIC, MAGIC_BITS = 12582912.0, 0x4B400000  # 1.5 * 2^23: x + MAGIC rounds x to an integer (|x| < 2^22)


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


# ---------------------------------------------------------------- math functions

class MathLib:
    """f32 exp/log/tanh/erf/cos as internal, branch-free, always-inlined LLVM functions,
    so that loops calling them still vectorize. Max errors measured in tests/test_wasm.py."""

    # Cephes expf/logf/sinf/cosf minimax coefficients; erf's small branch and tanh are least-squares fits
    # on Chebyshev nodes (f64 reference, then rounded to f32), see docs/wasm.md.
    EXP = [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4]
    LOG = [3.3333331174e-1, -2.4999993993e-1, 2.0000714765e-1, -1.6668057665e-1, 1.4249322787e-1,
           -1.2420140846e-1, 1.1676998740e-1, -1.1514610310e-1, 7.0376836292e-2]  # fmt: skip
    SIN = [-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4]
    COS = [4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5]
    ERF_SMALL = [1.1283791065216064, -0.3761262595653534, 0.11283597350120544, -0.02685432881116867,
                 0.005189312156289816, -0.0008018855005502701, 7.882497448008507e-05]  # fmt: skip
    # erfc(a) on [1, 3.92] as P(s)/Q(s), s = a - 2.46 (centered: the f32-rounded coefficients
    # keep the fit's 2e-8), minimax-weighted least squares (Sanathanan-Koerner + Lawson, f64)
    ERFC_CENTER, ERF_ONE = 2.46, 3.92  # past 3.92, f32(erf) is 1
    ERFC_P = [0.0005033346242271364, -0.0019898382015526295, 0.00349888252094388, -0.0035168053582310677,
              0.0021304083056747913, -0.0007323437603190541, 0.00011016503412974998]  # fmt: skip
    ERFC_Q = [1.0, 1.3239656686782837, 0.9544782042503357, 0.39409738779067993, 0.0932619571685791,
              0.009191928431391716]  # fmt: skip
    TANH_SMALL = [1.0, -0.3333326280117035, 0.13331149518489838, -0.05372267961502075,
                  0.020595679059624672, -0.005664775148034096]  # fmt: skip

    def __init__(self, mod: ir.Module):
        self.mod, self.fns = mod, {}

    def intrinsic(self, name, ret, args):
        fn = self.mod.globals.get(name)
        return fn if fn is not None else ir.Function(self.mod, ir.FunctionType(ret, args), name=name)

    def get(self, op: Op) -> ir.Function:
        if op not in self.fns:
            fn = ir.Function(self.mod, ir.FunctionType(F32, [F32]), name=f"tgc_{op.name.lower()}f")
            fn.linkage = "internal"
            fn.attributes.add("alwaysinline")
            b = ir.IRBuilder(fn.append_basic_block())
            self.fns[op] = fn
            b.ret(getattr(self, "_" + op.name.lower())(b, fn.args[0]))
        return self.fns[op]

    @staticmethod
    def _poly(b, x, coeffs):  # Horner, coeffs lowest degree first
        y = _cf(coeffs[-1])
        for c in coeffs[-2::-1]:
            y = b.fadd(b.fmul(y, x), _cf(c))
        return y

    def _round(self, b, x):
        return b.call(self.intrinsic("llvm.roundeven.f32", F32, [F32]), [x])

    def _abs(self, b, x):
        return b.call(self.intrinsic("llvm.fabs.f32", F32, [F32]), [x])

    def _exp(self, b, x):
        # n = round(x / ln2), r = x - n ln2 (two-part ln2), e^r by a degree-7 poly, 2^n by exponent bits
        xc = b.select(b.fcmp_ordered("<", x, _cf(88.72283)), x, _cf(88.72283))  # NaN: fixed at the end
        # below the cut the result is 0 (selected at the end): compute e^0 meanwhile, since
        # subnormal intermediates cost a microcode assist per lane on x86 (the -1e30 of every
        # masked attention score lands here)
        xc = b.select(b.fcmp_ordered(">", xc, _cf(-103.97208)), xc, _cf(0.0))
        # round to nearest even by adding 1.5 * 2^23: n as a float and, from the same bits, as
        # an integer (no float-to-int conversion, which is ~8 instructions on x86)
        t = b.fadd(b.fmul(xc, _cf(1.44269504088896341)), _cf(MAGIC))
        n = b.fsub(t, _cf(MAGIC))
        r = b.fsub(b.fsub(xc, b.fmul(n, _cf(0.693359375))), b.fmul(n, _cf(-2.12194440e-4)))
        p = b.fadd(b.fadd(b.fmul(self._poly(b, r, self.EXP), b.fmul(r, r)), r), _cf(1.0))
        ni = b.sub(b.bitcast(t, I32), ir.Constant(I32, MAGIC_BITS))  # 2^n as 2^(n/2) 2^(n - n/2): both normal for n in [-150, 128]
        n1 = b.ashr(ni, ir.Constant(I32, 1))
        y = p
        for e in (n1, b.sub(ni, n1)):
            y = b.fmul(y, b.bitcast(b.shl(b.add(e, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32))
        y = b.select(b.fcmp_ordered("<", x, _cf(-103.97208)), _cf(0.0), y)  # below half the least subnormal: 0
        y = b.select(b.fcmp_ordered(">", x, _cf(88.72283)), _cf(math.inf), y)
        return b.select(b.fcmp_unordered("uno", x, x), x, y)

    def _log(self, b, x):
        # x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = f - f^2/2 + f^3 P(f), f = m - 1
        ix = b.bitcast(x, I32)
        e = b.sub(b.ashr(ix, ir.Constant(I32, 23)), ir.Constant(I32, 127))
        m = b.bitcast(b.or_(b.and_(ix, ir.Constant(I32, 0x007FFFFF)), ir.Constant(I32, 0x3F800000)), F32)
        big = b.fcmp_ordered(">", m, _cf(1.41421356))
        m = b.select(big, b.fmul(m, _cf(0.5)), m)
        e = b.sitofp(b.add(e, b.zext(big, I32)), F32)
        f = b.fsub(m, _cf(1.0))
        z = b.fmul(f, f)
        y = b.fmul(b.fmul(self._poly(b, f, self.LOG), f), z)
        y = b.fadd(y, b.fmul(e, _cf(-2.12194440e-4)))
        y = b.fsub(y, b.fmul(z, _cf(0.5)))
        y = b.fadd(b.fadd(f, y), b.fmul(e, _cf(0.693359375)))
        y = b.select(b.fcmp_ordered("==", x, _cf(math.inf)), x, y)
        y = b.select(b.fcmp_ordered("==", x, _cf(0.0)), _cf(-math.inf), y)
        return b.select(b.fcmp_unordered("<", x, _cf(0.0)), _cf(math.nan), y)  # x < 0 or NaN

    def _tanh(self, b, x):
        a = self._abs(b, x)
        small = b.fmul(self._poly(b, b.fmul(x, x), self.TANH_SMALL), x)
        t = b.fsub(_cf(1.0), b.fdiv(_cf(2.0), b.fadd(self._exp(b, b.fmul(a, _cf(2.0))), _cf(1.0))))
        big = b.call(self.intrinsic("llvm.copysign.f32", F32, [F32, F32]), [t, x])
        return b.select(b.fcmp_unordered("<", a, _cf(0.625)), small, big)

    def _erf(self, b, x):
        # |x| < 1: x P(x^2); 1 <= |x| <= 3.92: 1 - erfc(|x|) with erfc a rational fit (no exp:
        # erfc <= 0.16 there, so its few-ulp relative error is small against 1); beyond: +-1
        a = self._abs(b, x)
        small = b.fmul(self._poly(b, b.fmul(x, x), self.ERF_SMALL), x)
        ac = b.select(b.fcmp_ordered("<", a, _cf(self.ERF_ONE)), a, _cf(self.ERF_ONE))
        sv = b.fsub(ac, _cf(self.ERFC_CENTER))
        t = b.fsub(_cf(1.0), b.fdiv(self._poly(b, sv, self.ERFC_P), self._poly(b, sv, self.ERFC_Q)))
        t = b.select(b.fcmp_ordered(">", a, _cf(self.ERF_ONE)), _cf(1.0), t)
        big = b.call(self.intrinsic("llvm.copysign.f32", F32, [F32, F32]), [t, x])
        return b.select(b.fcmp_unordered("<", a, _cf(1.0)), small, big)

    def _cos(self, b, x):
        # n = round(x / (pi/2)), r = x - n pi/2 in three parts (Cody-Waite); quadrant picks +-sin/cos
        n = self._round(b, b.fmul(x, _cf(2 / math.pi)))
        r = x
        for c in (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8):
            r = b.fsub(r, b.fmul(n, _cf(c)))
        z = b.fmul(r, r)
        s = b.fadd(b.fmul(b.fmul(self._poly(b, z, self.SIN), z), r), r)
        c = b.fadd(b.fsub(b.fmul(b.fmul(self._poly(b, z, self.COS), z), z), b.fmul(z, _cf(0.5))), _cf(1.0))
        q = b.and_(b.fptosi(n, I32), ir.Constant(I32, 3))
        odd = b.icmp_unsigned("==", b.and_(q, ir.Constant(I32, 1)), ir.Constant(I32, 0))
        v = b.select(odd, c, s)
        neg = b.icmp_unsigned("==", b.and_(b.add(q, ir.Constant(I32, 1)), ir.Constant(I32, 2)), ir.Constant(I32, 2))
        return b.select(neg, b.fneg(v), v)


# ---------------------------------------------------------------- scalar expressions

_FBIN = {Op.ADD: "fadd", Op.SUB: "fsub", Op.MUL: "fmul", Op.DIV: "fdiv"}
_IBIN = {Op.ADD: "add", Op.SUB: "sub", Op.MUL: "mul"}
_FMINMAX = {Op.MAX: "llvm.maximum.f32", Op.MIN: "llvm.minimum.f32"}  # NaN-propagating, like numpy
_CMP = {Op.CMPLT: "<", Op.CMPEQ: "=="}
_TRANSCENDENTAL = (Op.EXP, Op.LOG, Op.TANH, Op.ERF, Op.COS)


class ExprGen:
    """Emits a KExpr DAG once per node (memoized) into the current block. i32 values are
    carried as i64 (index math never wraps, addresses are 64-bit); loads go through the
    kernel's pointer arguments; `sym` maps placeholder nodes (loop indices) to values."""

    def __init__(self, b, lib: MathLib, ptrs: dict, layout: Layout, sym: dict):
        self.b, self.lib, self.ptrs, self.layout, self.sym, self.memo = b, lib, ptrs, layout, sym, {}

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
            off, dt = self.layout.uniforms[e.arg]
            addr = self.layout.wasm_base[UNIFORM_BLOCK] + off
            v = b.load(b.inttoptr(_c64(addr), (I32 if dt == "i32" else F32).as_pointer()))
            return _convert(b, v, dt, e.dtype)
        if op is Op.LOAD:
            p = b.gep(self.ptrs[e.arg], [self(e.srcs[0])], inbounds=True)
            v = b.load(p)
            return b.sext(v, I64) if e.dtype == "i32" else v
        s = [self(x) for x in e.srcs]
        if op is Op.WHERE:
            return b.select(b.fcmp_unordered("!=", s[0], _cf(0.0)), s[1], s[2])
        if op is Op.CAST:
            return _convert(b, s[0], e.srcs[0].dtype, e.arg)
        if op in _CMP:
            if e.srcs[0].dtype == "i32" and all(-(2**31) <= x.vmin and x.vmax < 2**31 for x in e.srcs):
                s = [b.trunc(x, I32) for x in s]  # i32 lanes: vectorizes 4 wide (i64x2 has no unsigned compare)
            c = b.icmp_signed(_CMP[op], *s) if e.srcs[0].dtype == "i32" else b.fcmp_ordered(_CMP[op], *s)
            return b.uitofp(c, F32)
        if e.dtype == "i32":
            if op in _IBIN:
                return _flags(getattr(b, _IBIN[op])(*s), "nsw")
            if op in (Op.MAX, Op.MIN):
                return b.select(b.icmp_signed(">" if op is Op.MAX else "<", *s), *s)
            if op in (Op.IDIV, Op.MOD):
                if e.srcs[0].vmin >= 0 and e.srcs[1].vmin >= 0:
                    return (b.udiv if op is Op.IDIV else b.urem)(*s)
                q, r = b.sdiv(*s), b.srem(*s)  # floor semantics for a negative dividend
                fix = b.and_(b.icmp_signed("!=", r, _c64(0)), b.icmp_signed("<", r, _c64(0)))
                return b.sub(q, b.zext(fix, I64)) if op is Op.IDIV else b.select(fix, b.add(r, s[1]), r)
            if op is Op.NEG:
                return b.neg(s[0])
        else:
            if op in _FBIN:
                return getattr(b, _FBIN[op])(*s)
            if op in _FMINMAX:
                return b.call(self.lib.intrinsic(_FMINMAX[op], F32, [F32, F32]), s)
            if op is Op.NEG:
                return b.fneg(s[0])
            if op is Op.RECIP:
                return b.fdiv(_cf(1.0), s[0])
            if op is Op.SQRT:
                return b.call(self.lib.intrinsic("llvm.sqrt.f32", F32, [F32]), s)
            if op in _TRANSCENDENTAL:
                return b.call(self.lib.get(op), s)
        raise NotImplementedError(f"LLVM renderer has no lowering for {op.name} ({e.dtype})")


def _convert(b, v, src: str, dst: str):
    if src == dst:
        return b.sext(v, I64) if src == "i32" and v.type == I32 else v
    if dst == "f32":
        return b.sitofp(v, F32)
    return b.call(b.module.globals.get("llvm.fptosi.sat.i64.f32") or ir.Function(b.module, ir.FunctionType(I64, [F32]), "llvm.fptosi.sat.i64.f32"), [v])


# ---------------------------------------------------------------- index-space split

def _walk(roots):
    seen, stack = set(), list(roots)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        yield e
        stack.extend(e.srcs)


def _split_gid(k: Kernel):
    """Split gid = row * L + j so that every IDIV/MOD of gid becomes row arithmetic and j
    is the innermost, unit-stride loop (L = gcd of the divisors applied to gid)."""
    roots = [e for _, e in k.outputs]
    divs = [e.srcs[1].arg for e in _walk(roots) if e.op in (Op.IDIV, Op.MOD) and e.srcs[0].op is Op.GIDX]
    L = math.gcd(*divs) if divs else k.size
    L = L if k.size % L == 0 else 1
    rows = k.size // L
    row = KExpr(Op.GIDX, "i32", (), "row", 0, rows - 1)
    j = KExpr(Op.GIDX, "i32", (), "j", 0, L - 1)
    memo = {}

    def sub(e: KExpr) -> KExpr:
        if e in memo:
            return memo[e]
        if e.op is Op.GIDX and e.arg is None:
            r = row * L + j
        elif e.op in (Op.IDIV, Op.MOD) and e.srcs[0].op is Op.GIDX and e.srcs[0].arg is None:
            q = e.srcs[1].arg // L
            r = row // q if e.op is Op.IDIV else (row % q) * L + j
        else:
            srcs = tuple(sub(s) for s in e.srcs)
            r = e if srcs == e.srcs else KExpr(e.op, e.dtype, srcs, e.arg, e.vmin, e.vmax)
        memo[e] = r
        return r

    return rows, L, row, j, [(t, sub(e)) for t, e in k.outputs]


class _Aff:
    """sum(coef * term) + cj * jj + k: terms are i32 expressions free of the piece index jj."""

    def __init__(self, terms=None, cj=0, k=0):
        self.terms, self.cj, self.k = {t: c for t, c in (terms or {}).items() if c}, cj, k

    def __add__(self, o):
        t = dict(self.terms)
        for x, c in o.terms.items():
            t[x] = t.get(x, 0) + c
        return _Aff(t, self.cj + o.cj, self.k + o.k)

    def scale(self, c):
        return _Aff({x: v * c for x, v in self.terms.items()}, self.cj * c, self.k * c)


def _mult(e: KExpr) -> int:
    """A known divisor of every value of e (1 when unknown)."""
    if e.op is Op.CONST:
        return abs(e.arg) or 1 << 30
    if e.op is Op.MUL and e.srcs[1].op is Op.CONST:
        return _mult(e.srcs[0]) * abs(e.srcs[1].arg)
    if e.op is Op.ADD:
        return math.gcd(_mult(e.srcs[0]), _mult(e.srcs[1]))
    return 1


class _Unresolved(Exception):
    pass


class _AffineIn:
    """Affine forms (`_Aff`) of i32 index expressions in the loop index j over
    j in [j0, j0 + P): IDIV/MOD/MIN/MAX of j resolve where they do not switch on that
    range (P None: unknown range, so they never do). Raises _Unresolved otherwise."""

    def __init__(self, j: KExpr, j0: int = 0, P: int | None = None):
        self.j, self.j0, self.P = j, j0, P
        self.dep, self.memo = {}, {}

    def has_j(self, e) -> bool:
        if e not in self.dep:
            self.dep[e] = e is self.j or e == self.j or any(self.has_j(s) for s in e.srcs)
        return self.dep[e]

    def _span(self, a: _Aff) -> tuple[int, int]:
        if self.P is None:
            raise _Unresolved
        return tuple(sorted((a.k, a.k + a.cj * (self.P - 1))))

    def __call__(self, e) -> _Aff:
        if e in self.memo:
            return self.memo[e]
        op, has_j = e.op, self.has_j
        if not has_j(e):
            r = _Aff(k=e.arg) if op is Op.CONST else _Aff({e: 1})
        elif e == self.j:
            r = _Aff(cj=1, k=self.j0)
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
            if d <= 0 or lo // d != hi // d or any((c * _mult(t)) % d for t, c in a.terms.items()):
                raise _Unresolved
            q = lo // d
            if op is Op.IDIV:
                r = _Aff({_to_expr(_Aff(a.terms)) // d: 1} if a.terms else {}, 0, q)  # the terms are a multiple of d
            else:
                r = _Aff({}, a.cj, a.k - q * d)
        elif op in (Op.MAX, Op.MIN):
            d = self(e.srcs[0]) + self(e.srcs[1]).scale(-1)
            if d.terms:
                raise _Unresolved
            lo, hi = self._span(d)
            if lo >= 0 or hi <= 0:
                first = (lo >= 0) == (op is Op.MAX)
                r = self(e.srcs[0] if first else e.srcs[1])
            else:
                raise _Unresolved
        else:
            raise _Unresolved
        self.memo[e] = r
        return r


def _to_expr(a: _Aff, jj: KExpr | None = None) -> KExpr:
    """The expression of an affine form, with jj for the loop index (unused when cj is 0)."""
    x = const(a.k)
    for t, c in sorted(a.terms.items(), key=lambda tc: str(tc[0])):
        x = t * c + x
    return x + jj * a.cj if a.cj else x


def _piece(outs, j: KExpr, j0: int, P: int):
    """outs with j = j0 + jj, jj in [0, P): every IDIV/MOD/MIN/MAX of j resolved to affine
    index math in jj (and compares against j decided), so loads are unit-stride in jj.
    Raises _Unresolved when some index op does not resolve on this piece."""
    jj = KExpr(Op.GIDX, "i32", (), "jj", 0, P - 1)
    aff, memo = _AffineIn(j, j0, P), {}
    has_j = aff.has_j

    def to_expr(a: _Aff) -> KExpr:
        return _to_expr(a, jj)

    def sub(e):
        if e in memo:
            return memo[e]
        if not has_j(e):
            r = e
        elif e.dtype == "i32" and e.op is not Op.LOAD:
            r = to_expr(aff(e))
        elif e.op in _CMP and e.srcs[0].dtype == "i32":
            try:
                d = aff(e.srcs[0]) + aff(e.srcs[1]).scale(-1)
            except _Unresolved:
                d = None
            lo, hi = (sorted((d.k, d.k + d.cj * (P - 1))) if d is not None and not d.terms else (None, None))
            if lo is not None and e.op is Op.CMPLT and (hi < 0 or lo >= 0):
                r = const(1.0 if hi < 0 else 0.0, "f32")
            elif lo is not None and e.op is Op.CMPEQ and (lo == hi or lo > 0 or hi < 0):
                r = const(1.0 if lo == hi == 0 else 0.0, "f32")
            else:
                r = KExpr(e.op, e.dtype, tuple(sub(s) for s in e.srcs), e.arg, e.vmin, e.vmax)
        else:
            r = KExpr(e.op, e.dtype, tuple(sub(s) for s in e.srcs), e.arg, e.vmin, e.vmax)
        memo[e] = r
        return r

    return jj, [(t, sub(e)) for t, e in outs]


def _split_pieces(L: int, j: KExpr, outs):
    """When the inner loop divides, takes remainders of, or clamps j (a concat's pad masks,
    a head split), cut [0, L) into the largest equal pieces on which all of that is affine:
    [(j0, P, jj, outs)], or None (nothing to gain, or no cut resolves)."""
    if not any(e.op in (Op.IDIV, Op.MOD, Op.MAX, Op.MIN) and e.dtype == "i32" and any(x == j for x in _walk([e]))
               for e in _walk([x for _, x in outs])):
        return None
    for P in sorted((d for d in range(4, L + 1) if L % d == 0 and L // d <= 32), reverse=True):
        try:
            return [(j0, P, *_piece(outs, j, j0, P)) for j0 in range(0, L, P)]
        except _Unresolved:
            continue
    return None


def _compare_split(v: KExpr, outs):
    """A mask `x < y` with x - y = +-v + r (r free of the loop index v, like the causal
    mask's key <= query) is 1 on one side of a split point and 0 on the other: (the
    compare, r, sign). The loop over v is then cut there, each half with the mask decided
    (the dead arm of its select drops out, invariant work leaves the loop)."""
    aff = _AffineIn(v)
    for e in _walk([x for _, x in outs]):
        if e.op is Op.CMPLT and e.srcs[0].dtype == "i32" and aff.has_j(e):
            try:
                d = aff(e.srcs[0]) + aff(e.srcs[1]).scale(-1)
            except _Unresolved:
                continue
            if d.cj in (1, -1):
                return e, _to_expr(_Aff(d.terms, 0, d.k)), d.cj
    return None


def _decide(outs, cmp: KExpr, value: float):
    memo = {}

    def sub(e):
        if e is cmp or e == cmp:
            return const(value, "f32")
        if e not in memo:
            srcs = tuple(sub(x) for x in e.srcs)
            memo[e] = e if srcs == e.srcs else KExpr(e.op, e.dtype, srcs, e.arg, e.vmin, e.vmax)
        return memo[e]

    return [(t, sub(e)) for t, e in outs]


def _unit_stride_in(e: KExpr, var: KExpr) -> bool:
    """Does some load's index move by one element per step of `var`?"""
    for x in _walk([e]):
        if x.op is Op.LOAD:
            idx = x.srcs[0]
            if idx == var or (idx.op is Op.ADD and var in idx.srcs):
                return True
    return False


# ---------------------------------------------------------------- module builder

class ModuleGen:
    def __init__(self, scratch: int, profile: bool = False):
        import llvmlite.binding as llvm

        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        self.llvm = llvm
        self.tm = llvm.Target.from_triple(TRIPLE).create_target_machine(cpu="generic", features=FEATURES, opt=3)
        self.mod = ir.Module(name="tgc")
        self.mod.triple, self.mod.data_layout = TRIPLE, str(self.tm.target_data)
        self.lib = MathLib(self.mod)
        self.scratch, self.profile = scratch, profile
        self._mm_fn = None

    # ---- kernels
    def kernel(self, k: Kernel, layout: Layout, fname: str) -> tuple[ir.Function, list[str]]:
        tensors = sorted(k.loads() | set(k.writes()))
        dts = [layout.tensor_dtypes.get(t, "f32") for t in tensors]
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [(I32 if d == "i32" else F32).as_pointer() for d in dts]), name=fname)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for a in fn.args:  # tensors live in one kernel never overlap (memory plan): distinct pointers
            a.add_attribute("noalias")
        ptrs = dict(zip(tensors, fn.args))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        getattr(self, "_" + k.kind)(b, k, ptrs, layout)
        b.ret_void()
        return fn, tensors

    def _elementwise(self, b, k, ptrs, layout):
        rows, L, row, j, outs = _split_gid(k)
        pieces = _split_pieces(L, j, outs)
        if pieces is not None:  # the j loop cut where its index math switches: unit-stride pieces
            with loop(b, rows, name="row") as r:
                for j0, P, jjn, pouts in pieces:
                    with loop(b, P, name=f"j{j0}_") as jj:
                        g = ExprGen(b, self.lib, ptrs, layout, {row: r, jjn: jj})
                        vals = [g(e) for _, e in pouts]
                        at = _flags(b.add(b.mul(r, _c64(L)), b.add(jj, _c64(j0))), "nuw", "nsw")
                        for (t, _), v in zip(pouts, vals):
                            b.store(b.trunc(v, I32) if v.type == I64 else v, b.gep(ptrs[t], [at], inbounds=True))
            return
        split = _compare_split(j, outs)
        with loop(b, rows, name="row") as r:
            for h, (lo, hi, houts) in enumerate(self._halves(b, split, outs, L, ptrs, layout, {row: r})):
                with loop(b, hi, start=lo, name=f"j{h}_") as jj:
                    g = ExprGen(b, self.lib, ptrs, layout, {row: r, j: jj})
                    vals = [g(e) for _, e in houts]  # every value first: an output may alias an input in place
                    at_ = _flags(b.add(b.mul(r, _c64(L)), jj), "nuw", "nsw")
                    for (t, _), v in zip(houts, vals):
                        b.store(b.trunc(v, I32) if v.type == I64 else v, b.gep(ptrs[t], [at_], inbounds=True))

    def _halves(self, b, split, outs, n: int, ptrs, layout, sym):
        """The loop [0, n) as [(lo, hi, outs)]: cut in two at a _compare_split's point, the
        compare decided in each half."""
        if split is None:
            return [(_c64(0), _c64(n), outs)]
        cmp, rest, sign = split
        at = ExprGen(b, self.lib, ptrs, layout, sym)(rest)  # true for v < -rest (sign 1), v > rest (-1)
        at = _min(b, _max(b, b.sub(_c64(0), at) if sign == 1 else b.add(at, _c64(1)), _c64(0)), _c64(n))
        first = 1.0 if sign == 1 else 0.0
        return [(_c64(0), at, _decide(outs, cmp, first)), (at, _c64(n), _decide(outs, cmp, 1.0 - first))]

    def _reduce(self, b, k, ptrs, layout):
        rows, L, row, j, ((t, e),) = _split_gid(k)
        rid = next((x for x in _walk([e]) if x.op is Op.RIDX), KExpr(Op.RIDX, "i32"))
        is_max = k.reduce_op is Op.RMAX
        init = _cf(-math.inf if is_max else 0.0)

        def combine(acc, v):
            if is_max:
                return b.call(self.lib.intrinsic("llvm.maximum.f32", F32, [F32, F32]), [acc, v], fastmath=("nnan", "nsz", "reassoc"))
            return _flags(b.fadd(acc, v), "reassoc", "nsz")

        if L >= 4 and not _unit_stride_in(e, rid) and _unit_stride_in(e, j):
            # reduce over a non-contiguous axis: the output row is the accumulator, j innermost
            with loop(b, rows, name="row") as r:
                base = b.gep(ptrs[t], [b.mul(r, _c64(L))], inbounds=True)
                with loop(b, L, name="j0") as jj:
                    b.store(init, b.gep(base, [jj], inbounds=True))
                with loop(b, k.reduce_len, name="r") as ri:
                    with loop(b, L, name="j") as jj:
                        v = ExprGen(b, self.lib, ptrs, layout, {row: r, j: jj, rid: ri})(e)
                        p = b.gep(base, [jj], inbounds=True)
                        acc = b.load(p)
                        b.store(b.call(self.lib.intrinsic("llvm.maximum.f32", F32, [F32, F32]), [acc, v]) if is_max else b.fadd(acc, v), p)
            return
        # contiguous (or scalar) reduction: one accumulator per output, vectorized over ridx
        acc = b.alloca(F32)
        split = _compare_split(rid, [(t, e)])
        with loop(b, rows, name="row") as r:
            with loop(b, L, name="j") as jj:
                b.store(init, acc)
                for h, (lo, hi, ((_, he),)) in enumerate(self._halves(b, split, [(t, e)], k.reduce_len, ptrs, layout, {row: r, j: jj})):
                    with loop(b, hi, start=lo, name=f"r{h}_") as ri:
                        v = ExprGen(b, self.lib, ptrs, layout, {row: r, j: jj, rid: ri})(he)
                        b.store(combine(b.load(acc), v), acc)
                b.store(b.load(acc), b.gep(ptrs[t], [_flags(b.add(b.mul(r, _c64(L)), jj), "nuw", "nsw")], inbounds=True))

    def _matmul(self, b, k, ptrs, layout):
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

    # ---- the shared matmul: C[M, N] (row stride N) = A (strides sam, sak) @ B (strides sbk, sbn),
    # each micro-tile over the k range its Band allows (_band_args: no band, the whole range)
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
        Bp = b.inttoptr(_c64(self.scratch + SCRATCH_A), PF32)
        with loop(b, N, step=NC, name="jc") as jc:
            nc = _min(b, _c64(NC), b.sub(N, jc))
            with loop(b, K, step=KC, name="pc") as pc:
                kc = _min(b, _c64(KC), b.sub(K, pc))
                bsrc = b.gep(B, [b.add(b.mul(pc, sbk), b.mul(jc, sbn))], inbounds=True)
                b.call(pack_b, [Bp, bsrc, kc, nc, sbk, sbn])
                accumulate = b.icmp_signed(">", pc, _c64(0))
                with loop(b, M, step=MC, name="ic") as ic:
                    mc = _min(b, _c64(MC), b.sub(M, ic))
                    asrc = b.gep(A, [b.add(b.mul(ic, sam), b.mul(pc, sak))], inbounds=True)
                    b.call(pack_a, [Ap, asrc, kc, mc, sak, sam])
                    with loop(b, nc, step=NR, name="jr") as jr:
                        with loop(b, mc, step=MR, name="ir") as i_r:
                            rows, cols = _min(b, _c64(MR), b.sub(mc, i_r)), _min(b, _c64(NR), b.sub(nc, jr))
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
                            b.call(micro, [b.gep(Ap, [b.add(b.mul(i_r, kc), b.mul(off, _c64(MR)))]),
                                           b.gep(Bp, [b.add(b.mul(jr, kc), b.mul(off, _c64(NR)))]), ctile, klen, N,
                                           rows, cols, accumulate])  # fmt: skip
        b.ret_void()
        self._mm_fn = fn
        return fn

    def _pack_fn(self, which: str) -> ir.Function:
        """dst[p][k][w] = src[k * s_k + (p * W + w) * s_w] (zero past `n`): A with W = MR
        (s_w = row stride), B with W = NR (s_w = column stride)."""
        W = MR if which == "a" else NR
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
        """C[0:rows, 0:cols] (+)= Ap[kc][MR] @ Bp[kc][NR]: MR x NR/4 vector accumulators."""
        fn = ir.Function(self.mod, ir.FunctionType(VOID, [PF32, PF32, PF32, I64, I64, I64, I64, ir.IntType(1)]), name="tgc_micro")
        fn.linkage = "internal"
        for a in fn.args[:3]:
            a.add_attribute("noalias")
        Ap, Bp, C, kc, ldc, rows, cols, accumulate = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        nv = NR // 4
        accs = [[b.alloca(V4) for _ in range(nv)] for _ in range(MR)]
        zero = ir.Constant(V4, [0.0] * 4)
        for row in accs:
            for a in row:
                b.store(zero, a)
        with loop(b, kc, name="k") as kk:
            bvec = [b.load(b.bitcast(b.gep(Bp, [b.add(b.mul(kk, _c64(NR)), _c64(4 * q))]), V4.as_pointer()), align=16) for q in range(nv)]
            arow = b.load(b.bitcast(b.gep(Ap, [b.mul(kk, _c64(MR))]), V4.as_pointer()), align=16)
            for i in range(MR):  # lane i of A's column, broadcast (one pshufd)
                ai = b.shuffle_vector(arow, ir.Constant(V4, ir.Undefined), ir.Constant(ir.VectorType(I32, 4), [i] * 4))
                for q in range(nv):
                    b.store(b.fadd(b.load(accs[i][q]), b.fmul(ai, bvec[q])), accs[i][q])
        full = b.and_(b.icmp_signed("==", rows, _c64(MR)), b.icmp_signed("==", cols, _c64(NR)))
        with b.if_else(full) as (then, other):
            with then:
                for i in range(MR):
                    for q in range(nv):
                        p = b.bitcast(b.gep(C, [b.add(b.mul(_c64(i), ldc), _c64(4 * q))]), V4.as_pointer())
                        v = b.load(accs[i][q])
                        old = b.load(p, align=4)
                        b.store(b.select(accumulate, b.fadd(old, v), v), p, align=4)
            with other:  # an edge tile: spill the tile to the stack, copy the part inside C
                tile = b.alloca(ir.ArrayType(F32, MR * NR))
                tp = b.bitcast(tile, PF32)
                for i in range(MR):
                    for q in range(nv):
                        b.store(b.load(accs[i][q]), b.bitcast(b.gep(tp, [_c64(i * NR + 4 * q)]), V4.as_pointer()), align=4)
                with loop(b, rows, name="ei") as ei:
                    with loop(b, cols, name="ej") as ej:
                        v = b.load(b.gep(tp, [b.add(b.mul(ei, _c64(NR)), ej)]))
                        p = b.gep(C, [b.add(b.mul(ei, ldc), ej)])
                        b.store(b.select(accumulate, b.fadd(b.load(p), v), v), p)
        b.ret_void()
        return fn

    # ---- programs
    def program(self, pname: str, kernels: list[Kernel], layout: Layout) -> str:
        calls = []
        for k in kernels:
            fn, tensors = self.kernel(k, layout, f"{pname}.{k.name}")
            calls.append((fn, tensors))
        wrappers = [(pname, calls)] + ([(f"{pname}#{i}", [c]) for i, c in enumerate(calls)] if self.profile else [])
        for export, body in wrappers:  # with profile: one export per kernel too, for timing
            fn = ir.Function(self.mod, ir.FunctionType(VOID, []), name=export)
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            for kfn, tensors in body:
                b.call(kfn, [b.inttoptr(_c64(layout.wasm_address(t)), a.type) for t, a in zip(tensors, kfn.args)])
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


def layout_top(layouts: dict[str, Layout]) -> int:
    lay = next(iter(layouts.values()))
    top = max([lay.wasm_base[b] + size for b, size in lay.buffers.items()] + [lay.wasm_base[UNIFORM_BLOCK] + 256])
    return -(-top // 65536) * 65536


def build(schedules: dict, layouts: dict[str, Layout], out_dir, dump_dir=None, programs=None, profile=False) -> dict:
    """Render, optimize, link: writes out_dir/model.wasm; returns the manifest's "wasm" section."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = layout_top(layouts)
    gen = ModuleGen(scratch, profile)
    exports = {}
    for pname in programs or schedules:
        exports[pname] = gen.program(pname, schedules[pname].kernels, layouts[pname])
    obj, text, opt = gen.compile()
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / "model.ll").write_text(text)
        (Path(dump_dir) / "model.opt.ll").write_text(opt)
    kernel_exports = {p: [f"{p}#{i}" for i in range(len(schedules[p].kernels))] for p in exports} if profile else {}
    link(obj, list(exports.values()) + sum(kernel_exports.values(), []), out_dir / "model.wasm")
    lay = next(iter(layouts.values()))
    return {
        "file": "model.wasm",
        "memory_bytes": scratch + SCRATCH_BYTES,
        "memory64": True,
        "exports": exports,
        "kernel_exports": kernel_exports,
        "buffers": {name: lay.wasm_base[name] for name in lay.buffers},
        "uniforms_address": lay.wasm_base[UNIFORM_BLOCK],
        "scratch": {"address": scratch, "bytes": SCRATCH_BYTES},
        "heap_base": HEAP_BASE,
    }


def emit(compiled, manifest: dict, out_dir, dump_dir=None) -> dict:
    from tgc.compiler import PROGRAM_ORDER

    return build(compiled.schedules, compiled.layouts, out_dir, dump_dir, [p for p in PROGRAM_ORDER if p in compiled.schedules])


def build_kernels(kernels: list[Kernel], tensors: dict, out_dir, base: int = HEAP_BASE, uniforms: dict | None = None, program: str = "run") -> Path:
    """A standalone artifact of one program running `kernels` over `tensors` (name ->
    (shape, dtype)), each in its own buffer from byte address `base` (past 4 GiB if asked):
    how tests and benchmarks exercise single kernels through the real runtime."""
    import json

    from tgc.ir.schedule import Schedule, TensorInfo

    uniforms = uniforms or {}
    addr, places, sizes, wasm_base = base + 256, {}, {}, {UNIFORM_BLOCK: base}
    for name, (shape, _) in tensors.items():
        places[name], sizes[name], wasm_base[name] = (name, 0), 4 * math.prod(shape), addr
        addr += -(-max(sizes[name], 256) // 256) * 256
    ufields = {u: (4 * i, dt) for i, (u, dt) in enumerate(uniforms.items())}
    lay = Layout(program, places, sizes, ufields, 256, wasm_base, {n: dt for n, (_, dt) in tensors.items()})
    infos = {n: TensorInfo(n, tuple(s), dt, "input") for n, (s, dt) in tensors.items()}
    sched = Schedule(program, kernels, infos, {}, {}, dict(uniforms))
    out_dir = Path(out_dir)
    section = build({program: sched}, {program: lay}, out_dir)
    manifest = {
        "format": "tgc-artifact",
        "tensors": [{"name": n, "shape": list(s), "dtype": dt, "role": "input", "buffer": n, "offset": 0} for n, (s, dt) in tensors.items()],
        "uniforms": {"size": 256, "fields": {u: {"offset": o, "dtype": dt} for u, (o, dt) in ufields.items()}},
        "programs": {program: {"inputs": [], "uniforms": sorted(uniforms), "outputs": {}, "updates": []}},
        "wasm": section,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out_dir
