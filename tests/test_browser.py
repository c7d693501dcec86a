"""The browser runtime (runtime/) in headless Chromium, against the Python runtimes.

Chromium is Debian's `chromium`, driven by Playwright for Python; WebGPU runs on
SwiftShader, WebAssembly Memory64 on V8. The site under test is what `tgc bundle`
writes, served by tgc.serve (COOP/COEP). What is compared, and how closely:

- host RNG, parameter init, batch offsets: bit for bit (same 32-bit integer hash;
  Box-Muller in float64 rounded to f32);
- training losses over 20 steps: the browser's wasm executor runs the very model.wasm
  the Python wasm runtime runs, and wasm arithmetic is deterministic (no relaxed SIMD),
  so its losses must be *identical*; the WebGPU executor is another target and gets
  docs/parity.md's tolerances (1e-5 for a loss after one step, 5e-3 after N steps);
- generation: token ids equal to `tgc generate` (greedy and seeded sampling);
- tokenizers: ids identical to the Python `tokenizers` library;
- checkpoints: files that tgc/checkpoint.py and transformers load, and back.

Marked `browser`; skipped with the reason when chromium or playwright is missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tgc.compare import compare

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--mute-audio",
]
LOSS_1 = {"rtol": 1e-5, "atol": 1e-6}   # docs/parity.md: a loss after one step
LOSS_N = {"rtol": 5e-3}              # docs/parity.md: a loss after N steps
STEPS = 20

# JS helpers every evaluate() gets: typed arrays cross as base64 of their bytes
JS = """
const b64 = (a) => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = "";
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000)); return btoa(s); };
const unb64 = (s, C = Uint8Array) => { const b = atob(s); const u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return new C(u.buffer); };
const tgc = await import("/runtime/tgc.js");
"""


def _b64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Site:
    """A bundled site served on localhost, and pages on it."""

    def __init__(self, path: Path, browser):
        from tgc.serve import serve_in_thread

        self.path = path
        self.srv, self.url = serve_in_thread(path)
        self.browser = browser
        self.errors: list[str] = []
        self.pages: dict = {}
        self.open_errors: dict = {}

    def page(self, path="index.html?noload"):
        ctx = self.browser.new_context(accept_downloads=True)
        pg = ctx.new_page()
        pg.on("pageerror", lambda e: self.errors.append(str(e)))
        pg.goto(self.url + path)
        return pg

    def model_page(self, backend, programs=None):
        """A page holding window.M, this site's artifact opened on `backend` once: opening
        costs little on wasm but 1-2 minutes on WebGPU/SwiftShader (pipeline compiles), so
        `programs` can name the ones to prepare at open (the rest on first use)."""
        pg = self.pages.get(backend)
        if pg is None:
            pg = self.pages[backend] = self.page()
            err = pg.evaluate(f"""async ([backend, programs]) => {{ {JS}
              const t0 = performance.now();
              try {{ window.M = await tgc.openArtifact("/artifact/", {{backend, tokenizer: "/tokenizer.json", programs}}); }}
              catch (e) {{ return e.message; }}
              window.openMs = performance.now() - t0; return null; }}""", [backend, programs])
            if err is None:
                print(f"{self.path.parent.name}: {backend} opened in {pg.evaluate('window.openMs') / 1000:.1f} s")
            self.open_errors[backend] = err
        if self.open_errors[backend]:
            pytest.fail(f"opening the artifact on {backend} failed: {self.open_errors[backend]}")
        return pg

    def run(self, body: str, arg=None, page=None):
        """Evaluate `body` (an async function body with `arg`, JS helpers and `tgc` in scope)."""
        own = page is None
        pg = page or self.page()
        try:
            return pg.evaluate(f"async (arg) => {{ {JS}\n{body} }}", arg)
        finally:
            if own:
                pg.context.close()

    def close(self):
        for pg in self.pages.values():
            pg.context.close()
        self.srv.shutdown()
        self.srv.server_close()


def _bundle(tmp_path_factory, name, **kw):
    from tgc.bundle import bundle

    return bundle(out=tmp_path_factory.mktemp(name) / "site", log=None, **kw)


@pytest.fixture(scope="module")
def tiny(browser, tmp_path_factory):
    s = Site(_bundle(tmp_path_factory, "tiny", preset="tiny"), browser)
    yield s
    s.close()


@pytest.fixture(scope="module")
def small(browser, tmp_path_factory):
    s = Site(_bundle(tmp_path_factory, "small", preset="small"), browser)
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`tgc train` on the Python wasm runtime: 20 steps of tiny and small (seed 0), the
    checkpoints they write (tiny also at step 10, resumable), and their histories."""
    from tgc.train import train

    out = {}
    root = tmp_path_factory.mktemp("ref")
    for preset in ("tiny", "small"):
        r = train(preset, "shakespeare", steps=STEPS, out=root / preset, backend="wasm", seed=0, progress=False, log=None)
        out[preset] = {"losses": [l for _, l in r.history], "ckpt": root / preset, "val": r.val_loss}
    half = train("tiny", "shakespeare", steps=STEPS, out=root / "tiny-half", backend="wasm", seed=0, stop_at=10,
                 progress=False, log=None)
    assert half.step == 10
    out["tiny-half"] = root / "tiny-half"
    return out


