"""Checkpoints: a Hugging Face GPT-2 directory, plus what tgc needs to resume.

    CKPT/config.json             GPT2Config fields + a "tgc" section (preset, batch, model file, training settings, step)
    CKPT/model.safetensors       GPT-2 names and layouts; lm_head is tied to wte and not stored (as save_pretrained does)
    CKPT/tokenizer.json          `tokenizers` format; tokenizer_config.json makes AutoTokenizer pick PreTrainedTokenizerFast
    CKPT/model.tg                the DSL source the weights belong to (gpt.tg, or a variant: see import_hf)
    CKPT/optimizer.safetensors   AdamW moments adam_m/<param>, adam_v/<param>          (resume only)
    CKPT/trainer_state.json      step, seed, schedule, data position, loss history       (resume only)
    CKPT/loss.png                the loss curve (train.py)

`transformers.GPT2LMHeadModel.from_pretrained(CKPT)` and `PreTrainedTokenizerFast(tokenizer_file=...)`
load it as it is. A save is atomic as a set: it is built complete in a sibling directory and
switched in whole (see "atomic checkpoint sets" below, and docs/usage.md), so a kill at any
instant leaves the previous save or the new one, never a mix; every file of one save also
carries the same checkpoint id, and loading refuses files from different saves. Loading
checks everything (every config.json / tokenizer_config.json / trainer_state.json field by
type and range, files present and readable, tensor names, dtypes, shapes and finiteness,
the tokenizer's vocabulary against the model's) and raises a one-line TgcError without
touching the files. What this leaves out: sharded or non-GPT-2 layouts (only for import),
and models whose parameters are not GPT-2's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tgc import __version__, presets
from tgc.errors import TgcError
from tgc.tokenizer import Tokenizer, byte_tokenizer, hf_tokenizer, tokenizer_from_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_SOURCE = "model.tg"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
TMP_PREFIX = ".tgc-tmp-"
DEFAULT_EPS = 1e-5
# HF activation name -> the DSL function gpt.tg's MLP is given (exact erf GELU is HF's "gelu")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


# ---- GPT-2 layout

def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """GPT-2's parameter names and shapes (Conv1D weights [in, out]) in declaration order."""
    V, T, d = cfg["vocab"], cfg["ctx"], cfg["d"]
    shapes = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (T, d)}
    for i in range(cfg["layers"]):
        h = f"transformer.h.{i}"
        shapes.update({
            f"{h}.ln_1.weight": (d,), f"{h}.ln_1.bias": (d,),
            f"{h}.attn.c_attn.weight": (d, 3 * d), f"{h}.attn.c_attn.bias": (3 * d,),
            f"{h}.attn.c_proj.weight": (d, d), f"{h}.attn.c_proj.bias": (d,),
            f"{h}.ln_2.weight": (d,), f"{h}.ln_2.bias": (d,),
            f"{h}.mlp.c_fc.weight": (d, 4 * d), f"{h}.mlp.c_fc.bias": (4 * d,),
            f"{h}.mlp.c_proj.weight": (4 * d, d), f"{h}.mlp.c_proj.bias": (d,),
        })
    shapes.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
    return shapes


