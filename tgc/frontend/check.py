"""Semantic checks that need no shapes, and compile-time arithmetic over config values.

`check(module)` looks at the AST alone: unknown names, duplicate definitions, the
arity of builtins and user functions, unknown inits, recursion, a missing or
misplaced `return`. With config values it also resolves the config header
(missing, unknown or non-numeric values) and expands the parameter list, whose
sizes must be positive integers of sane size. Shapes of tensor expressions are
lower.py's business: they are only known once a function is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tgc.errors import Loc, TgcError
from tgc.frontend import ast as A

# name -> (min args, max args); lower.py holds one lowering per entry
BUILTIN_ARITY: dict[str, tuple[int, int]] = {
    "embed": (2, 2), "positions": (1, 1), "layernorm": (3, 4), "causal_attention": (4, 4),
    "cross_entropy": (2, 2), "split": (2, 3), "transpose": (1, 1), "reshape": (2, 2), "permute": (2, 2),
    "gelu": (1, 1), "gelu_tanh": (1, 1), "relu": (1, 1), "softmax": (1, 2),
    "exp": (1, 1), "log": (1, 1), "sqrt": (1, 1), "tanh": (1, 1),
    "sum": (2, 2), "mean": (2, 2), "max": (2, 2), "dropout": (2, 2),
}
CONST_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log}  # allowed in size/std expressions
INITS = {"normal": 1, "zeros": 0, "ones": 0}  # init -> number of arguments
DTYPES = ("f32", "i32")
RUNTIME_KEYS = frozenset({"batch", "params"})  # preset keys that are not model config
MAX_ELEMENTS = 2**31  # per tensor
MAX_REPEAT = 4096
MAX_TENSORS = 10_000  # parameter tensors (gpt.tg: 12 per layer + 4)
MAX_CALL_DEPTH = 32  # user functions calling user functions; gpt.tg needs 4 (loss, logits, block, attn)
MAX_UNROLL = 200_000  # repeat iterations in all, nested repeats multiplied


def _err(msg: str, loc: Loc | None):
    raise TgcError(msg, loc)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- compile-time arithmetic


def consteval(e, scope: dict, what: str = "expression"):
    """Value of a number expression over `scope` (config values, repeat variables, symbolic dims)."""
    try:
        match e:
            case A.Num():
                return e.value
            case A.Name(name):
                if name not in scope:
                    _err(f"unknown name '{name}' in {what}", e.loc)
                return scope[name]
            case A.Neg(x):
                return -consteval(x, scope, what)
            case A.BinOp(op, lhs, rhs) if op in "+-*/":
                a, b = consteval(lhs, scope, what), consteval(rhs, scope, what)
                if op == "/" and b == 0:
                    _err(f"division by zero in {what}", e.loc)
                v = {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b
            case A.Call(func, args) if func in CONST_FUNCS and len(args) == 1:
                v = CONST_FUNCS[func](consteval(args[0], scope, what))
            case _:
                _err(f"{what} must be arithmetic on numbers and config values", e.loc)
    except (ValueError, OverflowError) as exc:
        _err(f"cannot compute {what}: {exc}", e.loc)
    if isinstance(v, float) and not math.isfinite(v):
        _err(f"{what} is not finite", e.loc)
    return v


def as_int(v, loc: Loc | None, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        _err(f"{what} must be an integer, got {v!r}", loc)
    return int(v)


def size(v, loc: Loc | None, what: str) -> int:
    n = as_int(v, loc, what)
    if n <= 0:
        _err(f"{what} must be positive, got {n}", loc)
    if n > MAX_ELEMENTS:
        _err(f"{what} is absurdly large ({n} > 2**31)", loc)
    return n


# ---------------------------------------------------------------- structural checks


def _config(module: A.Module) -> A.Config | None:
    configs = [it for it in module.items if isinstance(it, A.Config)]
    for extra in configs[1:]:
        _err(f"a second config header (the first is at line {configs[0].loc.line})", extra.loc)
    return configs[0] if configs else None


def _check_const(e, known: set, what: str):
    """An expression allowed in sizes, stds, defaults, type dims: numbers, known names, + - * /, sqrt/exp/log."""
    match e:
        case A.Num():
            return
        case A.Name(name):
            if name not in known:
                _err(f"unknown name '{name}' in {what}", e.loc)
        case A.Neg(x):
            _check_const(x, known, what)
        case A.BinOp(op, l, r) if op != "@":
            _check_const(l, known, what)
            _check_const(r, known, what)
        case A.Call(func, args) if func in CONST_FUNCS:
            if len(args) != 1:
                _err(f"{func} takes 1 argument, got {len(args)}", e.loc)
            _check_const(args[0], known, what)
        case _:
            _err(f"{what} must be arithmetic on numbers and config values", e.loc)


@dataclass
class _Scope:
    config: set
    roots: set  # first segments of parameter names
    funcs: dict


def _check_params(items, cnames: set, rvars: tuple, seen: dict):
    for it in items:
        if isinstance(it, A.Param):
            known = cnames | set(rvars)
            for seg in it.name:
                if seg.startswith("{") and seg[1:-1] not in rvars:
                    _err(f"'{seg[1:-1]}' in parameter name is not a repeat variable", it.loc)
            key = it.name
            if key in seen:
                _err(f"duplicate parameter '{it.dotted}' (first declared at line {seen[key].loc.line})", it.loc)
            seen[key] = it
            for d in it.shape:
                _check_const(d, known, f"size of parameter '{it.dotted}'")
            if it.init.kind not in INITS:
                _err(f"unknown init '{it.init.kind}' (expected one of: {', '.join(INITS)})", it.init.loc)
            n = INITS[it.init.kind]
            if len(it.init.args) != n:
                _err(f"init {it.init.kind} takes {_plural(n, 'argument')}, got {len(it.init.args)}", it.init.loc)
            for a in it.init.args:
                _check_const(a, known, f"init of parameter '{it.dotted}'")
        elif isinstance(it, A.Repeat):
            if it.var in cnames or it.var in rvars:
                _err(f"repeat variable '{it.var}' shadows a config value or an outer repeat variable", it.loc)
            _check_const(it.count, cnames | set(rvars), "repeat count")
            _check_params(it.body, cnames, rvars + (it.var,), seen)
        elif rvars:
            _err("only param and repeat may appear inside repeat", it.loc)


def _check_type(t: A.TensorType, cnames: set, syms: set, what: str):
    if t.dtype not in DTYPES:
        _err(f"unknown dtype '{t.dtype}' in {what} (expected f32 or i32)", t.loc)
    for d in t.dims:
        if isinstance(d, A.Name) and d.name not in cnames:
            syms.add(d.name)  # a symbolic dim, bound at the call
        else:
            _check_const(d, cnames | syms, f"dimension in {what}")


def _check_expr(e, scope: set, S: _Scope):
    match e:
        case A.Num():
            pass
        case A.Name(name):
            if name not in scope and name not in S.config and name not in S.roots:
                _err(f"unknown name '{name}'", e.loc)
        case A.Path(parts):
            root = parts[0]
            if root not in scope:
                if root in S.config:
                    _err(f"config value '{root}' has no members", e.loc)
                if root not in S.roots:
                    _err(f"unknown name '{root}'", e.loc)
        case A.BinOp(_, l, r):
            _check_expr(l, scope, S)
            _check_expr(r, scope, S)
        case A.Neg(x):
            _check_expr(x, scope, S)
        case A.Call(func, args):
            if func in S.funcs:
                n = len(S.funcs[func].args)
                if len(args) != n:
                    _err(f"{func} takes {_plural(n, 'argument')}, got {len(args)}", e.loc)
            elif func in BUILTIN_ARITY:
                lo, hi = BUILTIN_ARITY[func]
                if not lo <= len(args) <= hi:
                    want = str(lo) if lo == hi else f"{lo} to {hi}"
                    _err(f"{func} takes {want} arguments, got {len(args)}", e.loc)
            else:
                _err(f"undefined function '{func}'", e.loc)
            for a in args:
                _check_expr(a, scope, S)
        case A.Index(value, subs):
            _check_expr(value, scope, S)
            for s in subs:
                for part in (s.start, s.stop) if isinstance(s, A.Slice) else (s,):
                    if part is not None:
                        _check_expr(part, scope, S)
        case A.ListLit(items):
            for a in items:
                _check_expr(a, scope, S)


def _check_body(stmts, scope: set, S: _Scope, top: bool, fn: A.FuncDef):
    for k, s in enumerate(stmts):
        match s:
            case A.Assign(targets, value):
                _check_expr(value, scope, S)
                for t in targets:
                    if t in S.config:
                        _err(f"cannot assign to config value '{t}'", s.loc)
                    if targets.count(t) > 1:
                        _err(f"'{t}' assigned twice in one statement", s.loc)
                scope.update(targets)
            case A.For(var, group, body):
                _check_expr(group, scope, S)
                _check_body(body, scope | {var}, S, False, fn)
                scope.update(x for b in body if isinstance(b, A.Assign) for x in b.targets)
            case A.Return(value):
                if not top:
                    _err("return inside a for loop", s.loc)
                _check_expr(value, scope, S)
                if k != len(stmts) - 1:
                    _err("unreachable statement after return", stmts[k + 1].loc)
    if top and not (stmts and isinstance(stmts[-1], A.Return)):
        _err(f"function '{fn.name}' does not end with a return", fn.loc)


def _check_recursion(funcs: dict):
    calls: dict[str, dict[str, A.Call]] = {n: {} for n in funcs}  # caller -> callee -> first call

    def collect(node, out):
        if isinstance(node, A.Call) and node.func in funcs:
            out.setdefault(node.func, node)
        if isinstance(node, (tuple, list)):
            for x in node:
                collect(x, out)
        elif hasattr(node, "__dataclass_fields__"):
            for k in node.__dataclass_fields__:
                if k != "loc":
                    collect(getattr(node, k), out)

    for n, f in funcs.items():
        collect(f.body, calls[n])
    # recursion: an iterative depth-first search (call chains can be long), reporting the cycle
    state: dict[str, int] = {}
    for root in funcs:
        if root in state:
            continue
        path, iters = [root], [iter(calls[root].items())]
        state[root] = 1
        while path:
            step = next(iters[-1], None)
            if step is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            m, call = step
            if state.get(m) == 1:
                cycle = path[path.index(m):] + [m]
                _err(f"recursive call: {' -> '.join(cycle)}", call.loc)
            if m not in state:
                state[m] = 1
                path.append(m)
                iters.append(iter(calls[m].items()))
    # call depth: the longest chain of user functions, bounded so lowering (which inlines) stays bounded
    depth: dict[str, int] = {}
    for n in _postorder(calls):
        depth[n] = 1 + max((depth[m] for m in calls[n]), default=0)
    worst = max(depth, key=depth.get, default=None)
    if worst is not None and depth[worst] > MAX_CALL_DEPTH:
        chain, n = [worst], worst
        while len(chain) <= MAX_CALL_DEPTH:
            n = max(calls[n], key=depth.get)
            chain.append(n)
        shown = " -> ".join(chain[:3] + ["..."] + chain[-2:])
        _err(f"function calls nest {depth[worst]} deep ({shown}); the limit is {MAX_CALL_DEPTH}",
             calls[chain[-2]][chain[-1]].loc)


def _postorder(calls: dict) -> list:
    """Functions callees-first (the call graph is acyclic here), without recursion."""
    out, seen = [], set()
    for root, callees in calls.items():
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(callees))]
        while stack:
            n, it = stack[-1]
            m = next(it, None)
            if m is None:
                out.append(n)
                stack.pop()
            elif m not in seen:
                seen.add(m)
                stack.append((m, iter(calls[m])))
    return out


def check(module: A.Module) -> None:
    """Raise TgcError at the first problem the AST alone shows."""
    header = _config(module)
    cnames: set = set()
    for p in header.params if header else ():
        if p.name in cnames:
            _err(f"duplicate config value '{p.name}'", p.loc)
        if p.default is not None:
            _check_const(p.default, cnames, f"default of '{p.name}'")
        cnames.add(p.name)
    _check_params(module.items, cnames, (), {})
    roots = {it.name[0] for it in _walk_params(module.items)}
    funcs: dict[str, A.FuncDef] = {}
    for it in module.items:
        if isinstance(it, A.FuncDef):
            if it.name in funcs:
                _err(f"duplicate function '{it.name}' (first defined at line {funcs[it.name].loc.line})", it.loc)
            if it.name in BUILTIN_ARITY:
                _err(f"function '{it.name}' redefines a builtin", it.loc)
            funcs[it.name] = it
    S = _Scope(cnames, roots, funcs)
    for f in funcs.values():
        scope: set = set()
        syms: set = set()
        for a in f.args:
            if a.name in scope:
                _err(f"duplicate argument '{a.name}'", a.loc)
            if a.name in cnames:
                _err(f"argument '{a.name}' shadows a config value", a.loc)
            scope.add(a.name)
            if a.type:
                _check_type(a.type, cnames, syms, f"type of '{a.name}'")
        if f.ret:
            _check_type(f.ret, cnames, set(syms), f"return type of '{f.name}'")
        _check_body(f.body, scope | syms, S, True, f)
    _check_recursion(funcs)


def _walk_params(items):
    for it in items:
        if isinstance(it, A.Param):
            yield it
        elif isinstance(it, A.Repeat):
            yield from _walk_params(it.body)


# ---------------------------------------------------------------- with config values


def resolve_config(module: A.Module, config: dict) -> dict:
    """The header's names bound to the given values or their defaults; every value a finite number."""
    header = _config(module)
    params = header.params if header else ()
    where = header.loc if header else Loc(module.file, 1, 1)
    if not isinstance(config, dict):
        _err(f"config must be a table of values, got {type(config).__name__}", where)
    known = [p.name for p in params]
    for key in config:
        if key not in known and key not in RUNTIME_KEYS:
            takes = ", ".join(known) or "nothing"
            _err(f"unknown config key '{key}' ({header.name if header else 'the model'} takes {takes})", where)
    values: dict = {}
    for p in params:
        if p.name in config:
            v = config[p.name]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                _err(f"config value '{p.name}' must be a number, got {repr(v)[:30]}", p.loc)
            if not abs(v) < 2.0**63:  # also nan and inf
                _err(f"config value '{p.name}' is out of range: {repr(v)[:30]}", p.loc)
        elif p.default is not None:
            v = consteval(p.default, values, f"default of '{p.name}'")
        else:
            _err(f"missing config value '{p.name}'", p.loc)
        values[p.name] = v
    return values


