"""Math functions written once, as kernel-IR expressions, for every target.

WGSL has no erf and wasm has no transcendental instructions at all; rather than one
approximation per renderer, erf is defined here as a kernel-IR expression of one
argument (`ARG`), and each renderer emits it as a function of its own language from
this one definition (tgc/codegen/wgsl.py, tgc/codegen/llvm.py). exp, log, tanh, cos
and sqrt are builtins in WGSL and branch-free LLVM helpers for wasm
(tgc/codegen/wasm_math.py).

erf: |x| < 1: x P(x^2), a least-squares fit on Chebyshev nodes; 1 <= |x| <= 3.92:
1 - erfc(|x|) with erfc a rational fit P(s)/Q(s) in s = |x| - 2.46 (no exp: erfc <= 0.16
there, so its few-ulp relative error is small against 1); beyond 3.92, f32(erf) is
+-1. Measured max error 2.7 ulp (tests/test_wasm.py, docs/wasm.md).
"""

from __future__ import annotations

from tgc.ir.kernel import KExpr, const
from tgc.ir.ops import Op

ARG = KExpr(Op.INPUT, "f32", (), "x")  # the function's argument

ERF_SMALL = [1.1283791065216064, -0.3761262595653534, 0.11283597350120544, -0.02685432881116867,
             0.005189312156289816, -0.0008018855005502701, 7.882497448008507e-05]  # fmt: skip
ERFC_CENTER, ERF_ONE = 2.46, 3.92  # past 3.92, f32(erf) is 1
ERFC_P = [0.0005033346242271364, -0.0019898382015526295, 0.00349888252094388, -0.0035168053582310677,
          0.0021304083056747913, -0.0007323437603190541, 0.00011016503412974998]  # fmt: skip
ERFC_Q = [1.0, 1.3239656686782837, 0.9544782042503357, 0.39409738779067993, 0.0932619571685791,
          0.009191928431391716]  # fmt: skip


def _f(op, *srcs):
    return KExpr(op, "f32", tuple(srcs))


def _c(v):
    return const(v, "f32")


def _poly(x, coeffs):  # Horner, coefficients lowest degree first
    y = _c(coeffs[-1])
    for c in coeffs[-2::-1]:
        y = _f(Op.ADD, _f(Op.MUL, y, x), _c(c))
    return y


def _where(cond, a, b):
    return KExpr(Op.WHERE, "f32", (cond, a, b))


def erf(x: KExpr = ARG) -> KExpr:
    a = _f(Op.MAX, x, _f(Op.NEG, x))  # |x|
    small = _f(Op.MUL, _poly(_f(Op.MUL, x, x), ERF_SMALL), x)
    ac = _f(Op.MIN, a, _c(ERF_ONE))
    s = _f(Op.SUB, ac, _c(ERFC_CENTER))
    t = _f(Op.SUB, _c(1.0), _f(Op.DIV, _poly(s, ERFC_P), _poly(s, ERFC_Q)))
    t = _where(_f(Op.CMPLT, _c(ERF_ONE), a), _c(1.0), t)
    big = _where(_f(Op.CMPLT, x, _c(0.0)), _f(Op.NEG, t), t)
    return _where(_f(Op.CMPLT, a, _c(1.0)), small, big)


# op -> its one-argument definition; renderers emit each as a function named tgc_<op>
FUNCTIONS = {Op.ERF: erf()}
