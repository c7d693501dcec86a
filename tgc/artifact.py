"""The artifact's manifest: the one module that writes and reads manifest.json.

    m = Manifest(...)                 # built by the compiler driver (tgc/compiler.py) only
    write_manifest(out_dir, m)
    m = read_manifest(artifact_dir)   # every runtime: checks the format version and the JSON Schema

The manifest is plain JSON (docs/artifact.md), the same file the browser runtime
reads; `artifact.schema.json` beside this module is its JSON Schema, shipped in the
package, which both the Python and the browser runtimes validate against. The typed
view here is what the Python runtimes use; `Manifest.json` is the validated JSON
itself. Nothing here knows how the compiler made the artifact, and runtimes import
only this module, never the compiler.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from tgc.errors import TgcError

FORMAT = "tgc-artifact"
VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("artifact.schema.json")


@dataclass(frozen=True)
class Place:
    """Where a tensor lives: `buffer` at byte `offset`."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: str
    offset: int
    role: str = "activation"
    init: tuple | None = None

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)


@dataclass(frozen=True)
class KernelParam:
    dtype: str
    access: str  # "read" | "write" | "read_write"


@dataclass(frozen=True)
class KernelInfo:
    name: str
    kind: str
    params: tuple[KernelParam, ...]
    uniforms: tuple[str, ...]
    decisions: dict
    wgsl: dict | None = None  # file, workgroup_size, dispatch, workgroup_bytes, uniform_binding, chunks


@dataclass
class ProgramInfo:
    name: str
    inputs: list[str]
    uniforms: list[str]
    outputs: dict[str, Place]  # output name -> where it lands
    updates: list[str]
    places: dict[str, Place]  # every non-persistent tensor of the program
    launches: list[tuple[str, tuple[str, ...]]]  # (kernel, tensor bound to each parameter)


@dataclass
class Manifest:
    model: dict
    buffers: dict[str, int]  # name -> size in bytes (kind in buffer_kinds)
    buffer_kinds: dict[str, str]
    uniforms: dict[str, tuple[int, str]]  # name -> (byte offset, dtype)
    uniform_block_size: int
    tensors: dict[str, Place]  # persistent tensors
    memory: dict
    kernels: dict[str, KernelInfo]
    programs: dict[str, ProgramInfo]
    wgsl: dict | None = None
    wasm: dict | None = None
    version: int = VERSION
    json: dict = field(default_factory=dict, repr=False)

    def place(self, program: str | None, tensor: str) -> Place:
        """A tensor's place: persistent, or one of the program's own."""
        p = self.tensors.get(tensor)
        if p is None and program is not None:
            p = self.programs[program].places.get(tensor)
        if p is None:
            raise TgcError(f"artifact has no tensor {tensor!r}" + (f" in program {program}" if program else ""))
        return p

    # ---- JSON
    def to_json(self) -> dict:
        def tensor(p: Place) -> dict:
            d = {"name": p.name, "shape": list(p.shape), "dtype": p.dtype, "role": p.role, "buffer": p.buffer, "offset": p.offset}
            if p.init is not None:
                d["init"] = list(p.init)
            return d

        out = {
            "format": FORMAT,
            "version": self.version,
            "model": self.model,
            "buffers": [{"name": n, "size": s, "kind": self.buffer_kinds[n]} for n, s in self.buffers.items()],
            "uniforms": {"size": self.uniform_block_size,
                         "fields": {n: {"offset": o, "dtype": d} for n, (o, d) in self.uniforms.items()}},
            "tensors": [tensor(p) for p in self.tensors.values()],
            "memory": self.memory,
            "kernels": {k.name: {"kind": k.kind, "params": [{"dtype": p.dtype, "access": p.access} for p in k.params],
                                 "uniforms": list(k.uniforms), "decisions": k.decisions,
                                 **({"wgsl": k.wgsl} if k.wgsl is not None else {})}
                        for k in self.kernels.values()},
            "programs": {p.name: {
                "inputs": p.inputs, "uniforms": p.uniforms,
                "outputs": {o: {"tensor": t.name, "buffer": t.buffer, "offset": t.offset, "shape": list(t.shape),
                                "dtype": t.dtype} for o, t in p.outputs.items()},
                "updates": p.updates,
                "places": {t: [q.buffer, q.offset, list(q.shape), q.dtype] for t, q in p.places.items()},
                "launches": [[k, *ts] for k, ts in p.launches],
            } for p in self.programs.values()},
        }
        if self.wgsl is not None:
            out["wgsl"] = self.wgsl
        if self.wasm is not None:
            out["wasm"] = self.wasm
        return out

    @classmethod
    def from_json(cls, m: dict) -> Manifest:
        tensors = {t["name"]: Place(t["name"], tuple(t["shape"]), t["dtype"], t["buffer"], t["offset"], t["role"],
                                    tuple(t["init"]) if "init" in t else None) for t in m["tensors"]}  # fmt: skip
        kernels = {n: KernelInfo(n, k["kind"], tuple(KernelParam(p["dtype"], p["access"]) for p in k["params"]),
                                 tuple(k["uniforms"]), k["decisions"], k.get("wgsl")) for n, k in m["kernels"].items()}  # fmt: skip
        programs = {}
        for name, p in m["programs"].items():
            places = {t: Place(t, tuple(s), d, b, o) for t, (b, o, s, d) in p["places"].items()}
            outputs = {o: Place(v["tensor"], tuple(v["shape"]), v["dtype"], v["buffer"], v["offset"], "output")
                       for o, v in p["outputs"].items()}  # fmt: skip
            programs[name] = ProgramInfo(name, p["inputs"], p["uniforms"], outputs, p["updates"], places,
                                         [(x[0], tuple(x[1:])) for x in p["launches"]])  # fmt: skip
        return cls(m["model"], {b["name"]: b["size"] for b in m["buffers"]}, {b["name"]: b["kind"] for b in m["buffers"]},
                   {n: (f["offset"], f["dtype"]) for n, f in m["uniforms"]["fields"].items()}, m["uniforms"]["size"],
                   tensors, m["memory"], kernels, programs, m.get("wgsl"), m.get("wasm"), m["version"], m)  # fmt: skip


@functools.cache
def _validator():
    import fastjsonschema

    return fastjsonschema.compile(json.loads(SCHEMA_PATH.read_text()))


def validate(m: dict, where: str = "manifest.json") -> None:
    """TgcError unless `m` is a manifest of this format version that the schema accepts."""
    import fastjsonschema

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TgcError(f"{where}: not a tgc artifact manifest")
    if m.get("version") != VERSION:
        raise TgcError(f"{where}: artifact format version {m.get('version')}, this tgc reads version {VERSION}; "
                       "recompile it (tgc compile)")  # fmt: skip
    try:
        _validator()(m)
    except fastjsonschema.JsonSchemaException as e:
        raise TgcError(f"{where}: does not match the artifact schema ({e.message})") from None


def write_manifest(out_dir, manifest: Manifest) -> Path:
    """Write manifest.json atomically (compact JSON); the compiler driver's job only."""
    m = manifest.to_json()
    validate(m)
    p = Path(out_dir) / "manifest.json"
    tmp = p.with_name(f".manifest.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(m, separators=(",", ":")))
    tmp.replace(p)
    manifest.json = m
    return p


def read_manifest(artifact_dir) -> Manifest:
    p = Path(artifact_dir) / "manifest.json"
    if not p.exists():
        raise TgcError(f"no manifest.json in {artifact_dir}: not a tgc artifact (run tgc compile)")
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgcError(f"{p}: corrupt manifest ({e})") from None
    validate(m, str(p))
    return Manifest.from_json(m)
