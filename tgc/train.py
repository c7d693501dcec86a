"""Training: corpus -> tokenizer -> compiled artifact -> runtime -> train_step loop -> checkpoints.

    result = train("tiny", "shakespeare", steps=2000, out="runs/tiny")
    result = train(None, None, steps=2000, out="runs/tiny", resume=True)   # settings from the checkpoint

What a run is: parameters from the host RNG (runtime.init_state(seed)), batches that
depend only on (seed, step) (tgc/data.py), and train_step with the uniforms step
(1-based), lr (peak), warmup and total_steps (the schedule: linear warmup, cosine decay
to min_lr_ratio of the peak, 10% by default; weight decay and min_lr_ratio are constants
compiled into train_step, so a non-default value compiles its own artifact). A resumed run restores parameters, AdamW moments and the step from the
checkpoint, so it continues exactly as the uninterrupted run would have (same backend,
same --steps). Every `eval_every` steps the mean eval_loss over a fixed set of
`eval_batches` validation batches is logged; every `ckpt_every` steps, at the end and on
Ctrl-C (first press: finish the step, save, stop; second press: stop at once) a
checkpoint is written (tgc/checkpoint.py) with loss.png beside it. With keep_best (the
default) every evaluation that lowers the validation loss also saves the weights as a
complete weights-only checkpoint in CKPT/best/ (its own atomic set, carried along by every
later save of CKPT). `init` starts a new run from another checkpoint's (or a gallery
model's) weights, with fresh AdamW moments: fine-tuning.

Nothing is lost: every option is checked before anything is read; --out must be absent,
empty, or (resuming) a checkpoint, and writable before the first step; the memory a run
needs is stated, and refused when it exceeds what is available, before allocating
(tgc/preflight.py); a non-finite loss or weight stops the run (Diverged) without saving,
so the last checkpoint is the last finite one.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tgc import presets, rng
from tgc.checkpoint import CONFIG, check_not_cwd, load_checkpoint, recover, save_checkpoint
from tgc.data import load_dataset
from tgc.errors import TgcError
from tgc.ir.program import DROPOUT_KEY
from tgc.preflight import checked_runtime, estimate, fmt_bytes, param_count, require

DEFAULT_EVAL_BATCHES = 8
BEST = "best"  # CKPT/best: the weights of the lowest validation loss so far


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
    best_step: int | None = None     # the step whose weights CKPT/best holds
    best_val: float | None = None    # their validation loss


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


# a resumed run may change the learning rate (after a divergence, say) and the regularisation
CHANGEABLE_ON_RESUME = ("lr", "weight_decay", "min_lr_ratio")


def _settings(resume_state: dict | None, given: dict, defaults: dict, log=None) -> dict:
    """Run settings: from the checkpoint on resume (a conflicting explicit value is an error, but for
    the learning rate, which may change with a note), else given or default."""
    out = {}
    for k, v in given.items():
        if resume_state is not None:
            have = resume_state.get(k)
            if v is not None and have is not None and v != have:
                if k in CHANGEABLE_ON_RESUME:
                    if log:
                        log(f"note: {k} changes from {have!r} to {v!r} at step {resume_state['step']}")
                    have = v
                else:
                    raise TgcError(f"the checkpoint was trained with {k} {have!r}, not {v!r}; leave the option out "
                                   "to resume, or start a new run in another --out directory")
            out[k] = have if have is not None else (v if v is not None else defaults.get(k))
        else:
            out[k] = v if v is not None else defaults.get(k)
    return out


def _int_option(name: str, v, lo: int, hi: int | None = None, optional: bool = True) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
        raise TgcError(f"--{name} must be {rng}, got {v!r}")


def _fraction_option(name: str, v) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
        raise TgcError(f"--{name} must be a number from 0 to 1, got {v!r}")


def validate_options(steps, lr, batch, warmup, eval_every, ckpt_every, eval_batches, seed, stop_at, tokenizer,
                     preset, backend, weight_decay=None, min_lr_ratio=None) -> None:
    """Every number and name train() takes, checked before anything is read or compiled."""
    _int_option("steps", steps, 1, 10**9, optional=False)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise TgcError(f"--lr must be a positive finite number, got {lr!r}")
    _fraction_option("weight-decay", weight_decay)
    _fraction_option("min-lr-ratio", min_lr_ratio)
    _int_option("batch", batch, 1, 1 << 20)
    _int_option("warmup", warmup, 0)
    _int_option("eval-every", eval_every, 1)
    _int_option("ckpt-every", ckpt_every, 1)
    _int_option("eval-batches", eval_batches, 1, 10_000)
    _int_option("seed", seed, 0, 2**32 - 1)
    _int_option("stop-at", stop_at, 1)
    if tokenizer is not None:
        from tgc.tokenizer import parse_spec

        parse_spec(tokenizer)
    if preset is not None:
        presets.get_preset(preset)
    from tgc.runtime import BACKENDS

    if backend not in BACKENDS:
        raise TgcError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def check_new_out(out: Path) -> None:
    """A new run's --out must be absent or an empty directory: a checkpoint needs --resume, and a
    directory of anything else is the user's, never overwritten."""
    if not out.exists():
        if out.is_symlink():
            raise TgcError(f"--out {out} is a dangling symbolic link")
        return
    if not out.is_dir():
        raise TgcError(f"--out {out} exists and is not a directory")
    if (out / CONFIG).exists():
        raise TgcError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise TgcError(f"cannot read --out {out}: {e.strerror or e}") from None
    if entries:
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise TgcError(f"--out {out} is not empty ({entries[0]}{more}) and is not a tgc checkpoint; "
                       "tgc never writes over other files: choose a new or empty directory")


