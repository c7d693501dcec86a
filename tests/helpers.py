"""What several test files share: running the command line in-process, checking that an error is
one line, fingerprints of directories, and the one comparison helper (built on tgc/compare.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from pathlib import Path

import numpy as np

from tgc.compare import compare


def run_cli(*argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tgc ARGV...`, run in this process."""
    from tgc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help, --version, usage errors
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


DSL_ERROR = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+):(?P<col>\d+): error: [^\n]+$")


def assert_user_error(rc: int, err: str, match: str | None = None) -> str:
    """Exit 2 and one line on stderr: `error: ...`, or a DSL error `FILE:LINE:COL: error: ...`
    followed only by its source excerpt (the line and a caret). Returns the first line."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    first = lines[0]
    if first.startswith("error: "):
        assert len(lines) == 1, err
    else:
        assert DSL_ERROR.match(first), err
        assert len(lines) <= 3 and (len(lines) < 3 or lines[2].strip() == "^"), err
    if match is not None:
        assert re.search(match, first), (match, first)
    return first


def tree_digest(d: Path) -> dict[str, str]:
    """Path -> sha256 of every file under `d` and of its save siblings (.NAME.tgc-new/-old)."""
    d = Path(d)
    roots = [d] + [p for p in d.parent.glob(f".{d.name}.tgc-*")]
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else []:
            if p.is_file():
                out[str(p.relative_to(d.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_close(got, want, rtol: float, atol: float = 1e-6, name: str = "") -> None:
    """The one comparison helper, for every test: shape exact and the same kind of dtype; integer
    tensors equal; non-finite values exactly where the reference has them; then tgc.compare's
    rule over the finite elements, max|got - want| <= atol + rtol * max|want| (error against
    the reference tensor's scale), with max abs and max relative error in the message."""
    a, b = np.asarray(got), np.asarray(want)
    assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if b.dtype.kind in "iub":
        np.testing.assert_array_equal(a, b, err_msg=name)
        return
    fa, fb = np.isfinite(a), np.isfinite(b)
    assert (fa == fb).all() and np.array_equal(a[~fb], b[~fb], equal_nan=True), f"{name}: non-finite values differ"
    if not fb.any():
        return
    row = compare(name, a[fb], b[fb], rtol, atol)
    assert row.ok, (f"{name}: max abs err {row.max_abs:.3g}, max rel err {row.max_rel:.3g} > tolerance {row.tol:.3g} "
                    f"(rtol {rtol}, atol {atol}, scale {row.scale:.3g})")
