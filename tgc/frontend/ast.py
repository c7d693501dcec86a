"""The DSL's abstract syntax: frozen dataclasses, each carrying the source `loc`.

`loc` is excluded from equality, so two trees compare equal when they say the same
thing wherever it was written; that is what the printer's round trip promises:
parse(format_module(parse(text))) == parse(text). Comments and layout are not kept.
This module knows nothing about meaning (see check.py) or shapes (see lower.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tgc.errors import Loc

_NOLOC = Loc("<none>", 0, 0)


def _loc():
    return field(default=_NOLOC, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    text: str  # as written: "0.02", "1e-5", "3"
    loc: Loc = _loc()

    @property
    def value(self) -> int | float:
        return float(self.text) if any(c in self.text for c in ".eE") else int(self.text)


@dataclass(frozen=True)
class Name:
    name: str
    loc: Loc = _loc()


@dataclass(frozen=True)
class Path:
    """A dotted name: `transformer.wte.weight`, `h.attn.c_proj.bias` (2+ parts)."""

    parts: tuple[str, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / @
    lhs: Expr
    rhs: Expr
    loc: Loc = _loc()  # the operator


@dataclass(frozen=True)
class Neg:
    operand: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Slice:
    """`start:stop` inside brackets; either end may be omitted."""

    start: Expr | None
    stop: Expr | None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Index:
    """`value[s0, s1, ...]`: each subscript is an Expr (take one index, drop the axis) or a Slice."""

    value: Expr
    subs: tuple[Expr | Slice, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class ListLit:
    items: tuple[Expr, ...]
    loc: Loc = _loc()


Expr = Num | Name | Path | BinOp | Neg | Call | Index | ListLit

# ---------------------------------------------------------------- types and statements


@dataclass(frozen=True)
class TensorType:
    dtype: str  # f32 | i32
    dims: tuple[Expr, ...]  # a bare unknown Name is a symbolic dim, bound at the call
    loc: Loc = _loc()


@dataclass(frozen=True)
class Arg:
    name: str
    type: TensorType | None  # None: untyped (a parameter group, or anything)
    loc: Loc = _loc()


@dataclass(frozen=True)
class Assign:
    targets: tuple[str, ...]  # one name, or several for `q, k, v = split(...)`
    value: Expr
    loc: Loc = _loc()


@dataclass(frozen=True)
class For:
    var: str
    group: Name | Path  # a repeated parameter group, iterated in index order
    body: tuple[Stmt, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Return:
    value: Expr
    loc: Loc = _loc()


Stmt = Assign | For | Return

# ---------------------------------------------------------------- top-level items


@dataclass(frozen=True)
class ConfigParam:
    name: str
    default: Expr | None
    loc: Loc = _loc()


@dataclass(frozen=True)
class Config:
    name: str
    params: tuple[ConfigParam, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Init:
    kind: str  # normal | zeros | ones
    args: tuple[Expr, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class Param:
    name: tuple[str, ...]  # segments; "{i}" interpolates a repeat variable
    shape: tuple[Expr, ...]
    init: Init
    loc: Loc = _loc()

    @property
    def dotted(self) -> str:
        return ".".join(self.name)


@dataclass(frozen=True)
class Repeat:
    var: str
    count: Expr
    body: tuple[Item, ...]
    loc: Loc = _loc()


@dataclass(frozen=True)
class FuncDef:
    """`def f(args) -> type { stmts }`, or the one-line `f(args) = expr` form (`short`)."""

    name: str
    args: tuple[Arg, ...]
    ret: TensorType | None
    body: tuple[Stmt, ...]
    short: bool = False
    loc: Loc = _loc()


Item = Config | Param | Repeat | FuncDef


@dataclass(frozen=True)
class Module:
    items: tuple[Item, ...]
    file: str = field(default="<string>", compare=False)


# ---------------------------------------------------------------- printer

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2}


def format_expr(e, prec: int = 0) -> str:
    """Source text of `e`; parenthesised only where precedence or left-associativity needs it."""
    match e:
        case Num(text):
            return text
        case Name(name):
            return name
        case Path(parts):
            return ".".join(parts)
        case BinOp(op, lhs, rhs):
            p = _PREC[op]
            s = f"{format_expr(lhs, p)} {op} {format_expr(rhs, p + 1)}"
            return f"({s})" if p < prec else s
        case Neg(operand):
            s = f"-{format_expr(operand, 3)}"
            return f"({s})" if prec > 3 else s
        case Call(func, args):
            return f"{func}({', '.join(format_expr(a) for a in args)})"
        case Index(value, subs):
            return f"{format_expr(value, 4)}[{', '.join(_format_sub(s) for s in subs)}]"
        case ListLit(items):
            return f"[{', '.join(format_expr(a) for a in items)}]"
    raise TypeError(f"not an expression: {e!r}")


def _format_sub(s) -> str:
    if isinstance(s, Slice):
        return f"{'' if s.start is None else format_expr(s.start)}:{'' if s.stop is None else format_expr(s.stop)}"
    return format_expr(s)


def _format_type(t: TensorType | None) -> str:
    return f"{t.dtype}[{', '.join(format_expr(d) for d in t.dims)}]"


def _format_args(args) -> str:
    return ", ".join(a.name + (f": {_format_type(a.type)}" if a.type else "") for a in args)


def _format_stmt(s, ind: str) -> list[str]:
    match s:
        case Assign(targets, value):
            return [f"{ind}{', '.join(targets)} = {format_expr(value)}"]
        case Return(value):
            return [f"{ind}return {format_expr(value)}"]
        case For(var, group, body):
            inner = [line for b in body for line in _format_stmt(b, ind + "  ")]
            return [f"{ind}for {var} in {format_expr(group)} {{", *inner, f"{ind}}}"]
    raise TypeError(f"not a statement: {s!r}")


def _format_item(it, ind: str) -> list[str]:
    match it:
        case Config(name, params):
            ps = ", ".join(p.name + ("" if p.default is None else f" = {format_expr(p.default)}") for p in params)
            return [f"{ind}config {name}({ps})"]
        case Param(name, shape, init):
            args = f"({', '.join(format_expr(a) for a in init.args)})" if init.args else ""
            return [f"{ind}param {'.'.join(name)} [{', '.join(format_expr(d) for d in shape)}] = {init.kind}{args}"]
        case Repeat(var, count, body):
            inner = [line for b in body for line in _format_item(b, ind + "  ")]
            return [f"{ind}repeat {var} < {format_expr(count)} {{", *inner, f"{ind}}}"]
        case FuncDef(name, args, ret, body, short) if short:
            return [f"{ind}{name}({_format_args(args)}) = {format_expr(body[0].value)}"]
        case FuncDef(name, args, ret, body):
            arrow = f" -> {_format_type(ret)}" if ret else ""
            inner = [line for b in body for line in _format_stmt(b, ind + "  ")]
            return [f"{ind}def {name}({_format_args(args)}){arrow} {{", *inner, f"{ind}}}"]
    raise TypeError(f"not an item: {it!r}")


def format_module(m: Module) -> str:
    """The module as DSL text (what `tgc compile --dump` writes as .ast)."""
    out: list[str] = []
    for it in m.items:
        if out and isinstance(it, (FuncDef, Repeat)):
            out.append("")
        out.extend(_format_item(it, ""))
    return "\n".join(out) + "\n"
