"""The WebAssembly runtime: an artifact's model.wasm in wasmtime, one call per program.

The module imports one 64-bit linear memory; this runtime creates it at the size the
manifest asks for (manifest["wasm"]["memory_bytes"], past 4 GiB when the model needs it)
and reads and writes tensors through numpy views of that memory (no copies of the
memory itself). Every program is one exported function with no arguments: the host
writes inputs and the uniform block, calls it, and reads outputs. Single-threaded.

Not here: anything the compiler decided (addresses, kernel order); building the module
(tgc/codegen/llvm.py).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from tgc import toolchain
from tgc.errors import TgcError
from tgc.runtime.base import Runtime

WASM_PAGE = 65536
_NP = {"f32": np.float32, "i32": np.int32}


def engine():
    """wasmtime with memory64 and SIMD128 (tgc.toolchain.wasm_memory64_engine) and Cranelift's
    Spectre hardening of heap accesses off: it adds a conditional move to every load and
    store (bounds checks stay, out-of-bounds still traps), and the module is tgc's own
    output, not untrusted code. ~10-20% on the matmul; see docs/wasm.md."""
    import wasmtime

    cfg = wasmtime.Config()
    cfg.wasm_memory64 = True
    cfg.wasm_simd = True
    cfg.cranelift_opt_level = "speed"
    cfg.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false")
    return wasmtime.Engine(cfg)


class WasmRuntime(Runtime):
    backend = "wasm"

    def __init__(self, artifact_dir):
        import wasmtime

        super().__init__(artifact_dir)
        w = self.art.wasm
        if w is None:
            raise TgcError(f"{self.dir}: artifact was compiled without the wasm target")
        self.wasm = w
        path = self.dir / w["file"]
        if not path.exists():
            raise TgcError(f"{path}: missing (recompile the artifact)")
        self.engine = engine()
        try:
            self.module = wasmtime.Module.from_file(self.engine, str(path))
        except wasmtime.WasmtimeError as e:
            raise TgcError(f"{path}: not a loadable wasm64 module ({str(e).splitlines()[0]})") from None
        mems = [x for x in self.module.imports if isinstance(x.type, wasmtime.MemoryType)]
        if len(mems) != 1 or not mems[0].type.is_64:
            raise TgcError(f"{path}: expected one imported 64-bit memory (memory64), found {[m.type for m in mems]}")
        self.store = wasmtime.Store(self.engine)
        self.memory_bytes = int(w["memory_bytes"])
        pages = -(-self.memory_bytes // WASM_PAGE)
        try:
            self.memory = wasmtime.Memory(self.store, wasmtime.MemoryType(wasmtime.Limits(pages, None), is_64=True))
        except wasmtime.WasmtimeError as e:
            raise TgcError(f"cannot create a {self.memory_bytes / 2**30:.2f} GiB wasm memory: {e}") from None
        self.instance = wasmtime.Instance(self.store, self.module, [self.memory])
        assert self.memory.type(self.store).is_64, "wasm memory is not 64-bit"
        exports = self.instance.exports(self.store)
        self.functions = {p: exports[name] for p, name in w["exports"].items()}
        self.base = dict(w["buffers"])
        self.uniform_addr = int(w["uniforms_address"])

    @property
    def is_memory64(self) -> bool:
        return bool(self.memory.type(self.store).is_64)

    def view(self, buffer: str, offset: int, shape, dtype: str) -> np.ndarray:
        """A numpy array aliasing a tensor in linear memory (valid while this runtime lives)."""
        n = math.prod(shape)
        v = toolchain.memory_view(self.memory, self.store, self.base[buffer] + offset, n, _NP[dtype])
        return v.reshape(shape)

    def tensor_view(self, name: str, program: str | None = None) -> np.ndarray:
        t = self._tensor(name) if program is None else self.art.place(program, name)
        return self.view(t.buffer, t.offset, t.shape, t.dtype)

    def write(self, name: str, array) -> None:
        t = self._tensor(name)
        a = np.asarray(array)
        if tuple(a.shape) != tuple(t.shape):
            raise TgcError(f"{name}: expected shape {tuple(t.shape)}, got {tuple(a.shape)}")
        self.tensor_view(name)[...] = a.astype(_NP[t.dtype], copy=False)

    def read(self, name: str) -> np.ndarray:
        return self.tensor_view(name).copy()

    def read_tensor(self, program: str, name: str) -> np.ndarray:
        """Any tensor of a program as it is now (arena tensors hold the last run's values
        only until another program reuses the arena)."""
        return self.tensor_view(name, program).copy()

    def set_uniforms(self, values: dict) -> None:
        for name, v in values.items():
            f = self.art.uniforms.get(name)
            if f is None:
                continue  # a uniform no program of this artifact uses
            off, dt = f
            fmt = "<i" if dt == "i32" else "<f"
            raw = np.frombuffer(struct.pack(fmt, int(v) if dt == "i32" else float(v)), np.uint8)
            toolchain.memory_view(self.memory, self.store, self.uniform_addr + off, 4, np.uint8)[:] = raw

    def call(self, program: str) -> None:
        import wasmtime

        fn = self.functions.get(program)
        if fn is None:
            raise TgcError(f"artifact has no program {program!r}")
        try:
            fn(self.store)
        except wasmtime.Trap as e:
            raise TgcError(f"wasm trap in program {program}: {str(e).splitlines()[0]}") from None

    def run(self, program: str, inputs: dict | None = None, uniforms: dict | None = None, read=None) -> dict:
        prog = self.art.programs.get(program)
        if prog is None:
            raise TgcError(f"artifact has no program {program!r}")
        for name, value in (inputs or {}).items():
            self.write(name, value)
        missing = [u for u in prog.uniforms if u not in (uniforms or {})]
        if missing:
            raise TgcError(f"program {program} needs uniforms {missing}")
        self.set_uniforms(uniforms or {})
        self.call(program)
        names = self.default_reads(program) if read is None else read
        outs = {}
        for name in names:
            o = prog.outputs.get(name)
            if o is None:
                raise TgcError(f"program {program} has no output {name!r}")
            outs[name] = self.view(o.buffer, o.offset, o.shape, o.dtype).copy()
        return outs