def _need_backend(site, backend):
    m = json.loads((site.path / "artifact" / "manifest.json").read_text())
    assert m["version"] == 2 and (backend != "webgpu" or m.get("kernels")), "the bundle's artifact is not format 2"


# ---------------------------------------------------------------- host RNG, init, batches, sampling

def test_rng_init_and_batches_bit_identical(tiny):
    from tgc import rng
    from tgc.data import Dataset, load_text, split_text, tokenize_text
    from tgc.runtime.base import initial_state, load_manifest
    from tgc.tokenizer import byte_tokenizer

    streams = ["batches", "sample", "val", "transformer.h.0.attn.c_attn.weight", "naïve ünïcødé ☃", 7, 2**32 + 5]
    starts = [0, 1, 12345, 2**31 - 3, 2**32 - 2, 2**40 + 17]
    seeds = [0, 1, 42, 2**31 + 7, -1]
    js = tiny.run("""
      const out = {bits: [], uni: [], norm: [], init: {}};
      for (const seed of arg.seeds) for (const s of arg.streams) for (const st of arg.starts) {
        out.bits.push(Array.from(tgc.rng.bits(seed, s, st, 5)));
        out.uni.push(Array.from(tgc.rng.uniform(seed, s, 3, st)));
      }
      for (const seed of arg.seeds) for (const s of arg.streams) out.norm.push(b64(tgc.rng.normal(seed, s, 257, 0.02)));
      const m = await (await fetch("/artifact/manifest.json")).json();
      for (const seed of [0, 12345]) for (const t of m.tensors) if (t.role === "parameter") out.init[seed + "/" + t.name] = b64(tgc.initValue(t, seed));
      const text = await (await fetch("/corpora/shakespeare.txt")).text();
      const ds = await tgc.Dataset.fromText("shakespeare", text, tgc.Tokenizer.byte(), 32);
      out.split = [ds.train.length, ds.val.length, ds.digest];
      out.batches = [1, 2, 1000, 123457].map((s) => { const b = ds.batch(3, s, 16, 32); return [b64(b.idx), b64(b.targets)]; });
      out.val = [0, 7].map((i) => b64(ds.valBatch(3, i, 16, 32).idx));
      return out;""", {"seeds": [s & 0xFFFFFFFF if s >= 0 else s for s in seeds], "streams": streams, "starts": starts})
    k = 0
    for seed in seeds:
        for s in streams:
            for st in starts:
                assert js["bits"][k] == rng.bits(seed & 0xFFFFFFFF, s, st, 5).tolist(), (seed, s, st)
                assert js["uni"][k] == rng.uniform(seed & 0xFFFFFFFF, s, 3, st).tolist(), (seed, s, st)
                k += 1
    k = 0
    for seed in seeds:
        for s in streams:
            assert np.array_equal(_b64(js["norm"][k], np.float32), rng.normal(seed & 0xFFFFFFFF, s, 257, 0.02)), (seed, s)
            k += 1
    manifest = load_manifest(tiny.path / "artifact")
    n = 0
    for seed in (0, 12345):
        for name, want in initial_state(manifest, seed).items():
            if name.startswith(("adam_", "kv")) or f"{seed}/{name}" not in js["init"]:
                continue
            got = _b64(js["init"][f"{seed}/{name}"], np.float32)
            assert np.array_equal(got, want.ravel()), f"init of {name} (seed {seed}) differs"
            n += 1
    assert n == 2 * len(manifest["model"]["params"])
    name, text = load_text("shakespeare")
    tr, va = split_text(text)
    tok = byte_tokenizer()
    ds = Dataset(name, hashlib.sha256(text.encode()).hexdigest(), tokenize_text(tok, tr), tokenize_text(tok, va))
    assert js["split"] == [len(ds.train), len(ds.val), ds.digest]
    for (idx, tgt), step in zip(js["batches"], [1, 2, 1000, 123457]):
        want_i, want_t = ds.batch(3, step, 16, 32)
        assert np.array_equal(_b64(idx, np.int32), want_i.ravel()) and np.array_equal(_b64(tgt, np.int32), want_t.ravel())
    for v, i in zip(js["val"], [0, 7]):
        assert np.array_equal(_b64(v, np.int32), ds.val_batch(3, i, 16, 32)[0].ravel())


