"""A gallery model's held-out score, computed by Hugging Face transformers on the CPU (not by tgc).

    python benchmarks/eval_hf.py MODEL_DIR --corpus shakespeare|python|FILE [--stride 128] [--batch 32]

The held-out text is the corpus's validation split as tgc defines it (tgc/data.py
split_text: the last 10% by bytes, moved forward to a line start). It is tokenized by the
model's own tokenizer.json through transformers' PreTrainedTokenizerFast and scored by
GPT2LMHeadModel (weights as shipped, fp16 upcast to f32). Two figures, in nats per token
(= per byte for the byte tokenizer):
  windows  non-overlapping windows of n_positions tokens, every token scored: the
           definition tgc's own validation loss samples
  sliding  windows of n_positions moved by --stride; each token is scored once, in the
           window that gives it the most context (transformers' perplexity recipe)
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N tokens (a quick look)")
    a = ap.parse_args(argv)

    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from tgc.data import load_text, split_text

    torch.set_grad_enabled(False)
    name, text = load_text(a.corpus)
    _, val = split_text(text)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(a.model) / "tokenizer.json"))
    ids = torch.tensor(tok(val)["input_ids"], dtype=torch.long)
    if a.limit:
        ids = ids[: a.limit]
    model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    T = model.config.n_positions
    t0 = time.perf_counter()

    def score(starts, first_scored):
        """Sum of -log p over the scored positions of windows starting at `starts`."""
        total, n = 0.0, 0
        for i in range(0, len(starts), a.batch):
            chunk = starts[i : i + a.batch]
            L = min(T, len(ids) - chunk[-1])  # the last window may be shorter
            x = torch.stack([ids[s : s + L] for s in chunk])
            logp = torch.log_softmax(model(x).logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
            for r, s in enumerate(chunk):
                f = first_scored(s)
                total += float(nll[r, f:].sum())
                n += nll.shape[1] - f
        return total, n

    starts = list(range(0, len(ids) - 1, T))
    w_sum, w_n = 0.0, 0
    for group in ([s for s in starts if len(ids) - s >= T], [s for s in starts if 1 < len(ids) - s < T]):
        if group:
            s_, n_ = score(group, lambda s: 0)
            w_sum, w_n = w_sum + s_, w_n + n_
    slide = list(range(0, max(1, len(ids) - T), a.stride))
    s_sum, s_n = score(slide[:1], lambda s: 0)
    s2, n2 = score(slide[1:], lambda s: T - 1 - a.stride) if len(slide) > 1 else (0.0, 0)
    s_sum, s_n = s_sum + s2, s_n + n2
    out = {"model": a.model, "corpus": name, "val_bytes": len(val.encode()), "val_tokens": len(ids),
           "windows_nats_per_token": w_sum / w_n, "sliding_nats_per_token": s_sum / s_n,
           "scored_windows": w_n, "scored_sliding": s_n, "n_positions": T, "stride": a.stride,
           "seconds": round(time.perf_counter() - t0, 1), "scorer": "transformers.GPT2LMHeadModel (CPU, f32)"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