def hf_config(cfg: dict, tgc: dict) -> dict:
    """config.json for model config `cfg` (vocab, ctx, d, heads, layers[, eps, activation])."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg["vocab"],
        "n_positions": cfg["ctx"],
        "n_embd": cfg["d"],
        "n_layer": cfg["layers"],
        "n_head": cfg["heads"],
        "n_inner": None,  # 4 * n_embd
        "activation_function": HF_ACTIVATION[cfg.get("activation", "gelu")],
        "layer_norm_epsilon": cfg.get("eps", DEFAULT_EPS),
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,  # tgc's dropout is a training setting (trainer_state.json)
        "initializer_range": 0.02,
        "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"), "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
        "tgc": tgc,
    }


def model_config_from_hf(hf: dict, where: str) -> dict:
    """The tgc model config of a GPT2Config dict; TgcError for what gpt.tg cannot express."""
    _validate_hf_config(hf, where)
    if hf.get("model_type") != "gpt2":
        raise TgcError(f"{where}: model_type is {hf.get('model_type')!r}; only GPT-2 ('gpt2') checkpoints are supported")
    try:
        cfg = {"vocab": int(hf["vocab_size"]), "ctx": int(hf["n_positions"]), "d": int(hf["n_embd"]),
               "heads": int(hf["n_head"]), "layers": int(hf["n_layer"])}
    except (KeyError, TypeError, ValueError) as e:
        raise TgcError(f"{where}: config is missing or has a bad {e}") from None
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise TgcError(f"{where}: activation_function {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    cfg["activation"] = ACTIVATIONS[act]
    cfg["eps"] = float(hf.get("layer_norm_epsilon", DEFAULT_EPS))
    for key in ("bos_token_id", "eos_token_id"):  # kept where they name a token (GPT2Config's default
        v = hf.get(key)                           # 50256 stays in a config of a smaller vocabulary)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < cfg["vocab"]:
            cfg[key] = v
    checks = [
        (hf.get("n_inner") in (None, 4 * cfg["d"]), f"n_inner {hf.get('n_inner')} (tgc's MLP is 4 * n_embd)"),
        (cfg["d"] % cfg["heads"] == 0, f"n_embd {cfg['d']} not divisible by n_head {cfg['heads']}"),
        (hf.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx"),
        (not hf.get("add_cross_attention", False), "add_cross_attention"),
        (hf.get("tie_word_embeddings", True), "untied word embeddings (tgc ties the lm head to wte)"),
    ]
    for ok, what in checks:
        if not ok:
            raise TgcError(f"{where}: unsupported GPT-2 variant: {what}")
    return cfg


def model_source(cfg: dict, base: str | None = None) -> str:
    """gpt.tg's text for `cfg`: the packaged model, its MLP switched to gelu_tanh and its
    eps default changed where the config asks for them."""
    src = base if base is not None else presets.default_model_path().read_text()
    if cfg.get("activation", "gelu") == "gelu_tanh":
        src, n = re.subn(r"\bgelu\(", "gelu_tanh(", src)
        if n == 0:
            raise TgcError("the model file has no gelu( call to switch to gelu_tanh")
    eps = cfg.get("eps", DEFAULT_EPS)
    if eps != DEFAULT_EPS:
        src, n = re.subn(r"(\bconfig\b[^\n]*\beps\s*=\s*)[0-9.eE+-]+", lambda m: f"{m.group(1)}{eps:e}", src, count=1)
        if n == 0:
            raise TgcError("the model file's config has no eps default to change")
    return src


# ---- atomic checkpoint sets
#
# A save is built completely in a sibling directory, <parent>/.<name>.tgc-new, every file
# fsynced, and then switched in as a whole: on Linux by renameat2(RENAME_EXCHANGE), one
# atomic swap of the two directories (the sibling then holds the previous save and is
# deleted); elsewhere, or on a filesystem without it, by two renames, CKPT ->
# .<name>.tgc-old and .<name>.tgc-new -> CKPT. A kill between those two leaves no CKPT
# but a complete .tgc-new (it was finished before CKPT moved): `recover` (run by every
# save and every training run) renames it in, readers load it where it is, and leftovers
# of an interrupted save are deleted. So a kill at any instant leaves the previous
# complete save, or the new one, and nothing that mixes the two.
#
# Test hooks (tests/test_robust_kill.py): TGC_TEST_KILL_AT=POINT[@N] SIGKILLs the process
# the N-th time (default the first) a save reaches POINT: "write:<file>" after each file
# of the new save, "written" before the switch, "exchanged" after the swap, "old-moved"
# and "new-moved" after each rename of the two-rename switch, "saved" at the end.
# TGC_TEST_NO_EXCHANGE=1 forces the two-rename switch.

NEW_SUFFIX = ".tgc-new"
OLD_SUFFIX = ".tgc-old"
_HOOK_COUNTS: dict[str, int] = {}


def _test_hook(point: str) -> None:
    spec = os.environ.get("TGC_TEST_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _HOOK_COUNTS[point] = _HOOK_COUNTS.get(point, 0) + 1
    if _HOOK_COUNTS[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the block ends (main thread only), so a switch finishes once begun."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = signal.signal(signal.SIGINT, lambda s, f: caught.append(s))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            raise KeyboardInterrupt


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sibling(out: Path, suffix: str) -> Path:
    """Where a save of `out` is built (NEW_SUFFIX) or parked while switching (OLD_SUFFIX)."""
    return out.parent / f".{out.name}{suffix}"


@functools.cache
def _renameat2():
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = None if os.environ.get("TGC_TEST_NO_EXCHANGE") else _renameat2()
    if fn is None:
        return False
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def current_dir(out: Path) -> Path:
    """The directory holding `out`'s complete save: `out`, or while a two-rename switch was cut
    short, the finished new save beside it (then the parked previous one)."""
    if out.is_dir() or not sibling(out, OLD_SUFFIX).is_dir():
        return out
    new = sibling(out, NEW_SUFFIX)
    return new if new.is_dir() else sibling(out, OLD_SUFFIX)


def recover(out: Path) -> bool:
    """Finish or undo an interrupted save of `out` and delete its leftovers; True if there were any."""
    new, old = sibling(out, NEW_SUFFIX), sibling(out, OLD_SUFFIX)
    if not (new.exists() or old.exists()):
        return False
    if not out.exists() and old.is_dir():
        os.rename(new if new.is_dir() else old, out)
        _fsync(out.parent)
    for d in (new, old):  # what is left is the previous save, or a new one never finished
        if d.exists():
            shutil.rmtree(d)
    return True


def _switch(new: Path, out: Path) -> None:
    if not out.exists():
        os.rename(new, out)
    elif _exchange(new, out):
        _test_hook("exchanged")
        _fsync(out.parent)
        shutil.rmtree(new)  # now the previous save
    else:
        old = sibling(out, OLD_SUFFIX)
        os.rename(out, old)
        _test_hook("old-moved")
        try:
            os.rename(new, out)
        except OSError:
            os.rename(old, out)
            raise
        _test_hook("new-moved")
        _fsync(out.parent)
        shutil.rmtree(old)
    _fsync(out.parent)


def _write(path: Path, content) -> None:
    """One file of a save: bytes, str, or a callable that writes `path`; fsynced."""
    if callable(content):
        content(path)
    else:
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
    _fsync(path)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_files(out, files: dict[str, object], drop=()) -> None:
    """Make directory `out` hold `files` ({name: bytes | str | callable(path)}) as one atomic set.
    Other entries already in `out` are carried over, except the names in `drop`. An OSError
    (disk full, no permission) is a one-line TgcError and leaves `out` as it was."""
    out = Path(out)
    real = Path(os.path.abspath(out.resolve() if out.is_symlink() else out))
    check_not_cwd(real, out)
    new = sibling(real, NEW_SUFFIX)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        if real.exists() and not real.is_dir():
            raise TgcError(f"{out} exists and is not a directory")
        recover(real)
        new.mkdir()
        for name, content in files.items():
            _write(new / name, content)
            _test_hook(f"write:{name}")
        if real.is_dir():
            os.chmod(new, stat.S_IMODE(real.stat().st_mode))
            for p in real.iterdir():
                if p.name in files or p.name in drop or p.name.startswith(TMP_PREFIX):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.copytree(p, new / p.name, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(p, new / p.name)
        _fsync(new)
        _test_hook("written")
        with _sigint_deferred():
            _switch(new, real)
        _test_hook("saved")
    except OSError as e:
        where = f" ({Path(e.filename).name})" if e.filename else ""
        raise TgcError(f"cannot save the checkpoint {out}: {e.strerror or e}{where}; "
                       "the previous checkpoint is unchanged") from None
    finally:  # a failed save leaves nothing behind, but never deletes the only complete copy
        if new.exists() and (real.exists() or not sibling(real, OLD_SUFFIX).exists()):
            shutil.rmtree(new, ignore_errors=True)


def check_not_cwd(real: Path, given) -> None:
    """A checkpoint is switched in as a whole directory: never the working directory or one above it."""
    cwd = Path.cwd()
    if real == cwd or real in cwd.parents:
        raise TgcError(f"{given} is the working directory or contains it; a checkpoint needs a directory of its own "
                       "(for example --out runs/NAME)")


_BF16 = "BF16"
# what `tgc export --dtype` writes: name -> (safetensors dtype, config.json's "dtype")
DTYPES = {"fp32": ("F32", "float32"), "fp16": ("F16", "float16"), "bf16": (_BF16, "bfloat16")}


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of f32 values, rounded to nearest even (as torch rounds)."""
    bits = np.ascontiguousarray(x, dtype="<f4").view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype("<u2")