@dataclass
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: tuple  # ("normal", std) | ("zeros",) | ("ones",)
    loc: Loc | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def expand_params(module: A.Module, values: dict) -> list[ParamSpec]:
    """Every parameter in declaration order, repeats unrolled, sizes and stds evaluated."""
    out: list[ParamSpec] = []
    first: dict[str, ParamSpec] = {}
    unrolled = [0]

    repeats: list = []  # (repeat, count) being unrolled, outermost first

    def walk(items, scope):
        for it in items:
            if isinstance(it, A.Repeat):
                n = as_int(consteval(it.count, scope, "repeat count"), it.count.loc, "repeat count")
                if not 0 <= n <= MAX_REPEAT:
                    _err(f"repeat count {n} out of range (0 to {MAX_REPEAT})", it.count.loc)
                unrolled[0] += n
                if unrolled[0] > MAX_UNROLL:
                    _err(f"repeats unroll to more than {MAX_UNROLL:,} iterations (nested repeats multiply)", it.count.loc)
                repeats.append((it, n))
                for i in range(n):
                    walk(it.body, {**scope, it.var: i})
                repeats.pop()
            elif isinstance(it, A.Param):
                name = ".".join(str(scope[s[1:-1]]) if s.startswith("{") else s for s in it.name)
                what = f"size of parameter '{name}'"
                shape = tuple(size(consteval(d, scope, what), d.loc, what) for d in it.shape)
                if math.prod(shape) > MAX_ELEMENTS:
                    _err(f"parameter '{name}' has {math.prod(shape)} elements, more than 2**31", it.loc)
                args = tuple(float(consteval(a, scope, f"init of parameter '{name}'")) for a in it.init.args)
                if it.init.kind == "normal" and args[0] < 0:
                    _err(f"init std of '{name}' is negative ({args[0]})", it.init.loc)
                spec = ParamSpec(name, shape, (it.init.kind, *args), it.loc)
                if name in first:
                    _err(f"duplicate parameter '{name}' (first declared at line {first[name].loc.line})", it.loc)
                first[name] = spec
                out.append(spec)
                if len(out) > MAX_TENSORS:
                    if repeats:
                        r, k = repeats[0]
                        _err(f"more than {MAX_TENSORS:,} parameter tensors (this repeat runs {k} times)", r.count.loc)
                    _err(f"more than {MAX_TENSORS:,} parameter tensors", it.loc)

    walk(module.items, dict(values))
    names = set(first)
    for p in out:
        parts = p.name.split(".")
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if prefix in names:
                _err(f"'{prefix}' is both a parameter and a group of parameters ('{p.name}')", p.loc)
    return out
