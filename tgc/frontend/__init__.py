"""The DSL frontend: text -> AST (parser.py) -> checked (check.py) -> IR (lower.py).

    module = parse_file("models/gpt.tg")       # DslSyntaxError on bad text
    check(module)                              # TgcError on bad names, arity, returns
    model = load_model("models/gpt.tg", preset)  # also config values, sizes, params
    loss = model.call("loss", idx, targets)    # IR node; ShapeError at the user's line

Every user error is a TgcError with a Loc. The language is described in docs/dsl.md.
"""

from tgc.frontend.ast import Module, format_module
from tgc.frontend.check import RUNTIME_KEYS, ParamSpec, check, expand_params, resolve_config
from tgc.frontend.lower import Group, Model, check_entry_points, load_model
from tgc.frontend.parser import parse_file, parse_text

__all__ = [
    "RUNTIME_KEYS",
    "Group",
    "Model",
    "Module",
    "ParamSpec",
    "check",
    "check_entry_points",
    "expand_params",
    "format_module",
    "load_model",
    "parse_file",
    "parse_text",
    "resolve_config",
]
