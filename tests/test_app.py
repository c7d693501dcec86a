"""The page `tgc bundle` writes (runtime/index.html + page.js), end to end in headless Chromium.

Issue 11's acceptance, as a user would do it, through the page's controls only:

- end to end twice, on WebGPU (SwiftShader, forced with ?backend=webgpu: `auto` would
  take WebAssembly on a software adapter) and in a browser without WebGPU (so the
  WebAssembly fallback is used): open the page; stream at least 50 tokens from the
  pretrained model with tokens/s and first-token ms shown; train tiny for 50 steps while
  the stats and chart update; pause and resume; download the checkpoint; reload and find
  the autosave restored; upload the download; greedy generation equal to
  `tgc generate --temperature 0` on the same file. The WebGPU run then loses its device
  (device.destroy(), what a driver reset does) and must recover and keep generating.
- bad uploads (a truncated .zip, a checkpoint of another model): a message, and the
  current model stays loaded and generates what it generated before;
- the gallery's fp16 model loads (widened to f32) and generates what `tgc generate` does;
- no request leaves the site (a route fails anything that is not localhost);
- labelled, keyboard-usable controls; the layout at 1280x800 and 390x844.

Screenshots of each state go to $TGC_SCREENSHOTS (docs/img when updating the docs), else
to the test's tmp dir. The pretrained model is a tiny one trained here for 150 steps (a
stand-in for the gallery: SwiftShader is slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COMMON = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--no-first-run", "--disable-default-apps", "--mute-audio"]
WEBGPU = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]
NO_WEBGPU = ["--disable-features=WebGPU"]   # navigator.gpu stays, but no adapter: the page must fall back
PROMPT = "And"          # the tiny model's greedy continuation of it is words, not only newlines
N_TOKENS = 60
TRAIN_STEPS = 50


def shoot(pg, path: Path, full_page: bool = False) -> None:
    """A screenshot, re-saved with a 256-colour palette (a third of the size: they are committed)."""
    pg.screenshot(path=str(path), full_page=full_page)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    q.save(path, optimize=True)


def _shot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("TGC_SCREENSHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def playwright():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model trained 150 steps (f32, resumable) and the same weights as a gallery
    entry: fp16 safetensors with a card.json."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from tgc.train import train

    root = tmp_path_factory.mktemp("pretrained")
    ck = root / "tiny-shakespeare"
    train("tiny", "shakespeare", steps=150, out=ck, backend="wasm", seed=0, lr=3e-3, progress=False, log=None)
    g = root / "gallery" / "verse16"
    g.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.tg"):
        shutil.copyfile(ck / f, g / f)
    with safe_open(ck / "model.safetensors", "np") as f:
        meta = f.metadata()
    save_file({k: v.astype("float16") for k, v in load_file(ck / "model.safetensors").items()}, g / "model.safetensors", metadata=meta)
    (g / "card.json").write_text(json.dumps({"name": "verse16", "title": "Shakespeare tiny (fp16)",
                                             "description": "the test model in fp16"}))
    return {"ckpt": ck, "fp16": g}


@pytest.fixture(scope="module")
def app_site(pretrained, tmp_path_factory):
    from tgc.bundle import bundle
    from tgc.serve import serve_in_thread

    site = bundle(pretrained["ckpt"], tmp_path_factory.mktemp("app") / "site", models=[pretrained["fp16"]], log=None)
    srv, url = serve_in_thread(site)
    yield {"path": site, "url": url}
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A checkpoint of another model (tiny's config with context 64), written directly."""
    import numpy as np

    from tgc.checkpoint import param_shapes, save_checkpoint
    from tgc.tokenizer import byte_tokenizer

    cfg = {"vocab": 256, "ctx": 64, "d": 48, "heads": 3, "layers": 2, "eps": 1e-5, "activation": "gelu"}
    r = np.random.default_rng(0)
    params = {k: (0.02 * r.standard_normal(s)).astype(np.float32) for k, s in param_shapes(cfg).items()}
    out = tmp_path_factory.mktemp("other") / "ctx64"
    save_checkpoint(out, params, cfg, byte_tokenizer(), {"preset": "tiny", "batch": 16, "step": 0})
    z = out.parent / "ctx64.zip"
    _zip(out, z)
    return {"zip": z, "dir": out}


def _zip(d: Path, dst: Path) -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for f in sorted(d.iterdir()):
            if f.is_file():
                z.write(f, f"{d.name}/{f.name}")
    return dst


