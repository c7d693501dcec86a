"""The compiler pipeline, top to bottom, each stage named and dumpable.

    parse -> lower -> programs (autodiff + AdamW) -> passes -> schedule -> kernel passes
          -> memplan -> codegen (WGSL, LLVM) -> link (wasm-ld) -> package (manifest.json)

`compile_model` runs the front end on a DSL model and hands its programs to
`compile_programs`, which runs everything from scheduling on (tests call it directly on
small hand-built programs). With `dump`, each stage writes its text form (.ast, .ir,
.kir, .wgsl, .ll) into the dump directory, numbered in pipeline order. This driver is
the one writer of the artifact: it builds the manifest (tgc/artifact.py) and each
target's part of it.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from tgc import presets
from tgc.artifact import KernelInfo, KernelParam, Manifest, Place, ProgramInfo, write_manifest
from tgc.errors import TgcError
from tgc.ir import schedule as S
from tgc.ir.kernel import Kernel, format_kernel
from tgc.ir.kpasses import dedup, run_kernel_passes
from tgc.ir.memplan import MemoryPlan, plan_memory
from tgc.ir.passes import run_passes
from tgc.ir.printer import format_graph, format_program
from tgc.ir.program import PROGRAMS, Program, TrainConfig, build_programs
from tgc.ir.schedule import Schedule, schedule
from tgc.ir.verify import verify_program

TARGETS = ("wgsl", "wasm")
TRAIN_OVERRIDES = ("weight_decay", "min_lr_ratio")  # run settings compiled into train_step as constants
WASM_HEAP_BASE = 1 << 20  # the module's own stack and data live below this address
MAX_BUFFER = 128 << 20  # pool size of the memory plan (tgc/ir/memplan.py)


@dataclass
class Compiled:
    model_path: str
    preset: str | None
    config: dict
    batch: int
    train: dict
    params: list  # frontend ParamSpecs, declaration order
    programs: dict[str, Program]
    schedules: dict[str, Schedule]
    kernels: dict[str, Kernel]  # distinct kernels after the kernel passes
    launches: dict[str, list[tuple[str, tuple[str, ...]]]]  # program -> (kernel, tensors)
    plan: MemoryPlan
    manifest: Manifest  # without target sections until written
    wasm_base: dict[str, int]  # buffer (and "uniforms") -> absolute address in wasm memory
    timings: dict[str, float] = field(default_factory=dict)


class _Dumper:
    def __init__(self, root: Path | None):
        self.root = root
        self.n = 0
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, text) -> None:
        if self.root is None:
            return
        self.n += 1
        (self.root / f"{self.n:02d}-{name}").write_text(text() if callable(text) else text)


def compile_model(
    model_path: str | Path | None = None,
    preset: str = "tiny",
    out: str | Path | None = None,
    dump: str | Path | None = None,
    targets=TARGETS,
    verify: bool = False,
    overrides: dict | None = None,
    max_buffer: int = MAX_BUFFER,
    log=None,
    source: str | None = None,
    filename: str | None = None,
    profile: bool = False,
    only=PROGRAMS,
) -> Compiled:
    """Compile the model file `model_path` (or DSL text `source`, whose errors name `filename`)
    for a preset (plus overrides); with `out`, write the artifact there (with `profile`, the
    wasm module also exports each launch on its own, for timing). Overrides may also set the
    optimizer constants of TRAIN_OVERRIDES (weight_decay, min_lr_ratio: compiled into
    train_step). `only` compiles a subset of the programs (tgc.artifacts.GENERATE_PROGRAMS for generation)."""
    from tgc.frontend import ast as A
    from tgc.frontend import load_model, parse_file, parse_text
    from tgc.frontend.ast import format_module

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    dumper = _Dumper(Path(dump) if dump else None)
    if source is None:
        model_path = Path(model_path) if model_path else presets.default_model_path()
        if not model_path.exists():
            raise TgcError(f"model file not found: {model_path}")
        module = parse_file(model_path)
    else:
        model_path = Path(filename or "model.tg")
        module = parse_text(source, str(model_path))
    header = next((it for it in module.items if isinstance(it, A.Config)), None)
    family = presets.family_named(header.name if header is not None else None)  # whose presets (tgc/presets.py)
    p = presets.get_preset(preset, family)
    p.update(overrides or {})
    config = presets.model_config(p, family)
    train = {**presets.train_defaults(), **{k: float(p[k]) for k in TRAIN_OVERRIDES if k in p}}
    batch = int(p["batch"])
    unknown = [n for n in only if n not in PROGRAMS]
    if unknown or not only:
        raise TgcError(f"unknown program {unknown[0]!r}; choose from: {', '.join(PROGRAMS)}" if unknown
                       else "no program to compile")

    dumper("parse.ast", format_module(module))
    model = load_model(module, config, filename=str(model_path))
    stage("parse+lower")
    if dumper.root is not None:
        import tgc.ir.build as b

        idx = b.input("idx", (batch, config["ctx"]), "i32")
        dumper("forward.ir", format_graph({"logits": model.call("logits", idx)}, "forward graph (logits)"))
    cfg = TrainConfig(train["beta1"], train["beta2"], train["eps"], train["weight_decay"], train["grad_clip"],
                      train["min_lr_ratio"])
    programs = build_programs(model, batch, cfg, tuple(only))
    stage("programs")
    dumper("programs.ir", lambda: "\n".join(format_program(pr) for pr in programs.values()))
    info = {"file": model_path.name, "preset": preset, "config": config, "batch": batch, "train": train,
            "params": [q.name for q in model.params], "param_count": sum(math.prod(q.shape) for q in model.params)}
    if family != presets.GPT:  # what a checkpoint's config.json of this model holds (the browser exports it as is)
        from tgc.family import hf_config

        info["hf_config"] = {k: v for k, v in hf_config({**config, "family": family}, {}).items() if k != "tgc"}
    inits = {q.name: tuple(q.init) for q in model.params}
    c = compile_programs(programs, info, inits, out, targets, verify, max_buffer, dumper, timings, t0, profile=profile)
    c.model_path, c.preset, c.config, c.batch, c.train, c.params = str(model_path), preset, config, batch, train, model.params
    return c


def compile_programs(programs: dict[str, Program], model: dict, inits: dict | None = None, out=None, targets=TARGETS,
                     verify: bool = False, max_buffer: int = MAX_BUFFER, dumper=None, timings=None, t0=None,
                     heap_base: int = WASM_HEAP_BASE, keep_all: bool = False, profile: bool = False) -> Compiled:
    """Everything from the graph passes on, for any set of programs: `model` is the
    manifest's model section, `inits` the parameters' init rules. `heap_base` is where the
    buffers start in wasm memory (tests place them past 4 GiB); with `keep_all` no two
    tensors share memory, so that every intermediate can be read after a run (tests)."""
    dumper = dumper or _Dumper(None)
    timings = {} if timings is None else timings
    t0 = time.perf_counter() if t0 is None else t0

    def stage(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    unknown = [t for t in targets if t not in TARGETS and t not in ("", "none")]
    if unknown:
        raise TgcError(f"unknown target {unknown[0]!r}; choose from: {', '.join(TARGETS)}")
    programs = {k: pr.map_graph(lambda outs: run_passes(outs, verify=verify)) for k, pr in programs.items()}
    if verify:
        for pr in programs.values():
            verify_program(pr, after="passes")
    stage("passes")
    dumper("passes.ir", lambda: "\n".join(format_program(pr) for pr in programs.values()))

    schedules = {k: schedule(pr) for k, pr in programs.items()}
    stage("schedule")
    kernels, launches = dedup(schedules)
    run_kernel_passes(kernels, verify=verify)
    stage("kernel passes")
    dumper("kernels.kir", lambda: _format_kernels(kernels, launches))

    plan = plan_memory(schedules, max_buffer=max_buffer, keep_all=keep_all)
    stage("memplan")
    dumper("planned.ir", lambda: _format_plan(schedules, plan))
    manifest, wasm_base = package(schedules, kernels, launches, plan, model, inits or {}, heap_base)
    compiled = Compiled(model.get("file", ""), model.get("preset"), model.get("config", {}), model.get("batch", 1),
                        model.get("train", {}), [], programs, schedules, kernels, launches, plan, manifest, wasm_base,
                        timings)  # fmt: skip
    if out is not None:
        write_artifact(compiled, Path(out), [t for t in targets if t in TARGETS], dumper.root, profile)
        stage("codegen+package")
    return compiled


def _format_kernels(kernels: dict[str, Kernel], launches: dict) -> str:
    lines = [f"# {len(kernels)} distinct kernels, {sum(len(v) for v in launches.values())} launches\n"]
    lines += [format_kernel(k) for k in kernels.values()]
    for p, ls in launches.items():
        lines.append(f"# program {p}: {len(ls)} launches")
        lines += [f"  {k}({', '.join(ts)})" for k, ts in ls]
    return "\n".join(lines) + "\n"


def _format_plan(schedules, plan: MemoryPlan) -> str:
    lines = ["# buffers"]
    lines += [f"{b.name:<10} {b.kind:<10} {b.size:>12} bytes" for b in plan.buffers]
    for pname, s in schedules.items():
        r = plan.reports[pname]
        lines.append(f"\n# program {pname}: planned {r.planned_bytes} bytes, lower bound {r.lower_bound}")
        for t in s.tensors.values():
            buf, off = plan.place(pname, t.name)
            lines.append(f"{t.name:<48} {t.role:<16} {t.dtype}{list(t.shape)!s:<20} {buf}+{off}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- package


def uniform_block(schedules: dict[str, Schedule]) -> tuple[dict[str, tuple[int, str]], int]:
    """The uniform block every program shares: name -> (byte offset, dtype), and its size."""
    fields: dict[str, tuple[int, str]] = {}
    for s in schedules.values():
        for name, dtype in s.uniforms.items():
            if name not in fields:
                fields[name] = (4 * len(fields), dtype)
    return fields, max(16, -(-4 * len(fields) // 16) * 16)


def package(schedules, kernels, launches, plan: MemoryPlan, model: dict, inits: dict, heap_base: int):
    """The manifest (without target sections) and the wasm address of every buffer."""
    fields, ublock = uniform_block(schedules)
    wasm_base, addr = {"uniforms": heap_base}, heap_base + 256
    for b in plan.buffers:
        wasm_base[b.name] = addr
        addr += -(-max(b.size, 256) // 256) * 256
    info = {t: i for s in schedules.values() for t, i in s.tensors.items()}
    tensors = {}
    for name, (buf, off) in plan.places.items():
        t = info[name]
        tensors[name] = Place(name, tuple(t.shape), t.dtype, buf, off, t.role, inits.get(name))
    kinfos = {n: KernelInfo(n, k.kind, tuple(KernelParam(p.dtype, p.access) for p in k.params),
                            tuple(sorted(_uniforms(k))), k.decisions) for n, k in kernels.items()}  # fmt: skip
    progs = {}
    for pname, s in schedules.items():
        places = {t: Place(t, tuple(i.shape), i.dtype, *plan.place(pname, t), i.role)
                  for t, i in s.tensors.items() if t not in tensors}  # fmt: skip
        where = lambda t: tensors.get(t) or places[t]  # noqa: B023
        outputs = {o: where(t) for o, t in s.outputs.items()}
        progs[pname] = ProgramInfo(pname, [t.name for t in s.tensors.values() if t.role == "input"], sorted(s.uniforms),
                                   outputs, sorted(s.updates), places, launches[pname])  # fmt: skip
    memory = {p: {"planned_bytes": r.planned_bytes, "lower_bound": r.lower_bound} for p, r in plan.reports.items()}
    buffers = {b.name: b.size for b in plan.buffers}
    kinds = {b.name: b.kind for b in plan.buffers}
    return Manifest(model, buffers, kinds, fields, ublock, tensors, memory, kinfos, progs), wasm_base


def _uniforms(k: Kernel) -> set[str]:
    from tgc.ir.kernel import walk
    from tgc.ir.ops import Op

    return {e.arg for e in walk([e for _, e in k.outputs]) if e.op is Op.UNIFORM}


def write_artifact(compiled: Compiled, out: Path, targets, dump_dir=None, profile: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    m = compiled.manifest
    if "wgsl" in targets:
        m.wgsl = _emit_wgsl(compiled, out, dump_dir)
    if "wasm" in targets:
        m.wasm = _emit_wasm(compiled, out, dump_dir, profile)
    write_manifest(out, m)
    return out


def _emit_wgsl(compiled: Compiled, out: Path, dump_dir) -> dict:
    """kernels/<kernel>.wgsl for every distinct kernel, and each kernel's WebGPU launch facts."""
    from tgc.codegen.wgsl import render_kernel

    kdir = out / "kernels"
    kdir.mkdir(parents=True, exist_ok=True)
    m = compiled.manifest
    stats = {"max_storage_buffers": 0, "max_workgroup_bytes": 0, "max_invocations": 0}
    for name, k in compiled.kernels.items():
        r = render_kernel(k, m.uniforms)
        rel = f"kernels/{name}.wgsl"
        (out / rel).write_text(r.source)
        if dump_dir is not None:
            (Path(dump_dir) / "wgsl").mkdir(parents=True, exist_ok=True)
            (Path(dump_dir) / "wgsl" / f"{name}.wgsl").write_text(r.source)
        ki = m.kernels[name]
        m.kernels[name] = KernelInfo(ki.name, ki.kind, ki.params, ki.uniforms, ki.decisions, {
            "file": rel, "workgroup_size": list(r.workgroup_size), "dispatch": list(r.dispatch),
            "workgroup_bytes": r.workgroup_bytes, "uniform_binding": r.uniform_binding, "chunks": r.chunks,
            "chunk_bytes": r.chunk_bytes})
        stats["max_storage_buffers"] = max(stats["max_storage_buffers"], sum(r.chunks))
        stats["max_workgroup_bytes"] = max(stats["max_workgroup_bytes"], r.workgroup_bytes)
        stats["max_invocations"] = max(stats["max_invocations"], math.prod(r.workgroup_size))
    return {"dir": "kernels", "kernels": len(compiled.kernels), "max_binding_bytes": S.MAX_BINDING_BYTES,
            "max_buffer_bytes": max(m.buffers.values(), default=0), **stats}


