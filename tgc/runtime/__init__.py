"""Runtimes that execute a compiled artifact (manifest.json + kernels + model.wasm): WebGPU via wgpu,
WebAssembly via wasmtime, and the numpy reference interpreter; picking one, and the artifact cache.

    rt = open_runtime(artifact_dir, backend="auto")     # "auto" | "webgpu" | "wasm" | "numpy"
    rt, compiled = runtime_for(source, preset, overrides, backend="auto")   # compile (cached) + open

"auto" takes WebGPU only on a real GPU adapter (discrete or integrated; a CPU adapter such
as lavapipe is for tests, not speed), else WebAssembly, else -- while a build lacks the
wasm runtime -- the numpy reference. The backend modules are imported only when chosen.
Compiled artifacts are cached under $TGC_CACHE_DIR/artifacts/<hash of model text, preset,
overrides and tgc version> (default ~/.cache/tgc).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tgc.errors import TgcError

BACKENDS = ("auto", "webgpu", "wasm", "numpy")
# backend -> (module, class, the manifest section its code lives in)
_MODULES = {"webgpu": ("tgc.runtime.webgpu", "WebGPURuntime", "wgsl"), "wasm": ("tgc.runtime.wasm", "WasmRuntime", "wasm")}


def quiet_vulkan_loader() -> None:
    """Mesa's Vulkan loader prints an error to stderr when XDG_RUNTIME_DIR is unset
    (containers, CI); give it a private directory before wgpu loads it."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        d = os.path.join(tempfile.gettempdir(), f"tgc-xdg-{os.getuid()}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = d


@functools.cache
def gpu_adapter() -> tuple[dict | None, str]:
    """(adapter info, why not): one wgpu probe per process; info is None when there is no adapter."""
    quiet_vulkan_loader()
    try:
        import wgpu

        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:  # noqa: BLE001 -- no wgpu, no Vulkan loader, no driver: all mean "no adapter"
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if adapter is None:
        return None, "wgpu found no adapter"
    return dict(adapter.info), ""


def real_gpu() -> bool:
    info, _ = gpu_adapter()
    return info is not None and info.get("adapter_type") in ("DiscreteGPU", "IntegratedGPU")


def _module_available(backend: str) -> bool:
    try:
        importlib.import_module(_MODULES[backend][0])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("tgc."):
            return False
        raise
    return True


def _read_manifest(artifact_dir) -> dict:
    from tgc.runtime.base import load_manifest

    return load_manifest(artifact_dir)


def choose_backend(backend: str, manifest: dict | None = None) -> str:
    """The backend `backend` resolves to; TgcError for an unknown or unavailable one."""
    if backend not in BACKENDS:
        raise TgcError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    has = (lambda b: manifest is None or _MODULES[b][2] in manifest)
    if real_gpu() and has("webgpu") and _module_available("webgpu"):
        return "webgpu"
    if has("wasm") and _module_available("wasm"):
        return "wasm"
    return "numpy"


def open_runtime(artifact_dir, backend: str = "auto", compiled=None):
    """A runtime for the artifact in `artifact_dir`. The numpy backend interprets the IR: it
    uses `compiled` when given, else recompiles the artifact's model.tg (or the packaged gpt.tg)."""
    manifest = _read_manifest(artifact_dir)
    backend = choose_backend(backend, manifest)
    if backend == "numpy":
        from tgc.runtime.reference import ReferenceRuntime

        if compiled is None:
            compiled = _compile_from_manifest(Path(artifact_dir), manifest)
        return ReferenceRuntime(compiled)
    module, cls, section = _MODULES[backend]
    if not _module_available(backend):
        raise TgcError(f"the {backend} backend is not available in this build of tgc ({module} is missing)")
    if section not in manifest:
        raise TgcError(f"artifact {artifact_dir} has no {section} code (its code generator was not available "
                       "when it was compiled); recompile it or use another --backend")
    if backend == "webgpu" and gpu_adapter()[0] is None:
        raise TgcError(f"no WebGPU adapter ({gpu_adapter()[1]}); install a GPU driver, or mesa-vulkan-drivers "
                       "for the lavapipe CPU adapter, or use --backend wasm")
    return getattr(importlib.import_module(module), cls)(artifact_dir)


def _compile_from_manifest(d: Path, manifest: dict):
    from tgc.compiler import compile_model

    m = manifest["model"]
    src = d / "model.tg"
    return compile_model(src if src.exists() else None, preset=m.get("preset") or "tiny", targets=(),
                         overrides={**m["config"], "batch": m["batch"]})


# ---- the artifact cache

_COMPILED: dict = {}  # artifact key -> Compiled, for the numpy backend


def cache_root() -> Path:
    return Path(os.environ.get("TGC_CACHE_DIR") or Path.home() / ".cache" / "tgc")


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of tgc's own code (every .py and .lark file of the package): an artifact
    compiled by other code is never reused, even under the same version number (an
    editable install changes without one)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".lark") and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def artifact_key(source: str, preset: str, overrides: dict) -> str:
    from tgc import __version__

    h = hashlib.sha256()
    for part in (source, preset, json.dumps(overrides, sort_keys=True), __version__, compiler_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def runtime_for(source: str, preset: str | None, overrides: dict, backend: str = "auto", log=None):
    """Compile `source` (DSL text) for a preset + overrides into the artifact cache (or reuse
    it) and open a runtime on it. Returns (runtime, compiled or None)."""
    from tgc.compiler import compile_model

    preset = preset or "tiny"  # a checkpoint with no preset sets every field through overrides
    d = cache_root() / "artifacts" / artifact_key(source, preset, overrides)
    backend_name = choose_backend(backend, None)
    if backend_name == "numpy":  # the interpreter needs the in-memory compilation; keep one per process
        compiled = _COMPILED.get(d.name)
        if compiled is None:
            d.mkdir(parents=True, exist_ok=True)
            _write_if_changed(d / "model.tg", source)
            compiled = _COMPILED[d.name] = compile_model(d / "model.tg", preset=preset, targets=(), overrides=overrides)
        return _ReferenceRuntimeFor(compiled), compiled
    want = _MODULES[backend_name][2]
    if not (d / "manifest.json").exists() or (want not in _read_manifest(d) and _codegen_available(want)):
        if log:
            log(f"compiling {preset} {overrides} -> {d}")
        tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "model.tg").write_text(source)
        compile_model(tmp / "model.tg", preset=preset, out=tmp, targets=("wgsl", "wasm"), overrides=overrides)
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    return open_runtime(d, backend), None


def _codegen_available(target: str) -> bool:
    from tgc.compiler import TARGETS

    try:
        importlib.import_module(TARGETS[target])
    except ModuleNotFoundError:
        return False
    return True


def _ReferenceRuntimeFor(compiled):
    from tgc.runtime.reference import ReferenceRuntime

    return ReferenceRuntime(compiled)


def _write_if_changed(p: Path, text: str) -> None:
    if not p.exists() or p.read_text() != text:
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
