"""The preset ladder and training defaults from models/presets.toml."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from tgc.errors import TgcError


def models_dir() -> Path:
    """The packaged models/ (tgc.models when installed; the repository's models/ in a checkout)."""
    try:
        return Path(str(resources.files("tgc.models")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "models"


def default_model_path() -> Path:
    return models_dir() / "gpt.tg"


def _load() -> dict:
    return tomllib.loads((models_dir() / "presets.toml").read_text())


def preset_names() -> list[str]:
    return list(_load()["presets"])


def get_preset(name: str) -> dict:
    presets = _load()["presets"]
    if name not in presets:
        raise TgcError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return dict(presets[name])


def train_defaults() -> dict:
    return dict(_load()["train"])


def model_config(preset: dict) -> dict:
    """The config values gpt.tg takes, from a preset table (pdrop, the dropout rate, only where
    a run sets it: it changes train_step alone)."""
    return {k: preset[k] for k in ("vocab", "ctx", "d", "heads", "layers", "pdrop") if k in preset}
