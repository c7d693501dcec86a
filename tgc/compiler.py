"""The compiler pipeline, top to bottom, each stage named and dumpable.

    parse -> lower -> programs (autodiff + AdamW) -> passes -> schedule -> memplan
          -> codegen (WGSL, LLVM) -> link (wasm-ld) -> package (manifest.json)

`compile_model` runs them in order; with `dump`, each stage writes its text form
(.ast, .ir, .kir, .wgsl, .ll) into the dump directory, numbered in pipeline order.
Code generators are looked up in TARGETS and share one entry point,
`emit(compiled, out_dir, dump_dir) -> manifest section`.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from tgc import presets
from tgc.codegen.base import UNIFORM_BLOCK, Layout
from tgc.errors import TgcError
from tgc.ir.memplan import MemoryPlan, plan_memory
from tgc.ir.passes import run_passes
from tgc.ir.printer import format_graph, format_program
from tgc.ir.program import Program, TrainConfig, build_programs
from tgc.ir.schedule import Schedule, schedule
from tgc.ir.verify import verify_program

FORMAT_VERSION = 1
WASM_HEAP_BASE = 1 << 20  # the module's own stack and data live below this address
TARGETS = {"wgsl": "tgc.codegen.wgsl", "wasm": "tgc.codegen.llvm"}
PROGRAM_ORDER = ("train_step", "eval_loss", "forward", "prefill", "decode_step")


@dataclass
class Compiled:
    model_path: str
    preset: str
    config: dict
    batch: int
    train: dict
    params: list  # frontend ParamSpecs, declaration order
    programs: dict[str, Program]
    schedules: dict[str, Schedule]
    plan: MemoryPlan
    layouts: dict[str, Layout]
    timings: dict[str, float] = field(default_factory=dict)


class _Dumper:
    def __init__(self, root: Path | None):
        self.root = root
        self.n = 0
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, text: str) -> None:
        if self.root is None:
            return
        self.n += 1
        (self.root / f"{self.n:02d}-{name}").write_text(text)


def make_layouts(schedules: dict[str, Schedule], plan: MemoryPlan) -> dict[str, Layout]:
    uniforms: dict[str, tuple[int, str]] = {}
    for s in schedules.values():
        for name, dtype in s.uniforms.items():
            if name not in uniforms:
                uniforms[name] = (4 * len(uniforms), dtype)
    block = max(16, -(-4 * len(uniforms) // 16) * 16)
    base, addr = {}, WASM_HEAP_BASE
    base[UNIFORM_BLOCK] = addr
    addr += 256
    for b in plan.buffers:
        base[b.name] = addr
        addr += -(-max(b.size, 256) // 256) * 256
    buffers = {b.name: b.size for b in plan.buffers}
    layouts = {}
    for pname, s in schedules.items():
        places = {t: plan.place(pname, t) for t in s.tensors}
        layouts[pname] = Layout(pname, places, buffers, uniforms, block, base, {t: i.dtype for t, i in s.tensors.items()})
    return layouts


def wasm_memory_bytes(layouts: dict[str, Layout]) -> int:
    any_layout = next(iter(layouts.values()))
    top = max(any_layout.wasm_base[b] + size for b, size in any_layout.buffers.items())
    return -(-top // 65536) * 65536


def compile_model(
    model_path: str | Path | None = None,
    preset: str = "tiny",
    out: str | Path | None = None,
    dump: str | Path | None = None,
    targets=("wgsl", "wasm"),
    verify: bool = False,
    overrides: dict | None = None,
    max_buffer: int = 128 << 20,
    log=None,
    source: str | None = None,
    filename: str | None = None,
) -> Compiled:
    """Compile the model file `model_path` (or DSL text `source`, whose errors name `filename`)."""
    from tgc.frontend import load_model, parse_file, parse_text
    from tgc.frontend.ast import format_module

    targets = tuple(t for t in targets if t not in ("", "none"))
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise TgcError(f"unknown target {unknown[0]!r}; choose from: {', '.join(TARGETS)}")
    t0 = time.perf_counter()
    timings = {}
    dumper = _Dumper(Path(dump) if dump else None)
    if source is None:
        model_path = Path(model_path) if model_path else presets.default_model_path()
        if not model_path.exists():
            raise TgcError(f"model file not found: {model_path}")
        module = parse_file(model_path)
    else:
        model_path = Path(filename or "model.tg")
        module = parse_text(source, str(model_path))
    p = presets.get_preset(preset)
    p.update(overrides or {})
    config = presets.model_config(p)
    train = presets.train_defaults()
    batch = int(p["batch"])

    def stage(name):
        timings[name] = time.perf_counter() - t0

    # parse + lower (the frontend checks names and shapes as it goes)
    dumper("parse.ast", format_module(module))
    model = load_model(module, config, filename=str(model_path))
    stage("parse+lower")
    if dumper.root is not None:
        import tgc.ir.build as b

        idx = b.input("idx", (batch, config["ctx"]), "i32")
        dumper("forward.ir", format_graph({"logits": model.call("logits", idx)}, "forward graph (logits)"))

    cfg = TrainConfig(train["beta1"], train["beta2"], train["eps"], train["weight_decay"], train["grad_clip"])
    programs = build_programs(model, batch, cfg)
    stage("programs")
    dumper("programs.ir", "\n".join(format_program(pr) for pr in programs.values()))

    programs = {k: pr.map_graph(lambda outs: run_passes(outs, verify=verify)) for k, pr in programs.items()}
    if verify:
        for pr in programs.values():
            verify_program(pr, after="passes")
    stage("passes")
    dumper("passes.ir", "\n".join(format_program(pr) for pr in programs.values()))

    schedules = {k: schedule(pr) for k, pr in programs.items()}
    stage("schedule")
    if dumper.root is not None:
        from tgc.ir.kernel import format_kernel

        dumper("kernels.kir", "\n".join(f"# program {k}\n" + "".join(format_kernel(kk) for kk in s.kernels) for k, s in schedules.items()))

    plan = plan_memory(schedules, max_buffer=max_buffer)
    layouts = make_layouts(schedules, plan)
    stage("memplan")
    dumper("planned.ir", _format_plan(schedules, plan))

    compiled = Compiled(str(model_path), preset, config, batch, train, model.params, programs, schedules, plan, layouts, timings)
    if out is not None:
        write_artifact(compiled, Path(out), targets, dumper)
    stage("codegen+package")
    return compiled


def compile_model_text(source: str, preset: str, overrides: dict | None = None, filename: str = "model.tg") -> Compiled:
    """The in-memory compilation of DSL text (no code generation): what the numpy backend interprets."""
    return compile_model(None, preset, targets=(), overrides=overrides, source=source, filename=filename)


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


def manifest_programs(compiled: Compiled) -> dict:
    progs = {}
    for pname in PROGRAM_ORDER:
        s = compiled.schedules[pname]
        lay = compiled.layouts[pname]

        def where(t):
            buf, off = lay.places[t]
            info = s.tensors[t]
            return {"tensor": t, "buffer": buf, "offset": off, "shape": list(info.shape), "dtype": info.dtype}

        progs[pname] = {
            "inputs": [t.name for t in s.tensors.values() if t.role == "input"],
            "uniforms": sorted(s.uniforms),
            "outputs": {name: where(t) for name, t in s.outputs.items()},
            "updates": sorted(s.updates),
            "launches": [
                {
                    "kernel": f"{pname}.{k.name}",
                    "kind": k.kind,
                    "reads": sorted(k.loads()),
                    "writes": k.writes(),
                    "uniforms": sorted(k.uniforms()),
                }
                for k in s.kernels
            ],
        }
    return progs


def write_artifact(compiled: Compiled, out: Path, targets, dumper=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    dump_dir = dumper.root if dumper is not None else None
    any_layout = next(iter(compiled.layouts.values()))
    persistent = []
    inits = {p.name: list(p.init) for p in compiled.params}
    for name, (buf, off) in compiled.plan.places.items():
        info = next(s.tensors[name] for s in compiled.schedules.values() if name in s.tensors)
        entry = {"name": name, "shape": list(info.shape), "dtype": info.dtype, "role": info.role, "buffer": buf, "offset": off}
        if name in inits:
            entry["init"] = inits[name]
        persistent.append(entry)
    manifest = {
        "format": "tgc-artifact",
        "version": FORMAT_VERSION,
        "model": {
            "file": Path(compiled.model_path).name,
            "preset": compiled.preset,
            "config": compiled.config,
            "batch": compiled.batch,
            "train": compiled.train,
            "params": [p.name for p in compiled.params],
            "param_count": sum(math.prod(p.shape) for p in compiled.params),
        },
        "buffers": [{"name": b.name, "size": b.size, "kind": b.kind} for b in compiled.plan.buffers],
        "uniforms": {
            "size": any_layout.uniform_block_size,
            "fields": {n: {"offset": o, "dtype": d} for n, (o, d) in any_layout.uniforms.items()},
        },
        "tensors": persistent,
        "memory": {p: {"planned_bytes": r.planned_bytes, "lower_bound": r.lower_bound} for p, r in compiled.plan.reports.items()},
        "programs": manifest_programs(compiled),
    }
    for target in targets:
        try:
            mod = importlib.import_module(TARGETS[target])
        except ModuleNotFoundError:
            continue  # that code generator is not part of this build yet
        manifest[target] = mod.emit(compiled, manifest, out, dump_dir)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    return out
