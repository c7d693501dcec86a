"""AST + config values -> IR, through tgc/ir/build.py.

A Model holds the resolved config, the parameter list and one INPUT node per
parameter. `Model.call(fn, *nodes)` lowers a DSL function applied to IR nodes by
inlining: user functions are expanded at every call, `for` loops are unrolled
over the repeated parameter groups, and every build call gets the DSL location of
the expression, so shape errors point at the user's line. Values while lowering
are tensors (Node), numbers (int/float: config values, symbolic dims), parameter
groups (Group), lists of numbers and tuples (from split). Nothing here knows about
gradients, optimizers or KV caches; the program builder derives those.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field

from tgc.errors import Loc, ShapeError, TgcError
from tgc.frontend import ast as A
from tgc.frontend.check import (
    BUILTIN_ARITY,
    MAX_CALL_DEPTH,
    ParamSpec,
    as_int,
    check,
    consteval,
    expand_params,
    resolve_config,
)
from tgc.frontend.parser import parse_file, parse_text
from tgc.ir import build
from tgc.ir.node import Node

__all__ = ["Group", "Model", "ParamSpec", "check_entry_points", "load_model"]

MAX_LOWERING_STEPS = 10_000  # expressions and statements one entry point may unroll to (gpt.tg: ~50 per layer)
MAX_EXPR_NESTING = 250  # expressions being lowered at once, through inlined calls (keeps clear of the recursion limit)


@dataclass(frozen=True)
class Group:
    """A prefix of parameter names, e.g. transformer.h.0.ln_1 (its tensors are .weight, .bias)."""

    path: str


def _kind(v) -> str:
    if isinstance(v, Node):
        return f"tensor {v.dtype}{list(v.shape)}"
    if isinstance(v, Group):
        return f"parameter group '{v.path}'"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return {list: "list", tuple: f"tuple of {len(v)} values"}.get(type(v), type(v).__name__)
    return f"number {v}"


def _fail(msg: str, loc: Loc | None):
    raise ShapeError(msg, loc)


# ---------------------------------------------------------------- the model


@dataclass
class Model:
    config: dict  # resolved config values
    params: list[ParamSpec]  # declaration order
    param_nodes: dict[str, Node]  # name -> INPUT node, role "parameter"
    module: A.Module = field(repr=False)
    _funcs: dict = field(repr=False, default_factory=dict)
    _children: dict = field(repr=False, default_factory=dict)  # group path -> child segments, in order

    @property
    def functions(self) -> tuple[str, ...]:
        return tuple(self._funcs)

    def call(self, fn: str, *args) -> Node:
        """Lower DSL function `fn` applied to IR nodes (a str argument names a parameter group).
        The entry points the program builder calls are held to their contract here, so every
        caller (tgc check, the compiler) rejects the same programs: `loss` must return an f32
        scalar and `logits(idx[B, T])` an f32 [B, T, vocab] tensor."""
        if fn not in self._funcs:
            first = self.module.items[0].loc if self.module.items else Loc(self.module.file, 1, 1)
            raise TgcError(f"the model defines no function '{fn}' (it has: {', '.join(self._funcs) or 'none'})", first)
        vals = [Group(a) if isinstance(a, str) else a for a in args]
        f = self._funcs[fn]
        L = _Lowerer(self)
        try:
            result = L.apply(f, vals, [None] * len(vals), None)
        except RecursionError:
            raise TgcError("the model nests too deeply to lower here", L.where or f.loc) from None
        if fn in ENTRY_POINTS:
            ENTRY_POINTS[fn](self, f, vals, result)
        return result


def load_model(src, config: dict, filename: str | None = None) -> Model:
    """Parse (a path, DSL text or a Module), check, bind config values, build parameter inputs."""
    if isinstance(src, A.Module):
        module = src
    elif not isinstance(src, (str, os.PathLike)):
        raise TgcError(f"load_model needs a path, DSL text or a Module, got {type(src).__name__}")
    elif isinstance(src, os.PathLike) or ("\n" not in src and (src.endswith(".tg") or os.path.isfile(src))):
        module = parse_file(src)
    else:
        module = parse_text(src, filename or "<string>")
    check(module)
    values = resolve_config(module, config)
    params = expand_params(module, values)
    nodes = {p.name: build.input(p.name, p.shape, "f32", role="parameter", loc=p.loc) for p in params}
    children: dict[str, dict[str, None]] = {}  # group -> its child segments, in order (a dict as an ordered set)
    for p in params:
        parts = p.name.split(".")
        prefix = parts[0]
        for k in range(1, len(parts)):
            children.setdefault(prefix, {})[parts[k]] = None
            prefix = f"{prefix}.{parts[k]}"
    funcs = {it.name: it for it in module.items if isinstance(it, A.FuncDef)}
    return Model(values, params, nodes, module, funcs, {g: list(kids) for g, kids in children.items()})


# ---------------------------------------------------------------- lowering


class _Lowerer:
    def __init__(self, model: Model):
        self.m = model
        self.depth = 0        # user-function calls being inlined
        self.nesting = 0      # expressions being lowered
        self.steps = 0        # expressions and statements lowered so far (bounded: MAX_LOWERING_STEPS)
        self.where = None     # the location being lowered (for a RecursionError's message)
        self.loops: list = []  # the for statements being unrolled, outermost first

    def tick(self, loc) -> None:
        self.steps += 1
        self.where = loc or self.where
        if self.steps > MAX_LOWERING_STEPS:
            if self.loops:
                s, n = self.loops[0]
                raise TgcError(f"unrolling this for loop (over {n} groups, with the loops and calls inside it) "
                               f"takes more than {MAX_LOWERING_STEPS:,} steps; tgc bounds the size of a model's "
                               "program", s.loc)
            raise TgcError(f"the model unrolls to more than {MAX_LOWERING_STEPS:,} expressions (reached here); "
                           "tgc bounds the size of a model's program", loc)

    # ---- functions and types
    def apply(self, f: A.FuncDef, args: list, arg_locs: list, call_loc: Loc | None):
        if len(args) != len(f.args):
            raise TgcError(f"{f.name} takes {len(f.args)} arguments, got {len(args)}", call_loc or f.loc)
        self.depth += 1
        if self.depth > MAX_CALL_DEPTH:
            raise TgcError(f"function calls nest more than {MAX_CALL_DEPTH} deep", call_loc or f.loc)
        syms: dict = {}
        env: dict = {}
        for a, v, loc in zip(f.args, args, arg_locs):
            if a.type:
                self.bind(a.type, v, syms, loc or a.type.loc, f"argument '{a.name}' of {f.name}")
            env[a.name] = v
        env = {**syms, **env}
        result = self.run(f.body, env)
        if f.ret:
            self.bind(f.ret, result, syms, f.body[-1].value.loc, f"return value of {f.name}")
        self.depth -= 1
        return result

    def bind(self, t: A.TensorType, v, syms: dict, loc, what: str):
        """Check `v` against a shape type, binding symbolic dims (B, T) on first sight."""
        declared = A.format_expr(A.ListLit(t.dims))
        if not isinstance(v, Node):
            _fail(f"{what} must be a tensor {t.dtype}{declared}, got a {_kind(v)}", loc)
        if v.dtype != t.dtype:
            _fail(f"{what} must be {t.dtype}{declared}, got {v.dtype}{list(v.shape)}", loc)
        if len(t.dims) != v.ndim:
            _fail(f"{what} must have rank {len(t.dims)} ({t.dtype}{declared}), got shape {list(v.shape)}", loc)
        for i, (d, s) in enumerate(zip(t.dims, v.shape)):
            if isinstance(d, A.Name) and d.name not in self.m.config:
                want = syms.setdefault(d.name, s)
                name = d.name
            else:
                want = consteval(d, {**self.m.config, **syms}, "dimension")
                name = A.format_expr(d)
            if want != s:
                _fail(f"{what} has shape {list(v.shape)}, but {t.dtype}{declared} needs dim {i} ({name}) = {want}", loc)

    def run(self, stmts, env: dict):
        for s in stmts:
            self.tick(s.loc)
            match s:
                case A.Assign(targets, value):
                    v = self.expr(value, env)
                    if len(targets) > 1:
                        if not isinstance(v, tuple) or len(v) != len(targets):
                            what = f"{len(v)} values" if isinstance(v, tuple) else f"a {_kind(v)}"
                            _fail(f"cannot unpack {what} into {len(targets)} names", s.loc)
                        env.update(zip(targets, v))
                    else:
                        env[targets[0]] = v
                case A.For(var, group, body):
                    g = self.expr(group, env)
                    kids = self.m._children.get(g.path, []) if isinstance(g, Group) else []
                    if not kids or not all(k.isdigit() for k in kids):
                        _fail(f"for needs a repeated parameter group (like transformer.h), got a {_kind(g)}", group.loc)
                    self.loops.append((s, len(kids)))
                    for k in sorted(kids, key=int):
                        env[var] = Group(f"{g.path}.{k}")
                        self.run(body, env)
                    self.loops.pop()
                case A.Return(value):
                    return self.expr(value, env)
        return None

    # ---- names
    def lookup(self, path: str, loc, bare: bool):
        if path in self.m.param_nodes:
            return self.m.param_nodes[path]
        if path in self.m._children:
            return Group(path)
        if bare:
            raise TgcError(f"unknown name '{path}'", loc)
        parts = path.split(".")
        for k in range(1, len(parts)):
            if ".".join(parts[:k]) in self.m.param_nodes:
                raise TgcError(f"'{'.'.join(parts[:k])}' is a tensor and has no members", loc)
        close = difflib.get_close_matches(path, list(self.m.param_nodes) + list(self.m._children), 1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TgcError(f"unknown parameter '{path}'{hint}", loc)

    def name(self, e: A.Name | A.Path, env: dict):
        parts = (e.name,) if isinstance(e, A.Name) else e.parts
        root = parts[0]
        if root in env or (root in self.m.config and len(parts) == 1):
            v = env[root] if root in env else self.m.config[root]
            if len(parts) == 1:
                return v
            if not isinstance(v, Group):
                raise TgcError(f"'{root}' is a {_kind(v)} and has no members", e.loc)
            return self.lookup(".".join((v.path,) + parts[1:]), e.loc, False)
        return self.lookup(".".join(parts), e.loc, len(parts) == 1)

    # ---- expressions
    def expr(self, e, env: dict):
        self.tick(getattr(e, "loc", None))
        self.nesting += 1
        if self.nesting > MAX_EXPR_NESTING:
            raise TgcError(f"expressions nest more than {MAX_EXPR_NESTING} deep through function calls", e.loc)
        try:
            return self._expr(e, env)
        finally:
            self.nesting -= 1

    def _expr(self, e, env: dict):
        match e:
            case A.Num():
                return e.value
            case A.Name() | A.Path():
                return self.name(e, env)
            case A.BinOp(op, lhs, rhs):
                return self.binop(op, self.expr(lhs, env), self.expr(rhs, env), e.loc)
            case A.Neg(x):
                v = self.expr(x, env)
                if isinstance(v, Node):
                    return build.neg(v, e.loc)
                return -self.number(v, x, "operand of unary minus")
            case A.Call(func, args):
                vals = [self.expr(a, env) for a in args]
                if func in self.m._funcs:
                    return self.apply(self.m._funcs[func], vals, [a.loc for a in args], e.loc)
                return _BUILTINS[func](self, vals, args, e.loc)
            case A.Index(value, subs):
                return self.index(self.expr(value, env), subs, env, e)
            case A.ListLit(items):
                return [self.number(self.expr(a, env), a, "list element") for a in items]
        raise TgcError(f"cannot lower {type(e).__name__}", getattr(e, "loc", None))

    def binop(self, op: str, a, b, loc):
        if not isinstance(a, Node) and not isinstance(b, Node):
            x = self.number(a, None, f"left operand of '{op}'", loc)
            y = self.number(b, None, f"right operand of '{op}'", loc)
            if op == "@":
                _fail("'@' needs tensors, got two numbers", loc)
            if op == "/" and y == 0:
                raise TgcError("division by zero", loc)
            r = x / y if op == "/" else {"+": x + y, "-": x - y, "*": x * y}[op]  # |x|, |y| < 2**63: no overflow
            if not abs(r) < 2.0**63:  # also catches inf and nan
                raise TgcError(f"arithmetic result {r} is out of range", loc)
            return r
        if op == "@":
            for side, v in (("left", a), ("right", b)):
                if not isinstance(v, Node) or v.dtype != "f32":
                    _fail(f"{side} operand of '@' must be an f32 tensor, got a {_kind(v)}", loc)
            return build.matmul(a, b, loc)
        a, b = self.promote(a, b, op, loc), self.promote(b, a, op, loc)
        return {"+": build.add, "-": build.sub, "*": build.mul, "/": build.div}[op](a, b, loc)

    def promote(self, v, other: Node, op, loc) -> Node:
        """A number next to a tensor becomes a scalar constant of the tensor's dtype."""
        if isinstance(v, Node):
            return v
        x = self.number(v, None, f"operand of '{op}'", loc)
        if other.dtype == "i32" and not float(x).is_integer():
            _fail(f"cannot combine an i32 tensor with {x}", loc)
        return build.full((), x, other.dtype, loc)

    def index(self, x, subs, env, e: A.Index):
        x = self.tensor(x, e.value, "indexed value")
        if len(subs) > x.ndim:
            _fail(f"{len(subs)} subscripts for a tensor of rank {x.ndim} {list(x.shape)}", e.loc)
        drop = []
        for axis, s in enumerate(subs):
            n = x.shape[axis]

            def bound(part, default, n=n):
                if part is None:
                    return default
                i = as_int(self.expr(part, env), part.loc, "index")
                return i + n if i < 0 else i

            if isinstance(s, A.Slice):
                start, stop = bound(s.start, 0), bound(s.stop, n)
            else:
                start = bound(s, 0)
                stop = start + 1
                drop.append(axis)
            if not 0 <= start < stop <= n:
                _fail(f"index {start}:{stop} is out of range (or empty) for axis {axis} of size {n}", e.loc)
            x = build.slice(x, axis, start, stop, e.loc)
        if drop:
            x = build.reshape(x, [s for i, s in enumerate(x.shape) if i not in drop], e.loc)
        return x

    # ---- argument coercion
    def tensor(self, v, e, what: str, dtype: str | None = None) -> Node:
        loc = e.loc if e is not None else None
        if not isinstance(v, Node):
            _fail(f"{what} must be a tensor, got a {_kind(v)}", loc)
        if dtype and v.dtype != dtype:
            _fail(f"{what} must be {dtype}, got {v.dtype}{list(v.shape)}", loc)
        return v

    def number(self, v, e, what: str, loc=None):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(f"{what} must be a number, got a {_kind(v)}", e.loc if e is not None else loc)
        return v

    def int(self, v, e, what: str) -> int:
        return as_int(self.number(v, e, what), e.loc, what)

    def axis(self, v, e, x: Node, what="axis") -> int:
        a = self.int(v, e, what)
        if not -x.ndim <= a < x.ndim:
            _fail(f"{what} {a} is out of range for a tensor of rank {x.ndim}", e.loc)
        return a % x.ndim


