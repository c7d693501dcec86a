"""Memory preflight: say what a run needs and what the machine has, and refuse before allocating.

    need = estimate(config, batch, "train")            # from the config alone, before compiling
    require(need, log=print)                           # prints both numbers; TgcError when it does not fit
    check_manifest(manifest, "train", log=print)       # the exact figure, after compiling

Two figures, both in bytes:

- The estimate (before compiling) assumes gpt.tg's architecture: GPT-2's parameter count
  in closed form (so an absurd config such as n_layer 1e9 costs nothing to refuse), then
  for training parameters + gradients + two AdamW moments + activations (per layer about
  18 [B, T, d] tensors and 2 [B, heads, T, T] attention tensors, plus 3 [B, T, vocab] for
  the loss); for generation parameters + KV cache + one window's activations. It lands
  within ~1.3x of the compiler's plan for every preset (tests/test_robust.py checks it).
- The exact figure (after compiling) is the memory plan's peak for the programs the run
  uses, manifest["memory"][program]["planned_bytes"], which counts persistent state and
  the arena.

What is available: the smallest of /proc/meminfo's MemAvailable, the cgroup (v2 or v1)
limit minus current usage, RLIMIT_AS / RLIMIT_DATA minus what the process already maps,
and $TGC_MEMORY_LIMIT (bytes, or a number with K/M/G/T[iB]: a cap the user sets). Where
none of these can be read (not Linux), the need is printed and nothing is refused.

The estimate refuses only a need beyond ESTIMATE_MARGIN (1.25) times what is available,
its error against the plan; the exact figure refuses anything beyond it.

What is left out: GPU memory (wgpu does not report it: on WebGPU the need is printed, not
checked, and a device that runs out fails when the runtime allocates its buffers), and the
browser, whose runtime applies the same rule to manifest["wasm"]["memory_bytes"] against
its 16 GiB Memory64 cap.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path

from tgc.errors import TgcError

F32 = 4
WASM_BROWSER_LIMIT = 16 << 30  # Memory64 in Chrome and Firefox
# programs whose peak a run needs: training runs train_step and eval_loss; generation the other three
PROGRAMS = {"train": ("train_step", "eval_loss"), "generate": ("forward", "prefill", "decode_step")}
_HINTS = {"train": "use a smaller preset or --batch, or free memory",
          "generate": "the model is too large for this machine (free memory, or use a smaller model)"}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} B"


def param_count(cfg: dict) -> int:
    """GPT-2's parameter count for config (vocab, ctx, d, layers), in closed form; equals the
    sum over tgc.checkpoint.param_shapes(cfg) without building it (another family's: that sum)."""
    if cfg.get("family"):
        from tgc.family import param_count as family_count

        return family_count(cfg)
    V, T, d, L = (int(cfg[k]) for k in ("vocab", "ctx", "d", "layers"))
    per_layer = 12 * d * d + 13 * d  # c_attn 3d^2+3d, c_proj d^2+d, c_fc 4d^2+4d, mlp proj 4d^2+d, 2 LNs 4d
    return V * d + T * d + L * per_layer + 2 * d


@dataclass
class Need:
    what: str                                   # "training tiny", "generation from runs/x"
    bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    exact: bool = False                         # from the compiled memory plan, not the estimate
    hint: str = "use a smaller preset or --batch, or free memory"

    def describe(self) -> str:
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items())
        return f"{self.what} needs {'' if self.exact else 'about '}{fmt_bytes(self.bytes)}" + (f" ({parts})" if parts else "")


def estimate(cfg: dict, batch: int, purpose: str, what: str | None = None) -> Need | None:
    """The memory a run of gpt.tg with `cfg` needs, before compiling; None when the config is
    not gpt.tg's (a model file with other config names is checked after compiling only)."""
    if cfg.get("family") or not all(isinstance(cfg.get(k), int) for k in ("vocab", "ctx", "d", "heads", "layers")):
        return None
    V, T, d, H, L = (cfg[k] for k in ("vocab", "ctx", "d", "heads", "layers"))
    P = param_count(cfg)
    what = what or purpose
    if purpose == "train":
        B = max(1, int(batch))
        acts = L * (18 * B * T * d + 2 * B * H * T * T) + 3 * B * T * V
        parts = {"parameters": P * F32, "gradients": P * F32, "AdamW moments": 2 * P * F32, "activations": acts * F32}
    elif purpose == "generate":
        acts = 18 * T * d + 2 * H * T * T + 2 * T * V
        parts = {"parameters": P * F32, "KV cache": 2 * L * T * d * F32, "activations": acts * F32}
    else:
        raise ValueError(f"unknown purpose {purpose!r}")
    return Need(what, sum(parts.values()), parts, hint=_HINTS[purpose])


def from_manifest(manifest: dict, purpose: str, what: str | None = None) -> Need:
    """The exact need of a compiled artifact: the largest planned peak of the programs `purpose` runs."""
    mem = manifest.get("memory") or {}
    peaks = {p: int(mem[p]["planned_bytes"]) for p in PROGRAMS[purpose] if p in mem}
    if not peaks:
        peaks = {"all buffers": sum(int(b["size"]) for b in manifest.get("buffers", []))}
    worst = max(peaks, key=peaks.get)
    return Need(what or purpose, peaks[worst], {f"{worst} peak": peaks[worst]}, exact=True, hint=_HINTS[purpose])


