"""Text -> AST: the lark parser for grammar.lark and a transformer to ast.py's dataclasses.

One method per grammar rule (an unhandled rule fails loudly). Lark's errors become
DslSyntaxError at the offending line and column with the line's text. A tree nested
deeper than MAX_NESTING levels (blocks, repeats, parentheses, long operator chains) is
refused at its deepest point before anything recurses over it, so every later stage
(check, lower) stays far from Python's recursion limit. Nothing here checks meaning:
unknown names, arity and shapes are check.py's and lower.py's job.
"""

from __future__ import annotations

import functools
from pathlib import Path as FsPath

import lark
from lark import Lark, Token, Transformer, v_args

from tgc.errors import DslSyntaxError, Loc
from tgc.frontend import ast as A

_GRAMMAR = FsPath(__file__).with_name("grammar.lark")
MAX_NESTING = 100  # levels of the parse tree; gpt.tg needs 8

# how an expected terminal reads in a message
_TERMINALS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "DOT": "'.'",
    "COLON": "':'", "SEMICOLON": "';'", "EQUAL": "'='", "LESSTHAN": "'<'", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'", "$END": "end of file",
}


@functools.cache
def _lark() -> Lark:
    return Lark(_GRAMMAR.read_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _present(children):
    return tuple(c for c in children if c is not None)


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str, lines: list[str]):
        super().__init__()
        self.file, self.lines = file, lines

    def _loc(self, line, col) -> Loc:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Loc(self.file, line, col, text)

    def _m(self, meta) -> Loc:
        return self._loc(meta.line, meta.column) if not meta.empty else self._loc(1, 1)

    def _t(self, tok: Token) -> Loc:
        return self._loc(tok.line, tok.column)

    def __default__(self, data, children, meta):
        raise NotImplementedError(f"parser: grammar rule {data!r} has no transformer method")

    # ---- top level
    def start(self, meta, items):
        return A.Module(tuple(items), self.file)

    def config(self, meta, ch):
        return A.Config(str(ch[0]), _present(ch[1:]), self._m(meta))

    def config_param(self, meta, ch):
        return A.ConfigParam(str(ch[0]), ch[1], self._m(meta))

    def param(self, meta, ch):
        return A.Param(ch[0], _present(ch[1:-1]), ch[-1], self._m(meta))

    def param_name(self, meta, segs):
        return tuple(segs)

    def seg_name(self, meta, ch):
        return str(ch[0])

    seg_int = seg_name

    def seg_var(self, meta, ch):
        return "{" + str(ch[0]) + "}"

    def init(self, meta, ch):
        return A.Init(str(ch[0]), _present(ch[1:]), self._m(meta))

    def repeat(self, meta, ch):
        return A.Repeat(str(ch[0]), ch[1], tuple(ch[2:]), self._m(meta))

    def funcdef(self, meta, ch):
        name, *args, ret, body = ch
        return A.FuncDef(str(name), _present(args), ret, body, False, self._m(meta))

    def exprdef(self, meta, ch):
        name, *args, value = ch
        return A.FuncDef(str(name), _present(args), None, (A.Return(value, value.loc),), True, self._m(meta))

    def arg(self, meta, ch):
        return A.Arg(str(ch[0]), ch[1], self._m(meta))

    def tensor_type(self, meta, ch):
        return A.TensorType(str(ch[0]), _present(ch[1:]), self._m(meta))

    def body(self, meta, stmts):
        return tuple(stmts)

    # ---- statements
    def assign(self, meta, ch):
        return A.Assign(tuple(str(t) for t in ch[:-1]), ch[-1], self._m(meta))

    def for_stmt(self, meta, ch):
        return A.For(str(ch[0]), ch[1], ch[2], self._m(meta))

    def return_stmt(self, meta, ch):
        return A.Return(ch[0], self._m(meta))

    # ---- expressions
    def binop(self, meta, ch):
        lhs, op, rhs = ch
        return A.BinOp(str(op), lhs, rhs, self._t(op))

    def neg(self, meta, ch):
        return A.Neg(ch[1], self._t(ch[0]))

    def index(self, meta, ch):
        return A.Index(ch[0], tuple(ch[1:]), self._m(meta))

    def slice(self, meta, ch):
        return A.Slice(ch[0], ch[1], self._m(meta))

    def index_sub(self, meta, ch):
        return ch[0]

    def number(self, meta, ch):
        tok = ch[0]
        if len(tok) > 40:
            raise DslSyntaxError(f"number literal too long ({len(tok)} characters)", self._t(tok))
        return A.Num(str(tok), self._t(tok))

    def dotted(self, meta, ch):
        parts = tuple(str(t) for t in ch)
        return A.Name(parts[0], self._m(meta)) if len(parts) == 1 else A.Path(parts, self._m(meta))

    def call(self, meta, ch):
        return A.Call(str(ch[0]), _present(ch[1:]), self._t(ch[0]))

    def list(self, meta, ch):
        return A.ListLit(_present(ch), self._m(meta))


def _describe(tok) -> str:
    if tok.type == "$END":
        return "end of file"
    return f"{tok.value!r}" if tok.value else tok.type


def _expected(names) -> str:
    shown = sorted({_TERMINALS.get(n, repr(n.lower()) if n.isupper() else n) for n in names})
    if not shown:
        return ""
    if len(shown) > 6:
        shown = shown[:6] + ["..."]
    return f" (expected {', '.join(shown)})"


def _too_deep(tree) -> tuple[int, int] | None:
    """(line, col) of the first node at depth MAX_NESTING that nests further, found without
    recursion; None if the tree is shallow enough."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        kids = [c for c in node.children if isinstance(c, lark.Tree)]
        if depth >= MAX_NESTING and kids:
            if not node.meta.empty:
                return node.meta.line, node.meta.column
            tok = next((t for t in node.scan_values(lambda v: isinstance(v, Token))), None)
            return (tok.line, tok.column) if tok is not None else (1, 1)
        stack.extend((c, depth + 1) for c in reversed(kids))
    return None


def parse_text(text: str, filename: str = "<string>") -> A.Module:
    """Parse DSL source; raises DslSyntaxError at the first offending token."""
    lines = text.splitlines()

    def at(line, col) -> Loc:
        line = max(1, line or 1)
        return Loc(filename, line, max(1, col or 1), lines[line - 1] if line <= len(lines) else "")

    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
        raise DslSyntaxError(f"unexpected character {ch!r}{_expected(e.allowed or ())}", at(e.line, e.column)) from None
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":  # point just past the last character
            line = len(lines) or 1
            col = len(lines[-1]) + 1 if lines else 1
        else:
            line, col = tok.line, tok.column
        msg = f"unexpected {_describe(tok)}{_expected(e.accepts or e.expected)}"
        raise DslSyntaxError(msg, at(line, col)) from None
    except lark.exceptions.UnexpectedEOF as e:
        line = len(lines) or 1
        col = len(lines[-1]) + 1 if lines else 1
        raise DslSyntaxError(f"unexpected end of file{_expected(e.expected)}", at(line, col)) from None
    deep = _too_deep(tree)
    if deep is not None:
        raise DslSyntaxError(f"nested too deeply (more than {MAX_NESTING} levels of blocks and expressions)",
                             at(*deep))
    try:
        return _ToAst(filename, lines).transform(tree)
    except lark.exceptions.VisitError as e:
        raise e.orig_exc from None


def parse_file(path) -> A.Module:
    path = FsPath(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        from tgc.errors import TgcError

        raise TgcError(f"cannot read {path}: {e}") from None
    return parse_text(text, str(path))
