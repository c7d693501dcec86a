"""Checkpoints: a Hugging Face GPT-2 directory, plus what tgc needs to resume.

    CKPT/config.json             GPT2Config fields + a "tgc" section (preset, batch, model file, training settings, step)
    CKPT/model.safetensors       GPT-2 names and layouts; lm_head is tied to wte and not stored (as save_pretrained does)
    CKPT/tokenizer.json          `tokenizers` format; tokenizer_config.json makes AutoTokenizer pick PreTrainedTokenizerFast
    CKPT/model.tg                the DSL source the weights belong to (gpt.tg, or a variant: see import_hf)
    CKPT/optimizer.safetensors   AdamW moments adam_m/<param>, adam_v/<param>          (resume only)
    CKPT/trainer_state.json      step, seed, schedule, data position, loss history       (resume only)
    CKPT/loss.png                the loss curve (train.py)

`transformers.GPT2LMHeadModel.from_pretrained(CKPT)` and `PreTrainedTokenizerFast(tokenizer_file=...)`
load it as it is. Saving is atomic as a whole: every file is written to a temporary
beside its final name and fsynced, then all are renamed with Ctrl-C held off, so an
interrupted save leaves the previous checkpoint intact. Every file of one save carries
the same checkpoint id, and loading refuses a directory whose files disagree. Loading
checks everything (files present and readable, tensor names and shapes against the
config, tokenizer vocabulary against the model's) and raises a one-line TgcError
without touching the files. What this leaves out: sharded or non-GPT-2 layouts (only
for import), and models whose parameters are not GPT-2's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
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
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,  # tgc trains without dropout
        "initializer_range": 0.02,
        "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"), "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
        "tgc": tgc,
    }


def model_config_from_hf(hf: dict, where: str) -> dict:
    """The tgc model config of a GPT2Config dict; TgcError for what gpt.tg cannot express."""
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


# ---- atomic writes

@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the block ends (main thread only), so renames finish as a group."""
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(out: Path, files: dict[str, object]) -> None:
    """Write {name: bytes | str | callable(path)} into `out` atomically as a group."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(TMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)
    temps = []
    try:
        for name, content in files.items():
            tmp = out / f"{TMP_PREFIX}{name}"
            temps.append((tmp, out / name))
            if callable(content):
                content(tmp)
            else:
                tmp.write_bytes(content.encode() if isinstance(content, str) else content)
            os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates files 0600
            _fsync(tmp)
        with _sigint_deferred():
            for tmp, final in temps:  # config.json comes last: it names the checkpoint id
                os.replace(tmp, final)
            with contextlib.suppress(OSError):
                _fsync(out)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def save_checkpoint(out, params: dict, config: dict, tokenizer: Tokenizer, tgc: dict | None = None,
                    optimizer: dict | None = None, state: dict | None = None, source: str | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint directory. `config`: vocab, ctx, d, heads, layers (+ eps, activation);
    `tgc`: the config.json section (preset, batch, training settings, step); `optimizer` and
    `state` (trainer_state.json) only for resumable checkpoints; `extra`: more files (loss.png)."""
    from safetensors.numpy import save_file

    out = Path(out)
    shapes = param_shapes(config)
    _check_tensors(params, shapes, "params")
    if tokenizer.vocab_size != config["vocab"]:
        raise TgcError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab is {config['vocab']}")
    cid = uuid.uuid4().hex
    tgc = {"version": __version__, **(tgc or {}), "model_file": MODEL_SOURCE, "checkpoint_id": cid,
           "activation": config.get("activation", "gelu")}
    meta = {"format": "pt", "tgc_checkpoint_id": cid}
    weights = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in shapes}
    files: dict[str, object] = {
        TOKENIZER: tokenizer.to_json(),
        TOKENIZER_CONFIG: _json({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config["ctx"],
                                 "clean_up_tokenization_spaces": False, "tgc_tokenizer": tokenizer.kind}),
        MODEL_SOURCE: source if source is not None else model_source(config),
    }
    if optimizer is not None:
        opt_shapes = {f"{m}/{k}": s for k, s in shapes.items() for m in ("adam_m", "adam_v")}
        _check_tensors(optimizer, opt_shapes, "optimizer")
        opt = {k: np.ascontiguousarray(optimizer[k], dtype=np.float32) for k in opt_shapes}
        files[OPTIMIZER] = lambda p: save_file(opt, str(p), metadata=meta)
    if state is not None:
        files[TRAINER_STATE] = _json({**state, "checkpoint_id": cid})
    files.update(extra or {})
    files[WEIGHTS] = lambda p: save_file(weights, str(p), metadata=meta)
    files[CONFIG] = _json(hf_config(config, tgc))
    write_files(out, files)
    if optimizer is None:  # a weights-only save must not leave an older save's resume state behind
        for name in (OPTIMIZER, TRAINER_STATE):
            (out / name).unlink(missing_ok=True)
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
_BF16 = "BF16"
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


