"""What every runtime shares: reading an artifact's manifest and initialising state.

A runtime executes programs from manifest.json and never re-derives what the
compiler decided. Each backend (webgpu.py, wasm.py) implements the same
interface:

    rt = Runtime(artifact_dir)
    rt.write(name, array)            # a persistent tensor: parameter, moment, cache, input
    rt.read(name) -> array           # a persistent tensor
    rt.run(program, inputs={...}, uniforms={...}, read=None) -> {output: array}

`run` writes the inputs and the uniform block, executes every launch of the
program (one submit / one wasm call) and reads back the outputs named in `read`
(default: every output, except train_step, where only `loss` is read).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from tgc import rng
from tgc.artifact import Place, read_manifest
from tgc.errors import TgcError


def load_manifest(artifact_dir) -> dict:
    """The validated manifest.json of an artifact, as plain JSON (tgc/artifact.py)."""
    return read_manifest(artifact_dir).json


def tensor_table(manifest: dict) -> dict[str, dict]:
    return {t["name"]: t for t in manifest["tensors"]}


def init_value(t: dict, seed: int) -> np.ndarray:
    """A parameter's initial value from its init rule and the host RNG (stream = its name)."""
    shape = tuple(t["shape"])
    n = math.prod(shape)
    kind = t["init"][0]
    if kind == "normal":
        return rng.normal(seed, t["name"], n, float(t["init"][1])).reshape(shape)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "ones":
        return np.ones(shape, np.float32)
    raise TgcError(f"unknown init rule {t['init']!r} for {t['name']}")


def initial_state(manifest: dict, seed: int) -> dict[str, np.ndarray]:
    """Parameters from their init rules; AdamW moments and KV caches zero."""
    out = {}
    for t in manifest["tensors"]:
        if t["role"] == "parameter":
            out[t["name"]] = init_value(t, seed)
        elif t["role"] in ("optimizer_state", "kv_cache"):
            out[t["name"]] = np.zeros(t["shape"], np.float32)
    return out


class Runtime:
    """Base class; subclasses implement _write_bytes/_read_bytes/_execute."""

    backend = "?"

    def __init__(self, artifact_dir):
        self.opened_at = time.perf_counter()  # when opening began: products time first step / token from here
        self.dir = Path(artifact_dir)
        self.art = read_manifest(self.dir)  # the typed manifest (tgc/artifact.py)
        self.manifest = self.art.json  # the same, as plain JSON
        self.tensors = tensor_table(self.manifest)

    def _tensor(self, name: str) -> Place:
        t = self.art.tensors.get(name)
        if t is None:
            raise TgcError(f"artifact has no persistent tensor {name!r}")
        return t

    def default_reads(self, program: str) -> list[str]:
        outs = self.art.programs[program].outputs
        return ["loss"] if program == "train_step" else list(outs)

    def prepare(self, programs=None) -> float:
        """Get ready to run `programs` (default: all) without delay at the first run; returns
        the seconds it took (WebGPU builds its pipelines here)."""
        return 0.0

    def init_state(self, seed: int = 0) -> None:
        for name, value in initial_state(self.manifest, seed).items():
            self.write(name, value)
