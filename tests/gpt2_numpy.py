"""An independent GPT-2 forward in plain numpy, written from the GPT-2 paper and
nanoGPT's model.py, sharing no code with tgc: the outside reference the
interpreter's forward is checked against (float64)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def gpt2_logits(p: dict, idx: np.ndarray, n_layer: int, n_head: int, eps: float = 1e-5) -> np.ndarray:
    B, T = idx.shape
    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][np.arange(T)]
    C = x.shape[-1]
    hs = C // n_head
    mask = np.tril(np.ones((T, T), bool))
    for i in range(n_layer):
        h = lambda n, i=i: p[f"transformer.h.{i}.{n}"]
        a = layernorm(x, h("ln_1.weight"), h("ln_1.bias"), eps)
        qkv = a @ h("attn.c_attn.weight") + h("attn.c_attn.bias")
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, nh, T, hs)
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        att = np.where(mask, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
        m = layernorm(x, h("ln_2.weight"), h("ln_2.bias"), eps)
        x = x + gelu(m @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias")) @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
    x = layernorm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return x @ p["transformer.wte.weight"].T


def cross_entropy(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()
