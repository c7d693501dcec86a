"""Shipped models (issue 12): keep-best, weight decay and the schedule's floor, fp16 export,
the gallery (`tgc models`, generation by name, `tgc train --init`), and prebuilt generation
artifacts. Everything runs on a tiny model trained here into a tmp dir; the gallery is
pointed at it through $TGC_GALLERY_DIR (no fake model is shipped). WebAssembly backend
(the numpy reference where a test needs the interpreter)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from tgc import cli
from tgc.artifacts import GENERATE_PROGRAMS, PREBUILT_DIR, PREBUILT_KEY, cache_root
from tgc.checkpoint import (
    CONFIG,
    WEIGHTS,
    export_checkpoint,
    f32_to_bf16,
    load_checkpoint,
    param_shapes,
    save_checkpoint,
)
from tgc.errors import TgcError
from tgc.generate import generate
from tgc.runtime import _module_available
from tgc.tokenizer import byte_tokenizer
from tgc.train import BEST, train

pytestmark = pytest.mark.skipif(not _module_available("wasm"), reason="needs the wasm backend")

RUN = {"steps": 12, "backend": "wasm", "lr": 3e-2, "eval_every": 2, "eval_batches": 2, "seed": 1, "progress": False,
       "log": None}


@pytest.fixture(scope="module")
def runs(corpus_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    whole = train("tiny", str(corpus_file), out=root / "whole", **RUN)
    first = train("tiny", str(corpus_file), out=root / "split", stop_at=6, **RUN)
    kw = {k: v for k, v in RUN.items() if k != "seed"}
    second = train(None, None, out=root / "split", resume=True, **kw)
    return {"root": root, "whole": whole, "first": first, "second": second, "corpus": corpus_file}


@pytest.fixture(scope="module")
def gallery(runs, tmp_path_factory, request):
    """A gallery of one model, `tinyverse`: the whole run's best weights exported as fp16."""
    g = tmp_path_factory.mktemp("gallery")
    export_checkpoint(runs["root"] / "whole" / BEST, g / "tinyverse")
    card = json.loads((g / "tinyverse" / "card.json").read_text())
    card.update(description="pseudo-verse", licence="generated")
    (g / "tinyverse" / "card.json").write_text(json.dumps(card))
    old = os.environ.get("TGC_GALLERY_DIR")
    os.environ["TGC_GALLERY_DIR"] = str(g)
    request.addfinalizer(lambda: os.environ.pop("TGC_GALLERY_DIR") if old is None
                         else os.environ.__setitem__("TGC_GALLERY_DIR", old))
    return g


def _params(d) -> dict:
    return load_checkpoint(d).params


# ---- keep-best

def test_best_holds_the_lowest_validation_loss(corpus_file, tmp_path):
    # six good steps, then a resume at a learning rate far too high, held there (no decay): the
    # held-out loss rises far (to ~20 from ~3.2), so the best weights are step 6's, not the last ones
    out = tmp_path / "c"
    first = train("tiny", str(corpus_file), out=out, stop_at=6, **RUN)
    shutil.copytree(out, tmp_path / "step6")
    kw = {k: v for k, v in RUN.items() if k != "seed"}
    r = train(None, None, out=out, resume=True, min_lr_ratio=1.0, **{**kw, "lr": 1.0})
    vals = [v for _, v in r.val_history]
    assert [s for s, _ in r.val_history] == [2, 4, 6, 8, 10, 12] and r.val_history[:3] == first.val_history
    assert min(vals[3:]) > vals[2] == min(vals), vals
    assert (first.best_step, r.best_step, r.best_val) == (6, 6, vals[2])
    best = load_checkpoint(out / BEST)  # a complete, weights-only checkpoint
    assert best.step == 6 and best.tgc["best"] == {"step": 6, "val_loss": vals[2]} and best.tgc["val_loss"] == vals[2]
    assert not (out / BEST / "optimizer.safetensors").exists()
    step6, last = _params(tmp_path / "step6"), _params(out)
    for k in step6:
        np.testing.assert_array_equal(best.params[k], step6[k], err_msg=k)
    assert any(not np.array_equal(best.params[k], last[k]) for k in last)
    with pytest.raises(TgcError, match="cannot be resumed"):
        load_checkpoint(out / BEST, resume=True)
    ck = load_checkpoint(out, resume=True)  # the resumable checkpoint is the last step's, and records the best
    assert ck.step == 12 and ck.state["best"] == {"step": 6, "val_loss": vals[2]}