class App:
    """A browser (WebGPU on SwiftShader, or none) with pages on the site; every request
    that is not to localhost is failed and recorded."""

    def __init__(self, playwright, url, webgpu: bool):
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=COMMON + (WEBGPU if webgpu else NO_WEBGPU))
        self.url = url
        self.outside: list[str] = []
        self.errors: list[str] = []

    def page(self, query="", viewport=(1280, 800)):
        ctx = self.browser.new_context(accept_downloads=True, viewport={"width": viewport[0], "height": viewport[1]})

        def route(r):
            if r.request.url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        pg = ctx.new_page()
        pg.on("pageerror", lambda e: self.errors.append(str(e)))
        pg.goto(self.url + "index.html" + query)
        return pg

    def close(self):
        self.browser.close()


def wait_ready(pg, timeout=300_000):
    pg.wait_for_function("window.tgcPage.ready && window.tgcPage.model", timeout=timeout)


def page_error(pg):
    return pg.evaluate("window.tgcPage.error")


def generate(pg, prompt, n, temperature, timeout=300_000):
    pg.fill("#prompt", prompt)
    pg.fill("#max-new", str(n))
    pg.fill("#temperature", str(temperature))
    pg.evaluate("window.tgcPage.lastGen = null")
    pg.click("#generate")
    pg.wait_for_function("window.tgcPage.lastGen !== null", timeout=timeout)
    return pg.evaluate("window.tgcPage.lastGen")


def tgc_generate(ckpt: Path, prompt: str, n: int) -> str:
    """`tgc generate CKPT --temperature 0` as a user runs it: the text it prints."""
    r = subprocess.run([sys.executable, "-m", "tgc", "generate", str(ckpt), "--prompt", prompt, "--temperature", "0",
                        "--max-new-tokens", str(n), "--backend", "wasm"], capture_output=True, text=True, timeout=300, check=True)
    return r.stdout.rstrip("\n")


# ---------------------------------------------------------------- end to end

