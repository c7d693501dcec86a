"""The `tgc` command line (design.md, "Command line"); the Python API mirrors it.

Every user error is a TgcError: printed as one line (plus the source line for DSL
errors) on stderr, exit code 2, no traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tgc.errors import TgcError


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def cmd_check(a) -> int:
    """Everything `tgc compile` rejects for names, shapes or types, without compiling: parse,
    check, then lower the entry points exactly as the program builder does (loss on a
    [batch, ctx] batch, logits on a window and on one token) with the preset's sizes."""
    from tgc import presets
    from tgc.frontend import check, check_entry_points, load_model, parse_file

    path = Path(a.model)
    if not path.is_file():
        raise TgcError(f"model file not found: {path}")
    module = parse_file(path)
    check(module)
    family = presets.family_of(path.read_text())
    p = presets.get_preset(a.preset, family)
    model = load_model(module, presets.model_config(p, family), filename=str(path))
    check_entry_points(model, int(p["batch"]))
    print(f"{path}: ok ({a.preset}: {len(model.params)} parameter tensors)")
    return 0


def _check_artifact_out(out: Path) -> None:
    """`compile -o` writes into an absent or empty directory, or over an earlier artifact; never over other files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TgcError(f"-o {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not (out / "manifest.json").is_file():
        raise TgcError(f"-o {out} is not empty ({entries[0]}{' ...' if len(entries) > 1 else ''}) and is not a tgc "
                       "artifact; tgc never writes over other files: choose a new or empty directory")


def cmd_compile(a) -> int:
    from tgc.compiler import compile_model

    _check_artifact_out(Path(a.out))
    c = compile_model(a.model, a.preset, a.out, a.dump, targets=tuple(a.targets.split(",")) if a.targets else ("wgsl", "wasm"))
    r = c.plan.reports["train_step"]
    print(f"compiled {c.preset} ({sum(_prod(p.shape) for p in c.params):,} parameters) -> {a.out}")
    for name, s in c.schedules.items():
        rep = c.plan.reports[name]
        print(f"  {name:<12} {len(s.kernels):>5} kernels  planned peak {_fmt_bytes(rep.planned_bytes):>10}")
    print(
        f"train_step planned peak bytes: {r.planned_bytes} ({_fmt_bytes(r.planned_bytes)}); "
        f"lower bound P+G+O+live activations {r.lower_bound} ({r.planned_bytes / r.lower_bound:.2f}x)"
    )
    return 0


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def cmd_train(a) -> int:
    from tgc.train import train

    r = train(
        preset=a.preset, corpus=a.corpus, steps=a.steps, out=a.out, backend=a.backend, resume=a.resume, seed=a.seed,
        lr=a.lr, batch=a.batch, tokenizer=a.tokenizer, eval_every=a.eval_every, ckpt_every=a.ckpt_every,
        model_path=a.model, warmup=a.warmup, progress=sys.stderr.isatty(), weight_decay=a.weight_decay,
        min_lr_ratio=a.min_lr_ratio, keep_best=not a.no_keep_best, init=a.init, dropout=a.dropout,
    )
    return 130 if getattr(r, "interrupted", False) else 0


def cmd_generate(a) -> int:
    from tgc.generate import generate

    g = generate(
        a.ckpt, a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
        seed=a.seed, kv_cache=not a.no_kv_cache, backend=a.backend, allow_nonfinite=a.allow_nonfinite,
    )
    sys.stdout.write(a.prompt)
    for piece in g:  # tokens stream as they are produced
        sys.stdout.write(piece)
        sys.stdout.flush()
    st = g.stats
    print(
        f"\n\n[{st.new_tokens} new tokens ({st.prompt_tokens} prompt tokens not counted), "
        f"{st.tokens_per_s:.1f} tokens/s, first token {1000 * st.first_token_s:.1f} ms "
        f"({st.open_to_first_token_s:.2f}s after the runtime opened), "
        f"{'KV cache' if not a.no_kv_cache else 'no KV cache'}, {st.backend}]",
        file=sys.stderr,
    )
    return 0


def cmd_parity(a) -> int:
    from tgc.parity import parity_cli

    return parity_cli(preset=a.preset, steps=a.steps, seed=a.seed, model_path=a.model)


def cmd_export(a) -> int:
    from tgc.checkpoint import WEIGHTS, export_checkpoint

    out = export_checkpoint(a.ckpt, a.out, dtype=a.dtype, card=not a.no_card, artifact=not a.no_artifact,
                            log=lambda m: print(m, file=sys.stderr))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {a.ckpt} -> {out} ({a.dtype} {WEIGHTS}, {_fmt_bytes(size)} in all)")
    return 0


def cmd_models(a) -> int:
    from tgc import gallery

    if a.refresh_artifacts:
        done = gallery.refresh_artifacts(log=lambda m: print(m, file=sys.stderr))
        print(f"refreshed {', '.join(done)}" if done else "every gallery artifact is current")
        return 0
    ms = gallery.models()
    if a.json:
        print(json.dumps([{"name": m.name, "path": str(m.path), "params": m.params, "size_bytes": m.size_bytes,
                           "card": m.card, "problem": m.problem} for m in ms], indent=2))
        return 0
    if not ms:
        print(f"no models in the gallery ({gallery.gallery_dir()})")
        return 0
    rows = [("name", "params", "corpus", "val loss", "size")]
    for m in ms:
        val = m.card.get("val_loss")
        rows.append((m.name, f"{m.params / 1e6:.1f}M" if m.params else "?", str(m.card.get("corpus") or "?"),
                     f"{val:.3f}" if isinstance(val, (int, float)) else "?", _fmt_bytes(m.size_bytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    for m in ms:
        if m.problem:
            print(f"note: {m.name}: {m.problem}", file=sys.stderr)
    print(f"\n{gallery.gallery_dir()}; use a name where a checkpoint goes: tgc generate {ms[0].name} --prompt ...")
    return 0


def cmd_import(a) -> int:
    from tgc.checkpoint import import_hf

    ck = import_hf(a.src, a.out)
    t = json.loads((ck / "config.json").read_text())["tgc"]
    print(f"imported {a.src} -> {a.out} ({t['params']:,} parameters, preset {t['preset'] or 'none (sizes from config.json)'})")
    return 0


class _Help(argparse.HelpFormatter):
    """Every option's default in --help, where it has one (None and flags have none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...`, exit 2) and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