def _stored(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2")
    if dtype == "BF16":
        return f32_to_bf16(a)
    return np.ascontiguousarray(a, dtype="<f4")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str], dtype: str = "F32") -> None:
    """The safetensors format, written directly: an 8-byte little-endian header length, the JSON
    header (name -> dtype, shape, data_offsets; __metadata__), then the data, streamed from
    the arrays without copies, fsynced. `dtype`: F32, F16 or BF16 (converted from f32 here).
    An OSError carries its errno (ENOSPC and all)."""
    arrays = {k: _stored(v, dtype) for k, v in tensors.items()}
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    off = 0
    for k, a in arrays.items():
        header[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for a in arrays.values():
            f.write(a.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())


def safetensors_metadata(p: Path) -> dict:
    """The __metadata__ of a safetensors file, from its header alone ({} if it cannot be read)."""
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > min(p.stat().st_size - 8, 1 << 27):
                return {}
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def save_checkpoint(out, params: dict, config: dict, tokenizer: Tokenizer, tgc: dict | None = None,
                    optimizer: dict | None = None, state: dict | None = None, source: str | None = None,
                    extra: dict | None = None, allow_nonfinite: bool = False, dtype: str = "fp32") -> Path:
    """Write a checkpoint directory as one atomic set (see "atomic checkpoint sets" above).
    `config`: vocab, ctx, d, heads, layers (+ eps, activation); `tgc`: the config.json section
    (preset, batch, training settings, step); `optimizer` and `state` (trainer_state.json) only
    for resumable checkpoints; `extra`: more files (loss.png); `dtype` (a DTYPES name) of the
    weights file (moments are always f32). Non-finite weights or moments are refused (a diverged
    run must not replace a good checkpoint), and so is a weight too large for `dtype`, unless
    `allow_nonfinite`."""
    out = Path(out)
    shapes = param_shapes(config)
    _check_tensors(params, shapes, "params")
    if tokenizer.vocab_size != config["vocab"]:
        raise TgcError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab is {config['vocab']}")
    cid = uuid.uuid4().hex
    tgc = {"version": __version__, **(tgc or {}), "model_file": MODEL_SOURCE, "checkpoint_id": cid,
           "activation": config.get("activation", "gelu")}
    meta = {"format": "pt", "tgc_checkpoint_id": cid}
    if dtype not in DTYPES:
        raise TgcError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    st_dtype, hf_dtype = DTYPES[dtype]
    weights = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in shapes}
    files: dict[str, object] = {
        TOKENIZER: tokenizer.to_json(),
        TOKENIZER_CONFIG: _json({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config["ctx"],
                                 "clean_up_tokenization_spaces": False, "tgc_tokenizer": tokenizer.kind}),
        MODEL_SOURCE: source if source is not None else model_source(config),
    }
    opt = {}
    if optimizer is not None:
        opt_shapes = {f"{m}/{k}": s for k, s in shapes.items() for m in ("adam_m", "adam_v")}
        _check_tensors(optimizer, opt_shapes, "optimizer")
        opt = {k: np.ascontiguousarray(optimizer[k], dtype=np.float32) for k in opt_shapes}
        files[OPTIMIZER] = lambda p: write_safetensors(p, opt, meta)
    if not allow_nonfinite:
        for k, v in {**weights, **opt}.items():
            if not np.isfinite(v).all():
                raise TgcError(f"refusing to save non-finite values (tensor {k}) over the checkpoint {out}")
        if dtype == "fp16":
            for k, v in weights.items():
                big = float(np.abs(v).max(initial=0.0))
                if big > 65504.0:
                    raise TgcError(f"tensor {k} holds {big:g}, beyond float16's range (65504); export as bf16 or fp32")
    if state is not None:
        files[TRAINER_STATE] = _json({**state, "checkpoint_id": cid})
    files.update(extra or {})
    files[WEIGHTS] = lambda p: write_safetensors(p, weights, meta, st_dtype)
    files[CONFIG] = _json({**hf_config(config, tgc), "dtype": hf_dtype})
    # a weights-only save must not carry an older save's resume state along
    write_files(out, files, drop=() if optimizer is not None else (OPTIMIZER, TRAINER_STATE))
    return out