# ---------------------------------------------------------------- builtins
# Each takes (lowerer, values, argument expressions, call loc). Arity is checked in check.py.


def _unary_math(fn, pyfn):
    def lower(L, v, e, loc):
        if isinstance(v[0], Node):
            return fn(L.tensor(v[0], e[0], "argument", "f32"), loc)
        x = L.number(v[0], e[0], "argument")
        try:
            return pyfn(x)
        except (ValueError, OverflowError) as exc:
            raise TgcError(f"cannot compute: {exc}", loc) from None

    return lower


def _f32_unary(fn):
    return lambda L, v, e, loc: fn(L.tensor(v[0], e[0], "argument", "f32"), loc)


def _embed(L, v, e, loc):
    table = L.tensor(v[0], e[0], "embedding table", "f32")
    if table.ndim != 2:
        _fail(f"embedding table must be [V, D], got {list(table.shape)}", e[0].loc)
    return build.embed(table, L.tensor(v[1], e[1], "indices", "i32"), loc)


def _positions(L, v, e, loc):
    """Absolute positions of idx's tokens: iota along the last axis + the runtime uniform "pos"
    (0 in training; the decode position in KV-cached decoding)."""
    idx = L.tensor(v[0], e[0], "argument of positions", "i32")
    if idx.ndim < 1:
        _fail("positions needs a tensor of rank >= 1", e[0].loc)
    pos = build.expand(build.reshape(build.uniform("pos", "i32"), (1,) * idx.ndim, loc), idx.shape, loc)
    return build.add(build.iota(idx.shape, idx.ndim - 1), pos, loc)


