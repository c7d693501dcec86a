"""Text generation from a checkpoint, streamed as tokens are produced.

    gen = generate("runs/tiny", "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40)
    for piece in gen: print(piece, end="", flush=True)
    gen.stats  # prompt_tokens, new_tokens, first_token_s, tokens_per_s, total_s

With the KV cache (default) the prompt goes through `prefill` (padded to ctx; the
uniform len says how many tokens are real) and each new token through `decode_step`
at the position the host keeps. Without it, `forward` runs on the whole padded window
each step and the logits of the last real position are taken -- slower, same numbers.

The context window: the model sees at most ctx tokens. A prompt longer than ctx keeps
its last ctx tokens. When the window is full, it slides: the last ctx/2 tokens are kept
and re-read (one prefill), then decoding goes on (both modes use the same windows, so
their greedy outputs agree); with slide=False generation stops there instead.

Sampling: temperature 0 is greedy (argmax; ties to the lowest id). Otherwise logits /
temperature, then top-k, then top-p (the smallest set of most likely tokens whose mass
reaches p), and the token is drawn by inverting the CDF in token-id order with
u = rng.uniform(seed, "sample", 1, start=i) for the i-th new token -- so a (seed, prompt)
pair gives the same text on every backend whose logits agree. An empty prompt starts
from "\\n". Generation also stops after the model's end-of-text token (config.json's
eos_token_id, as transformers' generate does; <|endoftext|> in GPT-2), which is counted
but not printed. Stats: first_token_s is the time to the first new token (prefill included);
tokens_per_s counts new tokens only (the prompt is not counted) over the whole call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tgc import rng
from tgc.checkpoint import load_checkpoint
from tgc.errors import TgcError
from tgc.preflight import checked_runtime, estimate, require
from tgc.tokenizer import StreamDecoder


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float = 0.0
    open_to_first_token_s: float = 0.0  # from the runtime's opening (pipelines included) to the first token
    total_s: float = 0.0
    tokens_per_s: float = 0.0
    backend: str = ""
    token_ids: list | None = None  # the new tokens' ids


def sample(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, u: float) -> int:
    """One token id from [vocab] logits (see the module docstring for the rule)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(x))
    x = x / temperature
    keep = np.ones(x.shape, bool)
    if top_k and 0 < top_k < x.size:
        kth = np.sort(x)[-top_k]
        keep &= x >= kth
    p = np.where(keep, np.exp(x - x[keep].max()), 0.0)
    p /= p.sum()
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, top_p) + 1)  # the smallest prefix with mass >= top_p
        mask = np.zeros(x.shape, bool)
        mask[order[:n]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), x.size - 1))


class Generation:
    """An iterator of text pieces; `stats` is filled in as it runs and final when it ends."""

    def __init__(self, it, stats: GenerationStats):
        self._it = it
        self.stats = stats

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._it)

    @property
    def text(self) -> str:
        return "".join(self)


def generation_artifact(ck) -> tuple[str, str | None, dict]:
    """(model text, preset, overrides) of a checkpoint's generation artifact: its config at
    batch 1 (the generation programs run one sequence), whatever batch it trained at."""
    return ck.source, ck.tgc.get("preset"), {**ck.compile_config, "batch": 1}


def open_checkpoint_runtime(ckpt, backend: str = "auto", log=None, programs=("prefill", "decode_step", "forward"),
                            allow_nonfinite: bool = False):
    """(checkpoint, runtime) with the checkpoint's parameters written into a runtime compiled for
    its config, ready to run `programs` without delay. `ckpt` is a checkpoint directory or the
    name of a gallery model (tgc.gallery). The runtime's artifact holds the generation programs
    only (GENERATE_PROGRAMS, batch 1), so a first generation compiles a fraction of what
    training needs, and nothing where the checkpoint ships that artifact prebuilt
    (CKPT/artifact/, as `tgc export` writes it and gallery models have it). The memory a generation needs is checked against what is available before
    the weights are read (from the config) and again before the runtime opens (from the
    compiled plan)."""
    from tgc import gallery
    from tgc.artifacts import GENERATE_PROGRAMS, PREBUILT_DIR

    ckpt = gallery.resolve(ckpt)

    def memory(cfg, section):
        require(estimate(cfg, 1, "generate", f"generating from {ckpt}"), log, backend)

    ck = load_checkpoint(ckpt, allow_nonfinite=allow_nonfinite, check_memory=memory)
    source, preset, overrides = generation_artifact(ck)
    rt = checked_runtime(source, preset, overrides, backend, "generate", f"generating from {ckpt}",
                         log, str(ck.path / "model.tg"), programs, only=GENERATE_PROGRAMS,
                         prebuilt=ck.path / PREBUILT_DIR)
    tensors = {t["name"]: t for t in rt.manifest["tensors"]}
    for name, value in ck.params.items():
        t = tensors.get(name)
        if t is None or tuple(t["shape"]) != value.shape:
            raise TgcError(f"checkpoint tensor {name} {list(value.shape)} does not fit the compiled model")
        rt.write(name, value)
    for t in rt.manifest["tensors"]:
        if t["role"] == "kv_cache":
            rt.write(t["name"], np.zeros(t["shape"], np.float32))
    return ck, rt


