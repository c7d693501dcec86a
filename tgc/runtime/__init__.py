"""Runtimes that execute a compiled artifact (manifest.json + kernels + model.wasm): WebGPU via wgpu,
WebAssembly via wasmtime; picking one.

    rt = open_runtime(artifact_dir, backend="auto")     # "auto" | "webgpu" | "wasm"

"auto" takes WebGPU only on a real GPU adapter (discrete or integrated; a CPU adapter such
as lavapipe is for tests, not speed), else WebAssembly. The backend modules are imported
only when chosen. This package reads artifacts and never imports the compiler: compiling
on demand, the artifact cache and the numpy reference (which interprets the compiler's
IR) live in tgc/artifacts.py.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import sys
import tempfile

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


# On Linux every GPU that Vulkan drives has a device node (DRM render nodes, NVIDIA's, AMD's
# compute node, WSL's); lavapipe needs none, but it is no real GPU.
GPU_DEVICE_NODES = ("/dev/dri/*", "/dev/nvidia*", "/dev/kfd", "/dev/dxg")


def no_gpu_device() -> bool:
    """True on Linux when no GPU device node exists: there is no real GPU, and `auto` can say so
    without loading wgpu (about 1.5 s of a 2-core machine: cffi parses its headers)."""
    return sys.platform.startswith("linux") and not any(glob.glob(p) for p in GPU_DEVICE_NODES)


def real_gpu() -> bool:
    if no_gpu_device():
        return False
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


def load_manifest(artifact_dir) -> dict:
    from tgc.runtime.base import load_manifest as load

    return load(artifact_dir)


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


def open_runtime(artifact_dir, backend: str = "auto"):
    """A WebGPU or WebAssembly runtime for the artifact in `artifact_dir` (the numpy
    backend interprets the compiler's IR: tgc.artifacts.open_artifact opens it)."""
    manifest = load_manifest(artifact_dir)
    backend = choose_backend(backend, manifest)
    if backend == "numpy":
        raise TgcError("the numpy backend interprets the compiler's IR, not an artifact: "
                       "open it with tgc.artifacts.open_artifact")
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