# ---- what the machine has

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise TgcError(f"TGC_MEMORY_LIMIT={text!r}: expected a size such as 2G, 512MiB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _read_int(p: Path) -> int | None:
    try:
        s = p.read_text().strip()
    except OSError:
        return None
    return int(s) if s.isdigit() else None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _status(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_limits() -> list[tuple[int, str]]:
    """(limit - usage) of every memory cgroup this process is in, from the leaf up."""
    out = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    root = Path("/sys/fs/cgroup")
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            d = root / path.lstrip("/")
            while True:
                limit = _read_int(d / "memory.max")
                if limit is not None:
                    used = _read_int(d / "memory.current") or 0
                    out.append((max(0, limit - used), f"cgroup memory.max {fmt_bytes(limit)}"))
                if d == root or root not in d.parents:
                    break
                d = d.parent
        elif "memory" in controllers.split(","):  # cgroup v1
            for d in (root / "memory" / path.lstrip("/"), root / "memory"):
                limit = _read_int(d / "memory.limit_in_bytes")
                if limit is not None and limit < 1 << 60:
                    used = _read_int(d / "memory.usage_in_bytes") or 0
                    out.append((max(0, limit - used), f"cgroup memory limit {fmt_bytes(limit)}"))
                    break
    return out


def available() -> tuple[int | None, str]:
    """(bytes this process can still allocate, where that figure comes from); (None, "") if unknown."""
    cands: list[tuple[int, str]] = []
    if os.environ.get("TGC_MEMORY_LIMIT"):
        cands.append((parse_size(os.environ["TGC_MEMORY_LIMIT"]), "TGC_MEMORY_LIMIT"))
    avail = _meminfo("MemAvailable")
    if avail is not None:
        cands.append((avail, "MemAvailable"))
    elif hasattr(os, "sysconf"):
        try:
            cands.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical memory"))
        except (ValueError, OSError):
            pass
    cands += _cgroup_limits()
    for rlim, key, name in ((resource.RLIMIT_AS, "VmSize", "RLIMIT_AS (ulimit -v)"),
                            (resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA (ulimit -d)")):
        soft = resource.getrlimit(rlim)[0]
        if soft != resource.RLIM_INFINITY:
            cands.append((max(0, soft - _status(key)), f"{name} {fmt_bytes(soft)}"))
    if not cands:
        return None, ""
    return min(cands, key=lambda c: c[0])


ESTIMATE_MARGIN = 1.25  # the estimate refuses only what exceeds the memory available by more than its error


def on_gpu(backend: str) -> bool:
    """Whether `backend` runs on a WebGPU device, whose memory wgpu does not report."""
    from tgc.runtime import choose_backend

    return choose_backend(backend, None) == "webgpu"


def require(need: Need | None, log=print, backend: str = "wasm") -> None:
    """Print what `need` asks for and what is available; TgcError with both numbers when it does
    not fit (an estimate only when it exceeds by more than ESTIMATE_MARGIN). On WebGPU the
    need is the device's, which wgpu does not report: it is printed, not checked."""
    if need is None:
        return
    if on_gpu(backend):
        if log:
            log(f"memory: {need.describe()} on the GPU (wgpu does not report GPU memory; not checked)")
        return
    have, source = available()
    if log:
        log(f"memory: {need.describe()}; " + (f"{fmt_bytes(have)} available ({source})" if have is not None
                                              else "available memory unknown"))
    if have is not None and need.bytes > (have if need.exact else have * ESTIMATE_MARGIN):
        raise TgcError(f"{need.what} needs {'' if need.exact else 'about '}{fmt_bytes(need.bytes)} of memory, "
                       f"but only {fmt_bytes(have)} is available ({source}); {need.hint}")


def check_manifest(manifest: dict, purpose: str = "train", what: str | None = None, log=None,
                   backend: str = "wasm") -> Need:
    """The runtime-opening hook: refuse an artifact whose memory plan does not fit (TgcError naming
    both numbers). `purpose` is "train" or "generate", `backend` the one about to open (on
    WebGPU the need is only printed); returns the need."""
    need = from_manifest(manifest, purpose, what)
    require(need, log, backend)
    return need


def checked_runtime(source: str, preset: str | None, overrides: dict, backend: str = "auto", purpose: str = "train",
                    what: str | None = None, log=None, filename: str = "model.tg", programs=(), only=None,
                    prebuilt=None):
    """tgc.artifacts.runtime_for with the exact memory check between compiling and opening:
    compile (or reuse) the artifact, refuse it if its memory plan does not fit, then open a
    runtime ready to run `programs` (`only`: compile just these programs; `prebuilt`: a shipped
    artifact to use where it matches, see tgc.artifacts). The numpy backend
    interprets the compiler's IR in memory and has only the estimate."""
    from tgc.artifacts import compiled_artifact, runtime_for
    from tgc.runtime import choose_backend, load_manifest

    if choose_backend(backend, None) != "numpy":
        check_manifest(load_manifest(compiled_artifact(source, preset or "tiny", overrides, log, filename, only,
                                                       prebuilt)), purpose, what, log, backend)
    return runtime_for(source, preset, overrides, backend, log, filename, programs, only, prebuilt)[0]
