"""The held-out score of a checkpoint, computed by transformers on the CPU, not by tgc
(issue 12's acceptance: the shipped Shakespeare model scores <= 1.40 nats/byte there).

    python benchmarks/score_heldout.py shakespeare                      # a gallery name or a directory
    python benchmarks/score_heldout.py runs/x/best --corpus python --stride 128

The held-out text is the validation split tgc trains against (tgc.data: the last 10% of
the corpus, from a line start). It is tokenized with the checkpoint's own tokenizer and cut
into windows of ctx tokens; with --stride S (default ctx: windows side by side) each window
after the first scores only its last S predictions, so every token is predicted once, with
ctx - S tokens of context at least. Prints mean nats per token and nats per byte of text
(the same for the byte tokenizer). Needs torch and transformers (the `hf` extra).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def score(ckpt: str, corpus: str = "shakespeare", stride: int | None = None, batch: int = 64) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    from tgc import gallery
    from tgc.checkpoint import load_checkpoint
    from tgc.data import load_text, split_text

    path = gallery.resolve(ckpt)
    tok = load_checkpoint(path).tokenizer
    model = GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32).eval()
    ctx = model.config.n_positions
    stride = stride or ctx
    if not 1 <= stride <= ctx:
        raise SystemExit(f"--stride must be from 1 to ctx ({ctx})")
    _, text = load_text(corpus)
    val = split_text(text)[1]
    ids = np.asarray(tok.encode(val), np.int64)
    # chunks of targets [t0, t1): ids[p] is predicted from the window ids[a:t1-1], a = max(0, t1-1-ctx);
    # the first chunk is ctx targets, each later one `stride`
    chunks, t0, n_ids = [], 1, len(ids)
    while t0 < n_ids:
        t1 = min(t0 + (ctx if t0 == 1 else stride), n_ids)
        chunks.append((max(0, t1 - 1 - ctx), t0, t1))
        t0 = t1
    nats, count = 0.0, 0
    t_start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(chunks), batch):
            group = chunks[i:i + batch]
            width = max(t1 - 1 - a for a, _, t1 in group)
            x = torch.zeros((len(group), width), dtype=torch.long)
            for j, (a, _, t1) in enumerate(group):
                x[j, : t1 - 1 - a] = torch.from_numpy(ids[a:t1 - 1])
            logp = torch.log_softmax(model(x).logits.float(), dim=-1)
            for j, (a, t0, t1) in enumerate(group):
                tgt = torch.from_numpy(ids[t0:t1])
                nats -= float(logp[j, t0 - 1 - a:t1 - 1 - a].gather(1, tgt[:, None]).sum())
                count += t1 - t0
    n_bytes = len(tok.decode([int(t) for t in ids[1:]]).encode("utf-8"))  # the text predicted
    return {"checkpoint": str(path), "corpus": corpus, "tokens": count, "bytes": n_bytes, "ctx": ctx, "stride": stride,
            "nats_per_token": nats / count, "nats_per_byte": nats / n_bytes, "seconds": time.perf_counter() - t_start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a checkpoint directory or a gallery name")
    p.add_argument("--corpus", default="shakespeare", help="the corpus whose validation split is scored")
    p.add_argument("--stride", type=int, help="new predictions per window (default ctx: windows side by side)")
    a = p.parse_args()
    r = score(a.ckpt, a.corpus, a.stride)
    print(f"{r['checkpoint']}: {r['nats_per_byte']:.4f} nats/byte ({r['nats_per_token']:.4f} nats/token) on the "
          f"held-out {r['corpus']} split, {r['tokens']:,} tokens, ctx {r['ctx']}, stride {r['stride']}, "
          f"transformers on the CPU in {r['seconds']:.0f}s")
    assert math.isfinite(r["nats_per_byte"])


if __name__ == "__main__":
    main()