DEFAULT_MODEL = "shakespeare"  # the gallery model a plain `tgc bundle` opens with


def cmd_bundle(a) -> int:
    from tgc import gallery
    from tgc.bundle import bundle

    corpora = [] if a.no_corpus else (a.corpus or None)
    models = a.model or ()
    if a.ckpt is None and not models and a.preset is None:  # a page with a usable model on first load
        models = sorted(gallery.names(), key=lambda n: n != DEFAULT_MODEL)  # bundle() says what it shipped
    bundle(a.ckpt, a.out, preset=a.preset, corpora=corpora, models=models, train_presets=a.train_preset)
    return 0


def cmd_serve(a) -> int:
    from tgc.serve import serve

    if not 0 <= a.port <= 65535:
        raise TgcError(f"--port must be in 0..65535, got {a.port}")
    return serve(a.site, a.port, a.host)


def build_parser() -> argparse.ArgumentParser:
    from tgc import __version__
    from tgc.presets import all_preset_names, default_model_path, train_defaults
    from tgc.runtime import BACKENDS

    backend_help = "auto takes WebGPU on a real GPU, else WebAssembly; numpy is the exact, slow reference"

    names = all_preset_names()  # every family's; the model file's family decides (tgc/presets.py)
    ladder = ", ".join(names)
    p = _Parser(prog="tgc", description="TinyGPT Compiler: a GPT in a small DSL compiled to WGSL and Memory64 "
                f"WebAssembly. Presets, smallest to largest: {ladder}.")
    p.add_argument("--version", action="version", version=f"tgc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    model = str(default_model_path())

    s = sub.add_parser("check", help="parse and check a model file (everything compile checks but code generation)")
    s.add_argument("model", help="the .tg model file")
    s.add_argument("--preset", default="tiny", choices=names, metavar="PRESET",
                   help=f"sizes to check shapes with: {ladder}")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("compile", help="compile a model to an artifact directory")
    s.add_argument("model", help="the .tg model file")
    s.add_argument("--preset", required=True, choices=names, metavar="PRESET", help=f"one of: {ladder}")
    s.add_argument("-o", "--out", required=True, help="artifact directory (absent, empty, or an earlier artifact)")
    s.add_argument("--dump", help="write every pipeline stage (.ast, .ir, .kir, .wgsl, .ll) here")
    s.add_argument("--targets", default=None, help="comma-separated: wgsl,wasm (default both)")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("train", help="train a preset on a corpus")
    s.add_argument("--preset", choices=names, metavar="PRESET",
                   help=f"model size, one of: {ladder} (tiny for a new run; from the checkpoint with --resume)")
    s.add_argument("--corpus", help="shakespeare (the default for a new run), python, or a UTF-8 text file")
    s.add_argument("--steps", type=int, required=True, help="total steps the LR schedule plans for")
    s.add_argument("--out", required=True,
                   help="checkpoint directory: absent or empty for a new run, a checkpoint with --resume")
    s.add_argument("--backend", default="auto", choices=BACKENDS, help=backend_help)
    s.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    s.add_argument("--seed", type=int, help="weights and batches (0 for a new run; 0 <= seed < 2**32)")
    s.add_argument("--lr", type=float, help=f"peak learning rate ({train_defaults()['lr']:g} for a new run; may be "
                   "lowered on --resume)")
    s.add_argument("--warmup", type=int, help=f"warmup steps ({train_defaults()['warmup_steps']}, or a tenth of the run "
                   "if shorter)")
    s.add_argument("--batch", type=int, help="batch size (the preset's)")
    s.add_argument("--dropout", type=float, help="dropout rate on embeddings and residual branches, training only "
                   "(0 for a new run)")
    s.add_argument("--tokenizer", help="byte (the default for a new run) or bpe:N")
    s.add_argument("--eval-every", type=int, help="steps between validation losses (a tenth of the run, at most 500)")
    s.add_argument("--ckpt-every", type=int, help="steps between checkpoints (a quarter of the run, at most 1000)")
    s.add_argument("--weight-decay", type=float, help=f"AdamW weight decay on matrices and embeddings "
                   f"({train_defaults()['weight_decay']:g} for a new run; 0 <= WD <= 1)")
    s.add_argument("--min-lr-ratio", type=float, help="the cosine schedule ends at this fraction of --lr "
                   f"({train_defaults().get('min_lr_ratio', 0.1):g} for a new run; 0 <= R <= 1)")
    s.add_argument("--no-keep-best", action="store_true",
                   help="do not save the weights of each new lowest validation loss in OUT/best")
    s.add_argument("--init", metavar="CKPT|NAME",
                   help="fine-tune: start from this checkpoint's or gallery model's weights (fresh optimizer)")
    s.add_argument("--model", help=f"the DSL model file (default: {model})")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("generate", help="generate text from a checkpoint or a gallery model")
    s.add_argument("ckpt", help="checkpoint directory, or the name of a gallery model (tgc models)")
    s.add_argument("--prompt", default="", help="text to continue (empty: start from a newline)")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=None, help="keep the K most likely tokens (K >= 1; default all)")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default off)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed and prompt give the same text")
    s.add_argument("--no-kv-cache", action="store_true", help="recompute the whole window for every token")
    s.add_argument("--backend", default="auto", choices=BACKENDS, help=backend_help)
    s.add_argument("--allow-nonfinite", action="store_true", help="load weights that hold NaN or inf")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("parity", help="run the same programs on WebGPU, WebAssembly (and numpy) and compare")
    s.add_argument("--preset", required=True, choices=names, metavar="PRESET", help=f"one of: {ladder}")
    s.add_argument("--steps", type=int, default=1, help="training steps whose losses are compared")
    s.add_argument("--seed", type=int, default=0, help="weights and batches")
    s.add_argument("--model", default=model, help="the DSL model file")
    s.set_defaults(fn=cmd_parity)

    s = sub.add_parser("import", help="import a Hugging Face GPT-2 or Llama directory as a tgc checkpoint")
    s.add_argument("src", help="a save_pretrained directory")
    s.add_argument("-o", "--out", required=True, help="a new or empty directory (never the source)")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("export", help="write a checkpoint as a weights-only Hugging Face GPT-2 directory (fp16)")
    s.add_argument("ckpt", help="checkpoint directory or gallery name")
    s.add_argument("-o", "--out", required=True, help="a new or empty directory")
    s.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="the weights' dtype")
    s.add_argument("--no-card", action="store_true", help="do not write card.json")
    s.add_argument("--no-artifact", action="store_true",
                   help="do not ship the compiled generation artifact in DIR/artifact (it saves the first compile)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("models", help="list the pretrained models shipped with tgc (the gallery)")
    s.add_argument("--json", action="store_true", help="every field of every card, as JSON")
    s.add_argument("--refresh-artifacts", action="store_true",
                   help="recompile the shipped generation artifacts that this compiler would not use (maintainers)")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("bundle", help="write a static browser site: page, runtime, artifact (+ checkpoint, corpora)")
    s.add_argument("ckpt", nargs="?", help="a checkpoint directory or gallery model to ship (default: the gallery, shakespeare "
                   "first; fresh weights of --preset when that is given)")
    s.add_argument("--preset", help="model size when no checkpoint is given (default tiny)")
    s.add_argument("--model", action="append", help="a model to ship in the page's gallery after CKPT: a directory "
                   "(Hugging Face GPT-2 or tgc checkpoint) or a shipped model's name; repeatable; the first is the default")
    s.add_argument("--train-preset", action="append", help="a preset the page can train from fresh weights "
                   "(its artifact is shipped); repeatable; default --preset, else tiny")
    s.add_argument("--corpus", action="append", help="shakespeare (default), python, or a text file; repeatable")
    s.add_argument("--no-corpus", action="store_true", help="ship no training text")
    s.add_argument("-o", "--out", required=True, help="the site directory")
    s.set_defaults(fn=cmd_bundle)

    s = sub.add_parser("serve", help="serve a bundled site locally (COOP/COEP headers, application/wasm)")
    s.add_argument("site")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.set_defaults(fn=cmd_serve)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.fn(a)
    except TgcError as e:
        print(str(e), file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: missing, unwritable, disk full
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (try a smaller preset or batch)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
