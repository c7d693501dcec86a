"""Programs: named graphs a runtime calls as one unit, and how the five GPT programs
are derived from the model's forward definition.

A Program has named outputs (read back by the host) and updates (new values of
persistent state, written in place: parameters, AdamW moments, KV caches). Its
inputs and uniforms are whatever leaves the graph reaches, so passes never have to
keep a side table in sync.

- train_step: loss, gradients (autodiff), global-norm clipping, LR schedule and AdamW, all IR;
              every DROPOUT becomes a mask drawn on the device from the host RNG (`_dropout`)
- eval_loss:  loss only (DROPOUT is the identity here and in the programs below)
- forward:    logits for a whole [1, ctx] sequence, no cache
- prefill:    the same forward with every ATTENTION replaced by cache writes plus
              CACHED_ATTENTION, returning the logits at position len-1
- decode_step: one token at position `pos` through the same rewrite
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tgc.errors import TgcError
from tgc.ir import build
from tgc.ir.autodiff import grad
from tgc.ir.node import Node, make, substitute, toposort
from tgc.ir.ops import Op


@dataclass
class Program:
    name: str
    outputs: dict[str, Node]
    updates: dict[str, Node] = field(default_factory=dict)

    def nodes(self) -> list[Node]:
        return list(self.outputs.values()) + list(self.updates.values())

    def leaves(self, op: Op) -> dict[str, Node]:
        return {n.arg["name"]: n for n in toposort(self.nodes()) if n.op is op}

    @property
    def inputs(self) -> dict[str, Node]:
        return self.leaves(Op.INPUT)

    @property
    def uniforms(self) -> dict[str, Node]:
        return self.leaves(Op.UNIFORM)

    def map_graph(self, fn) -> "Program":
        """Apply a graph pass (list of nodes -> list of nodes) to the whole program."""
        names = list(self.outputs) + list(self.updates)
        new = fn(self.nodes())
        k = len(self.outputs)
        return Program(self.name, dict(zip(names[:k], new[:k])), dict(zip(names[k:], new[k:])))


@dataclass(frozen=True)
class TrainConfig:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1


# Uniforms the runtime sets for train_step (all f32): the 1-based step being taken,
# the peak learning rate, warmup length and total planned steps for the schedule.
TRAIN_UNIFORMS = ("step", "lr", "warmup", "total_steps")


def lr_schedule(min_lr_ratio: float = TrainConfig.min_lr_ratio) -> Node:
    """lr * linear warmup * cosine decay to min_lr_ratio * lr, as a scalar IR expression of uniforms."""
    b = build
    step, lr, warmup, total = (b.uniform(n) for n in TRAIN_UNIFORMS)
    one = b.full((), 1.0)
    warm = b.minimum(one, b.div(step, b.maximum(warmup, one)))
    t = b.div(b.sub(step, warmup), b.maximum(b.sub(total, warmup), one))
    t = b.minimum(b.maximum(t, b.full((), 0.0)), one)
    cos = b.mul(b.full((), 0.5), b.add(one, b.cos(b.mul(b.full((), math.pi), t))))
    r = min_lr_ratio
    return b.mul(b.mul(lr, warm), b.add(b.full((), r), b.mul(b.full((), 1 - r), cos)))


def adamw(params: dict[str, Node], grads: dict[str, Node], cfg: TrainConfig) -> dict[str, Node]:
    """Global-norm clipping then AdamW (PyTorch's formulation); returns the updates of
    every parameter and its two moments. Weight decay applies to tensors of rank >= 2."""
    b = build
    total = None
    for g in grads.values():
        s = b.sum_all(b.mul(g, g))
        total = s if total is None else b.add(total, s)
    norm = b.sqrt(total)
    scale = b.minimum(b.full((), 1.0), b.div(b.full((), cfg.grad_clip), b.add(norm, b.full((), 1e-6))))
    step = b.uniform("step")
    lr = lr_schedule(cfg.min_lr_ratio)
    bc1 = b.sub(b.full((), 1.0), b.exp(b.mul(step, b.full((), math.log(cfg.beta1)))))
    bc2 = b.sub(b.full((), 1.0), b.exp(b.mul(step, b.full((), math.log(cfg.beta2)))))
    step_size = b.div(lr, bc1)
    inv_sqrt_bc2 = b.recip(b.sqrt(bc2))
    updates = {}
    for name, p in params.items():
        g = b.mul(grads[name], scale)
        m = b.input(f"adam_m/{name}", p.shape, role="optimizer_state")
        v = b.input(f"adam_v/{name}", p.shape, role="optimizer_state")
        m2 = b.add(b.mul(b.full((), cfg.beta1), m), b.mul(b.full((), 1 - cfg.beta1), g))
        v2 = b.add(b.mul(b.full((), cfg.beta2), v), b.mul(b.full((), 1 - cfg.beta2), b.mul(g, g)))
        decayed = b.mul(p, b.sub(b.full((), 1.0), b.mul(lr, b.full((), cfg.weight_decay)))) if p.ndim >= 2 else p
        denom = b.add(b.mul(b.sqrt(v2), inv_sqrt_bc2), b.full((), cfg.eps))
        updates[name] = b.sub(decayed, b.mul(step_size, b.div(m2, denom)))
        updates[m.arg["name"]] = m2
        updates[v.arg["name"]] = v2
    return updates


# The i32 uniform train_step takes when the model uses dropout: the step's key, tgc/rng.py's
# bits(seed, "dropout", step - 1) as a bit pattern (tgc/train.py, runtime/ in the browser).
DROPOUT_KEY = "dropout_key"


def _dropout(outputs: list[Node], training: bool) -> list[Node]:
    """Resolve every DROPOUT(x, p): the identity, or (training) x * where(u < p, 0, 1 / (1 - p))
    with u = RAND(counter, key). Each site takes its own range of counters (its elements in
    order, after the earlier sites' in graph order), so one key per step gives every site and
    element an independent draw, computed the same way by numpy, WGSL and wasm."""
    from tgc.ir.passes import _rewrite

    b = build
    key = b.uniform(DROPOUT_KEY, "i32")
    offset = 0

    def fn(n: Node):
        nonlocal offset
        if n.op is not Op.DROPOUT:
            return None
        x, p = n.srcs[0], n.arg
        if not training:
            return x
        counter = b.reshape(b.iota((x.size,), 0), x.shape)
        if offset:
            counter = b.add(counter, b.full(x.shape, offset, "i32"))
        offset += x.size
        if offset >= 2**31:
            raise TgcError(f"dropout draws {offset:,} numbers per step, more than i32 counters hold")
        drop = b.cmplt(b.rand(counter, key), b.full(x.shape, p))
        return b.mul(x, b.where(drop, b.full(x.shape, 0.0), b.full(x.shape, 1.0 / (1.0 - p))))

    if not any(n.op is Op.DROPOUT for n in toposort(outputs)):
        return outputs
    return _rewrite(outputs, fn)


def _bind_pos(outputs: list[Node], value: Node) -> list[Node]:
    """Bind the forward definition's position-offset uniform `pos` to `value`."""
    mapping = {n: value for n in toposort(outputs) if n.op is Op.UNIFORM and n.arg["name"] == "pos"}
    return substitute(outputs, mapping) if mapping else outputs


def _with_kv_cache(logits: Node, pos: Node, cache_len: int) -> tuple[Node, dict[str, Node]]:
    """Rewrite every ATTENTION(q, k, v) into a write of k, v at `pos` into per-layer caches
    [B, cache_len, d] and CACHED_ATTENTION over them. Returns new logits and cache updates."""
    from tgc.ir.passes import _rewrite

    updates: dict[str, Node] = {}

    def fn(n: Node):
        if n.op is not Op.ATTENTION:
            return None
        layer = len(updates) // 2
        q, k, v = n.srcs
        B, T, d = q.shape
        caches = []
        for kind, t in (("k", k), ("v", v)):
            name = f"kv_cache/{layer}/{kind}"
            c = build.input(name, (B, cache_len, d), role="kv_cache")
            updates[name] = make(Op.UPDATE_SLICE, (c, t, pos), 1, n.loc)
            caches.append(updates[name])
        return make(Op.CACHED_ATTENTION, (q, caches[0], caches[1], pos), n.arg, n.loc)

    (new_logits,) = _rewrite([logits], fn)
    return new_logits, updates


# The programs of every GPT artifact, in artifact order: the one list the compiler driver,
# the manifest and the runtimes go by.
PROGRAMS = ("train_step", "eval_loss", "forward", "prefill", "decode_step")


def build_programs(model, batch: int, cfg: TrainConfig = TrainConfig(), only=PROGRAMS) -> dict[str, Program]:
    """The programs of a GPT artifact (PROGRAMS, in that order) from a lowered DSL model
    (tgc.frontend.lower.Model). `only` keeps a subset (a generation artifact: forward,
    prefill, decode_step), and skips the autodiff when train_step and eval_loss are left out."""
    c = model.config
    ctx, vocab = c["ctx"], c["vocab"]
    zero = build.full((), 0, "i32")
    params = model.param_nodes
    progs: dict[str, Program] = {}

    if "train_step" in only or "eval_loss" in only:
        idx = build.input("idx", (batch, ctx), "i32")
        targets = build.input("targets", (batch, ctx), "i32")
        (model_loss,) = _bind_pos([model.call("loss", idx, targets)], zero)
        (loss,) = _dropout([model_loss], training=True)
        grads = dict(zip(params, grad(loss, list(params.values()))))
        progs["train_step"] = Program(
            "train_step",
            {"loss": loss, **{f"grad/{k}": g for k, g in grads.items()}},
            adamw(params, grads, cfg),
        )
        progs["eval_loss"] = Program("eval_loss", {"loss": _dropout([model_loss], training=False)[0]})

    seq = build.input("tokens", (1, ctx), "i32")
    (logits,) = _dropout(_bind_pos([model.call("logits", seq)], zero), training=False)
    progs["forward"] = Program("forward", {"logits": logits})

    # prefill: the prompt padded to ctx; `len` real tokens; logits of the last one
    length = build.uniform("len", "i32")
    logits, caches = _with_kv_cache(logits, zero, ctx)
    last = build.dslice(logits, build.sub(length, build.full((), 1, "i32")), 1, 1)
    progs["prefill"] = Program("prefill", {"logits": build.reshape(last, (1, vocab))}, caches)

    tok = build.input("token", (1, 1), "i32")
    pos = build.uniform("pos", "i32")
    (step_logits,) = _dropout(_bind_pos([model.call("logits", tok)], pos), training=False)
    step_logits, caches = _with_kv_cache(step_logits, pos, ctx)
    progs["decode_step"] = Program("decode_step", {"logits": build.reshape(step_logits, (1, vocab))}, caches)
    assert tuple(progs) == PROGRAMS[-len(progs):], f"build_programs made {tuple(progs)}, not {PROGRAMS}"
    return {k: v for k, v in progs.items() if k in only}
