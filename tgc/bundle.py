"""`tgc bundle [CKPT] [--model DIR ...] [--preset P] [--train-preset P ...] [--corpus NAME|FILE ...] -o SITE`:
a static browser site.

    SITE/index.html              the page (runtime/index.html)
    SITE/runtime/                the browser runtime (ES modules, vendored libraries and
                                 their licences) + artifact.schema.json
    SITE/artifact/               the default model's artifact, byte for byte as tgc compile
                                 wrote it (manifest.json, kernels/, model.wasm, model.tg)
    SITE/artifacts/KEY/          every other artifact the site needs (another gallery model's
                                 config, a training preset), one per distinct compiled model
    SITE/tokenizer.json          the default model's tokenizer, else the byte tokenizer
    SITE/checkpoint.zip          CKPT (a GPT-2 directory in one .zip), when given
    SITE/models/NAME.zip         each --model directory (a gallery model), zipped as it is
                                 (fp16 or f32 safetensors, card.json beside)
    SITE/corpora/*.txt           the training texts (default: shakespeare)
    SITE/site.json               what the page loads: the gallery (models), the presets with
                                 their configs, memory and artifacts, the corpora, hashes

The gallery is CKPT (first, the default) and the --model directories (Hugging Face GPT-2
directories as the package's gallery ships them, or tgc checkpoints). "Train your own"
offers every preset; those in --train-preset (default: --preset, else tiny) have their
artifact in the site and can be trained, the others show their size and memory and say
how to bundle them. Artifacts come from the same cache as `tgc train` / `tgc generate`
(compiled on demand); models and presets of one config share one artifact. The site is
written into a temporary directory beside SITE and renamed into place; an existing SITE
is replaced only when it is a previous bundle (it has site.json). Any static host can
serve it; `tgc serve SITE` adds the COOP/COEP headers.
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

RUNTIME_FILES = ("*.js", "*.css", "vendor/*.js", "vendor/*.mjs", "vendor/*.css", "vendor/*.LICENSE", "vendor/README.md", "vendor/json-schema/*.js")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "model.tg",
                    "optimizer.safetensors", "trainer_state.json")
CARD = "card.json"


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


def resolve_model(m) -> Path:
    """A --model argument or the checkpoint: a directory, else a gallery name (tgc/gallery.py)."""
    from tgc import gallery

    return gallery.resolve(m)


def _load_model(path, preset: str | None = None):
    """A checkpoint or gallery directory -> (loaded Checkpoint, directory to zip, card or {}).

    A tgc checkpoint loads as it is (resumable when it has its optimizer and trainer state);
    a Hugging Face GPT-2 directory (the gallery's fp16 safetensors and card.json) is checked
    by importing it into a temporary directory, while the site ships its files unchanged."""
    import tempfile

    from tgc.checkpoint import OPTIMIZER, TRAINER_STATE, current_dir, import_hf, load_checkpoint

    given = Path(path)
    d = current_dir(given)
    if not d.is_dir():
        raise TgcError(f"checkpoint {given} {'is not a directory' if d.exists() else 'not found'} (a checkpoint is a directory)")
    card = {}
    if (d / CARD).exists():
        try:
            card = json.loads((d / CARD).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TgcError(f"{d / CARD}: unreadable or corrupt ({str(e).splitlines()[0]})") from None
        if not isinstance(card, dict):
            raise TgcError(f"{d / CARD}: not a JSON object")
    try:
        hf = json.loads((d / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        hf = {}
    if isinstance(hf, dict) and isinstance(hf.get("tgc"), dict) and "tgc_checkpoint_id" in _metadata(d / "model.safetensors"):
        resumable = (d / OPTIMIZER).exists() and (d / TRAINER_STATE).exists()
        ck = load_checkpoint(d, resume=resumable)
    else:
        batch = card.get("batch") if isinstance(card.get("batch"), int) else None
        with tempfile.TemporaryDirectory(prefix="tgc-bundle-") as tmp:
            out = Path(tmp) / "import"
            import_hf(d, out, batch=batch or _preset_batch(hf))
            ck = load_checkpoint(out)
            ck.tgc.pop("imported_from", None)
    if preset and ck.tgc.get("preset") and preset != ck.tgc["preset"]:
        raise TgcError(f"checkpoint {given} is a {ck.tgc['preset']} model; leave --preset out or give {ck.tgc['preset']}")
    return ck, d, card


def _metadata(p: Path) -> dict:
    from tgc.checkpoint import safetensors_metadata

    try:
        return safetensors_metadata(p)
    except (TgcError, OSError, ValueError):
        return {}


def _preset_batch(hf: dict) -> int | None:
    """The batch of the preset whose config a Hugging Face config.json matches (None: none does)."""
    from tgc.checkpoint import model_config_from_hf

    try:
        cfg = presets.model_config(model_config_from_hf(hf, "config.json"))
    except (TgcError, TypeError, AttributeError):
        return None
    for name in presets.preset_names():
        p = presets.get_preset(name)
        if presets.model_config(p) == cfg:
            return int(p["batch"])
    return None


def _model_artifact(ck, log) -> Path:
    from tgc.artifacts import compiled_artifact

    overrides = {**ck.compile_config, "batch": int(ck.tgc.get("batch", 1))}
    return compiled_artifact(ck.source, ck.tgc.get("preset"), overrides, log=log)


def _preset_artifact(name: str, log) -> Path:
    from tgc.artifacts import compiled_artifact

    p = presets.get_preset(name)
    source = presets.default_model_path().read_text()
    return compiled_artifact(source, name, {**presets.model_config(p), "batch": int(p["batch"])}, log=log)


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


def _zip_model(src: Path, dst: Path, folder: str, files=CHECKPOINT_FILES) -> None:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            if (src / f).exists():
                z.write(src / f, f"{folder}/{f}")


def _slug(name: str, used: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_") or "model"
    out, i = stem, 1
    while out in used:
        i += 1
        out = f"{stem}-{i}"
    used.add(out)
    return out


def _preset_entry(name: str) -> dict:
    from tgc.preflight import estimate

    p = presets.get_preset(name)
    cfg = presets.model_config(p)
    need = estimate(cfg, int(p["batch"]), "train")
    return {"name": name, "config": cfg, "batch": int(p["batch"]), "params": int(p.get("params", 0)),
            "train_bytes": need.bytes if need else None, "train_bytes_exact": False, "artifact": None}


def bundle(ckpt=None, out="site", preset: str | None = None, corpora=None, log=print, models=(),
           train_presets=None) -> Path:
    """Write the site; returns its path. corpora: names/paths (None: shakespeare; [] none);
    models: gallery directories after ckpt; train_presets: presets whose artifact is shipped
    for training (None: preset, else tiny)."""
    from tgc.data import load_text
    from tgc.tokenizer import byte_tokenizer

    log = log or (lambda *a: None)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "site.json").exists())):
        raise TgcError(f"{out} exists and is not a previous bundle (no site.json); choose another -o")
    if preset is not None:
        presets.get_preset(preset)
    train_presets = list(dict.fromkeys(train_presets or [preset or "tiny"]))
    for name in train_presets:
        presets.get_preset(name)  # an unknown preset: one line, exit 2
    gallery = []  # (Checkpoint, dir, card, is_ckpt)
    if ckpt is not None:
        gallery.append((*_load_model(resolve_model(ckpt), preset), True))
    for m in models:
        gallery.append((*_load_model(resolve_model(m)), False))
    texts = []
    for c in (["shakespeare"] if corpora is None else corpora):
        name, text = load_text(c)
        texts.append((name, text))
    # artifacts: the default model's (or the first training preset's) is artifact/, the rest artifacts/KEY/
    arts: dict[Path, str] = {}
    default_art = _model_artifact(gallery[0][0], log) if gallery else _preset_artifact(train_presets[0], log)
    arts[default_art] = "artifact/"
    model_arts = [default_art] + [_model_artifact(g[0], log) for g in gallery[1:]]
    preset_arts = {name: _preset_artifact(name, log) for name in train_presets}
    for a in [*model_arts, *preset_arts.values()]:
        arts.setdefault(a, f"artifacts/{a.name}/")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        shutil.copyfile(runtime_dir() / "index.html", tmp / "index.html")
        _copy_runtime(tmp / "runtime")
        shas = {a: _copy_artifact(a, tmp / rel) for a, rel in arts.items()}
        ck0 = gallery[0][0] if gallery else None
        tok_json = ck0.tokenizer.to_json() if ck0 is not None else byte_tokenizer().to_json()
        (tmp / "tokenizer.json").write_text(tok_json)
        site = {"tgc_version": __version__, "preset": ck0.tgc.get("preset") if ck0 else train_presets[0],
                "artifact": "artifact/", "tokenizer": "tokenizer.json", "checkpoint": None, "corpora": [],
                "wasm_sha256": shas[default_art], "models": [], "default_model": None, "presets": [],
                "train_preset": train_presets[0]}
        used: set = set()
        for (ck, src, card, is_ckpt), art in zip(gallery, model_arts):
            given = Path(ckpt) if is_ckpt else src
            name = _slug(str(card.get("name") or given.resolve().name), used)
            if is_ckpt:
                rel = "checkpoint.zip"
                site["checkpoint"], site["checkpoint_step"] = rel, ck.step
            else:
                (tmp / "models").mkdir(exist_ok=True)
                rel = f"models/{name}.zip"
            _zip_model(src, tmp / rel, given.resolve().name)
            dtype = _metadata_dtype(src / "model.safetensors")
            site["models"].append({
                "name": name, "title": str(card.get("title") or card.get("name") or name), "card": card,
                "checkpoint": rel, "bytes": (tmp / rel).stat().st_size, "artifact": arts[art],
                "preset": ck.tgc.get("preset"), "config": {**ck.config}, "batch": int(ck.tgc.get("batch", 1)),
                "params": sum(int(v.size) for v in ck.params.values()), "step": ck.step, "dtype": dtype,
                "corpus": ck.tgc.get("corpus")})
        if site["models"]:
            site["default_model"] = site["models"][0]["name"]
        for name in presets.preset_names():
            entry = _preset_entry(name)
            if name in preset_arts:
                entry["artifact"] = arts[preset_arts[name]]
                man = json.loads((preset_arts[name] / "manifest.json").read_text())
                entry["train_bytes"] = int(man.get("wasm", {}).get("memory_bytes") or entry["train_bytes"])
                entry["train_bytes_exact"] = True
            site["presets"].append(entry)
        used_files: set = set()
        for name, text in texts:
            fname = _corpus_file(name, used_files)
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
    what = (f"{len(site['models'])} model(s), default {site['default_model']}" if site["models"]
            else f"{site['preset']}, fresh weights")
    log(f"bundled {what}; training presets {', '.join(train_presets)} -> {out}; serve it with: tgc serve {out}")
    return out


def _metadata_dtype(p: Path) -> str:
    """The dtype of a safetensors file's tensors ("F16", "F32", or "mixed")."""
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return "unknown"
    kinds = {v["dtype"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return kinds.pop() if len(kinds) == 1 else "mixed"
