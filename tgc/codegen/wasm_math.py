"""Math functions for wasm, which has no transcendental instructions: exp, log, tanh, cos and sin as
branch-free LLVM IR (erf is defined once for every target in tgc/ir/kmath.py).

Each is an internal, always-inlined function, so loops that call it still vectorize.
The accuracy of each is measured in tests/test_wasm.py and stated in docs/wasm.md.
"""

from __future__ import annotations

import math

from llvmlite import ir

from tgc.ir.ops import Op

F32, I32 = ir.FloatType(), ir.IntType(32)
MAGIC, MAGIC_BITS = 12582912.0, 0x4B400000  # 1.5 * 2^23: x + MAGIC rounds x to an integer (|x| < 2^22)


def _cf(v) -> ir.Constant:
    return ir.Constant(F32, float(v))


class MathLib:
    """f32 exp/log/tanh/cos/sin as internal, branch-free, always-inlined LLVM functions, so
    that loops calling them still vectorize. Max errors measured in tests/test_wasm.py."""

    # Cephes expf/logf/sinf/cosf minimax coefficients; tanh's small branch is a least-squares fit
    # on Chebyshev nodes (f64 reference, then rounded to f32), see docs/wasm.md.
    EXP = [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4]
    LOG = [3.3333331174e-1, -2.4999993993e-1, 2.0000714765e-1, -1.6668057665e-1, 1.4249322787e-1,
           -1.2420140846e-1, 1.1676998740e-1, -1.1514610310e-1, 7.0376836292e-2]  # fmt: skip
    SIN = [-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4]
    COS = [4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5]
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

    def _cos(self, b, x):
        return self._quadrant(b, x, 0)

    def _sin(self, b, x):
        return self._quadrant(b, x, 3)  # sin(x) = cos(x + 3 pi/2): the same reduction, quadrant + 3

    def _quadrant(self, b, x, shift):
        # n = round(x / (pi/2)), r = x - n pi/2 in three parts (Cody-Waite); quadrant picks +-sin/cos
        n = self._round(b, b.fmul(x, _cf(2 / math.pi)))
        r = x
        for c in (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8):
            r = b.fsub(r, b.fmul(n, _cf(c)))
        z = b.fmul(r, r)
        s = b.fadd(b.fmul(b.fmul(self._poly(b, z, self.SIN), z), r), r)
        c = b.fadd(b.fsub(b.fmul(b.fmul(self._poly(b, z, self.COS), z), z), b.fmul(z, _cf(0.5))), _cf(1.0))
        q = b.and_(b.add(b.fptosi(n, I32), ir.Constant(I32, shift)), ir.Constant(I32, 3))
        odd = b.icmp_unsigned("==", b.and_(q, ir.Constant(I32, 1)), ir.Constant(I32, 0))
        v = b.select(odd, c, s)
        neg = b.icmp_unsigned("==", b.and_(b.add(q, ir.Constant(I32, 1)), ir.Constant(I32, 2)), ir.Constant(I32, 2))
        return b.select(neg, b.fneg(v), v)