def _layernorm(L, v, e, loc):
    x = L.tensor(v[0], e[0], "layernorm input", "f32")
    if x.ndim < 1:
        _fail("layernorm needs a tensor of rank >= 1", e[0].loc)
    if len(v) == 3:
        g = v[1]
        if not isinstance(g, Group):
            msg = f"layernorm(x, group, eps) needs a parameter group with .weight and .bias, got a {_kind(g)}"
            _fail(msg, e[1].loc)
        w = L.lookup(g.path + ".weight", e[1].loc, False)
        b = L.m.param_nodes.get(g.path + ".bias")
        w = L.tensor(w, e[1], f"{g.path}.weight")
    else:
        w = L.tensor(v[1], e[1], "layernorm weight", "f32")
        b = L.tensor(v[2], e[2], "layernorm bias", "f32")
    eps = L.number(v[-1], e[-1], "layernorm eps")
    return build.layernorm(x, w, b, eps, loc)


def _attention(L, v, e, loc):
    q, k, w = (L.tensor(v[i], e[i], name, "f32") for i, name in enumerate("qkv"))
    heads = L.int(v[3], e[3], "number of heads")
    if heads < 1:
        _fail(f"number of heads must be positive, got {heads}", e[3].loc)
    return build.attention(q, k, w, heads, loc)


