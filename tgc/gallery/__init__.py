"""The gallery: pretrained models shipped inside the package, addressable by name.

    gallery.models()              -> [GalleryModel], sorted by name (`tgc models` prints them)
    gallery.resolve("shakespeare") -> Path of tgc/gallery/shakespeare
    gallery.resolve("runs/x")      -> Path("runs/x"): an existing directory is always itself

Each model is a directory tgc/gallery/NAME/ (this package's directory; $TGC_GALLERY_DIR
points elsewhere, for tests or a collection of one's own): a Hugging Face GPT-2 directory
as `tgc export --dtype fp16` writes it (config.json with its tgc section, fp16
model.safetensors, tokenizer.json, tokenizer_config.json, model.tg), plus card.json, the
model card: how it was trained and what it scores (CARD_FIELDS). Anything that takes a
checkpoint directory (`tgc generate`, `tgc train --init`, `tgc bundle`) takes a gallery
name where no directory of that name exists. What this leaves out: downloading models;
the gallery is what the installed package holds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tgc.errors import TgcError

CARD = "card.json"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")

# card.json: what a model card records (None where not known yet). `tgc export` fills in what
# the checkpoint knows; the rest (wall time on the training machine, samples, the text's
# licence) is written by whoever trains the model.
CARD_FIELDS = {
    "name": "the gallery name",
    "description": "one line on what the model writes",
    "corpus": "the corpus it was trained on (a tgc corpus name, or the file's name)",
    "licence": "the licence of the training text",
    "preset": "the preset of its shape, or null",
    "config": "layers, heads, d, ctx, vocab",
    "params": "parameter count",
    "tokenizer": "byte or bpe:N",
    "steps": "training steps taken",
    "batch": "batch size",
    "schedule": "lr, warmup, total_steps, min_lr_ratio, weight_decay (and dropout where used)",
    "best_step": "the step whose weights these are (keep-best), or null",
    "train_loss": "training loss at the last step (nats/token)",
    "val_loss": "held-out loss of these weights as tgc estimated it in training (nats/token; nats/byte for the byte tokenizer)",
    "heldout_transformers": "the whole held-out split scored by transformers on the CPU: {nats_per_byte, command, scorer} "
                            "(benchmarks/score_heldout.py), or null",
    "wall_time_s": "training wall time in seconds, compile included",
    "device": "where it trained (backend, GPU)",
    "dtype": "the weights' dtype",
    "samples": "a list of {prompt, text, temperature, top_k, seed}",
    "tgc_version": "the tgc version that trained it",
}


def gallery_dir() -> Path:
    """$TGC_GALLERY_DIR, else this package's directory."""
    env = os.environ.get("TGC_GALLERY_DIR")
    return Path(env) if env else Path(__file__).resolve().parent


@dataclass
class GalleryModel:
    name: str
    path: Path
    card: dict = field(default_factory=dict)
    params: int | None = None
    size_bytes: int = 0
    problem: str | None = None  # why card.json or config.json could not be read, if so


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def _read_model(d: Path) -> GalleryModel:
    from tgc.checkpoint import CONFIG, model_config_from_hf
    from tgc.preflight import param_count

    m = GalleryModel(d.name, d, size_bytes=_size(d))
    try:
        m.params = param_count(model_config_from_hf(json.loads((d / CONFIG).read_text()), str(d / CONFIG)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TgcError) as e:
        m.problem = f"{CONFIG}: {e}"
    if (d / CARD).exists():
        try:
            card = json.loads((d / CARD).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            card = f"unreadable ({e})"
        if isinstance(card, dict):
            m.card = card
        else:
            m.problem = m.problem or f"{CARD}: {card if isinstance(card, str) else 'not a JSON object'}"
    return m


def models() -> list[GalleryModel]:
    """Every model in the gallery directory: subdirectories holding a config.json."""
    root = gallery_dir()
    if not root.is_dir():
        return []
    return [_read_model(d) for d in sorted(root.iterdir())
            if d.is_dir() and NAME.match(d.name) and (d / "config.json").is_file()]


def names() -> list[str]:
    return [m.name for m in models()]


def resolve(ckpt) -> Path:
    """A checkpoint directory: `ckpt` itself when it exists (or an interrupted save of it does),
    else the gallery model of that name; a one-line TgcError naming the gallery's models otherwise."""
    from tgc.checkpoint import current_dir

    p = Path(ckpt)
    if p.exists() or current_dir(p).exists():
        return p
    text = str(ckpt)
    if NAME.match(text):
        d = gallery_dir() / text
        if (d / "config.json").is_file():
            return d
    have = names()
    listed = f"gallery models: {', '.join(have)}" if have else f"the gallery ({gallery_dir()}) holds no models"
    raise TgcError(f"{text}: no such checkpoint directory, and no gallery model of that name ({listed}; "
                   "tgc models lists them)")


def card_from_checkpoint(ck, name: str, dtype: str) -> dict:
    """card.json's fields that a checkpoint's config.json records; the others are None."""
    from tgc.preflight import param_count

    t = ck.tgc
    train = t.get("train") or {}
    best = t.get("best") or {}
    card = dict.fromkeys(CARD_FIELDS)
    card.update({
        "name": name,
        "corpus": t.get("corpus"),
        "preset": t.get("preset"),
        "config": ck.compile_config,
        "params": param_count(ck.config),
        "tokenizer": ck.tokenizer.kind,
        "steps": t.get("step"),
        "batch": t.get("batch"),
        "schedule": {k: train.get(k) for k in ("lr", "warmup", "total_steps", "min_lr_ratio", "weight_decay",
                                               "dropout") if k in train} or None,
        "best_step": best.get("step"),
        "train_loss": t.get("train_loss"),
        "val_loss": best.get("val_loss", t.get("val_loss")),
        "wall_time_s": t.get("wall_s"),
        "device": t.get("backend"),
        "dtype": dtype,
        "tgc_version": t.get("version"),
        "samples": [],
    })
    return card


def artifact_current(m: GalleryModel) -> bool:
    """Whether the model's shipped generation artifact matches this installation's compiler
    (so a first `tgc generate` from it compiles nothing)."""
    from tgc.artifacts import GENERATE_PROGRAMS, PREBUILT_DIR, artifact_key, prebuilt_matches
    from tgc.checkpoint import load_checkpoint
    from tgc.generate import generation_artifact

    source, preset, overrides = generation_artifact(load_checkpoint(m.path))
    return prebuilt_matches(m.path / PREBUILT_DIR, artifact_key(source, preset or "tiny", overrides,
                                                                GENERATE_PROGRAMS))


def refresh_artifacts(log=print) -> list[str]:
    """Recompile the shipped generation artifact of every gallery model whose artifact is missing
    or stale (after a change to the compiler); the names refreshed. For maintainers: it writes
    into the gallery directory."""
    from tgc.artifacts import PREBUILT_DIR, write_prebuilt
    from tgc.checkpoint import MODEL_SOURCE, load_checkpoint
    from tgc.generate import generation_artifact

    done = []
    for m in models():
        if artifact_current(m):
            continue
        write_prebuilt(*generation_artifact(load_checkpoint(m.path)), m.path / PREBUILT_DIR, log=log,
                       filename=str(m.path / MODEL_SOURCE))
        log(f"{m.name}: wrote {m.path / PREBUILT_DIR}")
        done.append(m.name)
    return done
