"""The one comparison helper: max abs and max relative error per tensor, a stated
tolerance, pass/fail. Used by `tgc parity` and the tests.

A tensor passes when max|a - b| <= atol + rtol * max|b| (error measured against
the reference tensor's scale, not element by element: f32 sums in a different
order differ by a few ulps of the *terms*, so an element that cancels to near
zero has a large relative error that means nothing). The per-element max
relative error is reported as well, over elements whose reference magnitude is at
least 1e-3 of the tensor's scale. docs/parity.md gives the tolerances and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Row:
    name: str
    max_abs: float
    max_rel: float
    scale: float
    tol: float
    ok: bool

    def format(self) -> str:
        return f"{self.name:<48} {self.max_abs:>10.3g} {self.max_rel:>10.3g} {self.tol:>10.3g}  {'ok' if self.ok else 'FAIL'}"


HEADER = f"{'tensor':<48} {'max abs':>10} {'max rel':>10} {'tolerance':>10}  result"


def compare(name: str, actual, expected, rtol: float, atol: float = 0.0) -> Row:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return Row(name, float("inf"), float("inf"), 0.0, 0.0, False)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return Row(name, float("nan"), float("nan"), 0.0, 0.0, False)
    err = np.abs(a - b)
    scale = float(np.abs(b).max()) if b.size else 0.0
    big = np.abs(b) >= 1e-3 * scale
    max_rel = float((err[big] / np.abs(b[big])).max()) if big.any() and scale > 0 else 0.0
    tol = atol + rtol * scale
    max_abs = float(err.max()) if err.size else 0.0
    return Row(name, max_abs, max_rel, scale, tol, max_abs <= tol)
