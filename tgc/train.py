"""Training: corpus -> tokenizer -> compiled artifact -> runtime -> train_step loop -> checkpoints.

    result = train("tiny", "shakespeare", steps=2000, out="runs/tiny")
    result = train(None, None, steps=2000, out="runs/tiny", resume=True)   # settings from the checkpoint

What a run is: parameters from the host RNG (runtime.init_state(seed)), batches that
depend only on (seed, step) (tgc/data.py), and train_step with the uniforms step
(1-based), lr (peak), warmup and total_steps (the schedule: linear warmup, cosine decay
to 10%). A resumed run restores parameters, AdamW moments and the step from the
checkpoint, so it continues exactly as the uninterrupted run would have (same backend,
same --steps). Every `eval_every` steps the mean eval_loss over a fixed set of
`eval_batches` validation batches is logged; every `ckpt_every` steps, at the end and on
Ctrl-C (first press: finish the step, save, stop; second press: stop at once) a
checkpoint is written (tgc/checkpoint.py) with loss.png beside it.
"""

from __future__ import annotations

import io
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tgc import presets
from tgc.artifacts import runtime_for
from tgc.checkpoint import CONFIG, load_checkpoint, save_checkpoint
from tgc.data import load_dataset
from tgc.errors import TgcError

DEFAULT_EVAL_BATCHES = 8


