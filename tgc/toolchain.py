"""External tools the compiler and runtimes need: wasm-ld, and a wasmtime engine for wasm64.

What is here: finding a wasm-ld to run (pip's ziglang first, then an lld on PATH), a
wasmtime Engine with memory64 and SIMD on, and a zero-copy numpy view of a wasm memory
(offsets past 4 GiB included). What is not: building LLVM IR or linking an artifact
(tgc/codegen), or running programs (tgc/runtime). docs/toolchain.md has the recipe.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import sys

import numpy as np

from tgc.errors import TgcError

_PATH_CANDIDATES = ("wasm-ld", "wasm-ld-19", "wasm-ld-18")


def _runs(cmd: list[str]) -> bool:
    try:
        r = subprocess.run([*cmd, "--version"], check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and b"LLD" in r.stdout + r.stderr


@functools.cache
def find_wasm_ld() -> list[str]:
    """The command (argv prefix) that runs wasm-ld; raises TgcError when there is none."""
    candidates = [[sys.executable, "-m", "ziglang", "wasm-ld"]]
    candidates += [[p] for name in _PATH_CANDIDATES if (p := shutil.which(name))]
    for cmd in candidates:
        if _runs(cmd):
            return cmd
    raise TgcError("wasm-ld not found: pip install ziglang (or install lld)")


def wasm_memory64_engine():
    """A wasmtime Engine that accepts wasm64 modules (64-bit memories) using SIMD128."""
    import wasmtime

    cfg = wasmtime.Config()
    cfg.wasm_memory64 = True
    cfg.wasm_simd = True
    return wasmtime.Engine(cfg)


def memory_view(memory, store, offset: int, count: int, dtype=np.float32) -> np.ndarray:
    """A numpy array aliasing `count` elements of a wasmtime Memory at byte `offset`; no copy.

    The view dangles once the memory grows (the base may move): take views after sizing.
    """
    dtype = np.dtype(dtype)
    end = offset + count * dtype.itemsize
    if offset < 0 or end > memory.data_len(store):
        raise ValueError(f"bytes [{offset}, {end}) outside a memory of {memory.data_len(store)} bytes")
    base = ctypes.addressof(memory.data_ptr(store).contents)
    raw = (ctypes.c_ubyte * (end - offset)).from_address(base + offset)
    return np.frombuffer(raw, dtype=dtype, count=count)