def validate_options(prompt, max_new_tokens, temperature, top_k, top_p, seed, backend) -> None:
    """Every argument generate() takes, checked before the checkpoint is read."""
    if not isinstance(prompt, str):
        raise TgcError(f"the prompt must be text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable bytes from the command line arrive as lone surrogates
        raise TgcError(f"the prompt is not valid UTF-8 text (a byte that is not UTF-8 at character {e.start})") from None
    for name, v, lo, hi in (("max-new-tokens", max_new_tokens, 0, 10**7), ("seed", seed, 0, 2**32 - 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise TgcError(f"--{name} must be an integer from {lo} to {hi}, got {v!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise TgcError(f"--temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise TgcError(f"--top-k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise TgcError(f"--top-p must be in (0, 1], got {top_p!r}")
    from tgc.runtime import BACKENDS

    if backend not in BACKENDS:
        raise TgcError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def generate(ckpt, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, kv_cache: bool = True, backend: str = "auto",
             slide: bool = True, log=None, allow_nonfinite: bool = False) -> Generation:
    """Stream up to `max_new_tokens` new tokens after `prompt` from checkpoint directory `ckpt`
    (or a gallery model's name: `generate("shakespeare", "ROMEO:")`)."""
    validate_options(prompt, max_new_tokens, temperature, top_k, top_p, seed, backend)
    # the first token needs prefill only (or forward): decode_step's pipelines are built at its
    # first run, after the first token is out
    ck, rt = open_checkpoint_runtime(ckpt, backend, log, ("prefill",) if kv_cache else ("forward",), allow_nonfinite)
    ctx = ck.config["ctx"]
    tok = ck.tokenizer
    eos = ck.config.get("eos_token_id")
    ids = tok.encode(prompt) or tok.encode("\n")
    stats = GenerationStats(prompt_tokens=len(ids), backend=getattr(rt, "backend", backend), token_ids=[])

    def window_logits(tokens: list[int], start: int) -> np.ndarray:
        """Logits after tokens[start:] (<= ctx of them): prefill (fills the caches) or forward."""
        w = tokens[start:]
        padded = np.zeros((1, ctx), np.int32)
        padded[0, :len(w)] = w
        if kv_cache:
            return rt.run("prefill", inputs={"tokens": padded}, uniforms={"len": np.int32(len(w))}, read=["logits"])["logits"]
        return rt.run("forward", inputs={"tokens": padded}, read=["logits"])["logits"][0, len(w) - 1]

    def run():
        t0 = time.perf_counter()
        tokens = list(ids)
        start = max(0, len(tokens) - ctx)
        logits = window_logits(tokens, start)
        dec = StreamDecoder(tok)
        for i in range(max_new_tokens):
            nxt = sample(logits, temperature, top_k, top_p, float(rng.uniform(seed, "sample", 1, start=i)[0]))
            tokens.append(nxt)
            stats.token_ids.append(nxt)
            stats.new_tokens = i + 1
            now = time.perf_counter()
            if i == 0:
                stats.first_token_s = now - t0
                stats.open_to_first_token_s = now - getattr(rt, "opened_at", t0)
            stats.total_s = now - t0
            stats.tokens_per_s = stats.new_tokens / max(stats.total_s, 1e-9)
            if nxt == eos:
                break
            piece = dec.push(nxt)
            if piece:
                yield piece
            if i + 1 == max_new_tokens:
                break
            if len(tokens) - start > ctx:  # the window is full: slide by half, or stop
                if not slide:
                    break
                start = len(tokens) - ctx // 2
                logits = window_logits(tokens, start)
            elif kv_cache:
                pos = len(tokens) - 1 - start  # the new token's position in the window
                logits = rt.run("decode_step", inputs={"token": np.array([[nxt]], np.int32)},
                                uniforms={"pos": np.int32(pos)}, read=["logits"])["logits"]
            else:
                logits = window_logits(tokens, start)
        rest = dec.flush()
        stats.total_s = time.perf_counter() - t0
        stats.tokens_per_s = stats.new_tokens / max(stats.total_s, 1e-9)
        if rest:
            yield rest

    return Generation(run(), stats)