def _cross_entropy(L, v, e, loc):
    logits = L.tensor(v[0], e[0], "logits", "f32")
    if logits.ndim < 1:
        _fail("logits must have rank >= 1", e[0].loc)
    return build.cross_entropy(logits, L.tensor(v[1], e[1], "targets", "i32"), loc)


def _split(L, v, e, loc):
    x = L.tensor(v[0], e[0], "argument of split")
    n = L.int(v[1], e[1], "number of parts")
    if x.ndim < 1 or n < 1:
        _fail(f"cannot split a tensor {list(x.shape)} into {n} parts", loc)
    axis = L.axis(v[2], e[2], x) if len(v) > 2 else x.ndim - 1
    return tuple(build.split(x, n, axis, loc))


def _transpose(L, v, e, loc):
    return build.transpose(L.tensor(v[0], e[0], "argument of transpose"), loc)


def _reshape(L, v, e, loc):
    x = L.tensor(v[0], e[0], "argument of reshape")
    if not isinstance(v[1], list):
        _fail(f"reshape needs a list of dims like [B, T, d], got a {_kind(v[1])}", e[1].loc)
    dims = [as_int(d, e[1].loc, "dim") for d in v[1]]
    if dims.count(-1) == 1:
        rest = math.prod(d for d in dims if d != -1)
        if rest > 0 and x.size % rest == 0:
            dims[dims.index(-1)] = x.size // rest
    if any(d <= 0 for d in dims) or math.prod(dims) != x.size:
        _fail(f"cannot reshape {list(x.shape)} ({x.size} elements) to {v[1]}", loc)
    return build.reshape(x, dims, loc)