def _check_tensors(tensors: dict, shapes: dict, what: str, where: str = "") -> None:
    pre = f"{where}: " if where else ""
    missing = [k for k in shapes if k not in tensors]
    if missing:
        raise TgcError(f"{pre}{what} is missing {len(missing)} tensor(s), e.g. {missing[0]}")
    extra = [k for k in tensors if k not in shapes]
    if extra:
        raise TgcError(f"{pre}{what} has unexpected tensor(s), e.g. {extra[0]}")
    for k, s in shapes.items():
        if tuple(tensors[k].shape) != tuple(s):
            raise TgcError(f"{pre}tensor {k} has shape {list(tensors[k].shape)}, the config needs {list(s)}")


# ---- validation of config.json and trainer_state.json, field by field (one-line errors)

_MAX_DIM = 2**31 - 1
_MAX_BATCH = 1 << 20


def _show(v) -> str:
    s = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return s if len(s) <= 40 else s[:37] + "..."


def field_value(obj: dict, key: str, where: str, kind: str, *, required: bool = False, lo=None, hi=None,
                gt=None, choices=None, section: str = ""):
    """obj[key] checked to be of `kind` (int, number, str, bool, list, dict) and in range; None when
    absent or null and not required. The error names the file, the field (`section`.key) and the value."""
    v = obj.get(key)
    key = f"{section}.{key}" if section else key
    if v is None:
        if required:
            raise TgcError(f"{where}: '{key}' is missing")
        return None
    is_int = isinstance(v, int) and not isinstance(v, bool)
    ok = {"int": is_int, "number": is_int or (isinstance(v, float) and math.isfinite(v)),
          "str": isinstance(v, str), "bool": isinstance(v, bool), "list": isinstance(v, list),
          "dict": isinstance(v, dict)}[kind]
    desc = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true or false",
            "list": "a list", "dict": "an object"}[kind]
    if lo is not None and hi is not None:
        ok, desc = ok and lo <= v <= hi, f"{desc} from {lo} to {hi}"
    elif lo is not None:
        ok, desc = ok and v >= lo, f"{desc} >= {lo}"
    elif hi is not None:
        ok, desc = ok and v <= hi, f"{desc} <= {hi}"
    if gt is not None:
        ok, desc = ok and v > gt, f"{desc} > {gt}"
    if ok and choices is not None:
        ok, desc = v in choices, f"one of {', '.join(map(str, choices))}"
    if not ok:
        raise TgcError(f"{where}: '{key}' must be {desc}, got {_show(v)}")
    return v


def _validate_hf_config(hf: dict, where: str) -> None:
    """Every GPT2Config field tgc reads, typed and in range (n_head 0 or a string epsilon is an error here)."""
    if hf.get("model_type") != "gpt2":
        raise TgcError(f"{where}: model_type is {_show(hf.get('model_type'))}; only GPT-2 ('gpt2') checkpoints are supported")
    for key in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer"):
        field_value(hf, key, where, "int", required=True, lo=1, hi=_MAX_DIM)
    field_value(hf, "n_inner", where, "int", lo=1)
    field_value(hf, "activation_function", where, "str")
    field_value(hf, "layer_norm_epsilon", where, "number", gt=0, hi=1)
    for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention", "tie_word_embeddings",
                "reorder_and_upcast_attn", "use_cache"):
        field_value(hf, key, where, "bool")
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # transformers reads them; tgc trains without dropout
        field_value(hf, key, where, "number", lo=0, hi=1)
    field_value(hf, "initializer_range", where, "number", lo=0)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        field_value(hf, key, where, "int", lo=0)
    field_value(hf, "dtype", where, "str")
    archs = field_value(hf, "architectures", where, "list")
    if archs is not None and not all(isinstance(a, str) for a in archs):
        raise TgcError(f"{where}: 'architectures' must be a list of class names, got {_show(archs)}")