def _emit_wasm(compiled: Compiled, out: Path, dump_dir, profile: bool = False) -> dict:
    """model.wasm: the distinct kernels and one export per program calling them with addresses."""
    from tgc.codegen.llvm import build, scratch_bytes
    from tgc.ir.kpasses import BLOCKING

    m, base = compiled.manifest, compiled.wasm_base
    top = max([base[b] + s for b, s in m.buffers.items()] + [base["uniforms"] + 256])
    scratch = -(-top // 65536) * 65536
    addr = lambda pname, t: base[m.place(pname, t).buffer] + m.place(pname, t).offset  # noqa: E731
    progs = {p: [(k, [addr(p, t) for t in ts]) for k, ts in compiled.launches[p]] for p in compiled.launches}
    uniforms = {n: (base["uniforms"] + o, d) for n, (o, d) in m.uniforms.items()}
    exports = build(compiled.kernels, progs, uniforms, scratch, out / "model.wasm", dump_dir, profile)
    memory = -(-(scratch + scratch_bytes(BLOCKING)) // 65536) * 65536
    return {
        "file": "model.wasm",
        "sha256": hashlib.sha256((out / "model.wasm").read_bytes()).hexdigest(),
        "memory_bytes": memory,
        "memory64": True,
        "exports": {p: p for p in progs},
        "kernel_exports": {p: [e for e in exports if e.startswith(p + "#")] for p in progs} if profile else {},
        "buffers": {b: base[b] for b in m.buffers},
        "uniforms_address": base["uniforms"],
        "scratch": {"address": scratch, "bytes": scratch_bytes(BLOCKING)},
        "heap_base": WASM_HEAP_BASE,
    }


def compile_model_text(source: str, preset: str, overrides: dict | None = None, filename: str = "model.tg") -> Compiled:
    """The in-memory compilation of DSL text (no code generation): what the numpy backend interprets."""
    return compile_model(None, preset, targets=(), overrides=overrides, source=source, filename=filename)


__all__ = ["PROGRAMS", "TARGETS", "TRAIN_OVERRIDES", "Compiled", "compile_model", "compile_model_text", "compile_programs"]
