"""A same-time race: `tgc train` (WebGPU) against PyTorch training the same model on the same
data with the same optimizer and schedule, each for the same wall-clock budget.

    python benchmarks/race.py --corpus FILE [--preset huge] [--batch 32] [--lr 1e-3] [--dropout 0.1]
                              [--seconds 120] [--modes eager compile] [--backend webgpu]

Each contestant first runs a short pilot (not counted) to measure its step time, then plans
its learning-rate schedule for the steps that fit in --seconds (linear warmup to --lr over
min(100, steps/10) steps, cosine decay to 10%: tgc's schedule) and trains them. The budget
covers the training loop only; compile and start-up times are reported beside it. Both
sides draw the same batches (tgc/data.py: stream "batches" of the seed), use AdamW (0.9,
0.95, eps 1e-8, weight decay 0.1 on matrices and embeddings), clip the global norm at 1.0,
initialise as models/gpt.tg does, and apply dropout at the same places (embeddings and each
residual branch). PyTorch runs fp32 with TF32 off (tgc's arithmetic). The score is the mean
loss over tgc's fixed validation batches (tgc/data.py val_batch, 8 batches), in nats per
token. Prints a markdown table; writes race.json into $OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch_gpt import gpt_module  # noqa: E402  (the one PyTorch GPT of the benchmarks)

OUT = Path(os.environ.get("OUT") or "/tmp/race")
EVAL_BATCHES = 8


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def plan(seconds: float, step_s: float) -> int:
    return max(10, int(seconds / step_s))


def run_tgc(a, steps: int, out: Path) -> dict:
    """`tgc train` as a user runs it; returns its wall time and the final validation loss."""
    cmd = [sys.executable, "-m", "tgc.cli", "train", "--preset", a.preset, "--batch", str(a.batch), "--lr", str(a.lr),
           "--dropout", str(a.dropout), "--steps", str(steps), "--corpus", a.corpus, "--backend", a.backend,
           "--out", str(out), "--eval-every", str(steps), "--ckpt-every", str(steps), "--no-keep-best"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"tgc train failed ({p.returncode}): {text[-2000:]}")
    ready = float(re.search(r"ready in ([\d.]+)s", text).group(1))
    m = re.search(r"done at step \d+/\d+: loss ([\d.]+), val ([\d.]+), ([\d,]+) tokens/s", text)
    tok_s = float(m.group(3).replace(",", ""))
    return {"steps": steps, "wall_s": wall, "setup_s": ready, "tokens_per_s": tok_s, "train_loss": float(m.group(1)), "val_loss": float(m.group(2))}


def run_torch(a, mode: str, seconds: float, data, p: dict) -> dict:
    import numpy as np
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T, B = p["ctx"], a.batch
    t_setup = time.perf_counter()
    torch.manual_seed(0)
    model = gpt_module(a.preset, device, dropout=a.dropout, gpt_tg_init=True)
    decay = [w for w in model.parameters() if w.dim() >= 2]
    rest = [w for w in model.parameters() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    fwd = torch.compile(model) if mode == "compile" else model
    sched = {"steps": 1, "warmup": 1}

    def lr_at(step):  # tgc's schedule (tgc/ir/program.py lr_schedule)
        w, total = sched["warmup"], sched["steps"]
        warm = min(1.0, step / max(w, 1))
        t = min(max((step - w) / max(total - w, 1), 0.0), 1.0)
        return a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def step(s):
        idx, tgt = (torch.from_numpy(x.astype(np.int64)).to(device) for x in data.batch(0, s, B, T))
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        loss = fwd(idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()  # read back every step, as tgc train does

    model.train()
    for s in range(1, 6):  # compile and warm up (not counted)
        step(s)
    setup = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    for s in range(1, 31):
        step(s)
    step_s = (time.perf_counter() - t0) / 30
    steps = plan(seconds, step_s)
    # a fresh model for the counted run, with the compiled graph kept
    torch.manual_seed(0)
    fresh = gpt_module(a.preset, device, dropout=a.dropout, gpt_tg_init=True)
    model.load_state_dict(fresh.state_dict())
    opt.state.clear()
    sched.update(steps=steps, warmup=min(100, max(1, steps // 10)))
    t0 = time.perf_counter()
    last = None
    for s in range(1, steps + 1):
        last = step(s)
    loop = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        vals = []
        for i in range(EVAL_BATCHES):
            idx, tgt = (torch.from_numpy(x.astype(np.int64)).to(device) for x in data.val_batch(0, i, B, T))
            vals.append(float(model(idx, tgt)))
    return {"steps": steps, "loop_s": loop, "setup_s": setup, "pilot_ms": 1000 * step_s,
            "tokens_per_s": steps * B * T / loop, "train_loss": last, "val_loss": sum(vals) / len(vals)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--preset", default="huge")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--modes", nargs="*", default=["eager", "compile"])
    ap.add_argument("--backend", default="webgpu")
    ap.add_argument("--skip-tgc", action="store_true")
    a = ap.parse_args(argv)

    from tgc import presets
    from tgc.data import load_dataset

    p = presets.get_preset(a.preset)
    data, _ = load_dataset(a.corpus, ctx=p["ctx"])
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {}
    if not a.skip_tgc:
        with tempfile.TemporaryDirectory() as d:
            pilot = run_tgc(a, 60, Path(d) / "pilot")  # compiles the artifact (cached for the real run)
            ms = 1000 * a.batch * p["ctx"] / pilot["tokens_per_s"]
            steps = plan(a.seconds, ms / 1000)
            log(f"tgc: pilot {ms:.1f} ms/step -> {steps} steps")
            r = run_tgc(a, steps, Path(d) / "run")
            r["pilot_ms"] = ms
            r["loop_s"] = steps * a.batch * p["ctx"] / r["tokens_per_s"]
            rows["tgc (WebGPU)"] = r
            log(f"tgc: {r}")
    for mode in a.modes:
        r = run_torch(a, mode, a.seconds, data, p)
        rows[f"PyTorch {mode}"] = r
        log(f"torch {mode}: {r}")
    print(f"\nSame-time race: {a.preset}, batch {a.batch}, lr {a.lr}, dropout {a.dropout}, {a.seconds:.0f} s of "
          f"training loop each, corpus {data.name}\n")
    print("| contestant | ms/step (pilot) | steps in budget | loop s | setup s | train loss | val loss |\n|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['pilot_ms']:.1f} | {r['steps']} | {r['loop_s']:.1f} | {r['setup_s']:.1f} | "
              f"{r['train_loss']:.4f} | {r['val_loss']:.4f} |")
    (OUT / "race.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
