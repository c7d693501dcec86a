"""The artifact cache and compile-on-demand: the product layer between the compiler and the runtimes.

    d = compiled_artifact(source, preset, overrides, log=print)   # compile once, reuse after
    rt, compiled = runtime_for(source, preset, overrides, backend="auto")
    rt = open_artifact(d, backend)                                  # any backend, numpy included

Artifacts are cached under $TGC_CACHE_DIR/artifacts/<hash of model text, preset,
overrides, training defaults, tgc version and the compiler's own code> (default
~/.cache/tgc). A prebuilt artifact shipped beside a checkpoint (a gallery model's
artifact/, written by `tgc export`) stands in for the cache when its KEY file holds the
very key this installation computes and its model.wasm is the one its manifest names:
a first `tgc generate` from a gallery model then compiles nothing. A compile
writes into a temporary directory beside its final place and is renamed in when it
succeeds; a failed compile leaves nothing behind. The runtimes (tgc/runtime/) never
import the compiler: this module is where the two meet. The numpy backend interprets
the compiler's IR, so it needs the in-memory compilation, which is kept here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from tgc.errors import TgcError

_COMPILED: dict = {}  # artifact key -> Compiled, for the numpy backend
# What `tgc generate` compiles (batch 1): a generation artifact holds these programs only.
# (Named here, not taken from tgc.ir.program, so that a cache hit never imports the compiler.)
GENERATE_PROGRAMS = ("forward", "prefill", "decode_step")


def cache_root() -> Path:
    return Path(os.environ.get("TGC_CACHE_DIR") or Path.home() / ".cache" / "tgc")


# The code an artifact's content depends on (relative to the package): the front end, the
# IR and its passes, the code generators, the driver and manifest writer, the linker's
# invocation and the presets. The product layer (cli, train, generate, runtimes, gallery)
# is left out, so that changing it does not turn every cached or shipped artifact stale.
COMPILER_CODE = ("frontend", "ir", "codegen", "compiler.py", "artifact.py", "artifact.schema.json", "toolchain.py",
                 "presets.py", "__init__.py")
PREBUILT_KEY = "KEY"  # the file of a shipped artifact that holds its cache key
PREBUILT_DIR = "artifact"  # where a checkpoint directory ships its prebuilt generation artifact


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of the compiler's code (COMPILER_CODE: every .py, .lark and .json file there):
    an artifact compiled by other code is never reused, even under the same version number
    (an editable install changes without one)."""
    root = Path(__file__).resolve().parent
    files = []
    for part in COMPILER_CODE:
        p = root / part
        files += [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in (".py", ".lark", ".json")
                                          and "__pycache__" not in f.parts]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def artifact_key(source: str, preset: str, overrides: dict, only=None) -> str:
    """The cache key; `only` (the programs of a partial artifact) is part of it, None (all) is not."""
    from tgc import __version__, presets

    parts = [source, preset, json.dumps(overrides, sort_keys=True), json.dumps(presets.train_defaults(), sort_keys=True),
             __version__, compiler_fingerprint()]
    if only is not None:
        parts.append(",".join(only))
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def prebuilt_matches(d: Path, key: str) -> bool:
    """Whether the shipped artifact in `d` was compiled for `key` (its KEY file) and its
    model.wasm is the file its manifest names (sha256)."""
    try:
        if (d / PREBUILT_KEY).read_text().strip() != key:
            return False
        w = json.loads((d / "manifest.json").read_text()).get("wasm")
        return not w or hashlib.sha256((d / w["file"]).read_bytes()).hexdigest() == w["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return False


def compiled_artifact(source: str, preset: str | None, overrides: dict, log=None, filename: str = "model.tg",
                      only=None, prebuilt=None) -> Path:
    """The cached artifact directory of `source` (DSL text; errors name `filename`) for a
    preset + overrides, compiled (both targets) if it is not there yet. `only`: compile just
    these programs (GENERATE_PROGRAMS for generation, a fraction of the full compile).
    `prebuilt`: a shipped artifact directory, used as it is where it matches (prebuilt_matches)."""
    preset = preset or "tiny"  # a checkpoint with no preset sets every field through overrides
    key = artifact_key(source, preset, overrides, only)
    d = cache_root() / "artifacts" / key
    if (d / "manifest.json").exists():
        return d
    if prebuilt is not None and prebuilt_matches(Path(prebuilt), key):
        return Path(prebuilt)
    from tgc.compiler import PROGRAMS, compile_model  # only now: importing the compiler takes a second

    targets = ("wgsl", "wasm")
    try:
        from tgc.toolchain import find_wasm_ld

        find_wasm_ld()
    except TgcError as e:  # a machine without a linker (a GPU box) still runs WebGPU
        targets = ("wgsl",)
        if log:
            log(f"note: {e.message}; compiling the WebGPU kernels only")
    if log:
        log(f"compiling {preset} {overrides} -> {d}")
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "model.tg").write_text(source)
        compile_model(None, preset=preset, out=tmp, targets=targets, overrides=overrides, source=source,
                      filename=filename, only=tuple(only or PROGRAMS))
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def _compiled_for(source: str, preset: str, overrides: dict, filename: str = "model.tg", only=None):
    """The in-memory compilation (no code generation) the numpy backend interprets."""
    from tgc.compiler import PROGRAMS, compile_model

    key = artifact_key(source, preset, overrides, only)
    hit = _COMPILED.get(key)
    if hit is None:
        hit = _COMPILED[key] = compile_model(None, preset, targets=(), overrides=overrides, source=source,
                                             filename=filename, only=tuple(only or PROGRAMS))
    return hit