def test_resume_keeps_best_and_stays_exact(runs):
    whole, first, second = runs["whole"], runs["first"], runs["second"]
    assert first.step == 6 and first.best_step == min(first.val_history, key=lambda x: x[1])[0]
    assert whole.best_step == min(whole.val_history, key=lambda x: x[1])[0]
    assert second.history == whole.history and second.val_history == whole.val_history
    assert (second.best_step, second.best_val) == (whole.best_step, whole.best_val)
    a, b = _params(whole.out / BEST), _params(second.out / BEST)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    a, b = _params(whole.out), _params(second.out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_no_keep_best(corpus_file, tmp_path):
    r = train("tiny", str(corpus_file), out=tmp_path / "c", keep_best=False, **{**RUN, "steps": 4})
    assert r.best_step is None and not (tmp_path / "c" / BEST).exists() and (tmp_path / "c" / CONFIG).exists()


def test_cli_reports_the_best_step(corpus_file, tmp_path, capsys):
    rc = cli.main(["train", "--preset", "tiny", "--corpus", str(corpus_file), "--steps", "4", "--eval-every", "2",
                   "--out", str(tmp_path / "c"), "--backend", "wasm"])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(rf"^best val \d\.\d{{4}} at step [24]: {re.escape(str(tmp_path / 'c' / BEST))}$", out, re.MULTILINE), out


# ---- weight decay and the schedule's floor (compiled into train_step)

def _one_step(corpus_file, out, **kw) -> dict:
    """Parameters after one step from seed 0 with warmup 0 and steps 1: the schedule is at its
    floor (lr * min_lr_ratio) on that step."""
    kw = {"lr": 1e-2, **kw}
    train("tiny", str(corpus_file), steps=1, out=out, backend="numpy", warmup=0, eval_batches=1, keep_best=False,
          progress=False, log=None, **kw)
    return _params(out)


def test_min_lr_ratio_and_weight_decay(corpus_file, tmp_path):
    base = _one_step(corpus_file, tmp_path / "a", min_lr_ratio=1.0, weight_decay=0.0)
    half = _one_step(corpus_file, tmp_path / "b", min_lr_ratio=0.5, weight_decay=0.0)
    decay = _one_step(corpus_file, tmp_path / "c", min_lr_ratio=1.0, weight_decay=0.5)
    start = _one_step(corpus_file, tmp_path / "d", min_lr_ratio=1.0, weight_decay=0.0, lr=1e-30)
    bias, mat = "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn.weight"
    d_base, d_half = base[bias] - start[bias], half[bias] - start[bias]
    assert np.abs(d_base).max() > 1e-4
    assert_close(d_half, 0.5 * d_base, 1e-4, 1e-9, "the floor halves the first update")
    # decoupled decay: p * (1 - lr * wd) on matrices only
    assert_close(decay[mat], base[mat] - 1e-2 * 0.5 * start[mat], 1e-5, 1e-7, "weight decay on a matrix")
    np.testing.assert_array_equal(decay[bias], base[bias])
    t = json.loads((tmp_path / "c" / CONFIG).read_text())["tgc"]["train"]
    assert (t["weight_decay"], t["min_lr_ratio"]) == (0.5, 1.0)
    st = load_checkpoint(tmp_path / "b", resume=True).state
    assert (st["weight_decay"], st["min_lr_ratio"]) == (0.0, 0.5)


@pytest.mark.parametrize("flag,value", [("--weight-decay", "2"), ("--weight-decay", "-0.1"), ("--min-lr-ratio", "1.5"),
                                        ("--min-lr-ratio", "nan")])
def test_bad_regularisation_options(flag, value, tmp_path, capsys):
    rc = cli.main(["train", "--steps", "2", "--out", str(tmp_path / "x"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and flag in err and not (tmp_path / "x").exists()


# ---- export

def test_export_fp16_loads_in_tgc(runs, tmp_path):
    src = runs["whole"].out / BEST
    out = export_checkpoint(src, tmp_path / "e16", dtype="fp16")
    header = json.loads((out / WEIGHTS).read_bytes()[8:8 + int.from_bytes((out / WEIGHTS).read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    cfg = json.loads((out / CONFIG).read_text())
    assert cfg["dtype"] == "float16" and cfg["tgc"]["exported_from"] == str(src.resolve())
    a, b = load_checkpoint(src), load_checkpoint(out)
    for k in a.params:
        np.testing.assert_array_equal(b.params[k], a.params[k].astype(np.float16).astype(np.float32), err_msg=k)
    assert (out / WEIGHTS).stat().st_size < 0.55 * (src / WEIGHTS).stat().st_size
    card = json.loads((out / "card.json").read_text())
    r = runs["whole"]
    assert card["steps"] == r.best_step and card["best_step"] == r.best_step and card["val_loss"] == r.best_val
    assert card["params"] == 70_464 and card["corpus"] == a.tgc["corpus"] and card["dtype"] == "fp16"
    assert card["schedule"]["lr"] == 3e-2 and card["batch"] == 16 and card["samples"] == []
    # bf16 rounds to nearest even, like torch
    e = export_checkpoint(src, tmp_path / "ebf", dtype="bf16", artifact=False)
    c = load_checkpoint(e)
    w = a.params["transformer.wte.weight"]
    np.testing.assert_array_equal(c.params["transformer.wte.weight"],
                                  (f32_to_bf16(w).astype(np.uint32) << 16).view(np.float32))
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(f32_to_bf16(w), torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy()
                                  .view(np.uint16))


def test_export_loads_in_transformers(runs, tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    out = export_checkpoint(runs["whole"].out / BEST, tmp_path / "e", artifact=False)
    model = transformers.GPT2LMHeadModel.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = list(b"KING:\nThe crown")
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()
    from tgc.generate import open_checkpoint_runtime

    ck, rt = open_checkpoint_runtime(out, "numpy")
    x = np.zeros((1, ck.config["ctx"]), np.int32)
    x[0, : len(ids)] = ids
    assert_close(rt.run("forward", inputs={"tokens": x})["logits"][0, : len(ids)], hf, 0, 1e-4, "fp16 export logits")


def test_export_refuses(runs, tmp_path):
    src = runs["whole"].out / BEST
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(TgcError, match="not empty"):
        export_checkpoint(src, tmp_path / "full")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    with pytest.raises(TgcError, match="inside the source"):
        export_checkpoint(src, src / "x")
    cfg = {"vocab": 256, "ctx": 32, "d": 48, "heads": 3, "layers": 2}
    params = {k: np.full(s, 0.01, np.float32) for k, s in param_shapes(cfg).items()}
    params["transformer.wpe.weight"][0, 0] = 1e5
    save_checkpoint(tmp_path / "big", params, cfg, byte_tokenizer(), {"preset": "tiny", "batch": 16})
    with pytest.raises(TgcError, match="beyond float16's range"):
        export_checkpoint(tmp_path / "big", tmp_path / "big16")
    assert not (tmp_path / "big16").exists() or not any((tmp_path / "big16").iterdir())
    export_checkpoint(tmp_path / "big", tmp_path / "bigbf", dtype="bf16", artifact=False)  # bf16 has the range
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(src), "-o", str(tmp_path / "x"), "--dtype", "fp8"])
    assert e.value.code == 2 and not (tmp_path / "x").exists()


# ---- the gallery

def test_models_lists_the_gallery(gallery, capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("tinyverse"))
    card = json.loads((gallery / "tinyverse" / "card.json").read_text())
    assert "0.1M" in line and card["corpus"] in line and f"{card['val_loss']:.3f}" in line and "KiB" in line
    assert cli.main(["models", "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)
    assert m["name"] == "tinyverse" and m["params"] == 70_464 and m["card"]["licence"] == "generated"
    assert m["size_bytes"] == sum(p.stat().st_size for p in (gallery / "tinyverse").rglob("*") if p.is_file())


def test_empty_gallery(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TGC_GALLERY_DIR", str(tmp_path))
    assert cli.main(["models"]) == 0 and "no models" in capsys.readouterr().out
    with pytest.raises(TgcError, match="holds no models"):
        generate("shakespeare", "x")


def test_generate_by_name(gallery, capsys, tmp_path, monkeypatch):
    a = generate("tinyverse", "KING:", max_new_tokens=12, temperature=0, backend="wasm")
    b = generate(gallery / "tinyverse", "KING:", max_new_tokens=12, temperature=0, backend="wasm")
    assert a.text == b.text and len(a.stats.token_ids) == 12
    assert cli.main(["generate", "tinyverse", "--prompt", "KING:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("KING:")
    rc = cli.main(["generate", "nosuch", "--prompt", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "tinyverse" in err and "nosuch" in err
    # an existing directory of that name wins over the gallery
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyverse").mkdir()
    with pytest.raises(TgcError, match="config.json: missing"):
        generate("tinyverse", "x")


def test_generation_artifact_holds_the_generation_programs_only(gallery, tmp_path, monkeypatch):
    monkeypatch.setenv("TGC_CACHE_DIR", str(tmp_path / "cache"))
    shutil.rmtree(gallery / "tinyverse" / PREBUILT_DIR)  # compile (not the shipped one)
    try:
        logs = []
        g = generate("tinyverse", "KING:", max_new_tokens=3, backend="wasm", log=logs.append)
        "".join(g)
        (art,) = (cache_root() / "artifacts").iterdir()
        m = json.loads((art / "manifest.json").read_text())
        assert sorted(m["programs"]) == sorted(GENERATE_PROGRAMS) and m["model"]["batch"] == 1
        assert any("compiling" in s for s in logs)
    finally:
        from tgc.gallery import refresh_artifacts

        assert refresh_artifacts(log=lambda *a: None) == ["tinyverse"]


def test_prebuilt_artifact_is_used_when_it_matches(gallery, tmp_path, monkeypatch):
    d = gallery / "tinyverse" / PREBUILT_DIR
    from tgc import gallery as G

    (m,) = G.models()
    assert G.artifact_current(m)
    monkeypatch.setenv("TGC_CACHE_DIR", str(tmp_path / "cache"))
    logs = []
    text = generate("tinyverse", "KING:", max_new_tokens=8, temperature=0, backend="wasm", log=logs.append).text
    assert not any("compiling" in s for s in logs) and not (tmp_path / "cache" / "artifacts").exists()
    # a stale key (another compiler) or a model.wasm that is not the manifest's: compiled anew, same text
    for spoil in ("key", "wasm"):
        saved = {p: p.read_bytes() for p in (d / PREBUILT_KEY, d / "model.wasm")}
        try:
            if spoil == "key":
                (d / PREBUILT_KEY).write_text("0" * 16 + "\n")
            else:
                (d / "model.wasm").write_bytes(saved[d / "model.wasm"] + b"\0")
            assert not G.artifact_current(m)
            monkeypatch.setenv("TGC_CACHE_DIR", str(tmp_path / f"cache-{spoil}"))
            logs = []
            again = generate("tinyverse", "KING:", max_new_tokens=8, temperature=0, backend="wasm", log=logs.append)
            assert again.text == text and any("compiling" in s for s in logs)
        finally:
            for p, b in saved.items():
                p.write_bytes(b)
    assert G.artifact_current(m)


# ---- fine-tuning

def test_init_fine_tunes_a_gallery_model(gallery, corpus_file, tmp_path):
    src = load_checkpoint(gallery / "tinyverse")
    r = train(None, str(corpus_file), steps=1, out=tmp_path / "ft", init="tinyverse", lr=1e-30, warmup=0,
              eval_batches=1, backend="wasm", progress=False, log=None)
    ck = load_checkpoint(tmp_path / "ft", resume=True)
    for k, v in src.params.items():  # lr ~ 0: the weights are the gallery model's
        assert_close(ck.params[k], v, 0, 1e-6, k)
    assert ck.tgc["init"] == str(gallery / "tinyverse") and ck.tgc["preset"] == "tiny" and ck.step == 1
    assert r.history[0][1] < 4.0  # a fresh tiny model starts at ln 256 = 5.5
    # fresh moments: one step's worth, m = (1 - beta1) g and v = (1 - beta2) g^2
    m, v = ck.optimizer["adam_m/transformer.wte.weight"], ck.optimizer["adam_v/transformer.wte.weight"]
    assert_close(v, (0.05 / 0.1**2) * m * m, 1e-3, 1e-12, "moments from one gradient")


@pytest.mark.parametrize("kw,match", [({"resume": True}, "give one of them"), ({"preset": "small"}, "leave --preset out"),
                                      ({"tokenizer": "bpe:300"}, "leave --tokenizer out"),
                                      ({"model_path": "models/gpt.tg"}, "--model cannot"),
                                      ({"init": "nosuch"}, "no gallery model")])
def test_init_errors(gallery, corpus_file, tmp_path, kw, match):
    kw = {"init": "tinyverse", **kw}
    with pytest.raises(TgcError, match=match):
        train(kw.pop("preset", None), str(corpus_file), steps=2, out=tmp_path / "x", backend="wasm", progress=False,
              log=None, **kw)
    assert not (tmp_path / "x").exists()


# ---- fast first generation: a huge-shaped model from an empty cache (docs/models.md)

@pytest.mark.slow  # reason: times a 9.6M-parameter model's generation; meaningful only on an idle machine
def test_first_generation_of_a_huge_model_is_fast(tmp_path):
    from tgc import presets
    from tgc.preflight import param_count

    cfg = presets.model_config(presets.get_preset("huge"))
    r = np.random.default_rng(0)
    params = {k: (0.02 * r.standard_normal(s)).astype(np.float32) for k, s in param_shapes(cfg).items()}
    assert param_count(cfg) == 9_608_704
    save_checkpoint(tmp_path / "ck", params, cfg, byte_tokenizer(), {"preset": "huge", "batch": 8})
    export_checkpoint(tmp_path / "ck", tmp_path / "gallery" / "huge")
    env = {**os.environ, "TGC_GALLERY_DIR": str(tmp_path / "gallery"), "TGC_CACHE_DIR": str(tmp_path / "empty")}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "tgc", "generate", "huge", "--prompt", "ROMEO:"], check=False, env=env,
                       capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    assert p.returncode == 0 and p.stdout.startswith("ROMEO:") and "200 new tokens" in p.stderr
    assert wall < 10, f"{wall:.1f}s"


def test_package_data_ships_every_file_of_a_gallery_model(gallery):
    """pyproject's package-data for tgc.gallery covers every file `tgc export` writes (setuptools
    globs: `*` stays within one path component)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tgc.gallery"]
    pats = [re.compile(g.replace(".", r"\.").replace("*", "[^/]*")) for g in globs]
    files = [p.relative_to(gallery).as_posix() for p in (gallery / "tinyverse").rglob("*") if p.is_file()]
    assert any(f.endswith(".wgsl") for f in files) and "tinyverse/artifact/KEY" in files
    missed = [f for f in files if not any(p.fullmatch(f) for p in pats)]
    assert not missed, missed


def test_plain_bundle_ships_the_gallery(gallery, tmp_path):
    """`tgc bundle -o SITE` with no checkpoint, --model or --preset: a page whose first model
    is a pretrained one (the gallery), not fresh weights."""
    assert cli.main(["bundle", "-o", str(tmp_path / "site"), "--no-corpus"]) == 0
    site = json.loads((tmp_path / "site" / "site.json").read_text())
    assert site["default_model"] == "tinyverse", site
    assert [m["name"] for m in site["models"]] == ["tinyverse"]
