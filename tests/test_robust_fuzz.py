"""A hypothesis fuzz of `tgc check` over DSL mutations (issue 16): 1,200 programs per run.

Each program is gpt.tg after token edits (deleted, duplicated, swapped tokens and
characters, constructs spliced in), random text, or a structural mutation aimed at the
compiler's limits: deep nesting of blocks and expressions, long and branching call chains,
nested for loops in a called function, huge or absurd repeat counts and sizes, and entry
points (loss, logits) that return the wrong kind of value. Every program must either pass
or fail with a one-line `FILE:LINE:COL: error: ...` in the file checked (followed only by
its source line and a caret) and exit 2 -- never a traceback, never an error without a
location -- and none may take 5 s (hypothesis' deadline; the compiler's work is bounded).
`tgc check` lowers what `tgc compile` lowers, so this is the front end compile runs.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from helpers import DSL_ERROR, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgc.presets import default_model_path

GPT = default_model_path().read_text()
TOKENS = re.findall(r"\s+|\w+|.", GPT)
FINAL_LN = "x = layernorm(x, transformer.ln_f, eps)"
LOSS_EXPR = "cross_entropy(logits(idx), targets)"
WORK = Path(tempfile.mkdtemp(prefix="tgc-fuzz-"))
DEADLINE_S = 5.0
FUZZ = settings(max_examples=400,  # + 200 random texts + 600 structural mutations = 1,200 programs
                deadline=DEADLINE_S * 1000, suppress_health_check=list(HealthCheck),
                derandomize=False, database=None)

ALPHABET = "abdfhmnpqrstvwxyzBT_0123456789.,:;=+-*/@()[]{}<># \n"
WORDS = ["config", "param", "repeat", "def", "for", "in", "return", "f32", "i32", "split", "layernorm", "embed",
         "normal", "zeros", "ones", "d", "vocab", "->", "x", "h", "1e-5", "0.02", "{i}", "loss", "logits",
         "transformer.h", "causal_attention", "cross_entropy", "(", ")", "{", "}", "[", "]", ",", "=", "<"]
SNIPPETS = ["repeat i < 3 { param q.{i}.w [d] = ones }", "def g(x) { return g(x) }", "for h in transformer.h { }",
            "x = x @ x", "return x, x", "param z [0] = ones", "param z [d / 0] = ones", "param z [1e30] = ones",
            "q, k = split(x, 2)", "x = reshape(x, [-1, -1])", "x = x[99]", "x = sum(x, 7)", "x = layernorm(x)",
            "y = causal_attention(x, x, x, 0)", "x = permute(x, [0, 0, 1])", "x = embed(x, x)", "eps = 1",
            "loss(idx: i32[B, T], t: i32[B, T]) = idx", "(((((((", ")))))))", "-" * 50, "x" + " + x" * 60]


def check(text: str) -> None:
    """`tgc check` on `text`: ok, or exit 2 with one located line in this file; within the deadline."""
    f = WORK / "fuzz.tg"
    f.write_text(text)
    t0 = time.perf_counter()
    rc, out, err = run_cli("check", f)
    elapsed = time.perf_counter() - t0
    assert elapsed < DEADLINE_S, f"took {elapsed:.1f}s"
    if rc == 0:
        assert "ok" in out and not err, (out, err)
        return
    assert rc == 2 and "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    m = DSL_ERROR.match(lines[0])
    assert m and m.group("file") == str(f), f"not a located error in the file checked: {err!r}"
    assert len(lines) <= 3 and (len(lines) < 3 or lines[2].strip() == "^"), err


# ---------------------------------------------------------------- token edits of gpt.tg and random text

EDITS = st.lists(st.tuples(st.sampled_from(["del", "dup", "swap", "chardel", "chardup", "splice"]),
                           st.integers(0, len(TOKENS) - 1), st.integers(0, 10**6)), min_size=1, max_size=4)


def apply_edits(toks: list[str], edits) -> str:
    toks = list(toks)
    for kind, i, j in edits:
        if not toks:
            break
        i %= len(toks)
        if kind == "del":
            del toks[i]
        elif kind == "dup":
            toks.insert(i, toks[i])
        elif kind == "swap":
            k = j % len(toks)
            toks[i], toks[k] = toks[k], toks[i]
        elif kind == "splice":
            toks.insert(i, " " + SNIPPETS[j % len(SNIPPETS)] + " ")
        else:
            t = toks[i] or " "
            k = j % len(t)
            toks[i] = t[:k] + t[k + 1:] if kind == "chardel" else t[:k] + t[k] + t[k:]
    return "".join(toks)


@FUZZ
@given(EDITS)
def test_fuzz_token_edits_of_gpt(edits):
    check(apply_edits(TOKENS, edits))


@settings(FUZZ, max_examples=200)
@given(st.lists(st.one_of(st.text(ALPHABET, max_size=8), st.sampled_from(WORDS)), max_size=60))
def test_fuzz_random_text(parts):
    check(" ".join(parts))


# ---------------------------------------------------------------- structural mutations at the compiler's limits

DEPTHS = st.sampled_from([0, 1, 2, 5, 20, 31, 32, 33, 64, 99, 100, 101, 150, 499, 1200])


def nest_expr(kind: str, n: int) -> str:
    e = FINAL_LN[4:]
    if kind == "parens":
        return "(" * n + e + ")" * n
    if kind == "neg":
        return "-" * n + e
    if kind == "calls":
        return "exp(" * n + e + ")" * n
    if kind == "sum":
        return e + " + x" * n
    if kind == "index":
        return e + "[0]" * n
    return e


def nest_repeat(n: int) -> str:
    vars_ = [f"r{i}" for i in range(n)]
    name = ".".join(["zz"] + [f"{{{v}}}" for v in vars_] + ["w"])
    return "".join(f"repeat {v} < 1 {{\n" for v in vars_) + f"param {name} [d] = ones\n" + "}\n" * n


def call_chain(n: int, branching: int) -> str:
    calls = lambda i: " + ".join([f"f{i + 1}(x)"] * branching)
    return "".join(f"def f{i}(x) {{ return {calls(i)} }}\n" for i in range(n)) + f"def f{n}(x) {{ return x }}\n"


def nested_for(n: int, inner: str) -> str:
    body = inner
    for i in range(n):
        body = f"for h{i} in transformer.h {{ {body} }}"
    return f"def g(x) {{\n  {body}\n  return x\n}}\n"


REPEAT_COUNTS = ["layers", "layers * 10", "layers * 300", "layers * 1000", "layers * 100000", "1e30", "1e400",
                 "-1", "layers / 3", "layers - layers", "sqrt(layers)", "exp(1000)", "4096", "4097", "2 * 2049"]
SIZES = ["d", "d * 1000000", "vocab * vocab * vocab * vocab", "0", "-d", "d / 7", "1e300", "ctx * 1000"]
LOSSES = [LOSS_EXPR, "split(logits(idx), 2, 0)", "logits(idx)", "idx", "3", "transformer.h",
          "cross_entropy(logits(idx), targets) * logits(idx)", "sum(cross_entropy(logits(idx), targets), 0)",
          "mean(logits(idx), 2)"]
LOGITS_RET = ["x @ transpose(transformer.wte.weight)", "x", "x[:, 0:1] @ transpose(transformer.wte.weight)", "3",
              "(x @ transpose(transformer.wte.weight), x)", "idx"]


MORE_EDITS = st.lists(st.tuples(st.sampled_from(["del", "dup", "splice"]), st.integers(0, 10**6), st.integers(0, 10**6)),
                      max_size=2)


@st.composite
def structural(draw) -> str:
    kind = draw(st.sampled_from(["expr", "repeat", "chain", "for", "count", "size", "loss", "logits"]))
    n = draw(DEPTHS)
    src = GPT
    if kind == "expr":
        src = GPT.replace(FINAL_LN, "x = " + nest_expr(draw(st.sampled_from(["parens", "neg", "calls", "sum", "index"])),
                                                       n))
    elif kind == "repeat":
        src = GPT + nest_repeat(n)
    elif kind == "chain":
        src = GPT.replace(FINAL_LN, f"x = f0({FINAL_LN[4:]})") + call_chain(n, draw(st.sampled_from([1, 1, 2, 3])))
    elif kind == "for":
        inner = draw(st.sampled_from(["x = x * 1.0", "x = block(x, h0)", "x = x + layernorm(x, h0.ln_1, eps)"]))
        src = GPT.replace(FINAL_LN, f"x = g({FINAL_LN[4:]})") + nested_for(min(n, 70) or 1, inner)
    elif kind == "count":
        src = GPT.replace("repeat i < layers", f"repeat i < {draw(st.sampled_from(REPEAT_COUNTS))}")
    elif kind == "size":
        src = GPT.replace("[ctx, d]", f"[ctx, {draw(st.sampled_from(SIZES))}]")
    elif kind == "loss":
        src = GPT.replace(LOSS_EXPR, draw(st.sampled_from(LOSSES)))
    else:
        src = GPT.replace("x @ transpose(transformer.wte.weight)", draw(st.sampled_from(LOGITS_RET)))
    if draw(st.booleans()):  # and a few token edits on top
        src = apply_edits(re.findall(r"\s+|\w+|.", src), draw(MORE_EDITS))
    return src


@settings(FUZZ, max_examples=600)
@given(structural())
def test_fuzz_structural_mutations(src):
    check(src)
