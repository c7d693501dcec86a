"""The product path next to its references, in one run: `tgc generate` against HF transformers'
`generate`, and `tgc train`'s steady-state step against PyTorch eager and torch.compile.

    python benchmarks/bench_product.py [--backend webgpu] [--corpus FILE] [--skip-train] [--skip-gpt2]

Generation (issue 14; issue 13): a randomly initialised GPT-2 of each shape (the huge
preset's, and GPT-2 124M: 12 layers, 12 heads, d 768, ctx 1024, vocab 50,257) saved
with save_pretrained and brought in with `tgc import`; `tgc generate --temperature 0`
for N new tokens after a short prompt (its own stats line: tokens/s over the whole call
with the prompt not counted, first-token ms, and seconds from the runtime's opening to
the first token), and HF `generate(do_sample=False)` on the same weights and prompt on
CUDA (fp32, TF32 off): first token = a generate of one new token, tokens/s = N over a
generate of N. Training (issue 13): `tgc train --preset huge --batch B` for S steps, its
tokens/s turned into ms per step, next to benchmarks/torch_gpt.py's step eager and with
torch.compile (mode "reduce-overhead": CUDA graphs). Prints markdown tables; writes
bench_product.json into $OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUT = Path(os.environ.get("OUT") or "/tmp/bench_product")
SHAPES = {
    "huge": {"n_layer": 12, "n_head": 8, "n_embd": 256, "n_positions": 256, "vocab_size": 256},
    "gpt2-124M": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024, "vocab_size": 50257},
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cli(*args, name: str) -> str:
    """Run `tgc ARGS` (python -m tgc.cli), keep its output under OUT/name.log, return it."""
    r = subprocess.run([sys.executable, "-m", "tgc.cli", *args], capture_output=True, text=True, timeout=240)
    text = (r.stdout + r.stderr).replace("\r", "\n")
    (OUT / f"{name}.log").write_text(text)
    if r.returncode != 0:
        raise RuntimeError(f"tgc {args[0]} failed ({r.returncode}): {text[-800:]}")
    return text


def save_random_gpt2(path: Path, shape: dict, seed: int = 0):
    import torch
    import transformers
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    from tgc.tokenizer import _byte_level_parts, _byte_symbols

    torch.manual_seed(seed)
    special = {} if shape["vocab_size"] > 50256 else {"bos_token_id": None, "eos_token_id": None}
    cfg = transformers.GPT2Config(**shape, activation_function="gelu_new", **special)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    if shape["vocab_size"] != 256:  # a byte-level tokenizer padded to the vocabulary (speed does not depend on it)
        vocab = {s: i for i, s in enumerate(_byte_symbols())}
        vocab.update({f"<extra_{i}>": i for i in range(256, shape["vocab_size"])})
        tk = Tokenizer(BPE(vocab=vocab, merges=[]))
        tk.pre_tokenizer, tk.decoder = _byte_level_parts()
        tk.save(str(path / "tokenizer.json"))
    return model


def hf_generate(model, ids: list[int], n: int) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = model.to(dev)
    x = torch.tensor([ids], device=dev)
    kw = {"do_sample": False, "pad_token_id": 0}
    m.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    m.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
    if dev == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = m.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"device": dev, "first_token_ms": 1000 * first, "tokens_per_s": n / dt,
            "tokens": out[0, len(ids):].tolist()}  # fmt: skip


_STATS = re.compile(r"\[(\d+) new tokens .*?, ([\d.]+) tokens/s, first token ([\d.]+) ms \(([\d.]+)s after the runtime opened\)")


def tgc_generate(ckpt: Path, prompt: str, n: int, backend: str, kv: bool, name: str) -> dict:
    args = ["generate", str(ckpt), "--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0",
            "--backend", backend] + ([] if kv else ["--no-kv-cache"])  # fmt: skip
    text = cli(*args, name=name)
    m = _STATS.search(text)
    if not m:
        raise RuntimeError(f"no stats line in: {text[-400:]}")
    return {"new_tokens": int(m.group(1)), "tokens_per_s": float(m.group(2)), "first_token_ms": float(m.group(3)),
            "open_to_first_token_s": float(m.group(4)), "kv_cache": kv}  # fmt: skip


def bench_generation(shape_name: str, backend: str, n: int) -> dict:
    shape = SHAPES[shape_name]
    src, ck = OUT / f"hf-{shape_name}", OUT / f"ck-{shape_name}"
    model = save_random_gpt2(src, shape)
    t = time.perf_counter()
    cli("import", str(src), "-o", str(ck), name=f"import-{shape_name}")
    import_s = time.perf_counter() - t
    prompt = "ROMEO: But soft, what light"
    res = {"shape": shape_name, "import_s": import_s}
    # the first call compiles the artifact into the cache; then the timed calls (cold pipelines each)
    res["tgc_first_call"] = tgc_generate(ck, prompt, 8, backend, True, f"gen-{shape_name}-first")
    res["tgc_kv"] = tgc_generate(ck, prompt, n, backend, True, f"gen-{shape_name}-kv")
    res["tgc_no_kv"] = tgc_generate(ck, prompt, min(n, 64), backend, False, f"gen-{shape_name}-nokv")
    ids = list(prompt.encode())
    res["hf"] = hf_generate(model, ids, n)
    log(f"{shape_name}: tgc {res['tgc_kv']['tokens_per_s']:.0f} tok/s (first {res['tgc_kv']['first_token_ms']:.0f} ms), "
        f"HF {res['hf']['tokens_per_s']:.0f} tok/s (first {res['hf']['first_token_ms']:.0f} ms)")
    return res


_TOKS = re.compile(r"([\d,]+) tokens/s; checkpoint")


def bench_train(batch: int, steps: int, corpus: str, backend: str) -> dict:
    out = OUT / f"train-b{batch}"
    text = cli("train", "--preset", "huge", "--batch", str(batch), "--steps", str(steps), "--corpus", corpus,
               "--backend", backend, "--eval-every", str(10 * steps), "--ckpt-every", str(10 * steps), "--out", str(out),
               name=f"train-b{batch}")  # fmt: skip
    tok_s = float(_TOKS.search(text).group(1).replace(",", ""))
    return {"batch": batch, "steps": steps, "tokens_per_s": tok_s, "ms_per_step": 1000 * batch * 256 / tok_s}


def bench_torch_train(batch: int, mode: str | None, steps: int = 50) -> dict:
    import torch

    from torch_gpt import make_train_step

    torch.backends.cuda.matmul.allow_tf32 = False
    step = make_train_step("huge", "cuda", batch=batch, compile_mode=mode)
    t = time.perf_counter()
    for _ in range(5):
        step()
    warm = time.perf_counter() - t
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return {"batch": batch, "mode": mode or "eager", "ms_per_step": 1000 * (time.perf_counter() - t) / steps, "warmup_s": warm}


def attempt(what, fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 -- a benchmark row that fails is reported, not fatal
        log(f"skipped {what}: {type(e).__name__}: {e}")
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="webgpu")
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--train-steps", type=int, default=300)
    a = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    res = {"generation": [], "train": []}
    print("| model | tgc tokens/s (KV) | tgc first token ms | runtime open → first token s | tgc tokens/s (no KV) | "
          "HF tokens/s | HF first token ms | tgc / HF |\n|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        r = attempt(f"generation {shape}", bench_generation, shape, a.backend, a.tokens)
        if r:
            res["generation"].append(r)
            k, nk, h = r["tgc_kv"], r["tgc_no_kv"], r["hf"]
            print(f"| {shape} | {k['tokens_per_s']:.0f} | {k['first_token_ms']:.0f} | {k['open_to_first_token_s']:.2f} | "
                  f"{nk['tokens_per_s']:.0f} | {h['tokens_per_s']:.0f} | {h['first_token_ms']:.1f} | "
                  f"{k['tokens_per_s'] / h['tokens_per_s']:.2f} |", flush=True)  # fmt: skip
    if not a.skip_train:
        print("\n| huge, batch | tgc train ms/step | torch eager | torch.compile reduce-overhead |\n|---|---|---|---|")
        for bsz in (8, 32):
            t = attempt(f"tgc train b{bsz}", bench_train, bsz, a.train_steps, a.corpus, a.backend)
            tr = {m: attempt(f"torch {m} b{bsz}", bench_torch_train, bsz, m) for m in (None, "reduce-overhead")}
            res["train"].append({"tgc": t, "torch": tr})
            f = lambda r: f"{r['ms_per_step']:.2f}" if r else "—"  # noqa: E731
            print(f"| {bsz} | {f(t)} | {f(tr[None])} | {f(tr['reduce-overhead'])} |", flush=True)
    (OUT / "bench_product.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
