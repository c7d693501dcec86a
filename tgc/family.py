"""Checkpoints of model families other than GPT-2, from their description in models/<family>.toml.

A family is a model file (models/llama.tg), its presets and an [hf] table saying how its
checkpoint is a Hugging Face directory: which config.json field holds each config value of
the model file, which fields must hold fixed values, be null, or follow from the config. The
tensors are the model file's parameters under their own names (the .tg names its parameters
as the Hugging Face class does, in its layouts), so the parameter table comes from lowering
the model file itself and nothing here knows one family from another. GPT-2 keeps its own
code in tgc/checkpoint.py (tied lm head, Conv1D layouts, activation variants); a config
dict of another family carries "family" (the config header's name), which is how
tgc/checkpoint.py tells them apart.

Not here: sharded writes, and families whose tensors need renaming or re-laying out.
"""

from __future__ import annotations

import functools
import math

from tgc import presets
from tgc.errors import TgcError

_MAX_DIM = 2**31 - 1


def info(family: str) -> dict:
    hf = presets.family_info(family)
    if not hf:
        raise TgcError(f"model family {family!r} has no [hf] description in {presets.family_file(family).name}")
    return hf


def for_model_type(model_type) -> str | None:
    """The family whose checkpoints have this config.json model_type (None: GPT-2 or unknown)."""
    for fam in presets.family_names():
        if fam != presets.GPT and info(fam).get("model_type") == model_type:
            return fam
    return None


def model_types() -> list[str]:
    return ["gpt2"] + [info(f)["model_type"] for f in presets.family_names() if f != presets.GPT]


def source(family: str) -> str:
    return presets.family_model_path(family).read_text()


@functools.lru_cache(maxsize=32)
def _model(family: str, config: tuple):
    from tgc.frontend import load_model, parse_text

    path = presets.family_model_path(family)
    return load_model(parse_text(source(family), str(path)), dict(config), filename=str(path))


def _config_items(cfg: dict, family: str) -> tuple:
    return tuple(sorted(presets.model_config(cfg, family).items()))


def full_config(cfg: dict) -> dict:
    """Every config value of the family's model file for `cfg`, the header's defaults included."""
    fam = cfg["family"]
    model = _model(fam, _config_items(cfg, fam))
    return {k: model.config[k] for k in info(fam)["config"]}


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The model file's parameters for `cfg`, in declaration order."""
    fam = cfg["family"]
    return {p.name: tuple(p.shape) for p in _model(fam, _config_items(cfg, fam)).params}


def param_count(cfg: dict) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


def _get(obj: dict, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set(obj: dict, path: str, value) -> None:
    *outer, last = path.split(".")
    for part in outer:
        obj = obj.setdefault(part, {})
    obj[last] = value


def _derived(expr: str, cfg: dict):
    return eval(expr, {"__builtins__": {}}, dict(cfg))  # the packaged family file's own expressions


def hf_config(cfg: dict, tgc: dict) -> dict:
    """config.json of a checkpoint of cfg's family."""
    hf = info(cfg["family"])
    values = full_config(cfg)
    out: dict = {"model_type": hf["model_type"], "architectures": list(hf["architectures"])}
    for key, paths in hf["config"].items():
        for path in paths:
            _set(out, path, values[key])
    for path, v in {**hf.get("require", {}), **hf.get("write", {})}.items():
        _set(out, path, v)
    for path in hf.get("null", ()):
        _set(out, path, None)
    for path, expr in hf.get("derived", {}).items():
        _set(out, path, _derived(expr, values))
    out.update({"bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"), "pad_token_id": None})
    out["tgc"] = tgc
    return out


def config_from_hf(family: str, hf: dict, where: str) -> dict:
    """The model config (with "family") of a config.json of `family`; TgcError for a field out of
    range or a variant the model file does not compute."""
    d = info(family)
    from tgc.frontend import ast as A
    from tgc.frontend import parse_text

    header = next(it for it in parse_text(source(family), "model.tg").items if isinstance(it, A.Config))
    has_default = {p.name for p in header.params if p.default is not None}
    cfg: dict = {"family": family}
    for key, paths in d["config"].items():
        path = next((p for p in paths if _get(hf, p) is not None), paths[0])
        v = _get(hf, path)
        if v is None:
            if key in has_default:
                continue  # the model file's default
            raise TgcError(f"{where}: '{path}' is missing")
        is_int = isinstance(v, int) and not isinstance(v, bool)
        if key in has_default:
            if not (is_int or isinstance(v, float)) or not (math.isfinite(v) and v > 0):
                raise TgcError(f"{where}: '{path}' must be a finite number > 0, got {v!r}")
            cfg[key] = float(v)
        else:
            if not is_int or not 1 <= v <= _MAX_DIM:
                raise TgcError(f"{where}: '{path}' must be an integer from 1 to {_MAX_DIM}, got {v!r}")
            cfg[key] = v
    for path, want in d.get("require", {}).items():
        got = _get(hf, path)
        if got is not None and got != want:
            raise TgcError(f"{where}: unsupported {family} variant: '{path}' is {got!r} (tgc's model needs {want!r})")
    for path in d.get("null", ()):
        if _get(hf, path) is not None:
            raise TgcError(f"{where}: unsupported {family} variant: '{path}' is set (tgc's model has none)")
    values = full_config(cfg)
    for path, expr in d.get("derived", {}).items():
        got, want = _get(hf, path), _derived(expr, values)
        if got is not None and got != want:
            raise TgcError(f"{where}: unsupported {family} variant: '{path}' is {got!r}, tgc's model has {want!r}")
    for key in ("bos_token_id", "eos_token_id"):
        v = hf.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < cfg["vocab"]:
            cfg[key] = v
    return cfg
