"""Executed WebAssembly instructions of one train_step, counted by wasmtime's fuel: a
load-independent measure of the generated code's work, for comparing two commits on a busy
machine where wall-clock times are noise.

    python benchmarks/wasm_instructions.py PRESET [PRESET ...]

Run it from each commit's checkout (its own tgc); it prints one line per preset. The count
is of wasm instructions (wasmtime charges one unit of fuel per instruction), not of machine
instructions or time: equal counts say the code does the same work, not that it runs as fast.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import wasmtime

sys.path.insert(0, str(Path.cwd()))

FUEL = 10**15


def _counting():
    """Every wasmtime Config counts fuel; every Store starts with plenty."""
    config_init, store_init = wasmtime.Config.__init__, wasmtime.Store.__init__

    def cfg(self, *a, **k):
        config_init(self, *a, **k)
        self.consume_fuel = True

    def store(self, *a, **k):
        store_init(self, *a, **k)
        self.set_fuel(FUEL)

    wasmtime.Config.__init__, wasmtime.Store.__init__ = cfg, store


def count(preset: str) -> int:
    from tgc.compiler import compile_model
    from tgc.runtime.wasm import WasmRuntime

    with tempfile.TemporaryDirectory() as d:
        c = compile_model(None, preset, out=d, targets=("wasm",))
        rt = WasmRuntime(d)
        rt.init_state(0)
        B, T = c.batch, c.config["ctx"]
        batch = {"idx": np.zeros((B, T), np.int32), "targets": np.ones((B, T), np.int32)}
        uni = {"step": 1.0, "lr": 1e-3, "warmup": 1.0, "total_steps": 10.0}
        rt.run("train_step", batch, uni)  # the first call may set things up
        before = rt.store.get_fuel()
        rt.run("train_step", batch, {**uni, "step": 2.0})
        return before - rt.store.get_fuel()


def main(argv=None) -> int:
    _counting()
    for preset in (argv if argv is not None else sys.argv[1:]) or ["small"]:
        print(f"{preset}: {count(preset):,} wasm instructions per train_step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
