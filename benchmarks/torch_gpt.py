"""The PyTorch reference every benchmark compares tgc's train_step with: the same GPT-2 as
models/gpt.tg for a preset (pre-LN, exact GELU, tied embeddings, learned positions),
trained with AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1 and global-norm clipping at 1.0.

attention="sdpa" uses F.scaled_dot_product_attention (PyTorch's fused kernel); "manual"
writes attention out as nanoGPT's non-flash path does (matmul, mask, softmax, matmul).
"""

from __future__ import annotations

import math


def gpt_module(preset: str, device: str = "cpu", attention: str = "sdpa", dropout: float = 0.0,
               gpt_tg_init: bool = False):
    """The GPT of models/gpt.tg for a preset as a torch Module, `model(idx, targets)` -> mean loss.
    `dropout` where gpt.tg's pdrop applies it (embeddings, each residual branch);
    `gpt_tg_init` initialises as gpt.tg does (N(0, 0.02), residual projections 0.02/sqrt(2L),
    zero biases, unit LayerNorm weights) instead of PyTorch's defaults."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from tgc import presets

    p = presets.get_preset(preset)
    V, T, d, H, L = p["vocab"], p["ctx"], p["d"], p["heads"], p["layers"]
    mask = torch.tril(torch.ones(T, T, device=device)).view(1, 1, T, T)

    def drop(x, training):
        return F.dropout(x, dropout, training) if dropout else x

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            B = x.shape[0]
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (t.view(B, T, H, d // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
            if attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // H))
                y = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1) @ v
            x = x + drop(self.c_proj(y.transpose(1, 2).reshape(B, T, d)), self.training)
            return x + drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))), self.training)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, idx, tgt):
            x = drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)), self.training)
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied lm head
            return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))

    model = GPT()
    if gpt_tg_init:
        for name, w in model.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(w)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(w)
            else:
                std = 0.02 / math.sqrt(2 * L) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(w, 0.0, std)
    return model.to(device)


def make_train_step(preset: str, device: str = "cpu", attention: str = "sdpa", batch: int | None = None,
                    compile_mode: str | None = None):
    """A no-argument function running one training step (loss read back, as tgc does); `batch`
    overrides the preset's; `compile_mode` ("default", "reduce-overhead") wraps the model in
    torch.compile."""
    import torch

    from tgc import presets

    p = presets.get_preset(preset)
    V, T, B = p["vocab"], p["ctx"], batch or p["batch"]
    model = gpt_module(preset, device, attention)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    fwd = torch.compile(model, mode=compile_mode) if compile_mode else model
    idx = torch.randint(0, V, (B, T), device=device)
    tgt = torch.randint(0, V, (B, T), device=device)

    def step():
        loss = fwd(idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    return step
