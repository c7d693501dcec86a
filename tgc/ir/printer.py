"""Pretty-printer for the IR: one SSA line per node, the text written by `--dump`.

    %12 = MATMUL f32[64, 144] (%10, %11)                      # gpt.tg:31:9
"""

from __future__ import annotations

from tgc.ir.node import Node, toposort
from tgc.ir.ops import Op


def _arg(n: Node) -> str:
    a = n.arg
    if a is None:
        return ""
    if n.op is Op.INPUT:
        return f" {a['name']!r} role={a['role']}"
    if n.op is Op.UNIFORM:
        return f" {a['name']!r}"
    if n.op is Op.CONST:
        return f" {a['value']!r}"
    if n.op is Op.IOTA:
        return f" axis={a['axis']}"
    return f" {a!r}"


def format_graph(outputs: dict[str, Node] | list[Node], title: str = "") -> str:
    named = outputs if isinstance(outputs, dict) else {f"out{i}": o for i, o in enumerate(outputs)}
    order = toposort(list(named.values()))
    ids = {n.uid: i for i, n in enumerate(order)}
    lines = [f"# {title}"] if title else []
    for n in order:
        srcs = ", ".join(f"%{ids[s.uid]}" for s in n.srcs)
        text = f"%{ids[n.uid]} = {n.op.name} {n.dtype}{list(n.shape)}{_arg(n)}" + (f" ({srcs})" if srcs else "")
        if n.loc is not None:
            text = f"{text:<72} # {n.loc}"
        lines.append(text)
    for name, o in named.items():
        lines.append(f"{name} <- %{ids[o.uid]}")
    return "\n".join(lines) + "\n"


def format_program(prog) -> str:
    named = {f"output {k}": v for k, v in prog.outputs.items()}
    named.update({f"update {k}": v for k, v in prog.updates.items()})
    return format_graph(named, f"program {prog.name}")
