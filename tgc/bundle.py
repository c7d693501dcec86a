"""`tgc bundle [CKPT] [--preset P] [--corpus NAME|FILE ...] -o SITE`: a static browser site.

    SITE/index.html              the page (runtime/index.html)
    SITE/runtime/                the browser runtime (ES modules, vendored libraries and
                                 their licences) + artifact.schema.json
    SITE/artifact/               the compiled artifact, byte for byte as tgc compile wrote it
                                 (manifest.json, kernels/, model.wasm, model.tg)
    SITE/tokenizer.json          the checkpoint's tokenizer, else the byte tokenizer
    SITE/checkpoint.zip          the checkpoint (a GPT-2 directory in one .zip), when given
    SITE/corpora/*.txt           the training texts (default: shakespeare)
    SITE/site.json               what the page loads: paths of all the above, preset, hashes

The artifact comes from the same cache as `tgc train` / `tgc generate` (compiled on
demand), for the checkpoint's model and config or for the preset. The site is written
into a temporary directory beside SITE and renamed into place; an existing SITE is
replaced only when it is a previous bundle (it has site.json). Any static host can serve
it; `tgc serve SITE` adds the COOP/COEP headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from tgc import __version__, presets
from tgc.errors import TgcError

RUNTIME_FILES = ("*.js", "*.css", "vendor/*.js", "vendor/*.mjs", "vendor/*.LICENSE", "vendor/README.md", "vendor/json-schema/*.js")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "model.tg",
                    "optimizer.safetensors", "trainer_state.json")


def runtime_dir() -> Path:
    """The packaged browser runtime (tgc.web when installed; the repository's runtime/ in a checkout)."""
    try:
        from importlib import resources

        d = Path(str(resources.files("tgc.web")))
        if (d / "tgc.js").exists():
            return d
    except ModuleNotFoundError:
        pass
    d = Path(__file__).resolve().parent.parent / "runtime"
    if not (d / "tgc.js").exists():
        raise TgcError("the browser runtime is missing from this installation of tgc (no tgc.web package)")
    return d


def schema_path() -> Path | None:
    p = Path(__file__).resolve().parent / "artifact.schema.json"
    return p if p.exists() else None


def _artifact_for(ckpt, preset: str | None, log) -> tuple[Path, object]:
    """(artifact directory, loaded checkpoint or None)."""
    from tgc.artifacts import compiled_artifact

    if ckpt is not None:
        from tgc.checkpoint import OPTIMIZER, TRAINER_STATE, current_dir, load_checkpoint

        d = current_dir(Path(ckpt))
        resumable = (d / OPTIMIZER).exists() and (d / TRAINER_STATE).exists()
        ck = load_checkpoint(ckpt, resume=resumable)
        if preset and ck.tgc.get("preset") and preset != ck.tgc["preset"]:
            raise TgcError(f"checkpoint {ckpt} is a {ck.tgc['preset']} model; leave --preset out or give {ck.tgc['preset']}")
        overrides = {**ck.compile_config, "batch": int(ck.tgc.get("batch", 1))}
        return compiled_artifact(ck.source, ck.tgc.get("preset"), overrides, log=log), ck
    name = preset or "tiny"
    p = presets.get_preset(name)
    source = presets.default_model_path().read_text()
    overrides = {**presets.model_config(p), "batch": int(p["batch"])}
    return compiled_artifact(source, name, overrides, log=log), None


def _copy_runtime(dst: Path) -> None:
    src = runtime_dir()
    for pattern in RUNTIME_FILES:
        for f in sorted(src.glob(pattern)):
            if f.name == "page.js" or f.suffix in (".js", ".mjs", ".css", ".LICENSE", ".md"):
                out = dst / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)
    schema = schema_path()
    if schema is not None:
        shutil.copyfile(schema, dst / "artifact.schema.json")


def _copy_artifact(src: Path, dst: Path) -> str:
    """Copy the artifact's files byte for byte; returns model.wasm's sha256."""
    dst.mkdir(parents=True)
    for f in ("manifest.json", "model.wasm", "model.tg"):
        if (src / f).exists():
            shutil.copyfile(src / f, dst / f)
    if (src / "kernels").is_dir():
        shutil.copytree(src / "kernels", dst / "kernels")
    if not (dst / "model.wasm").exists():
        raise TgcError(f"artifact {src} has no model.wasm (compiled without the wasm target?)")
    return hashlib.sha256((dst / "model.wasm").read_bytes()).hexdigest()


def _corpus_file(name: str, used: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "corpus"
    stem = stem.removesuffix(".txt")
    out, i = f"{stem}.txt", 1
    while out in used:
        i += 1
        out = f"{stem}-{i}.txt"
    used.add(out)
    return out


def bundle(ckpt=None, out="site", preset: str | None = None, corpora=None, log=print) -> Path:
    """Write the site; returns its path. `ckpt`: a checkpoint directory or a gallery model's name.
    corpora: names/paths (None: shakespeare; [] none)."""
    from tgc import gallery
    from tgc.data import load_text
    from tgc.tokenizer import byte_tokenizer

    log = log or (lambda *a: None)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "site.json").exists())):
        raise TgcError(f"{out} exists and is not a previous bundle (no site.json); choose another -o")
    if ckpt is not None:
        ckpt = gallery.resolve(ckpt)
    art, ck = _artifact_for(ckpt, preset, log)
    texts = []
    for c in (["shakespeare"] if corpora is None else corpora):
        name, text = load_text(c)
        texts.append((name, text))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        shutil.copyfile(runtime_dir() / "index.html", tmp / "index.html")
        _copy_runtime(tmp / "runtime")
        sha = _copy_artifact(art, tmp / "artifact")
        tok_json = ck.tokenizer.to_json() if ck is not None else byte_tokenizer().to_json()
        (tmp / "tokenizer.json").write_text(tok_json)
        site = {"tgc_version": __version__, "preset": ck.tgc.get("preset") if ck else (preset or "tiny"),
                "artifact": "artifact/", "tokenizer": "tokenizer.json", "checkpoint": None, "corpora": [],
                "wasm_sha256": sha}
        if ck is not None:
            from tgc.checkpoint import current_dir

            src = current_dir(Path(ckpt))  # the complete save, even where one was cut short
            with zipfile.ZipFile(tmp / "checkpoint.zip", "w", zipfile.ZIP_STORED) as z:
                for f in CHECKPOINT_FILES:
                    if (src / f).exists():
                        z.write(src / f, f"{Path(ckpt).resolve().name}/{f}")
            site["checkpoint"] = "checkpoint.zip"
            site["checkpoint_step"] = ck.step
        used: set = set()
        for name, text in texts:
            fname = _corpus_file(name, used)
            (tmp / "corpora").mkdir(exist_ok=True)
            data = text.encode("utf-8")
            (tmp / "corpora" / fname).write_bytes(data)
            site["corpora"].append({"name": name, "file": f"corpora/{fname}", "bytes": len(data)})
        (tmp / "site.json").write_text(json.dumps(site, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"bundled {site['preset']} ({f'checkpoint step {ck.step}' if ck else 'fresh weights'}) -> {out}; "
        f"serve it with: tgc serve {out}")
    return out