def validate_tgc_section(tgc: dict, where: str) -> None:
    """config.json's "tgc" section."""
    def f(key, kind, **kw):
        return field_value(tgc, key, where, kind, section="tgc", **kw)

    f("preset", "str", choices=presets.preset_names())
    f("batch", "int", lo=1, hi=_MAX_BATCH)
    f("step", "int", lo=0)
    f("params", "int", lo=0)
    f("activation", "str", choices=tuple(HF_ACTIVATION))
    _tokenizer_spec(tgc, "tokenizer", where, "tgc")
    for key in ("checkpoint_id", "version", "model_file", "model_origin", "corpus", "backend", "imported_from",
                "exported_from"):
        f(key, "str")
    for key in ("train_loss", "val_loss", "wall_s"):
        f(key, "number")
    f("init", "str")
    best = f("best", "dict") or {}
    field_value(best, "step", where, "int", lo=1, section="tgc.best")
    field_value(best, "val_loss", where, "number", section="tgc.best")
    train = f("train", "dict") or {}
    for key in ("beta1", "beta2", "weight_decay", "min_lr_ratio"):
        field_value(train, key, where, "number", lo=0, hi=1, section="tgc.train")
    field_value(train, "dropout", where, "number", lo=0, hi=0.999, section="tgc.train")
    for key in ("eps", "lr", "grad_clip"):
        field_value(train, key, where, "number", gt=0, section="tgc.train")
    field_value(train, "warmup", where, "int", lo=0, section="tgc.train")
    field_value(train, "total_steps", where, "int", lo=1, section="tgc.train")
    field_value(train, "seed", where, "int", lo=0, hi=2**32 - 1, section="tgc.train")


def _tokenizer_spec(obj: dict, key: str, where: str, section: str = "") -> str | None:
    from tgc.tokenizer import parse_spec

    spec = field_value(obj, key, where, "str", section=section)
    if spec is not None:
        try:
            parse_spec(spec)
        except TgcError as e:
            raise TgcError(f"{where}: '{f'{section}.' if section else ''}{key}': {e.message}") from None
    return spec


def _history(state: dict, key: str, where: str, step: int) -> None:
    for item in field_value(state, key, where, "list") or ():
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and not isinstance(item[0], bool)
                and 1 <= item[0] <= step and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)
                and math.isfinite(item[1])):
            raise TgcError(f"{where}: '{key}' must be a list of [step, finite loss] pairs with steps 1..{step}, "
                           f"found {_show(item) if not isinstance(item, list) else json.dumps(item)[:40]}")


def validate_trainer_state(state: dict, where: str, config_step: int | None = None) -> None:
    """trainer_state.json: everything a resumed run reads from it (`config_step`: config.json's)."""
    step = field_value(state, "step", where, "int", required=True, lo=0)
    if config_step is not None and step != config_step:
        raise TgcError(f"{where}: step {step}, but config.json says step {config_step}")
    field_value(state, "checkpoint_id", where, "str", required=True)
    field_value(state, "preset", where, "str", choices=presets.preset_names())
    field_value(state, "seed", where, "int", lo=0, hi=2**32 - 1)
    field_value(state, "lr", where, "number", gt=0)
    for key in ("weight_decay", "min_lr_ratio"):
        field_value(state, key, where, "number", lo=0, hi=1)
    field_value(state, "wall_s", where, "number", lo=0)
    best = field_value(state, "best", where, "dict") or {}
    field_value(best, "step", where, "int", lo=1, section="best")
    field_value(best, "val_loss", where, "number", section="best")
    batch = field_value(state, "batch", where, "int", lo=1, hi=_MAX_BATCH)
    field_value(state, "warmup", where, "int", lo=0)
    field_value(state, "dropout", where, "number", lo=0, hi=0.999)
    field_value(state, "total_steps", where, "int", lo=1)
    for key in ("corpus", "corpus_digest"):
        field_value(state, key, where, "str")
    _tokenizer_spec(state, "tokenizer", where)
    # where the next batches come from: derived from step and batch, so it must agree with them
    data = field_value(state, "data", where, "dict") or {}
    rng_state = field_value(state, "rng", where, "dict") or {}
    sched = field_value(state, "schedule", where, "dict") or {}
    for key, hi in (("eval_every", None), ("ckpt_every", None), ("eval_batches", 10_000)):
        field_value(sched, key, where, "int", lo=1, hi=hi, section="schedule")
    field_value(data, "stream", where, "str", choices=("batches",), section="data")
    field_value(rng_state, "val", where, "int", lo=0, section="rng")
    for part, section, key, want in ((data, "data", "next_counter", None), (data, "data", "rows_per_step", batch),
                                     (rng_state, "rng", "batches", None)):
        got = field_value(part, key, where, "int", lo=0, section=section)
        want = step * batch if want is None and batch is not None else want
        if got is not None and want is not None and got != want:
            raise TgcError(f"{where}: '{section}.{key}' is {got}, but step {step} with batch {batch} makes it {want}")
    _history(state, "history", where, step)
    _history(state, "val_history", where, step)


# ---- loading

@dataclass
class Checkpoint:
    path: Path
    config: dict            # vocab, ctx, d, heads, layers, eps, activation
    tgc: dict               # config.json's tgc section
    params: dict[str, np.ndarray]
    tokenizer: Tokenizer
    source: str             # model.tg
    optimizer: dict[str, np.ndarray] | None = None
    state: dict | None = None
    hf: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.tgc.get("step", 0))

    @property
    def compile_config(self) -> dict:
        """The five gpt.tg config values (eps and activation live in model.tg)."""
        return presets.model_config(self.config)


