"""`tgc parity`: the same programs, weights and batches on WebGPU and WebAssembly
(and the numpy interpreter where affordable), compared tensor by tensor.

1. After one train_step from identical weights: the loss and every gradient.
2. forward logits, eval_loss, prefill and a decode_step on the same tokens.
3. `--steps N` training steps on each target: the two loss curves.

Prints one row per tensor (max abs, max rel, tolerance, result) and exits 1 on
any failure. Tolerances and their reasons: docs/parity.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tgc import rng
from tgc.compare import HEADER, Row, compare
from tgc.errors import TgcError

# (rtol against the reference tensor's scale, atol) — see docs/parity.md
TOL = {
    "loss": (1e-5, 1e-6),
    "grad": (2e-4, 0.0),
    "logits": (1e-4, 0.0),
    "curve": (5e-3, 0.0),  # final losses after N steps: the 0.5%
}
INTERPRETER_PRESETS = ("tiny", "small")


def _batches(seed: int, step: int, B: int, T: int, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    off = rng.randint(seed, "batches", B, len(data) - T - 1, start=step * B)
    rows = np.stack([data[o : o + T + 1] for o in off]).astype(np.int32)
    return rows[:, :-1], rows[:, 1:]


def _corpus_tokens() -> np.ndarray:
    try:
        from tgc.data import load_corpus

        text = load_corpus("shakespeare")
        text = text if isinstance(text, str) else getattr(text, "train", str(text))
    except Exception:  # parity must not depend on a corpus: fall back to a fixed text
        text = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 200
    return np.frombuffer(text[:2_000_000].encode("utf-8", "replace"), np.uint8).astype(np.int32)


def open_targets(artifact: Path, compiled, with_interpreter: bool) -> dict:
    from tgc.runtime.wasm import WasmRuntime
    from tgc.runtime.webgpu import WebGPURuntime

    rts = {"webgpu": WebGPURuntime(artifact), "wasm": WasmRuntime(artifact)}
    if with_interpreter:
        from tgc.reference import ReferenceRuntime

        rts["numpy"] = ReferenceRuntime(compiled)
    return rts


def run_parity(preset: str, steps: int = 1, seed: int = 0, model_path=None, out=print, artifact_dir=None) -> list[Row]:
    from tgc.compiler import compile_model

    tmp = None
    if artifact_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tgc-parity-")
        artifact_dir = tmp.name
    compiled = compile_model(model_path, preset, out=artifact_dir)
    rts = open_targets(Path(artifact_dir), compiled, preset in INTERPRETER_PRESETS)
    names = list(rts)
    ref = "numpy" if "numpy" in rts else "wasm"
    for rt in rts.values():
        rt.init_state(seed)
    B, T, V = compiled.batch, compiled.config["ctx"], compiled.config["vocab"]
    data = _corpus_tokens() % V
    params = [p.name for p in compiled.params]
    rows: list[Row] = []

    def section(title):
        out(f"\n{title}\n{HEADER}")

    def add(row: Row):
        rows.append(row)
        out(row.format())

    uni = lambda step: {"step": float(step), "lr": float(compiled.train["lr"]), "warmup": float(min(compiled.train.get("warmup_steps", 0), max(steps // 10, 1))), "total_steps": float(max(steps, 1))}

    # 1. one training step: loss and every gradient
    idx, tgt = _batches(seed, 1, B, T, data)
    reads = ["loss"] + [f"grad/{p}" for p in params]
    res = {n: rt.run("train_step", {"idx": idx, "targets": tgt}, uni(1), read=reads) for n, rt in rts.items()}
    for other in names:
        if other == ref:
            continue
        section(f"train_step 1: {other} vs {ref}")
        add(compare(f"{other}:loss", res[other]["loss"], res[ref]["loss"], *TOL["loss"]))
        for p in params:
            add(compare(f"{other}:grad/{p}", res[other][f"grad/{p}"], res[ref][f"grad/{p}"], *TOL["grad"]))

    # 2. inference programs on the updated weights
    tokens = idx[:1]
    section(f"inference programs vs {ref}")
    outs = {n: rt.run("forward", {"tokens": tokens}, {}) for n, rt in rts.items()}
    ev = {n: rt.run("eval_loss", {"idx": idx, "targets": tgt}, {}) for n, rt in rts.items()}
    for n in rts:
        for t in [t["name"] for t in rts[n].manifest["tensors"] if t["role"] == "kv_cache"]:
            rts[n].write(t, np.zeros(next(x["shape"] for x in rts[n].manifest["tensors"] if x["name"] == t), np.float32))
    L = max(2, T // 2)
    pre = {n: rt.run("prefill", {"tokens": tokens}, {"len": L}) for n, rt in rts.items()}
    dec = {n: rt.run("decode_step", {"token": tokens[:, L : L + 1]}, {"pos": L}) for n, rt in rts.items()}
    for other in names:
        if other == ref:
            continue
        add(compare(f"{other}:forward.logits", outs[other]["logits"], outs[ref]["logits"], *TOL["logits"]))
        add(compare(f"{other}:eval_loss", ev[other]["loss"], ev[ref]["loss"], *TOL["loss"]))
        add(compare(f"{other}:prefill.logits", pre[other]["logits"], pre[ref]["logits"], *TOL["logits"]))
        add(compare(f"{other}:decode_step.logits", dec[other]["logits"], dec[ref]["logits"], *TOL["logits"]))

    # 3. loss curves over N steps, every pair of targets compared at the last step
    if steps > 1:
        for rt in rts.values():
            rt.init_state(seed)
            for t in rt.manifest["tensors"]:
                if t["role"] == "optimizer_state":
                    rt.write(t["name"], np.zeros(t["shape"], np.float32))
        curves = {n: [] for n in rts}
        for step in range(1, steps + 1):
            idx, tgt = _batches(seed, step, B, T, data)
            for n, rt in rts.items():
                curves[n].append(float(rt.run("train_step", {"idx": idx, "targets": tgt}, uni(step))["loss"]))
        section(f"loss after {steps} steps (first {curves['wasm'][0]:.4f}, last {curves['wasm'][-1]:.4f})")
        pairs = [(a, b_) for i, a in enumerate(names) for b_ in names[i + 1 :]]
        for a, b_ in pairs:
            ca, cb = np.array(curves[a]), np.array(curves[b_])
            add(compare(f"{a} vs {b_}: loss@{steps}", ca[-1:], cb[-1:], *TOL["curve"]))
            out(f"{a} vs {b_}: largest relative loss difference over the curve {float(np.max(np.abs(ca - cb) / np.abs(cb))):.3g}")
    failed = [r for r in rows if not r.ok]
    out(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    if tmp is not None:
        tmp.cleanup()
    return rows


def parity_cli(preset: str, steps: int = 1, seed: int = 0, model_path=None) -> int:
    try:
        rows = run_parity(preset, steps, seed, model_path)
    except ImportError as e:
        raise TgcError(f"parity needs both runtimes: {e}") from None
    return 0 if all(r.ok for r in rows) else 1