def reference_runtime(compiled):
    from tgc.reference import ReferenceRuntime

    return ReferenceRuntime(compiled)


def open_artifact(artifact_dir, backend: str = "auto", compiled=None):
    """A runtime of any backend for an artifact directory; the numpy backend recompiles the
    artifact's model.tg (or uses `compiled`), the others only read the artifact."""
    from tgc.runtime import choose_backend, load_manifest, open_runtime

    d = Path(artifact_dir)
    manifest = load_manifest(d)
    if choose_backend(backend, manifest) != "numpy":
        return open_runtime(d, backend)
    if compiled is None:
        m = manifest["model"]
        src = d / "model.tg"
        source = src.read_text() if src.exists() else _default_source()
        compiled = _compiled_for(source, m.get("preset") or "tiny", {**m["config"], "batch": m["batch"]})
    return reference_runtime(compiled)


def _default_source() -> str:
    from tgc import presets

    return presets.default_model_path().read_text()


def runtime_for(source: str, preset: str | None, overrides: dict, backend: str = "auto", log=None,
                filename: str = "model.tg", programs=None, only=None, prebuilt=None):
    """Compile `source` for a preset + overrides into the artifact cache (or reuse it) and
    open a runtime on it, ready to run `programs` at once (WebGPU builds their pipelines
    up front; the time is logged); `only`: the artifact holds just these programs.
    Returns (runtime, compiled or None)."""
    from tgc.runtime import choose_backend, open_runtime

    preset = preset or "tiny"
    if choose_backend(backend, None) == "numpy":
        compiled = _compiled_for(source, preset, overrides, filename, only)
        return reference_runtime(compiled), compiled
    rt = open_runtime(compiled_artifact(source, preset, overrides, log, filename, only, prebuilt), backend)
    if programs:
        n = len({k for p in programs for k, _ in rt.art.programs[p].launches})
        dt = rt.prepare(programs)
        if log and dt > 0:
            log(f"{rt.backend}: {n} pipelines for {', '.join(programs)} ready in {dt:.2f}s")
    return rt, None


def write_prebuilt(source: str, preset: str | None, overrides: dict, dest, only=GENERATE_PROGRAMS, log=None,
                   filename: str = "model.tg") -> Path:
    """Compile (or take from the cache) the artifact of `source` for preset + overrides and copy
    it to `dest` (replaced as a whole) with its KEY file: a prebuilt artifact to ship."""
    preset = preset or "tiny"
    src = compiled_artifact(source, preset, overrides, log, filename, only)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        (tmp / PREBUILT_KEY).write_text(artifact_key(source, preset, overrides, only) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