def _read_json(p: Path) -> dict:
    if not p.exists():
        raise TgcError(f"{p}: missing")
    try:
        obj = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgcError(f"{p}: unreadable or corrupt ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise TgcError(f"{p}: not a JSON object")
    return obj


# safetensors dtype -> (numpy dtype of the stored bits, how to widen them to f32)
SAFETENSORS_FLOATS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), _BF16: np.dtype("<u2"), "F64": np.dtype("<f8")}


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of an f32: put the 16 bits back on top (exact, no rounding)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(p: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors widened to f32 numpy, metadata); TgcError for a missing, truncated or corrupt
    file, and for a tensor that is not floating point (the message names its dtype).

    Reads the format itself (an 8-byte little-endian header length, a JSON header of
    name -> dtype, shape, data_offsets, then the data) rather than through safetensors'
    numpy loader, which cannot return bfloat16: F32, F16, BF16 and F64 are read with
    numpy alone (bf16 widened bit-exactly, f16 and f64 converted)."""
    if not p.exists():
        raise TgcError(f"{p}: missing")

    def corrupt(why: str) -> TgcError:
        return TgcError(f"{p}: corrupt or truncated safetensors file ({why})")

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt(f"{size} bytes, shorter than the header")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise corrupt(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        data = np.memmap(p, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise corrupt(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(x) for x in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise corrupt(f"tensor {name}: bad header entry ({e})") from None
        if dtype not in SAFETENSORS_FLOATS:
            raise TgcError(f"{p}: tensor {name} has dtype {dtype}; tgc reads floating-point weights "
                           f"({', '.join(SAFETENSORS_FLOATS)})")
        stored = SAFETENSORS_FLOATS[dtype]
        if not (0 <= begin <= end <= data.size) or end - begin != math.prod(shape) * stored.itemsize:
            raise corrupt(f"tensor {name}: bytes {begin}..{end} do not hold {dtype}{shape} in {data.size} data bytes")
        raw = np.asarray(data[begin:end]).view(stored).reshape(shape)
        out[name] = _bf16_to_f32(raw) if dtype == _BF16 else raw.astype(np.float32)
    del data
    return out, meta


def _read_safetensors_torch(p: Path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise TgcError(f"{p}: bfloat16 tensors need torch installed to convert") from None
    import torch

    return {k: v.to(torch.float32).numpy() for k, v in load_file(str(p)).items()}, {}


def _check_finite(tensors: dict, p: Path) -> None:
    for k, v in tensors.items():
        bad = v.size - int(np.isfinite(v).sum())
        if bad:
            raise TgcError(f"{p}: tensor {k} holds {bad} non-finite values (NaN or inf: a diverged run?); "
                           "load it anyway with --allow-nonfinite (allow_nonfinite=True)")


def load_checkpoint(path, resume: bool = False, allow_nonfinite: bool = False, check_memory=None) -> Checkpoint:
    """Read and validate a tgc checkpoint; with `resume`, also its optimizer and trainer state.

    Nothing is written. Where a save was cut short between its two renames, the complete save
    beside the directory is read (see current_dir). Every config.json / trainer_state.json
    field is checked, then `check_memory(config, tgc_section)` runs (the memory preflight,
    before any tensor is read), then the files: weights and moments must be finite unless
    `allow_nonfinite`."""
    given = Path(path)
    d = current_dir(given)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "not found"
        raise TgcError(f"checkpoint {given} {what} (a checkpoint is a directory)")
    hf = _read_json(d / CONFIG)
    tgc = hf.get("tgc")
    if not isinstance(tgc, dict):
        raise TgcError(f"{d / CONFIG}: no 'tgc' section: not a tgc checkpoint (bring a Hugging Face model in with tgc import)")
    cfg = model_config_from_hf(hf, str(d / CONFIG))
    validate_tgc_section(tgc, str(d / CONFIG))
    if check_memory is not None:
        check_memory(cfg, tgc)
    _check_weights_size(d / WEIGHTS, cfg)
    cid = tgc.get("checkpoint_id")
    params, meta = read_safetensors(d / WEIGHTS)
    _check_tensors(params, param_shapes(cfg), "the file", str(d / WEIGHTS))
    if "tgc_checkpoint_id" not in meta:  # e.g. re-saved by transformers (in bf16, say)
        raise TgcError(f"{d / WEIGHTS}: not written by tgc (its metadata has no checkpoint id); "
                       "bring a Hugging Face save in with tgc import")
    if meta.get("tgc_checkpoint_id") != cid:
        raise TgcError(f"{d}: model.safetensors and config.json are from different saves (an interrupted copy?)")
    if not allow_nonfinite:
        _check_finite(params, d / WEIGHTS)
    tok = _load_checkpoint_tokenizer(d)
    if tok.vocab_size != cfg["vocab"]:
        raise TgcError(f"{d / TOKENIZER}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {cfg['vocab']}")
    try:
        source = (d / MODEL_SOURCE).read_text() if (d / MODEL_SOURCE).exists() else model_source(cfg)
    except (OSError, UnicodeDecodeError) as e:
        raise TgcError(f"{d / MODEL_SOURCE}: unreadable ({e})") from None
    ck = Checkpoint(d, cfg, tgc, params, tok, source, hf=hf)
    if resume:
        if not (d / OPTIMIZER).exists() or not (d / TRAINER_STATE).exists():
            raise TgcError(f"{d}: no optimizer.safetensors / trainer_state.json, so it cannot be resumed "
                           "(it is a weights-only checkpoint); start a new run from it instead")
        state = _read_json(d / TRAINER_STATE)
        validate_trainer_state(state, str(d / TRAINER_STATE), tgc.get("step"))
        opt, _ = read_safetensors(d / OPTIMIZER)
        _check_tensors(opt, {f"{m}/{k}": s for k, s in param_shapes(cfg).items() for m in ("adam_m", "adam_v")},
                       "the file", str(d / OPTIMIZER))
        if safetensors_metadata(d / OPTIMIZER).get("tgc_checkpoint_id") != cid or state.get("checkpoint_id") != cid:
            raise TgcError(f"{d}: optimizer/trainer state and weights are from different saves")
        if not allow_nonfinite:
            _check_finite(opt, d / OPTIMIZER)
        ck.optimizer, ck.state = opt, state
    return ck


def _check_weights_size(p: Path, cfg: dict) -> None:
    """A config that describes far more parameters than the weights file can hold (n_layer 1e9)
    is refused before param_shapes would build its table."""
    from tgc.preflight import param_count

    n = param_count(cfg)
    with contextlib.suppress(OSError):
        size = p.stat().st_size
        if size < n:
            raise TgcError(f"{p}: {size:,} bytes cannot hold the {n:,} parameters config.json describes "
                           f"(n_layer {cfg['layers']}, n_embd {cfg['d']}): the files do not belong together")


def _load_checkpoint_tokenizer(d: Path) -> Tokenizer:
    p = d / TOKENIZER
    if not p.exists():
        raise TgcError(f"{p}: missing")
    kind = None
    if (d / TOKENIZER_CONFIG).exists():
        where = str(d / TOKENIZER_CONFIG)
        tc = _read_json(d / TOKENIZER_CONFIG)
        kind = _tokenizer_spec(tc, "tgc_tokenizer", where)
        field_value(tc, "tokenizer_class", where, "str")
        field_value(tc, "model_max_length", where, "int", lo=1)
        field_value(tc, "clean_up_tokenization_spaces", where, "bool")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TgcError(f"{p}: unreadable ({e})") from None
    return tokenizer_from_json(text, kind, str(p))


# ---- import from Hugging Face

def _read_hf_weights(src: Path) -> dict[str, np.ndarray]:
    if (src / WEIGHTS).exists():
        return read_safetensors(src / WEIGHTS)[0]
    index = src / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            out.update(read_safetensors(src / shard)[0])
        return out
    if (src / "pytorch_model.bin").exists():
        try:
            import torch
        except ImportError:
            raise TgcError(f"{src}: pytorch_model.bin needs torch (pip install torch), or save as safetensors") from None
        try:
            sd = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad pickle
            raise TgcError(f"{src / 'pytorch_model.bin'}: cannot load ({str(e).splitlines()[0]})") from None
        return {k: v.to(torch.float32).numpy() for k, v in sd.items() if hasattr(v, "numpy")}
    raise TgcError(f"{src}: no model.safetensors or pytorch_model.bin")


def _gpt2_names(sd: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """HF state dict -> GPT-2 names: add the transformer. prefix of a bare GPT2Model, drop
    the causal-mask buffers old versions saved, and check a stored lm_head equals wte."""
    out = {}
    lm_head = None
    for k, v in sd.items():
        if k == "lm_head.weight":
            lm_head = v
            continue
        if k.endswith((".attn.bias", ".attn.masked_bias")) and v.ndim != 1:
            continue
        out[k if k.startswith("transformer.") else f"transformer.{k}"] = v
    if lm_head is not None and "transformer.wte.weight" in out and not np.array_equal(lm_head, out["transformer.wte.weight"]):
        raise TgcError(f"{where}: lm_head.weight differs from transformer.wte.weight; tgc needs a tied lm head")
    return out


def _hf_tokenizer(src: Path, vocab: int) -> Tokenizer:
    tok = hf_tokenizer(src)
    if tok is not None:
        return tok
    if vocab == 256:
        return byte_tokenizer()
    raise TgcError(f"{src}: no tokenizer.json (or vocab.json + merges.txt), and vocab_size {vocab} is not the byte vocabulary")


def _shape_text(cfg: dict) -> str:
    return ", ".join(f"{k} {cfg[k]}" for k in ("layers", "heads", "d", "ctx", "vocab"))


def _refuse_existing(out: Path, cfg: dict) -> None:
    """An import never replaces a checkpoint: TgcError when `out` already holds one."""
    if not (out / CONFIG).exists():
        return
    try:
        have = model_config_from_hf(json.loads((out / CONFIG).read_text()), str(out / CONFIG))
    except (TgcError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        have = None
    if have is not None and presets.model_config(have) != presets.model_config(cfg):
        raise TgcError(f"{out} holds a checkpoint of another shape ({_shape_text(have)}; this model: "
                       f"{_shape_text(cfg)}); nothing was changed: import into a new directory")
    raise TgcError(f"{out} already holds a checkpoint; nothing was changed: import into a new directory")


def check_import_target(src: Path, out: Path) -> None:
    """An import writes a new directory: never the source itself or a directory inside it, and
    never over files that are already there (a checkpoint's optimizer state included)."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise TgcError(f"-o {out} is {'the source' if o == s else 'inside the source'} {src}; import never writes "
                       "into its own source: choose a new directory")
    if out.exists() and not out.is_dir():
        raise TgcError(f"-o {out} exists and is not a directory")
    if (out / CONFIG).exists():
        return  # a checkpoint already: refused once its shape is known (_refuse_existing)
    if out.exists() and any(out.iterdir()):
        raise TgcError(f"-o {out} is not empty and is not a tgc checkpoint; nothing was changed: import into a new "
                       "or empty directory")