def _end_to_end(app: App, query: str, backend: str, tmp_path: Path, shots: dict, train_steps: int = TRAIN_STEPS):
    times = {}
    t = time.perf_counter()
    # 1. open the page: the pretrained model loads, the estimate is measured
    pg = app.page(query)
    wait_ready(pg)
    times["open"] = time.perf_counter() - t
    assert page_error(pg) is None, page_error(pg)
    assert pg.evaluate("window.tgcPage.model.backend") == backend
    assert pg.evaluate("window.tgcPage.current.kind") == "gallery"
    chip = pg.inner_text("#backend-chip")
    assert chip.startswith({"webgpu": "WebGPU", "wasm": "WebAssembly"}[backend]), chip
    if backend == "wasm":   # WebGPU is off in this browser: the fallback says why
        assert "fallback" in chip and "no WebGPU" in pg.inner_text("#backend-reason-line")
    pills = pg.evaluate("window.tgcPage.pills")
    assert set(pills) == {"WebGPU", "Memory64", "threads", "SIMD", "subgroups", "f16"}
    assert pills["WebGPU"] == (backend == "webgpu") and pills["Memory64"] and pills["threads"]
    has_pressure = pg.evaluate("'PressureObserver' in window")
    assert pg.is_hidden("#pressure-chip") or has_pressure
    pg.wait_for_function("window.tgcPage.fit", timeout=300_000)
    times["warm-up"] = time.perf_counter() - t - times["open"]
    est = pg.inner_text("#estimate")
    assert "takes about" in est and "Measured here" in est, est
    tiny_option = pg.inner_text("#preset option[value=tiny]")
    assert "/step" in tiny_option and "params" in tiny_option and "MiB" in tiny_option, tiny_option
    assert "not in this bundle" in pg.inner_text("#preset option[value=huge]")
    shoot(pg, shots["first"])

    # 2. stream >= 50 tokens; count what the page painted, frame by frame
    pg.evaluate("""() => { const el = document.getElementById('out-text'); window.painted = [];
      const tick = () => { window.painted.push(el.textContent.length); if (window.tgcPage.lastGen === null) requestAnimationFrame(tick); };
      window.tgcPage.lastGen = null; requestAnimationFrame(tick); }""")
    t1 = time.perf_counter()
    g = generate(pg, "ROMEO:", N_TOKENS, 0.8)
    times["generate"] = time.perf_counter() - t1
    assert g["newTokens"] == N_TOKENS and g["kvCache"] and g["backend"] == backend
    assert g["tokensPerS"] > 0 and g["firstTokenFromClickMs"] > 0
    painted = sorted(set(pg.evaluate("window.painted")))
    assert len(painted) >= 3 and painted[0] < len(g["text"]), f"tokens did not appear as they came: {painted}"
    stats = pg.inner_text("#gen-stats")
    assert f"{N_TOKENS} tokens" in stats and "tokens/s (prompt excluded)" in stats and "first token" in stats, stats
    shoot(pg, shots["generating"])

    # 3-4. train the tiny model 50 more steps (from scratch is test_train_from_scratch: 50
    # steps from fresh weights leave a model whose greedy text is all spaces, which would make
    # step 8 compare nothing); stats and chart update; pause and resume
    t1 = time.perf_counter()
    start = pg.evaluate("window.tgcPage.model.step")
    vals = pg.evaluate("window.tgcPage.model.valHistory.length")
    end = start + train_steps
    pg.fill("#steps", str(train_steps))
    pg.fill("#eval-every", "25")
    pg.fill("#lr", "0.003")
    # what the stats bar and the chart showed, frame by frame
    pg.evaluate("""() => { window.trace = []; const tick = () => { window.trace.push([document.getElementById('st-step').textContent,
      window.tgcPage.chartPoints]); if (!window.stopTrace) requestAnimationFrame(tick); }; requestAnimationFrame(tick); }""")
    pg.click("#continue")

    def watch(until):
        while True:
            s = pg.evaluate("[window.tgcPage.model && window.tgcPage.model.step, window.tgcPage.chartPoints, !!window.tgcPage.training]")
            if until(s):
                return s
            assert page_error(pg) is None, page_error(pg)
            time.sleep(0.05)

    watch(lambda s: s[2] and s[0] >= start + min(10, train_steps // 2))
    assert pg.inner_text("#st-tps") not in ("–", "") and pg.inner_text("#st-eta") not in ("–", "")
    shoot(pg, shots["training"], full_page=True)
    pg.click("#pause")
    pg.wait_for_function("window.tgcPage.pausedAt !== undefined", timeout=120_000)
    at = pg.evaluate("window.tgcPage.model.step")
    assert pg.inner_text("#pause") == "Resume"
    time.sleep(1.0)
    assert pg.evaluate("window.tgcPage.model.step") == at, "training went on while paused"
    pg.click("#pause")
    watch(lambda s: not s[2])
    times["train"] = time.perf_counter() - t1
    assert pg.evaluate("window.tgcPage.model.step") == end
    trace = pg.evaluate("window.stopTrace = true; window.trace")
    seen_steps, seen_points = {t[0] for t in trace}, {t[1] for t in trace}
    assert len(seen_steps) >= 10 and len(seen_points) >= 5, (seen_steps, seen_points)
    evals = len([s for s in range(start + 1, end + 1) if s % 25 == 0 or s == end])
    assert pg.inner_text("#st-val") != "–" and pg.evaluate("window.tgcPage.model.valHistory.length") == vals + evals
    assert at < end

    # 5. download the checkpoint
    with pg.expect_download() as dl:
        pg.click("#download")
    zpath = tmp_path / dl.value.suggested_filename
    dl.value.save_as(zpath)
    assert zpath.name == f"tgc-tiny-step{end}.zip"

    # 6. reload: the autosave comes back (weights, step, history)
    t1 = time.perf_counter()
    pg.reload()
    wait_ready(pg)
    times["reload"] = time.perf_counter() - t1
    assert pg.evaluate("window.tgcPage.restored && window.tgcPage.restored.step") == end
    assert pg.evaluate("[window.tgcPage.model.step, window.tgcPage.model.history.length]") == [end, end]
    assert "Your model" in pg.inner_text("#model-card") and "restored" in pg.inner_text("#status")

    # 7. upload what was downloaded
    pg.set_input_files("#upload", str(zpath))
    pg.wait_for_function("window.tgcPage.uploaded && window.tgcPage.ready", timeout=120_000)
    assert pg.evaluate("window.tgcPage.uploaded.step") == end and page_error(pg) is None

    # 8. greedy generation equals tgc generate on the same file
    ck = tmp_path / "downloaded"
    with zipfile.ZipFile(zpath) as z:
        z.extractall(ck)
    g = generate(pg, PROMPT, N_TOKENS, 0)
    want = tgc_generate(ck / zpath.stem, PROMPT, N_TOKENS)
    assert PROMPT + g["text"] == want, (g["text"], want)
    assert len(set(g["text"])) > 3, f"a degenerate continuation compares nothing: {g['text']!r}"
    times["total"] = time.perf_counter() - t
    print(f"{backend}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return pg


def test_end_to_end_webgpu(playwright, app_site, tmp_path):
    """The acceptance run on SwiftShader, 50 training steps: a tiny step takes 2-4 s there and
    creating the training pipelines ~80 s (about 6 minutes in all on the 2-core machine)."""
    train_steps = TRAIN_STEPS
    app = App(playwright, app_site["url"], webgpu=True)
    shots = _shot_dir(tmp_path)
    try:
        pg = _end_to_end(app, "?backend=webgpu", "webgpu", tmp_path,
                         {"first": shots / "first-load.png", "generating": shots / "generating.png", "training": shots / "training.png"},
                         train_steps=train_steps)
        # a lost device: a message, the model back (from its autosave), generation goes on
        pg.evaluate("window.tgcPage.loseDevice()")
        pg.wait_for_function("window.tgcPage.error && window.tgcPage.error.includes('keeps working')", timeout=300_000)
        wait_ready(pg)
        assert pg.evaluate("[window.tgcPage.lost, window.tgcPage.model.step]") == [1, 150 + train_steps]
        g = generate(pg, PROMPT, 20, 0)
        assert g["newTokens"] == 20
        pg.evaluate("scrollTo(0, 0)")
        shoot(pg, shots / "device-lost.png")
        assert not app.outside, app.outside
        assert not app.errors, app.errors
    finally:
        app.close()


def test_end_to_end_wasm_fallback(playwright, app_site, tmp_path):
    app = App(playwright, app_site["url"], webgpu=False)
    shots = _shot_dir(tmp_path)
    try:
        pg = _end_to_end(app, "", "wasm", tmp_path, {"first": shots / "fallback.png", "generating": tmp_path / "g.png",
                                                     "training": tmp_path / "t.png"})
        assert not app.outside, app.outside
        assert not app.errors, app.errors
        pg.context.close()
    finally:
        app.close()


# ---------------------------------------------------------------- errors, gallery, page quality

def test_bad_uploads_keep_the_model(playwright, app_site, other_model, pretrained, tmp_path):
    app = App(playwright, app_site["url"], webgpu=True)
    shots = _shot_dir(tmp_path)
    try:
        pg = app.page()
        wait_ready(pg)
        before = generate(pg, PROMPT, 40, 0)
        good = (app_site["path"] / "checkpoint.zip").read_bytes()
        truncated = tmp_path / "truncated.zip"
        truncated.write_bytes(good[: len(good) // 2])
        for f, says in ((truncated, "corrupt or truncated"), (other_model["zip"], "another model")):
            pg.evaluate("window.tgcPage.error = null")
            pg.set_input_files("#upload", str(f))
            pg.wait_for_function("window.tgcPage.error !== null", timeout=60_000)
            err = pg.evaluate("window.tgcPage.error")
            assert "Upload refused" in err and says in err and "still loaded" in err, err
            assert pg.is_visible("#message")
            wait_ready(pg)
            assert pg.evaluate("[window.tgcPage.current.kind, window.tgcPage.model.step]") == ["gallery", 150]
            again = generate(pg, PROMPT, 40, 0)
            assert again["tokenIds"] == before["tokenIds"], "the current model changed"
        pg.evaluate("scrollTo(0, 0)")
        shoot(pg, shots / "error.png")
        assert not app.outside and not app.errors, (app.outside, app.errors)
    finally:
        app.close()


def test_gallery_fp16_model_and_page_quality(playwright, app_site, pretrained, tmp_path):
    """The fp16 gallery model (picked in the model picker) generates what tgc generate
    does from its directory; every control has a label; the keyboard drives generation;
    the phone-sized layout does not overflow."""
    app = App(playwright, app_site["url"], webgpu=False)
    shots = _shot_dir(tmp_path)
    try:
        pg = app.page(viewport=(390, 844))
        wait_ready(pg)
        pg.select_option("#model-pick", "g:verse16")
        pg.wait_for_function("window.tgcPage.ready && window.tgcPage.current.name === 'verse16'", timeout=60_000)
        assert "fp16" in pg.inner_text("#model-card")
        g = generate(pg, PROMPT, N_TOKENS, 0)
        assert PROMPT + g["text"] == tgc_generate(pretrained["fp16"], PROMPT, N_TOKENS)
        unlabelled = pg.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
          .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map((e) => e.id)""")
        assert not unlabelled, unlabelled
        # the keyboard: focus the prompt, Tab to Generate, Enter
        pg.evaluate("window.tgcPage.lastGen = null")
        pg.focus("#prompt")
        for _ in range(8):
            pg.keyboard.press("Tab")
            if pg.evaluate("document.activeElement.id") == "generate":
                break
        assert pg.evaluate("document.activeElement.id") == "generate"
        pg.keyboard.press("Enter")
        pg.wait_for_function("window.tgcPage.lastGen !== null", timeout=60_000)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390, "the phone layout overflows sideways"
        shoot(pg, shots / "phone.png", full_page=True)
        # asking for WebGPU where there is none: a message, the model stays where it was
        pg.select_option("#backend", "webgpu")
        pg.wait_for_function("window.tgcPage.error && window.tgcPage.error.includes('Could not switch')", timeout=60_000)
        assert pg.evaluate("[window.tgcPage.model.backend, window.tgcPage.ready]") == ["wasm", True]
        assert pg.input_value("#backend") == "auto"
        assert not app.outside and not app.errors, (app.outside, app.errors)
    finally:
        app.close()


def test_train_from_scratch(playwright, app_site, tmp_path):
    """"Train from scratch" with the preset picked: fresh weights (the loss starts near
    ln 256), the steps asked for, and the model is then "yours" (in the picker, autosaved)."""
    app = App(playwright, app_site["url"], webgpu=False)
    try:
        pg = app.page()
        wait_ready(pg)
        pg.select_option("#preset", "tiny")
        pg.fill("#steps", "10")
        pg.fill("#eval-every", "5")
        pg.click("#train")
        pg.wait_for_function("window.tgcPage.model.step === 10 && !window.tgcPage.training", timeout=120_000)
        h = pg.evaluate("window.tgcPage.model.history")
        assert [s for s, _ in h] == list(range(1, 11)) and abs(h[0][1] - 5.545) < 0.1, h
        assert pg.evaluate("window.tgcPage.current.kind") == "yours" and "Your model" in pg.inner_text("#model-card")
        assert pg.evaluate("window.tgcPage.autosave.step") == 10
        assert not app.outside and not app.errors, (app.outside, app.errors)
    finally:
        app.close()


def test_bundle_model_by_name(tmp_path, monkeypatch):
    """--model takes a directory, or the name of a gallery model (tgc/gallery.py resolves both)."""
    from tgc import bundle
    from tgc.errors import TgcError

    monkeypatch.setenv("TGC_GALLERY_DIR", str(tmp_path / "gallery"))
    (tmp_path / "gallery" / "shakespeare").mkdir(parents=True)
    (tmp_path / "gallery" / "shakespeare" / "config.json").write_text("{}")
    assert bundle.resolve_model("shakespeare") == tmp_path / "gallery" / "shakespeare"
    assert bundle.resolve_model(str(tmp_path)) == tmp_path
    with pytest.raises(TgcError, match="no gallery model of that name"):
        bundle.resolve_model("nope")


def test_estimate_measures_the_training_preset_beside_another_model(playwright, other_model, tmp_path):
    """When the default model is not the training preset's artifact (a gallery model of
    another size), the warm-up runs on a second model of the training preset, closed after;
    the gallery model stays loaded and generates."""
    from tgc.bundle import bundle
    from tgc.serve import serve_in_thread

    site = bundle(other_model["dir"], tmp_path / "site", corpora=[], train_presets=["tiny"], log=None)
    info = json.loads((site / "site.json").read_text())
    tiny = next(p for p in info["presets"] if p["name"] == "tiny")
    assert tiny["artifact"].startswith("artifacts/") and info["models"][0]["artifact"] == "artifact/"
    srv, url = serve_in_thread(site)
    app = App(playwright, url, webgpu=False)
    try:
        pg = app.page()
        wait_ready(pg)
        pg.wait_for_function("window.tgcPage.fit", timeout=120_000)
        assert "of tiny" in pg.inner_text("#estimate") and pg.evaluate("window.tgcPage.fit.config.ctx") == 32
        assert pg.evaluate("window.tgcPage.model.config.ctx") == 64
        assert generate(pg, PROMPT, 10, 0)["newTokens"] == 10
        assert not app.outside and not app.errors, (app.outside, app.errors)
    finally:
        app.close()
        srv.shutdown()
        srv.server_close()