def _permute(L, v, e, loc):
    x = L.tensor(v[0], e[0], "argument of permute")
    if not isinstance(v[1], list):
        _fail(f"permute needs a list of axes like [0, 2, 1], got a {_kind(v[1])}", e[1].loc)
    perm = [as_int(p, e[1].loc, "axis") for p in v[1]]
    if sorted(perm) != list(range(x.ndim)):
        _fail(f"{perm} is not a permutation of the axes of {list(x.shape)}", loc)
    return build.permute(x, perm, loc)


def _softmax(L, v, e, loc):
    x = L.tensor(v[0], e[0], "argument of softmax", "f32")
    if x.ndim < 1:
        _fail("softmax needs a tensor of rank >= 1", e[0].loc)
    axis = L.axis(v[1], e[1], x) if len(v) > 1 else x.ndim - 1
    return build.softmax(x, axis, loc)


def _dropout(L, v, e, loc):
    x = L.tensor(v[0], e[0], "dropout input", "f32")
    p = L.number(v[1], e[1], "dropout rate")
    if not 0 <= p < 1:
        _fail(f"dropout rate must be in [0, 1), got {p}", e[1].loc)
    return build.dropout(x, p, loc)  # active in train_step only (tgc/ir/program.py)


def _reduction(fn):
    def lower(L, v, e, loc):
        x = L.tensor(v[0], e[0], "argument", "f32")
        return fn(x, L.axis(v[1], e[1], x), loc=loc)  # keeps the axis (size 1), so it broadcasts back

    return lower


