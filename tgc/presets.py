"""The preset ladders and training defaults: models/presets.toml, and one file per model family.

A model file's family is the name of its config header (`config GPT(...)`, `config Llama(...)`)
where models/<name in lower case>.toml exists: that file holds the family's presets and
describes its Hugging Face checkpoints (tgc/family.py). Every other model file, gpt.tg among
them, is of the GPT family: models/presets.toml. Training defaults ([train])
are presets.toml's for every family.
"""

from __future__ import annotations

import re
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


GPT = "GPT"  # the family of gpt.tg, whose presets are presets.toml


def family_named(name: str | None) -> str:
    """The family of a config header's name: itself where models/ has its file, else GPT (so a
    model file of one's own, whatever its header says, takes the GPT ladder as it always did)."""
    return name if name and name != GPT and (models_dir() / f"{name.lower()}.toml").is_file() else GPT


def family_of(source: str) -> str:
    """The family of a model's DSL text, from its config header's name (GPT where it has none)."""
    m = re.search(r"^\s*config\s+([A-Za-z_][A-Za-z0-9_]*)", source, re.MULTILINE)
    return family_named(m.group(1) if m else None)


def family_file(family: str) -> Path:
    return models_dir() / ("presets.toml" if family == GPT else f"{family.lower()}.toml")  # see family_named


def family_names() -> list[str]:
    """GPT and every family with a file in models/ that describes its checkpoints ([hf])."""
    names = [GPT]
    for p in sorted(models_dir().glob("*.toml")):
        if p.name != "presets.toml" and (models_dir() / f"{p.stem}.tg").exists():
            names.append(family_of((models_dir() / f"{p.stem}.tg").read_text()))
    return names


def family_model_path(family: str) -> Path:
    return default_model_path() if family == GPT else models_dir() / f"{family.lower()}.tg"


def _load(family: str = GPT) -> dict:
    p = family_file(family)
    if not p.exists():
        raise TgcError(f"model family {family!r} has no presets file ({p.name} in {models_dir()}); "
                       f"known families: {', '.join(family_names())}")
    return tomllib.loads(p.read_text())


def family_info(family: str) -> dict | None:
    """A non-GPT family's [hf] table (tgc/family.py); None for GPT, whose description is code."""
    return None if family == GPT else _load(family).get("hf")


def preset_names(family: str = GPT) -> list[str]:
    return list(_load(family)["presets"])


def all_preset_names() -> list[str]:
    """Every family's preset names, GPT's first (what a command line or a checkpoint may name)."""
    return list(dict.fromkeys(n for f in family_names() for n in preset_names(f)))


def get_preset(name: str, family: str = GPT) -> dict:
    presets = _load(family)["presets"]
    if name not in presets:
        what = "" if family == GPT else f" for the {family} family"
        raise TgcError(f"unknown preset {name!r}{what}; choose one of: {', '.join(presets)}")
    return dict(presets[name])


def train_defaults() -> dict:
    return dict(_load()["train"])


def model_config(preset: dict, family: str = GPT) -> dict:
    """The config values the family's model file takes, from a preset table (or a checkpoint's config);
    gpt.tg's pdrop (the dropout rate) only where a run sets it: it changes train_step alone."""
    keys = ("vocab", "ctx", "d", "heads", "layers", "pdrop") if family == GPT else tuple(family_info(family)["config"])
    return {k: preset[k] for k in keys if k in preset}
