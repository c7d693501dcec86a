"""KV-cached versus uncached decoding: time per generated token at a given context.

Cached: one `decode_step` per token (the new token's q, k, v; attention over the
cache). Uncached: one `forward` over the whole [1, ctx] window per token, taking
the logits at the last real position — what `tgc generate --no-kv-cache` does.
Weights are the preset's random init (speed does not depend on them).

    python benchmarks/bench_generate.py --preset huge --context 256 --backend wasm

Prints a markdown row; writes JSON to $OUT/bench_generate.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgc.compiler import compile_model  # noqa: E402
from tgc.runtime import open_runtime  # noqa: E402  (WebGPU and wasm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="huge")
    ap.add_argument("--context", type=int, default=256, help="tokens of context at which decoding is timed")
    ap.add_argument("--tokens", type=int, default=16, help="tokens timed in each mode")
    ap.add_argument("--backend", default="wasm")
    ap.add_argument("--artifact", help="reuse a compiled artifact directory")
    a = ap.parse_args(argv)

    art = Path(a.artifact) if a.artifact else Path(tempfile.mkdtemp(prefix="tgc-bench-gen-"))
    t0 = time.perf_counter()
    if not (art / "manifest.json").exists():
        compile_model(preset=a.preset, out=art, targets=("wasm",) if a.backend == "wasm" else ("wgsl",))
    compile_s = time.perf_counter() - t0
    rt = open_runtime(art, a.backend)
    rt.init_state(0)
    ctx = rt.manifest["model"]["config"]["ctx"]
    V = rt.manifest["model"]["config"]["vocab"]
    if a.context > ctx:
        sys.exit(f"--context {a.context} exceeds the preset's ctx {ctx}")
    tokens = (np.arange(ctx, dtype=np.int32) * 7919 % V).reshape(1, ctx)

    # warm-up: the first run of a program builds its pipelines (WebGPU) — not decoding time
    start = a.context - a.tokens
    rt.run("forward", {"tokens": tokens}, {})
    rt.run("prefill", {"tokens": tokens}, {"len": start})
    rt.run("decode_step", {"token": tokens[:, start : start + 1]}, {"pos": start})
    # cached: prefill up to context - tokens, then time decode steps up to `context`
    rt.run("prefill", {"tokens": tokens}, {"len": start})
    t = time.perf_counter()
    for pos in range(start, a.context):
        rt.run("decode_step", {"token": tokens[:, pos : pos + 1]}, {"pos": pos})
    cached = (time.perf_counter() - t) / a.tokens

    # uncached: a whole forward per token at the same positions
    t = time.perf_counter()
    for _ in range(start, a.context):
        rt.run("forward", {"tokens": tokens}, {})
    uncached = (time.perf_counter() - t) / a.tokens

    res = {
        "preset": a.preset, "backend": a.backend, "context": a.context, "tokens_timed": a.tokens,
        "cached_ms_per_token": 1000 * cached, "uncached_ms_per_token": 1000 * uncached,
        "speedup": uncached / cached, "compile_s": compile_s,
    }
    print("| preset | backend | context | cached ms/token | uncached ms/token | speedup |")
    print("|---|---|---|---|---|---|")
    print(f"| {a.preset} | {a.backend} | {a.context} | {1000 * cached:.2f} | {1000 * uncached:.2f} | {uncached / cached:.1f}x |")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_generate.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