_BUILTINS = {
    "embed": _embed,
    "positions": _positions,
    "layernorm": _layernorm,
    "causal_attention": _attention,
    "cross_entropy": _cross_entropy,
    "split": _split,
    "transpose": _transpose,
    "reshape": _reshape,
    "permute": _permute,
    "gelu": _f32_unary(build.gelu),
    "gelu_tanh": _f32_unary(build.gelu_tanh),
    "relu": _f32_unary(lambda x, loc: build.maximum(x, build.full((), 0.0), loc)),
    "softmax": _softmax,
    "exp": _unary_math(build.exp, math.exp),
    "log": _unary_math(build.log, math.log),
    "sqrt": _unary_math(build.sqrt, math.sqrt),
    "tanh": _unary_math(build.tanh, math.tanh),
    "sum": _reduction(build.reduce_sum),
    "mean": _reduction(build.mean),
    "max": _reduction(build.reduce_max),
    "dropout": _dropout,
}
assert set(_BUILTINS) == set(BUILTIN_ARITY), set(_BUILTINS) ^ set(BUILTIN_ARITY)


# ---------------------------------------------------------------- entry points
# What the program builder (tgc/ir/program.py) needs of the functions it calls; checked in
# Model.call so `tgc check` and `tgc compile` reject the same programs, at the return line.


def _result_loc(f: A.FuncDef) -> Loc:
    return f.body[-1].value.loc if f.body and isinstance(f.body[-1], A.Return) else f.loc


def _loss_result(model: Model, f: A.FuncDef, args, v) -> None:
    if not isinstance(v, Node) or v.dtype != "f32" or v.shape != ():
        _fail(f"loss must return an f32 scalar (the value training minimizes), got a {_kind(v)}", _result_loc(f))


def _logits_result(model: Model, f: A.FuncDef, args, v) -> None:
    vocab = model.config.get("vocab")
    idx = args[0] if args and isinstance(args[0], Node) else None
    want = (*idx.shape, vocab) if idx is not None and idx.ndim == 2 else None
    if not isinstance(v, Node) or v.dtype != "f32" or (want is not None and v.shape != want):
        shape = f"f32{list(want)}" if want else "an f32 [B, T, vocab] tensor"
        _fail(f"logits must return {shape} (a score per vocabulary entry at each position), got a {_kind(v)}",
              _result_loc(f))


ENTRY_POINTS = {"loss": _loss_result, "logits": _logits_result}


def check_entry_points(model: Model, batch: int) -> None:
    """Lower `loss` and `logits` exactly as the program builder does: loss on a [batch, ctx]
    batch, logits on a [1, ctx] window and on one [1, 1] token at a runtime position."""
    header = next((it for it in model.module.items if isinstance(it, A.Config)), None)
    where = header.loc if header else Loc(model.module.file, 1, 1)
    for key in ("ctx", "vocab"):
        v = model.config.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TgcError(f"the config needs a positive integer '{key}' (the programs are built for it), "
                           f"got {'nothing' if v is None else repr(v)}", where)
    ctx = model.config["ctx"]
    model.call("loss", build.input("idx", (batch, ctx), "i32"), build.input("targets", (batch, ctx), "i32"))
    model.call("logits", build.input("tokens", (1, ctx), "i32"))
    model.call("logits", build.input("token", (1, 1), "i32"))