def load_checkpoint(path, resume: bool = False) -> Checkpoint:
    """Read and validate a tgc checkpoint; with `resume`, also its optimizer and trainer state."""
    d = Path(path)
    if not d.is_dir():
        raise TgcError(f"checkpoint {d} not found (a checkpoint is a directory)")
    hf = _read_json(d / CONFIG)
    tgc = hf.get("tgc")
    if not isinstance(tgc, dict):
        raise TgcError(f"{d / CONFIG}: no 'tgc' section: not a tgc checkpoint (bring a Hugging Face model in with tgc import)")
    cfg = model_config_from_hf(hf, str(d / CONFIG))
    cid = tgc.get("checkpoint_id")
    params, meta = read_safetensors(d / WEIGHTS)
    _check_tensors(params, param_shapes(cfg), "model.safetensors", str(d / WEIGHTS))
    if "tgc_checkpoint_id" not in meta:  # e.g. re-saved by transformers (in bf16, say)
        raise TgcError(f"{d / WEIGHTS}: not written by tgc (its metadata has no checkpoint id); "
                       "bring a Hugging Face save in with tgc import")
    if meta.get("tgc_checkpoint_id") != cid:
        raise TgcError(f"{d}: model.safetensors and config.json are from different saves (an interrupted copy?)")
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
        opt, ometa = read_safetensors(d / OPTIMIZER)
        _check_tensors(opt, {f"{m}/{k}": s for k, s in param_shapes(cfg).items() for m in ("adam_m", "adam_v")},
                       "optimizer.safetensors", str(d / OPTIMIZER))
        state = _read_json(d / TRAINER_STATE)
        if ometa.get("tgc_checkpoint_id") != cid or state.get("checkpoint_id") != cid:
            raise TgcError(f"{d}: optimizer/trainer state and weights are from different saves")
        if not isinstance(state.get("step"), int) or state["step"] < 0:
            raise TgcError(f"{d / TRAINER_STATE}: bad or missing step")
        ck.optimizer, ck.state = opt, state
    return ck


def _load_checkpoint_tokenizer(d: Path) -> Tokenizer:
    p = d / TOKENIZER
    if not p.exists():
        raise TgcError(f"{p}: missing")
    kind = None
    if (d / TOKENIZER_CONFIG).exists():
        kind = _read_json(d / TOKENIZER_CONFIG).get("tgc_tokenizer")
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


def import_hf(src_dir, out_dir, preset: str | None = None, batch: int | None = None) -> Path:
    """Bring a Hugging Face GPT-2 directory (save_pretrained's output) in as a tgc checkpoint.

    The model config comes from config.json; a preset whose layers/heads/d/ctx/vocab all
    match is recorded, else the checkpoint's config stands on its own. The batch recorded is
    `batch`, else 1: an import holds weights only (it cannot be resumed), generation runs
    at batch 1, and the batch sizes only train_step, which is compiled into the same
    artifact (for GPT-2 124M: 3.8 GiB of wasm memory at batch 1, 10.6 GiB at 4). GPT-2's released checkpoints use the tanh GELU ("gelu_new"): the
    checkpoint's model.tg is then gpt.tg with gelu_tanh in the MLP (likewise a non-default
    layer_norm_epsilon), so compiling it reproduces the HF model's arithmetic."""
    src, out = Path(src_dir), Path(out_dir)
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