def check_writable(out: Path, need_bytes: int) -> None:
    """Before the first step: the checkpoint's parent takes a new directory (a save is built beside
    `out` and switched in), and its disk has room for one save."""
    out = out.resolve() if out.is_symlink() else out
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.tgc-probe-", dir=parent))
        try:
            (probe / "probe").write_bytes(b"x")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        free = shutil.disk_usage(parent).free
    except OSError as e:
        raise TgcError(f"cannot write checkpoints to {out}: {e.strerror or e}"
                       + (f" ({e.filename})" if e.filename else "")) from None
    if need_bytes > free:
        raise TgcError(f"a checkpoint of this model takes about {fmt_bytes(need_bytes)}, but the disk holding "
                       f"{out} has {fmt_bytes(free)} free")


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


def _load_init(init, batch, backend, log):
    """The checkpoint (or gallery model) a fine-tuning run starts from, memory checked first."""
    from tgc import gallery

    def memory(cfg, section):
        b = batch or section.get("batch") or 1
        require(estimate(cfg, b, "train", f"training {section.get('preset') or 'this model'} (batch {b})"), log,
                backend)

    return load_checkpoint(gallery.resolve(init), check_memory=memory)


def _best_record(best_dir: Path) -> tuple[int, float] | None:
    """(step, val_loss) of a resumed run's out/best, from its config.json; None if there is none
    or it cannot be read. (Its step may be later than the checkpoint's, after a kill between
    saves: its weights are real and measured on the same validation batches, so it stands.)"""
    import json

    try:
        rec = json.loads((best_dir / CONFIG).read_text())["tgc"]["best"]
        b = (int(rec["step"]), float(rec["val_loss"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return b if math.isfinite(b[1]) and b[0] >= 1 else None


class Diverged(TgcError):
    """A non-finite loss, gradient norm or weight: the run stops and saves nothing."""


def train(preset: str | None = None, corpus: str | None = None, steps: int = 1000, out="runs/ckpt",
          backend: str = "auto", resume: bool = False, seed: int | None = None, lr: float | None = None,
          batch: int | None = None, tokenizer: str | None = None, eval_every: int | None = None,
          eval_batches: int | None = None, ckpt_every: int | None = None, model_path=None,
          warmup: int | None = None, stop_at: int | None = None, progress: bool = True, log=print,
          weight_decay: float | None = None, min_lr_ratio: float | None = None, keep_best: bool = True,
          init=None, dropout: float | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) a model; `steps` is the total the schedule plans for.
    None means: from the checkpoint when resuming, else the default (preset tiny, corpus
    shakespeare, seed 0, lr, warmup, weight decay and min_lr_ratio from presets.toml, the
    preset's batch, byte tokenizer, no dropout). `stop_at` ends the run after that step as Ctrl-C would
    (a resumable checkpoint). `keep_best`: save the weights of every new lowest validation
    loss in OUT/best. `init`: a checkpoint directory or gallery name whose weights (shape,
    tokenizer and model file too) start this new run; the AdamW moments start at zero.
    `dropout` is the rate of gpt.tg's pdrop, in train_step only; its masks come from the
    host RNG's stream "dropout", one key per step (tgc/ir/program.py).

    Before the first step: every option is checked, --out must be absent or empty (or, with
    `resume`, a checkpoint), its parent writable with room for a save, and the model's memory
    need (estimated, then from the compiled plan) must fit. A non-finite loss or weight stops
    the run with Diverged and leaves the last finite checkpoint as it was."""
    t_start = time.perf_counter()
    out = Path(out)
    validate_options(steps, lr, batch, warmup, eval_every, ckpt_every, eval_batches, seed, stop_at, tokenizer,
                     preset, backend, weight_decay, min_lr_ratio)
    if init is not None and resume:
        raise TgcError("--init starts a new run from a model's weights and --resume continues a checkpoint; "
                       "give one of them")
    if init is not None and model_path is not None:
        raise TgcError("--model cannot be given with --init: the model file comes with the --init checkpoint")
    check_not_cwd(Path(os.path.abspath(out.resolve() if out.is_symlink() else out)), out)
    log = log or (lambda *a: None)
    try:
        if recover(out.resolve() if out.is_symlink() else out):
            log(f"note: finished or removed an interrupted save of {out}")
        if recover((out.resolve() if out.is_symlink() else out) / BEST):
            log(f"note: finished or removed an interrupted save of {out / BEST}")
    except OSError as e:
        raise TgcError(f"cannot clean up an interrupted save of {out}: {e.strerror or e}") from None
    ck = init_ck = None
    if resume:
        def memory(cfg, section):
            b = batch or section.get("batch") or 1
            require(estimate(cfg, b, "train", f"training {section.get('preset') or 'this model'} (batch {b})"), log,
                    backend)

        ck = load_checkpoint(out, resume=True, check_memory=memory)
    else:
        check_new_out(out)
        if init is not None:
            init_ck = _load_init(init, batch, backend, log)
    shape_ck = ck or init_ck  # where the model's shape comes from, if not from a preset
    if init_ck is not None:
        have = init_ck.tgc.get("preset")
        if preset is not None and preset != have:
            raise TgcError(f"--init {init} has {'the shape of preset ' + have if have else 'a shape of its own'}, "
                           f"not preset {preset}; leave --preset out")
        if tokenizer is not None and tokenizer != init_ck.tokenizer.kind:
            raise TgcError(f"--init {init} has the tokenizer {init_ck.tokenizer.kind}, not {tokenizer}; "
                           "leave --tokenizer out")
    defaults = presets.train_defaults()
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        raise TgcError(f"--dropout must be a number from 0 up to (not including) 1, got {dropout!r}")
    given = {"preset": preset, "corpus": corpus, "tokenizer": tokenizer, "seed": seed, "lr": lr, "batch": batch,
             "warmup": warmup, "weight_decay": weight_decay, "min_lr_ratio": min_lr_ratio, "dropout": dropout}
    s = _settings(ck.state if ck else None, given,
                  {"preset": shape_ck.tgc.get("preset") if shape_ck else "tiny", "corpus": "shakespeare",
                   "tokenizer": init_ck.tokenizer.kind if init_ck else "byte", "seed": 0, "lr": defaults["lr"],
                   "warmup": min(defaults["warmup_steps"], max(1, steps // 10)),
                   "weight_decay": defaults["weight_decay"], "min_lr_ratio": defaults.get("min_lr_ratio", 0.1),
                   "dropout": 0.0}, log)
    p = presets.get_preset(s["preset"] or "tiny")
    if shape_ck is not None and not s["preset"]:  # a model of no preset's shape (an import): its own config
        p.update(shape_ck.compile_config)
    s["batch"] = int(s["batch"] or (init_ck.tgc.get("batch") if init_ck else None) or p["batch"])
    label = s["preset"] or "model"
    if ck is not None and ck.state.get("total_steps") not in (None, steps):
        log(f"note: the checkpoint planned {ck.state['total_steps']} steps, this run plans {steps}: the learning-rate "
            "schedule changes, so the run will differ from an uninterrupted one")

    # data and tokenizer (a resumed run keeps its tokenizer; a BPE one is trained on the training split)
    data, tok = load_dataset(s["corpus"], tok=shape_ck.tokenizer if shape_ck else None, tokenizer=s["tokenizer"],
                             ctx=p["ctx"])
    if ck is not None and ck.state.get("corpus_digest") not in (None, data.digest):
        log(f"note: corpus {data.name} changed since the checkpoint was saved; batches will differ")
    if shape_ck is None and tok.kind.startswith("bpe:") and tok.vocab_size != int(tok.kind[4:]):
        log(f"note: the corpus gave a BPE vocabulary of {tok.vocab_size} tokens, not {tok.kind[4:]}; the model uses {tok.vocab_size}")
    p["vocab"] = tok.vocab_size
    config = presets.model_config(p)
    if ck is not None and ck.compile_config != config:
        raise TgcError(f"checkpoint config {ck.compile_config} does not match preset {s['preset']} {config}")
    if shape_ck is not None:
        source = shape_ck.source
        model_file = shape_ck.tgc.get("model_origin", "gpt.tg")
        filename = str(shape_ck.path / "model.tg")
    else:
        mp = Path(model_path) if model_path else presets.default_model_path()
        if not mp.is_file():
            raise TgcError(f"model file not found: {mp}")
        try:
            source = mp.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TgcError(f"cannot read the model file {mp}: {e}") from None
        model_file, filename = mp.name, str(mp)
    B, T = s["batch"], config["ctx"]
    what = f"training {label} (batch {B})"
    need = estimate(config, B, "train", what)
    if ck is None:
        require(need, log, backend)
    n_params = param_count(config) if need is not None else 0
    check_writable(out, 3 * 4 * n_params + 4 * (len(data.val) + 1024))

    t0 = time.perf_counter()
    # weight decay and min_lr_ratio are compiled into train_step: only values other than
    # presets.toml's join the overrides, so a default run shares its artifact with earlier ones;
    # likewise pdrop (dropout) only when a run sets it
    regular = {k: float(s[k]) for k in ("weight_decay", "min_lr_ratio") if float(s[k]) != float(defaults.get(k, 0.1))}
    if s["dropout"]:
        regular["pdrop"] = float(s["dropout"])
    rt = checked_runtime(source, s["preset"], {**config, "batch": B, **regular}, backend, "train", what, log,
                         filename, ("train_step", "eval_loss"))
    backend_name = getattr(rt, "backend", backend)
    rt.init_state(s["seed"])
    start = 0
    history, val_history = [], []
    prev_wall = 0.0
    best = None  # (step, validation loss) of the weights in out/best
    if ck is not None:
        _write_state(rt, ck.params, ck.optimizer)
        start = ck.state["step"]
        history, val_history = list(ck.state.get("history", [])), list(ck.state.get("val_history", []))
        prev_wall = float(ck.state.get("wall_s") or 0.0)
        best = _best_record(out / BEST)
    elif init_ck is not None:
        _write_state(rt, init_ck.params, None)  # the moments stay as init_state left them: zero
        log(f"weights from {init_ck.path} (step {init_ck.step}); AdamW moments start at zero")
    log(f"{label}: {config} batch {B}, {data.name} ({len(data.train):,} training / {len(data.val):,} "
        f"validation tokens, tokenizer {tok.kind}), backend {backend_name}, ready in {time.perf_counter() - t0:.1f}s")

    # when to evaluate and save: given, else the checkpoint's (so a resumed run logs what the whole run would), else
    # from the run's length; these change no weight, so a resumed run may change them
    saved_sched = (ck.state.get("schedule") or {}) if ck is not None else {}
    eval_every = eval_every or saved_sched.get("eval_every") or min(500, max(1, steps // 10))
    ckpt_every = ckpt_every or saved_sched.get("ckpt_every") or min(1000, max(1, steps // 4))
    eval_batches = eval_batches or saved_sched.get("eval_batches") or DEFAULT_EVAL_BATCHES
    val_set = [data.val_batch(s["seed"], i, B, T) for i in range(eval_batches)]
    param_names = [t["name"] for t in rt.manifest["tensors"] if t["role"] == "parameter"]
    moment_names = [t["name"] for t in rt.manifest["tensors"] if t["role"] == "optimizer_state"]
    uniforms = {"lr": np.float32(s["lr"]), "warmup": np.float32(s["warmup"]), "total_steps": np.float32(steps)}
    reads = ["loss"] + (["grad_norm"] if "grad_norm" in rt.manifest["programs"]["train_step"]["outputs"] else [])
    saved = start if ck is not None else None  # the step of the last checkpoint on disk

    def diverged(step: int, what: str) -> Diverged:
        kept = (f"the last finite checkpoint, step {saved}, is kept in {out}" if saved is not None
                else "no checkpoint was written")
        if best is not None:
            kept += f" (and the best weights, step {best[0]}, in {out / BEST})"
        return Diverged(f"training diverged at step {step}: {what}; {kept}; lower the learning rate "
                        f"(--lr, now {s['lr']:g}) and resume, or start again")

    def evaluate() -> float:
        losses = [float(rt.run("eval_loss", inputs={"idx": i, "targets": t}, read=["loss"])["loss"]) for i, t in val_set]
        return float(np.mean(losses))

    def section(step: int) -> dict:
        """config.json's tgc section of a save at `step`."""
        tgc = {"preset": s["preset"], "batch": B, "step": step, "corpus": data.name, "tokenizer": tok.kind,
               "model_origin": model_file, "backend": backend_name,
               "train": {**{k: defaults[k] for k in ("beta1", "beta2", "eps", "grad_clip")},
                         "weight_decay": s["weight_decay"], "min_lr_ratio": s["min_lr_ratio"],
                         "lr": s["lr"], "warmup": s["warmup"], "total_steps": steps, "seed": s["seed"],
                         "dropout": s["dropout"]},
               "wall_s": round(prev_wall + time.perf_counter() - t_start, 1)}
        if history:
            tgc["train_loss"] = history[-1][1]
        if val_history:
            tgc["val_loss"] = val_history[-1][1]
        if init_ck is not None or (ck is not None and ck.tgc.get("init")):
            tgc["init"] = str(init_ck.path) if init_ck is not None else ck.tgc["init"]
        return tgc

    def read_params(step: int) -> dict:
        params = {n: rt.read(n) for n in param_names}
        for n, v in params.items():
            if not np.isfinite(v).all():
                raise diverged(step, f"{n} holds non-finite values")
        return params

    def save(step: int) -> None:
        nonlocal saved
        params = read_params(step)
        moments = {n: rt.read(n) for n in moment_names}
        for n, v in moments.items():
            if not np.isfinite(v).all():
                raise diverged(step, f"{n} holds non-finite values")
        state = {**s, "step": step, "total_steps": steps, "corpus_digest": data.digest,
                 "data": {"stream": "batches", "next_counter": step * B, "rows_per_step": B},
                 "rng": {"batches": step * B, "val": len(val_set) * B},
                 "schedule": {"eval_every": eval_every, "ckpt_every": ckpt_every, "eval_batches": eval_batches},
                 "history": history, "val_history": val_history,
                 "wall_s": round(prev_wall + time.perf_counter() - t_start, 1)}
        if best is not None:
            state["best"] = {"step": best[0], "val_loss": best[1]}
        png = loss_curve_png(history, val_history, f"{label} on {data.name} ({tok.kind}), step {step}")
        save_checkpoint(out, params, {**config, "activation": "gelu"}, tok, section(step), optimizer=moments,
                        state=state, source=source, extra={"loss.png": png} if png else None)
        saved = step

    def save_best(step: int, val: float) -> None:
        """out/best: the weights at `step` (weights only), its own atomic set inside out. The
        resumable checkpoint is written first if there is none yet, so out/best never stands alone."""
        nonlocal best
        if not (out / CONFIG).exists():
            save(step)
        tgc = {**section(step), "best": {"step": step, "val_loss": val}}
        save_checkpoint(out / BEST, read_params(step), {**config, "activation": "gelu"}, tok, tgc, source=source)
        best = (step, val)

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
                if s["dropout"]:  # the step's key: counter `step` of stream "dropout" (tgc/ir/program.py)
                    uniforms[DROPOUT_KEY] = rng.bits(s["seed"], "dropout", step, 1).view(np.int32)[0]
                outs = rt.run("train_step", inputs={"idx": idx, "targets": targets},
                              uniforms={"step": np.float32(step + 1), **uniforms}, read=reads)
                step += 1
                last_loss = float(outs["loss"])
                if not math.isfinite(last_loss):
                    raise diverged(step, f"the loss is {last_loss}")
                if "grad_norm" in outs and not math.isfinite(float(outs["grad_norm"])):
                    raise diverged(step, f"the gradient norm is {float(outs['grad_norm'])}")
                if step == start + 1 and hasattr(rt, "opened_at"):
                    log(f"step {step} done {time.perf_counter() - rt.opened_at:.2f}s after the runtime opened")
                history.append([step, last_loss])
                tokens += B * T
                if step % eval_every == 0 or step == steps:
                    last_val = evaluate()
                    if not math.isfinite(last_val):
                        raise diverged(step, f"the validation loss is {last_val}")
                    val_history.append([step, last_val])
                    better = keep_best and (best is None or last_val < best[1])
                    note = f"step {step}: loss {last_loss:.4f}, val {last_val:.4f}" + (" (best)" if better else "")
                    bar.write(note) if progress else log(note)
                    if better:
                        save_best(step, last_val)
                tok_s = tokens / max(time.perf_counter() - t_loop, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.4f}", val="-" if last_val is None else f"{last_val:.4f}",
                                tok_s=f"{tok_s:,.0f}", refresh=False)
                bar.update(1)
                if step % ckpt_every == 0 and step < end and saved != step:
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
        if step > start and (not val_history or val_history[-1][0] != step):
            last_val = evaluate()  # the checkpoint's curve ends with a held-out point
            if not math.isfinite(last_val):
                raise diverged(step, f"the validation loss is {last_val}")
            val_history.append([step, last_val])
            if keep_best and (best is None or last_val < best[1]):
                save_best(step, last_val)
        if (step > start and saved != step) or not (out / CONFIG).exists():
            save(step)
    stopped = step < steps
    log(f"{'stopped' if stopped else 'done'} at step {step}/{steps}: loss {last_loss if last_loss is None else round(last_loss, 4)}"
        f", val {last_val if last_val is None else round(last_val, 4)}, {tok_s:,.0f} tokens/s; checkpoint {out}"
        + (f" (resume with --resume --steps {steps})" if stopped else ""))
    if best is not None:
        log(f"best val {best[1]:.4f} at step {best[0]}: {out / BEST}")
    return TrainResult(out, step, steps, last_loss, last_val, history, val_history, tok_s,
                       interrupted or stopped, backend_name, best[0] if best else None, best[1] if best else None)