def import_hf(src_dir, out_dir, preset: str | None = None, batch: int | None = None) -> Path:
    """Bring a Hugging Face GPT-2 directory (save_pretrained's output) in as a tgc checkpoint.

    The model config comes from config.json; a preset whose layers/heads/d/ctx/vocab all
    match is recorded, else the checkpoint's config stands on its own. The batch recorded is
    `batch`, else 1: an import holds weights only (it cannot be resumed), generation runs
    at batch 1, and the batch sizes only train_step, which is compiled into the same
    artifact (GPT-2 124M plans 3.8 GiB at batch 1, 10.75 GiB at 4). GPT-2's released
    checkpoints use the tanh GELU ("gelu_new"): the checkpoint's model.tg is then gpt.tg
    with gelu_tanh in the MLP (likewise a non-default layer_norm_epsilon), so compiling it
    reproduces the HF model's arithmetic."""
    src, out = Path(src_dir), Path(out_dir)
    check_import_target(src, out)
    if not src.is_dir():
        raise TgcError(f"{src}: not a directory (expected a Hugging Face GPT-2 save_pretrained directory)")
    hf = _read_json(src / CONFIG)
    cfg = model_config_from_hf(hf, str(src / CONFIG))
    _refuse_existing(out, cfg)
    params = _gpt2_names(_read_hf_weights(src), str(src))
    _check_tensors(params, param_shapes(cfg), "the model's weights", str(src))
    tok = _hf_tokenizer(src, cfg["vocab"])
    if tok.vocab_size != cfg["vocab"]:
        raise TgcError(f"{src}: tokenizer has {tok.vocab_size} tokens but vocab_size is {cfg['vocab']}")
    match = None
    for name in presets.preset_names():
        p = presets.get_preset(name)
        if presets.model_config(p) == presets.model_config(cfg):
            match = name
            break
    if batch is None:
        batch = 1
    tgc = {"preset": preset or match, "batch": int(batch), "step": 0, "imported_from": str(src.resolve()),
           "model_origin": presets.default_model_path().name,
           "params": sum(math.prod(s) for s in param_shapes(cfg).values())}
    return save_checkpoint(out, params, cfg, tok, tgc, source=model_source(cfg))