@dataclass
class TrainResult:
    out: Path
    step: int                 # the last step taken
    total_steps: int
    loss: float | None        # training loss at `step`
    val_loss: float | None    # the last held-out loss
    history: list = field(default_factory=list)      # [[step, loss], ...]
    val_history: list = field(default_factory=list)  # [[step, val_loss], ...]
    tokens_per_s: float = 0.0
    interrupted: bool = False
    backend: str = ""


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one interrupts."""

    def __init__(self):
        self.stop = False
        self.old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _settings(resume_state: dict | None, given: dict, defaults: dict) -> dict:
    """Run settings: from the checkpoint on resume (a conflicting explicit value is an error), else given or default."""
    out = {}
    for k, v in given.items():
        if resume_state is not None:
            have = resume_state.get(k)
            if v is not None and have is not None and v != have:
                raise TgcError(f"the checkpoint was trained with {k} {have!r}, not {v!r}; leave the option out "
                               "to resume, or start a new run in another --out directory")
            out[k] = have if have is not None else (v if v is not None else defaults.get(k))
        else:
            out[k] = v if v is not None else defaults.get(k)
    return out


def loss_curve_png(history: list, val_history: list, title: str) -> bytes | None:
    """The loss curve as PNG bytes; None where matplotlib is not installed (no plot then)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if history:
        s, v = np.array(history, dtype=np.float64).T
        ax.plot(s, v, lw=0.8, alpha=0.5, label="train")
        if len(v) >= 20:  # a moving average makes the trend readable
            k = max(5, len(v) // 50)
            ax.plot(s[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"), lw=1.5, label=f"train (mean of {k})")
    if val_history:
        s, v = np.array(val_history, dtype=np.float64).T
        ax.plot(s, v, "o-", lw=1.5, ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _write_state(rt, params: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None) -> None:
    tensors = {t["name"]: t for t in rt.manifest["tensors"]}
    for name, value in {**params, **(optimizer or {})}.items():
        t = tensors.get(name)
        if t is None:
            raise TgcError(f"the compiled model has no tensor {name} that the checkpoint holds")
        if tuple(t["shape"]) != tuple(value.shape):
            raise TgcError(f"checkpoint tensor {name} has shape {list(value.shape)}, the model needs {t['shape']}")
        rt.write(name, np.asarray(value, dtype=np.float32))


def train(preset: str | None = None, corpus: str | None = None, steps: int = 1000, out="runs/ckpt",
          backend: str = "auto", resume: bool = False, seed: int | None = None, lr: float | None = None,
          batch: int | None = None, tokenizer: str | None = None, eval_every: int | None = None,
          eval_batches: int = DEFAULT_EVAL_BATCHES, ckpt_every: int | None = None, model_path=None,
          warmup: int | None = None, stop_at: int | None = None, progress: bool = True, log=print) -> TrainResult:
    """Train (or, with `resume`, continue) a model; `steps` is the total the schedule plans for.
    None means: from the checkpoint when resuming, else the default (preset tiny, corpus
    shakespeare, seed 0, lr and warmup from presets.toml, the preset's batch, byte tokenizer).
    `stop_at` ends the run after that step as Ctrl-C would (a resumable checkpoint)."""
    out = Path(out)
    if steps < 1:
        raise TgcError(f"--steps must be at least 1, got {steps}")
    log = log or (lambda *a: None)
    ck = None
    if resume:
        ck = load_checkpoint(out, resume=True)
    elif (out / CONFIG).exists():
        raise TgcError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    defaults = presets.train_defaults()
    given = {"preset": preset, "corpus": corpus, "tokenizer": tokenizer, "seed": seed, "lr": lr, "batch": batch,
             "warmup": warmup}
    s = _settings(ck.state if ck else None, given,
                  {"preset": "tiny", "corpus": "shakespeare", "tokenizer": "byte", "seed": 0, "lr": defaults["lr"],
                   "warmup": min(defaults["warmup_steps"], max(1, steps // 10))})
    p = presets.get_preset(s["preset"])
    s["batch"] = int(s["batch"] or p["batch"])
    if ck is not None and ck.state.get("total_steps") not in (None, steps):
        log(f"note: the checkpoint planned {ck.state['total_steps']} steps, this run plans {steps}: the learning-rate "
            "schedule changes, so the run will differ from an uninterrupted one")

    # data and tokenizer (a resumed run keeps its tokenizer; a BPE one is trained on the training split)
    data, tok = load_dataset(s["corpus"], tok=ck.tokenizer if ck else None, tokenizer=s["tokenizer"], ctx=p["ctx"])
    if ck is not None and ck.state.get("corpus_digest") not in (None, data.digest):
        log(f"note: corpus {data.name} changed since the checkpoint was saved; batches will differ")
    if ck is None and tok.kind.startswith("bpe:") and tok.vocab_size != int(tok.kind[4:]):
        log(f"note: the corpus gave a BPE vocabulary of {tok.vocab_size} tokens, not {tok.kind[4:]}; the model uses {tok.vocab_size}")
    p["vocab"] = tok.vocab_size
    config = presets.model_config(p)
    if ck is not None:
        if ck.compile_config != config:
            raise TgcError(f"checkpoint config {ck.compile_config} does not match preset {s['preset']} {config}")
        source = ck.source
        model_file = ck.tgc.get("model_origin", "gpt.tg")
    else:
        mp = Path(model_path) if model_path else presets.default_model_path()
        if not mp.exists():
            raise TgcError(f"model file not found: {mp}")
        source, model_file = mp.read_text(), mp.name
    B, T = s["batch"], config["ctx"]

    t0 = time.perf_counter()
    rt, _ = runtime_for(source, s["preset"], {**config, "batch": B}, backend, log=log, programs=("train_step", "eval_loss"))
    backend_name = getattr(rt, "backend", backend)
    rt.init_state(s["seed"])
    start = 0
    history, val_history = [], []
    if ck is not None:
        _write_state(rt, ck.params, ck.optimizer)
        start = ck.state["step"]
        history, val_history = list(ck.state.get("history", [])), list(ck.state.get("val_history", []))
    log(f"{s['preset']}: {config} batch {B}, {data.name} ({len(data.train):,} training / {len(data.val):,} "
        f"validation tokens, tokenizer {tok.kind}), backend {backend_name}, ready in {time.perf_counter() - t0:.1f}s")

    eval_every = eval_every or min(500, max(1, steps // 10))
    ckpt_every = ckpt_every or min(1000, max(1, steps // 4))
    val_set = [data.val_batch(s["seed"], i, B, T) for i in range(max(1, eval_batches))]
    param_names = [t["name"] for t in rt.manifest["tensors"] if t["role"] == "parameter"]
    moment_names = [t["name"] for t in rt.manifest["tensors"] if t["role"] == "optimizer_state"]
    uniforms = {"lr": np.float32(s["lr"]), "warmup": np.float32(s["warmup"]), "total_steps": np.float32(steps)}

    def evaluate() -> float:
        losses = [float(rt.run("eval_loss", inputs={"idx": i, "targets": t}, read=["loss"])["loss"]) for i, t in val_set]
        return float(np.mean(losses))

    def save(step: int) -> None:
        params = {n: rt.read(n) for n in param_names}
        moments = {n: rt.read(n) for n in moment_names}
        tgc = {"preset": s["preset"], "batch": B, "step": step, "corpus": data.name, "tokenizer": tok.kind,
               "model_origin": model_file, "backend": backend_name,
               "train": {**{k: defaults[k] for k in ("beta1", "beta2", "eps", "weight_decay", "grad_clip")},
                         "lr": s["lr"], "warmup": s["warmup"], "total_steps": steps, "seed": s["seed"]}}
        state = {**s, "step": step, "total_steps": steps, "corpus_digest": data.digest,
                 "data": {"stream": "batches", "next_counter": step * B, "rows_per_step": B},
                 "rng": {"batches": step * B, "val": len(val_set) * B},
                 "history": history, "val_history": val_history}
        png = loss_curve_png(history, val_history, f"{s['preset']} on {data.name} ({tok.kind}), step {step}")
        save_checkpoint(out, params, {**config, "activation": "gelu"}, tok, tgc, optimizer=moments, state=state,
                        source=source, extra={"loss.png": png} if png else None)

    from tqdm import tqdm

    last_loss = history[-1][1] if history else None
    last_val = val_history[-1][1] if val_history else None
    end = min(steps, stop_at) if stop_at else steps
    bar = tqdm(total=steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True, leave=True)
    tokens, t_loop = 0, time.perf_counter()
    step = start
    interrupted = False
    with _StopFlag() as flag:
        try:
            while step < end and not flag.stop:
                idx, targets = data.batch(s["seed"], step + 1, B, T)
                outs = rt.run("train_step", inputs={"idx": idx, "targets": targets},
                              uniforms={"step": np.float32(step + 1), **uniforms}, read=["loss"])
                step += 1
                last_loss = float(outs["loss"])
                if step == start + 1 and hasattr(rt, "opened_at"):
                    log(f"step {step} done {time.perf_counter() - rt.opened_at:.2f}s after the runtime opened")
                history.append([step, last_loss])
                tokens += B * T
                if not math.isfinite(last_loss):
                    log(f"step {step}: loss is {last_loss}; stopping (lower --lr?)")
                    break
                if step % eval_every == 0 or step == steps:
                    last_val = evaluate()
                    val_history.append([step, last_val])
                    bar.write(f"step {step}: loss {last_loss:.4f}, val {last_val:.4f}") if progress else log(
                        f"step {step}: loss {last_loss:.4f}, val {last_val:.4f}")
                tok_s = tokens / max(time.perf_counter() - t_loop, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.4f}", val="-" if last_val is None else f"{last_val:.4f}",
                                tok_s=f"{tok_s:,.0f}", refresh=False)
                bar.update(1)
                if step % ckpt_every == 0 and step < end:
                    save(step)
            interrupted = flag.stop or step < end
        except KeyboardInterrupt:
            if flag.stop:  # a second Ctrl-C: stop at once; the state may be mid-step, so nothing is saved
                bar.close()
                log(f"interrupted; the last checkpoint in {out} is kept")
                raise
            interrupted = True  # no handler (not the main thread): the step in flight had not been counted
        finally:
            bar.close()
        tok_s = tokens / max(time.perf_counter() - t_loop, 1e-9)
        if step > start and (not val_history or val_history[-1][0] != step) and math.isfinite(last_loss):
            last_val = evaluate()  # the checkpoint's curve ends with a held-out point
            val_history.append([step, last_val])
        if step > start or not (out / CONFIG).exists():
            save(step)
    stopped = step < steps
    log(f"{'stopped' if stopped else 'done'} at step {step}/{steps}: loss {last_loss if last_loss is None else round(last_loss, 4)}"
        f", val {last_val if last_val is None else round(last_val, 4)}, {tok_s:,.0f} tokens/s; checkpoint {out}"
        + (f" (resume with --resume --steps {steps})" if stopped else ""))
    return TrainResult(out, step, steps, last_loss, last_val, history, val_history, tok_s,
                       interrupted or stopped, backend_name)