def test_sampling_rule_matches_python(tiny):
    from tgc import rng
    from tgc.generate import sample

    r = np.random.default_rng(0)
    cases = []
    for i in range(300):
        logits = (r.standard_normal(256) * r.uniform(0.5, 4)).astype(np.float32)
        if i % 7 == 0:
            logits[r.integers(0, 256, 5)] = logits.max()  # ties
        temp = [0.0, 0.5, 0.8, 1.0, 1.7][i % 5]
        top_k = [None, 1, 5, 40, 300][i // 5 % 5]
        top_p = [None, 0.5, 0.9, 1.0][i // 25 % 4]
        u = float(rng.uniform(i, "sample", 1, start=i)[0])
        cases.append({"logits": base64.b64encode(logits.tobytes()).decode(), "t": temp, "k": top_k, "p": top_p, "u": u,
                      "want": sample(logits, temp, top_k, top_p, u)})
    got = tiny.run("""return arg.map((c) => tgc.sample(unb64(c.logits, Float32Array), c.t, c.k, c.p, c.u));""", cases)
    assert got == [c["want"] for c in cases]


# ---------------------------------------------------------------- training parity

def _train_in_browser(site, backend, steps=STEPS, seed=0):
    return site.run("""
      const m = window.M;
      await m.init(arg.seed);
      await m.setCorpus("shakespeare", await (await fetch("/corpora/shakespeare.txt")).text());
      m.configure({totalSteps: arg.total});  // the reference run's schedule, however many steps are taken
      const t0 = performance.now();
      const losses = (await m.train(arg.steps)).map((r) => r.loss);
      const ms = performance.now() - t0;
      const val = arg.steps === arg.total ? await m.evaluate() : null;
      return {losses, val, ms, info: m.info};""", {"backend": backend, "steps": steps, "total": STEPS, "seed": seed},
                    page=site.model_page(backend, programs=["train_step"] if steps < STEPS else None))


# small on WebGPU/SwiftShader costs ~21 s a step: 2 steps in CI, all 20 with --runslow
@pytest.mark.parametrize("preset,backend,steps", [
    ("tiny", "wasm", STEPS), ("tiny", "webgpu", STEPS), ("small", "wasm", STEPS), ("small", "webgpu", 2),
    pytest.param("small", "webgpu", STEPS, marks=pytest.mark.slow)])
def test_training_parity(request, reference, preset, backend, steps):
    site = request.getfixturevalue(preset)
    _need_backend(site, backend)
    r = _train_in_browser(site, backend, steps=steps)
    want = reference[preset]["losses"][:steps]
    got = r["losses"]
    assert len(got) == steps and r["info"]["backend"] == backend
    print(f"{preset} {backend}: {r['ms'] / steps:.1f} ms/step in the browser")
    if backend == "wasm":
        # the same module on a deterministic ISA: bit-identical to wasmtime
        assert got == want, f"first difference at step {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) + 1}"
        if steps == STEPS:
            # the mean of 8 identical f32 losses, summed in float64 in another order than numpy's
            assert r["val"] == pytest.approx(reference[preset]["val"], rel=1e-14)
        return
    row = compare("loss after step 1", got[0], want[0], **LOSS_1)
    assert row.ok, row.format()
    for i in range(steps):
        row = compare(f"loss after step {i + 1}", got[i], want[i], **LOSS_N)
        assert row.ok, f"{row.format()}\nbrowser {got}\npython  {want}"
    if steps == STEPS:
        row = compare("val loss", r["val"], reference[preset]["val"], **LOSS_N)
        assert row.ok, row.format()


def test_webgpu_step_allocates_nothing_submits_once_reads_the_loss(tiny):
    """After the first step, a WebGPU training step creates no buffer or bind group, submits
    one command buffer and maps one buffer (the loss), counted on the device itself."""
    _need_backend(tiny, "webgpu")
    r = tiny.run("""
      const m = window.M, ex = m.executor, dev = ex.device;
      await m.init(0);
      if (!m.data) await m.setCorpus("shakespeare", await (await fetch("/corpora/shakespeare.txt")).text());
      m.configure({totalSteps: 20});
      await m.train(1);
      const count = {createBuffer: 0, createBindGroup: 0, submit: 0, mapAsync: 0};
      const wrap = (obj, name) => { const f = obj[name]; obj[name] = function (...a) { count[name]++; return f.apply(this, a); }; return () => { obj[name] = f; }; };
      const undo = [wrap(dev, "createBuffer"), wrap(dev, "createBindGroup"), wrap(dev.queue, "submit"), wrap(GPUBuffer.prototype, "mapAsync")];
      try { await m.train(3); } finally { undo.forEach((u) => u()); }
      return count;""", page=tiny.model_page("webgpu"))
    assert r == {"createBuffer": 0, "createBindGroup": 0, "submit": 3, "mapAsync": 3}, r


def test_wasm_runs_off_the_main_thread(small):
    """The page's event loop keeps turning while the wasm executor trains (a worker does the
    work): no gap between 5 ms timer ticks is longer than a fraction of a step."""
    r = small.run("""
      const m = window.M;
      await m.init(0);
      if (!m.data) await m.setCorpus("shakespeare", await (await fetch("/corpora/shakespeare.txt")).text());
      m.configure({totalSteps: 20});
      let last = performance.now(), maxGap = 0, ticks = 0;
      const id = setInterval(() => { const t = performance.now(); maxGap = Math.max(maxGap, t - last); last = t; ticks++; }, 5);
      const t0 = performance.now();
      const steps = await m.train(3);
      clearInterval(id);
      return {maxGap, ticks, ms: performance.now() - t0, stepMs: Math.min(...steps.map((s) => s.ms))};""",
                 page=small.model_page("wasm"))
    assert r["stepMs"] > 50, r  # small steps are long enough for the check to mean something
    assert r["maxGap"] < r["stepMs"] / 2 and r["ticks"] > r["ms"] / 20, r


def test_parity_can_fail(tiny, reference):
    """A different seed (so different weights and batches) is caught by the same comparison."""
    r = _train_in_browser(tiny, "wasm", steps=3, seed=1)
    assert r["losses"] != reference["tiny"]["losses"][:3]
    assert not all(compare("x", a, b, **LOSS_1).ok for a, b in zip(r["losses"], reference["tiny"]["losses"]))


# ---------------------------------------------------------------- one artifact, 64-bit memory

def test_browser_runs_the_compiled_module(tiny, tmp_path):
    from tgc import presets
    from tgc.artifacts import compiled_artifact

    p = presets.get_preset("tiny")
    art = compiled_artifact(presets.default_model_path().read_text(), "tiny", {**presets.model_config(p), "batch": p["batch"]})
    sha = hashlib.sha256((art / "model.wasm").read_bytes()).hexdigest()
    manifest = json.loads((art / "manifest.json").read_text())
    # and what `tgc compile` writes, as a user runs it, is that very module
    subprocess.run([sys.executable, "-m", "tgc", "compile", str(presets.default_model_path()), "--preset", "tiny",
                    "-o", str(tmp_path / "compiled")], check=True, capture_output=True)
    assert hashlib.sha256((tmp_path / "compiled" / "model.wasm").read_bytes()).hexdigest() == sha
    info = tiny.run("""const m = await tgc.openArtifact("/artifact/", {backend: "wasm"}); const i = m.info; await m.close(); return i;""")
    assert info["sha256"] == sha, "the browser ran another model.wasm than tgc compiled"
    if "sha256" in manifest["wasm"]:
        assert info["expectedSha256"] == manifest["wasm"]["sha256"] == sha
    assert info["memory64"] is True, "model.wasm's memory import is not 64-bit"
    assert info["memoryApi"] in ("address", "index", "index-number")
    assert info["memoryBytes"] >= manifest["wasm"]["memory_bytes"]


def test_browser_refuses_a_32bit_or_foreign_module(tiny, tmp_path):
    """The checks can fail: a 32-bit module, and (with the v2 manifest's sha256) a module
    other than the compiled one, are refused with a clear message."""
    site = tmp_path / "site"
    shutil.copytree(tiny.path, site)
    # (module (import "env" "memory" (memory 1)) (func (export "train_step")))
    wasm32 = bytes([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 2, 15, 1, 3, 101, 110, 118, 6, 109, 101, 109, 111,
                    114, 121, 2, 0, 1, 3, 2, 1, 0, 7, 14, 1, 10, 116, 114, 97, 105, 110, 95, 115, 116, 101, 112, 0, 0,
                    10, 4, 1, 2, 0, 11])
    (site / "artifact" / "model.wasm").write_bytes(wasm32)
    s = Site(site, tiny.browser)
    try:
        err = s.run("""try { await tgc.openArtifact("/artifact/", {backend: "wasm"}); return null; } catch (e) { return e.message; }""")
    finally:
        s.close()
    assert err is not None
    assert "differs from the manifest" in err or "64-bit memory" in err, err


def test_compiled_wgsl_is_valid_in_chrome_as_written(tiny):
    """Every kernel of the artifact, unmodified, through Chrome's WGSL compiler (shader
    modules only: cheap, unlike SwiftShader's pipeline compiles)."""
    errs = tiny.run("""
      const a = await navigator.gpu.requestAdapter(); const dev = await a.requestDevice();
      const m = await (await fetch("/artifact/manifest.json")).json();
      const errs = [];
      for (const [name, k] of Object.entries(m.kernels)) {
        const mod = dev.createShaderModule({code: await (await fetch("/artifact/" + k.wgsl.file)).text()});
        const e = (await mod.getCompilationInfo()).messages.filter((x) => x.type === "error");
        if (e.length) errs.push(`${name}: ${e[0].lineNum}:${e[0].linePos}: ${e[0].message}`);
      }
      dev.destroy();
      return errs;""")
    assert not errs, f"{len(errs)} kernels refused, e.g. {errs[0]}"


def _graph_artifact(out: Path, outputs: dict, heap_base: int) -> dict:
    """A one-program ("run") wasm artifact of `outputs` whose tensors start at `heap_base`,
    built as the wasm tests build theirs (tests/harness.py); returns its manifest."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from harness import compile_graph
    finally:
        sys.path.pop(0)
    compile_graph(out, outputs, target="wasm", heap_base=heap_base)
    return json.loads((out / "manifest.json").read_text())


def test_memory64_kernels_beyond_4gib(browser, tmp_path):
    """Tensors placed past 4 GiB in a 64-bit memory (the first straddles the boundary):
    a matmul, a row max + exp, and a column sum, run in the browser, equal numpy."""
    from tgc.ir import build as b

    a, w = b.input("a", (24, 40)), b.input("w", (40, 33))
    h = b.matmul(a, w)
    outs = {"h": h, "p": b.exp(b.sub(h, b.expand(b.reduce_max(h, 1), (24, 33)))), "s": b.reduce_sum(h, 0)}
    manifest = _graph_artifact(tmp_path / "site" / "k", outs, (4 << 30) - 2048)
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>memory64</title>")
    shutil.copytree(Path(__file__).resolve().parent.parent / "runtime", tmp_path / "site" / "runtime")
    rng_ = np.random.default_rng(0)
    av, wv = rng_.standard_normal((24, 40)).astype(np.float32), rng_.standard_normal((40, 33)).astype(np.float32)
    site = Site(tmp_path / "site", browser)
    try:
        r = site.run("""
          const {WasmExecutor} = await import("/runtime/wasm.js");
          const m = arg.manifest;
          const ex = await WasmExecutor.open(m, new URL("/k/", location.href));
          const at = (n) => { const p = ex.place("run", n); return [ex.addr(p), p.shape.reduce((x, y) => x * y, 1)]; };
          await ex.writeAt(at("a")[0], "f32", unb64(arg.a, Float32Array));
          await ex.writeAt(at("w")[0], "f32", unb64(arg.w, Float32Array));
          await ex.callExport(m.wasm.exports.run);
          const out = {}, addrs = {};
          for (const n of [...arg.names, "a", "w"]) { const [addr, count] = at(n); addrs[n] = [addr, count];
            out[n] = b64(await ex.readAt(addr, "f32", count)); }
          const info = ex.info; await ex.close();
          return {out, info, addrs};""", {"manifest": manifest, "a": base64.b64encode(av.tobytes()).decode(),
                                          "w": base64.b64encode(wv.tobytes()).decode(), "names": list(outs)})
    finally:
        site.close()
    assert r["info"]["memory64"] and r["info"]["memoryBytes"] > 4 << 30
    # every tensor ends past 4 GiB, and most start there
    assert all(addr + 4 * n > 4 << 30 for addr, n in r["addrs"].values()), r["addrs"]
    assert sum(addr >= 4 << 30 for addr, _ in r["addrs"].values()) >= 3, r["addrs"]
    hv = av.astype(np.float64) @ wv.astype(np.float64)
    want = {"h": hv, "p": np.exp(hv - hv.max(1, keepdims=True)), "s": hv.sum(0), "a": av, "w": wv}
    for n, wv_ in want.items():
        got = _b64(r["out"][n], np.float32).reshape(wv_.shape)
        row = compare(n, got, wv_, rtol=1e-5, atol=1e-6)
        assert row.ok, row.format()


def test_too_big_for_the_browser_is_a_message_not_a_crash(tiny, tmp_path):
    """A model needing more memory than a browser gives (here 20 GiB of wasm memory and
    buffers past WebGPU's limits) is refused before anything is allocated, with a message."""
    site = tmp_path / "site"
    shutil.copytree(tiny.path, site)
    mp = site / "artifact" / "manifest.json"
    m = json.loads(mp.read_text())
    m["wasm"]["memory_bytes"] = 20 << 30
    for buf in m["buffers"]:
        buf["size"] = 8 << 30
    mp.write_text(json.dumps(m))
    s = Site(site, tiny.browser)
    try:
        pg = s.page("index.html")
        pg.wait_for_function("window.tgcPage && (window.tgcPage.ready || window.tgcPage.error)", timeout=60_000)
        msg = pg.evaluate("window.tgcPage.error")
        assert pg.is_visible("#message")
        assert pg.evaluate("window.tgcPage.model") is None
        pg.screenshot(path=str(tmp_path / "too-big.png"))
        pg.context.close()
    finally:
        s.close()
    assert msg and "20.00 GiB" in msg and "cannot run this model" in msg, msg
    assert not s.errors, s.errors


# ---------------------------------------------------------------- generation

def _zip_dir(d: Path, folder: str) -> str:
    """A checkpoint directory as the base64 of a .zip, as the page would be handed it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name != "loss.png":
                z.write(f, f"{folder}/{f.name}")
    return base64.b64encode(buf.getvalue()).decode()


def _generate_in_browser(site, backend, ckpt_zip, prompt, n, modes=(True, False), **opts):
    return site.run("""
      const m = window.M;
      await m.importCheckpoint(unb64(arg.zip));
      const out = {};
      for (const kv of arg.modes) {
        const g = m.generate(arg.prompt, {maxNewTokens: arg.n, kvCache: kv, ...arg.opts});
        const pieces = [];
        for await (const p of g) pieces.push(p);
        out[kv ? "kv" : "nokv"] = {pieces, ids: g.stats.tokenIds, stats: g.stats};
      }
      return out;""", {"backend": backend, "prompt": prompt, "n": n, "opts": opts, "modes": list(modes), "zip": ckpt_zip},
                    page=site.model_page(backend))


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_generation_parity(tiny, reference, backend):
    from tgc.generate import generate

    _need_backend(tiny, backend)
    ckpt = reference["tiny"]["ckpt"]
    zip64 = _zip_dir(ckpt, "tiny")
    prompt = "ROMEO:"
    greedy = generate(ckpt, prompt, max_new_tokens=100, temperature=0, backend="wasm")
    text = greedy.text
    sampled = generate(ckpt, prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=7, backend="wasm")
    sampled_text = sampled.text
    # without the KV cache every token reruns `forward`: checked on wasm (WebGPU on SwiftShader is too slow)
    modes = (True, False) if backend == "wasm" else (True,)
    g = _generate_in_browser(tiny, backend, zip64, prompt, 100, modes=modes, temperature=0)
    for mode in ("kv", "nokv")[:len(modes)]:
        assert g[mode]["ids"] == greedy.stats.token_ids, mode
        assert "".join(g[mode]["pieces"]) == text
    assert len(g["kv"]["pieces"]) > 10, "tokens were not streamed as they came"
    s = _generate_in_browser(tiny, backend, zip64, prompt, 60, modes=(True,), temperature=0.8, topK=40, seed=7)
    assert s["kv"]["ids"] == sampled.stats.token_ids
    assert "".join(s["kv"]["pieces"]) == sampled_text


def test_generate_cli_matches_browser(tiny, reference):
    """`tgc generate --temperature 0` as a user runs it."""
    ckpt = reference["tiny"]["ckpt"]
    out = subprocess.run([sys.executable, "-m", "tgc", "generate", str(ckpt), "--prompt", "ROMEO:", "--temperature", "0",
                          "--max-new-tokens", "100", "--backend", "wasm"], capture_output=True, text=True, check=True)
    g = _generate_in_browser(tiny, "wasm", _zip_dir(ckpt, "tiny"), "ROMEO:", 100, modes=(True,), temperature=0)
    assert out.stdout.rstrip("\n") == "ROMEO:" + "".join(g["kv"]["pieces"])


# ---------------------------------------------------------------- checkpoints

def _unzip(b64: str, dst: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(b64))) as z:
        names = z.namelist()
        z.extractall(dst)
    top = {n.split("/")[0] for n in names}
    assert len(top) == 1, names
    return dst / top.pop()


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_checkpoint_exported_in_browser_loads_in_tgc_and_transformers(tiny, tmp_path, backend):
    from tgc.checkpoint import load_checkpoint
    from tgc.generate import generate
    from tgc.train import train

    _need_backend(tiny, backend)
    steps, n = (6, 100) if backend == "wasm" else (3, 40)  # WebGPU on SwiftShader: ~4 s a step
    r = tiny.run("""
      const m = window.M;
      await m.init(5);
      await m.setCorpus("shakespeare", await (await fetch("/corpora/shakespeare.txt")).text());
      m.configure({seed: 5, totalSteps: 12});
      await m.train(arg.steps);
      await m.evaluate({batches: 2});
      const ck = await m.exportCheckpoint();
      const g = m.generate("ROMEO:", {maxNewTokens: arg.n, temperature: 0});
      let text = "";
      for await (const piece of g) text += piece;
      const next = (await m.train(1))[0].loss;
      return {zip: b64(ck.bytes), name: ck.name, ids: g.stats.tokenIds, text, next};""", {"backend": backend, "steps": steps, "n": n},
                 page=tiny.model_page(backend))
    d = _unzip(r["zip"], tmp_path)
    ck = load_checkpoint(d, resume=True)  # every check tgc makes on a checkpoint
    assert ck.step == steps and ck.tgc["preset"] == "tiny" and ck.state["total_steps"] == 12
    assert len(ck.state["val_history"]) == 1 and ck.state["val_history"][0][0] == steps
    g = generate(d, "ROMEO:", max_new_tokens=n, temperature=0, backend="wasm")
    assert g.text == r["text"]
    assert g.stats.token_ids == r["ids"]
    # transformers: greedy tokens within the context window (32 for tiny) are the same
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    hf = GPT2LMHeadModel.from_pretrained(d).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    ids = tok("ROMEO:")["input_ids"]
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=32 - len(ids), do_sample=False, pad_token_id=0)
    assert out[0, len(ids):].tolist() == r["ids"][:32 - len(ids)]
    # and `tgc train --resume` continues it: its next step is the browser's next step
    res = train(None, None, steps=12, out=d, backend="wasm", resume=True, stop_at=steps + 1, progress=False, log=None)
    tol = LOSS_1 if backend == "webgpu" else {"rtol": 0, "atol": 0}
    row = compare("the step after resuming", res.history[-1][1], r["next"], **tol)
    assert res.history[-1][0] == steps + 1 and row.ok, row.format()


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_tgc_train_checkpoint_resumes_in_browser(tiny, reference, tmp_path, backend):
    from tgc.train import train

    _need_backend(tiny, backend)
    half = reference["tiny-half"]
    r = tiny.run("""
      const m = window.M;
      const info = await m.importCheckpoint(unb64(arg.zip));
      await m.setCorpus(info.corpus, await (await fetch("/corpora/shakespeare.txt")).text());
      const losses = (await m.train(2)).map((x) => x.loss);
      return {info, losses};""", {"backend": backend, "zip": _zip_dir(half, "tiny-half")},
                 page=tiny.model_page(backend))
    assert r["info"]["step"] == 10 and r["info"]["resumable"]
    shutil.copytree(half, tmp_path / "resume")
    res = train(None, None, steps=STEPS, out=tmp_path / "resume", backend="wasm", resume=True, stop_at=12, progress=False,
                log=None)
    want = [l for s, l in res.history if s in (11, 12)]
    # the uninterrupted run's steps 11 and 12 are the same numbers
    assert want == reference["tiny"]["losses"][10:12]
    if backend == "wasm":
        assert r["losses"] == want
    else:
        for got, w in zip(r["losses"], want):
            row = compare("loss after resume", got, w, **LOSS_1)
            assert row.ok, row.format()


def test_import_refuses_another_model(tiny, reference):
    ckpt = reference["small"]["ckpt"]
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            z.write(ckpt / f, f"small/{f}")
    err = tiny.run("""
      const m = await tgc.openArtifact("/artifact/", {backend: "wasm"});
      const errs = [];
      for (const bytes of [unb64(arg.zip), unb64(arg.zip).slice(0, 200), new TextEncoder().encode("not a zip")]) {
        try { await m.importCheckpoint(bytes); errs.push(null); } catch (e) { errs.push(e.message); } }
      await m.close();
      return errs;""", {"zip": base64.b64encode(zbuf.getvalue()).decode()})
    assert "another model" in err[0] and "ctx is 64" in err[0], err[0]
    assert err[1] and err[2] and all("\n" not in e for e in err)


# ---------------------------------------------------------------- tokenizers

def _random_strings(n, seed=0):
    rnd = random.Random(seed)
    pools = ["abc XYZ'\n\t  sllvemred.,!?0123", None]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rnd.randint(0, 48)):
            r = rnd.random()
            if r < 0.35:
                chars.append(rnd.choice(pools[0]))
            elif r < 0.6:
                chars.append(chr(rnd.randint(0x20, 0x7FF)))
            elif r < 0.85:
                chars.append(chr(rnd.choice([rnd.randint(0x800, 0xD7FF), rnd.randint(0xE000, 0xFFFF)])))
            else:
                chars.append(chr(rnd.randint(0x10000, 0x10FFFF)))
        out.append("".join(chars))
    return out


def _gpt2_style_tokenizer(text: str):
    """A tokenizer as `tgc import` builds GPT-2's from vocab.json + merges.txt: byte-level BPE
    (trained on `text` here: no hub), <|endoftext|> an added special token at the last id."""
    import tempfile

    from tokenizers import Tokenizer as Tk
    from tokenizers import models, pre_tokenizers, trainers

    from tgc.tokenizer import hf_tokenizer

    tk = Tk(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=767, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tk.to_str())["model"]
    vocab = {**model["vocab"], "<|endoftext|>": len(model["vocab"])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        Path(d, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
        return hf_tokenizer(d)


def test_tokenizer_parity(tiny):
    from tgc.data import load_text, split_text, tokenize_text
    from tgc.tokenizer import bpe_tokenizer, byte_tokenizer

    _, text = load_text("shakespeare")
    tr, _ = split_text(text)
    toks = {"byte": byte_tokenizer(), "bpe": bpe_tokenizer(tr[:400_000], 1024), "gpt2": _gpt2_style_tokenizer(tr[:200_000])}
    eot = "<|endoftext|>"
    strings = _random_strings(1000) + [f"one{eot}two{eot}{eot}", f"<|endoftext| no {eot}x", f" {eot} \n{eot}"]
    corpora = json.loads((tiny.path / "site.json").read_text())["corpora"]
    assert corpora, "the site bundles no corpus"
    r = tiny.run("""
      const out = {};
      const texts = [];
      for (const c of arg.corpora) texts.push([c.name, await (await fetch("/" + c.file)).text()]);
      for (const [kind, json] of Object.entries(arg.toks)) {
        const tok = new tgc.Tokenizer(JSON.parse(json));
        const {splitText, tokenizeText, sha256Hex} = await import("/runtime/data.js");
        out[kind] = {kind: tok.kind, strings: arg.strings.map((s) => tok.encode(s)), decoded: arg.strings.map((s) => tok.decode(tok.encode(s))), corpora: {}};
        for (const [name, text] of texts) {
          const [tr, va] = splitText(text);
          out[kind].corpora[name] = await Promise.all([tr, va].map(async (p) => { const ids = Int32Array.from(tokenizeText(tok, p));
            return [ids.length, await sha256Hex(new Uint8Array(ids.buffer))]; }));
        }
      }
      return out;""", {"toks": {k: t.to_json() for k, t in toks.items()}, "strings": strings, "corpora": corpora})
    for kind, tok in toks.items():
        assert r[kind]["kind"] == tok.kind or kind == "gpt2"
        want = [tok.encode(s) for s in strings]
        bad = [i for i, (a, b) in enumerate(zip(r[kind]["strings"], want)) if a != b]
        assert not bad, f"{kind}: {len(bad)} strings differ, e.g. {strings[bad[0]]!r}: {r[kind]['strings'][bad[0]]} vs {want[bad[0]]}"
        assert r[kind]["decoded"] == strings
        for c in corpora:
            _, text = load_text(c["name"])
            for part, (n, digest) in zip(split_text(text), r[kind]["corpora"][c["name"]]):
                ids = tokenize_text(tok, part).astype(np.int32)
                assert n == len(ids) and digest == hashlib.sha256(ids.tobytes()).hexdigest(), (kind, c["name"])


# ---------------------------------------------------------------- bundle and serve (the page itself: tests/test_app.py)

def test_serve_headers_and_errors(tiny, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "tgc", "serve", str(tiny.path), "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        for path, ctype in (("", "text/html"), ("artifact/model.wasm", "application/wasm"),
                            ("runtime/tgc.js", "text/javascript"), ("artifact/manifest.json", "application/json")):
            with urllib.request.urlopen(url + path) as resp:
                assert resp.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert resp.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
                assert resp.headers["Content-Type"].startswith(ctype), (path, resp.headers["Content-Type"])
    finally:
        p.terminate()
        p.wait(10)
    for bad in (tmp_path / "missing", tiny.path / "site.json", tmp_path):
        r = subprocess.run([sys.executable, "-m", "tgc", "serve", str(bad)], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_bundle_errors_are_one_line(tmp_path):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("mine")
    for args in (["bundle", str(tmp_path / "nockpt"), "-o", str(tmp_path / "s")],
                 ["bundle", "--preset", "nope", "-o", str(tmp_path / "s")],
                 ["bundle", "--corpus", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "s")],
                 ["bundle", "--model", str(tmp_path / "nomodel"), "-o", str(tmp_path / "s")],
                 ["bundle", "--model", str(tmp_path / "occupied"), "-o", str(tmp_path / "s")],
                 ["bundle", "--train-preset", "nope", "-o", str(tmp_path / "s")],
                 ["bundle", "-o", str(tmp_path / "occupied")]):
        r = subprocess.run([sys.executable, "-m", "tgc", *args], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "occupied" / "x").read_text() == "mine"


# ---------------------------------------------------------------- another model family: llama.tg

@pytest.fixture(scope="module")
def llama_site(browser, tmp_path_factory):
    """`tgc train` of models/llama.tg (tiny, 20 steps on the Python wasm runtime, seed 0) and a
    site bundled from its checkpoint: (site, checkpoint, losses)."""
    from tgc import presets
    from tgc.train import train

    ck = tmp_path_factory.mktemp("llama-ref") / "ck"
    r = train("tiny", "shakespeare", steps=STEPS, out=ck, backend="wasm", seed=0, progress=False, log=None,
              model_path=presets.family_model_path("Llama"))
    s = Site(_bundle(tmp_path_factory, "llama", ckpt=ck), browser)
    yield s, ck, [loss for _, loss in r.history]
    s.close()


def test_llama_trains_generates_and_exports_in_the_browser(llama_site, tmp_path):
    """The page runs a model of another family as it runs the GPT: the same training losses as
    `tgc train` (bit for bit on wasm), the same greedy tokens as `tgc generate` with and without
    the KV cache, and a checkpoint export that tgc and transformers' LlamaForCausalLM load."""
    from tgc.checkpoint import load_checkpoint
    from tgc.generate import generate

    site, ck, losses = llama_site
    manifest = json.loads((site.path / "artifact" / "manifest.json").read_text())
    assert manifest["model"]["hf_config"]["model_type"] == "llama"
    r = _train_in_browser(site, "wasm")
    assert r["losses"] == losses
    ref = generate(ck, "ROMEO:", max_new_tokens=40, temperature=0, backend="wasm")
    ref.text  # noqa: B018 -- runs the generation
    want = ref.stats.token_ids
    assert len(want) == 40
    g = _generate_in_browser(site, "wasm", _zip_dir(ck, "llama"), "ROMEO:", 40, temperature=0)
    assert g["kv"]["ids"] == g["nokv"]["ids"] == want
    r = site.run("""const ck = await window.M.exportCheckpoint(); return b64(ck.bytes);""", page=site.model_page("wasm"))
    d = _unzip(r, tmp_path)
    theirs, ours = load_checkpoint(d, resume=True), load_checkpoint(ck, resume=True)
    assert theirs.compile_config == ours.compile_config and theirs.step == ours.step == STEPS
    for k, v in ours.params.items():
        assert np.array_equal(theirs.params[k], v), k
    from transformers import LlamaForCausalLM

    _, info = LlamaForCausalLM.from_pretrained(d, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
