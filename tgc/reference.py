"""The reference runtime: runs a compiled model's programs in the numpy interpreter.

Same interface as the WebGPU and WebAssembly runtimes (tgc/runtime/base.py), but it
takes the in-memory compilation (it interprets the IR programs, which is what the
targets are checked against) instead of an artifact directory. Slow; for tests,
parity and debugging (`--backend numpy`).
"""

from __future__ import annotations

import numpy as np

from tgc.ir.interp import run_program
from tgc.runtime.base import initial_state


class ReferenceRuntime:
    backend = "numpy"

    def __init__(self, compiled):
        self.compiled = compiled
        self.manifest = compiled.manifest.to_json()  # the artifact's manifest, as the other runtimes see it
        self.state: dict[str, np.ndarray] = {}

    def write(self, name: str, value) -> None:
        self.state[name] = np.array(value, copy=True)

    def read(self, name: str) -> np.ndarray:
        return self.state[name].copy()

    def init_state(self, seed: int = 0) -> None:
        self.state.update(initial_state(self.manifest, seed))

    def run(self, program: str, inputs: dict | None = None, uniforms: dict | None = None, read=None) -> dict:
        env = dict(self.state)
        env.update(inputs or {})
        env.update(uniforms or {})
        outs, upd = run_program(self.compiled.programs[program], env)
        self.state.update(upd)
        names = read if read is not None else (["loss"] if program == "train_step" else list(outs))
        return {k: outs[k] for k in names}