# ---- export

def export_checkpoint(src, out_dir, dtype: str = "fp16", card: bool = True, artifact: bool = True, log=None) -> Path:
    """Write checkpoint `src` (a directory or gallery name) as a weights-only Hugging Face GPT-2
    directory whose model.safetensors holds `dtype` (fp16, bf16 or fp32): what the gallery ships.
    The tgc section is kept (it loads in tgc as it is, and `tgc train --init` fine-tunes it);
    optimizer and trainer state are left out. With `card`, card.json is written beside it with
    every field the checkpoint knows (tgc.gallery.CARD_FIELDS). With `artifact`, the compiled
    generation artifact goes beside it in artifact/ (tgc.artifacts.write_prebuilt), so that a
    first `tgc generate` from it compiles nothing while the compiler is the same. `out_dir`
    must be new or empty."""
    from tgc import gallery

    if dtype not in DTYPES:
        raise TgcError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    src_dir = gallery.resolve(src)
    out = Path(out_dir)
    s, o = src_dir.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise TgcError(f"-o {out} is {'the source' if o == s else 'inside the source'} {src}; export writes a new "
                       "directory: choose another")
    if out.exists() and not out.is_dir():
        raise TgcError(f"-o {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise TgcError(f"-o {out} is not empty; export writes a new or empty directory, nothing was changed")
    ck = load_checkpoint(src_dir)
    tgc = {k: v for k, v in ck.tgc.items() if k not in ("checkpoint_id", "version", "model_file", "activation")}
    tgc["exported_from"] = str(s)
    extra = {}
    if card:
        extra[gallery.CARD] = _json(gallery.card_from_checkpoint(ck, out.name, dtype))
    save_checkpoint(out, ck.params, ck.config, ck.tokenizer, tgc, source=ck.source, extra=extra, dtype=dtype)
    if artifact:
        from tgc.artifacts import PREBUILT_DIR, write_prebuilt
        from tgc.generate import generation_artifact

        write_prebuilt(*generation_artifact(ck), out / PREBUILT_DIR, log=log, filename=str(out / MODEL_SOURCE))
    return out
