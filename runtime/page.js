// The page `tgc bundle` writes: a pretrained model ready to generate from on first visit,
// "train your own" with a measured estimate of how long it takes here, live statistics
// and a loss chart, streaming generation, checkpoints in and out, autosave to the origin
// private file system (OPFS), and errors (a lost GPU device, out of memory, a bad upload)
// shown in the page while the current model stays loaded.
//
// site.json (tgc/bundle.py) says what the site holds: the gallery (models), the presets
// (config, memory, artifact when bundled), the corpora. Everything model-side goes through
// the library (tgc.js); the page keeps one model open at a time and reuses its executor
// when the next model has the same artifact (no second pipeline compile on WebGPU).
// Tests read window.tgcPage; `?backend=webgpu|wasm` forces a backend, `?noload` skips
// loading (tests drive the library directly). Leaves out: several models open at once.

import { capabilities, checkArtifact, openArtifact, gib, Tokenizer } from "./tgc.js";
import { loadManifest } from "./manifest.js";
import { checkpointFiles } from "./checkpoint.js";
import uPlot from "./vendor/uPlot.esm.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const page = (window.tgcPage = {
  site: null, caps: null, model: null, current: null, ready: false, error: null, events: [],
  fit: null, training: null, generating: false, lastGen: null, autosave: null, lost: 0,
});
const closing = new WeakSet();   // models the page closed itself (their device loss is expected)
const dec = new TextDecoder();

// ------------------------------------------------------------------ messages and formats

function status(text) {
  $("status").textContent = text;
  page.events.push({ t: performance.now(), text });
}

function message(text) {
  page.error = text;
  page.events.push({ t: performance.now(), text, error: true });
  $("message-text").textContent = text;
  $("message").hidden = false;
}
$("message-close").onclick = () => { $("message").hidden = true; };

const fmtMs = (ms) => (ms < 1 ? `${ms.toFixed(2)} ms` : ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`);
function fmtDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${Math.max(1, s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
const fmtBytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);
const fmtCount = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(0)}K` : String(n));
const BACKEND_NAME = { webgpu: "WebGPU", wasm: "WebAssembly" };
const yieldTask = () => new Promise((r) => { const ch = new MessageChannel(); ch.port1.onmessage = () => r(); ch.port2.postMessage(0); });
const nextFrame = () => new Promise((r) => { requestAnimationFrame(() => r()); setTimeout(r, 100); });

// ------------------------------------------------------------------ capabilities

// a module with one v128 function (wasm-feature-detect's SIMD probe)
const SIMD_PROBE = Uint8Array.of(0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11);

function renderPills(c) {
  const feats = new Set(c.webgpu.features || []);
  const pills = [
    ["WebGPU", c.webgpu.ok, c.webgpu.ok ? `${c.webgpu.vendor} ${c.webgpu.architecture}${c.webgpu.software ? " (software)" : ""}` : c.webgpu.reason],
    ["Memory64", c.memory64.ok, c.memory64.ok ? "64-bit WebAssembly memory" : c.memory64.reason],
    ["threads", c.crossOriginIsolated && typeof SharedArrayBuffer === "function", c.crossOriginIsolated ? "cross-origin isolated: SharedArrayBuffer available" : "not cross-origin isolated (serve with tgc serve for COOP/COEP)"],
    ["SIMD", WebAssembly.validate(SIMD_PROBE), "WebAssembly 128-bit SIMD"],
    ["subgroups", feats.has("subgroups"), "WebGPU subgroups"],
    ["f16", feats.has("shader-f16"), "WebGPU shader-f16"],
  ];
  page.pills = Object.fromEntries(pills.map(([n, ok]) => [n, ok]));
  $("pills").innerHTML = "";
  for (const [name, ok, title] of pills) {
    const li = document.createElement("li");
    li.className = ok ? "yes" : "no";
    li.textContent = `${ok ? "✓" : "✗"} ${name}`;
    li.title = title;
    li.setAttribute("aria-label", `${name}: ${ok ? "supported" : "not supported"} (${title})`);
    $("pills").append(li);
  }
}

async function watchPressure() {
  // Compute Pressure API: the chip exists only where the browser has it
  if (!("PressureObserver" in globalThis)) return;
  try {
    if (PressureObserver.knownSources && !PressureObserver.knownSources.includes("cpu")) return;
    const chip = $("pressure-chip");
    const obs = new PressureObserver((records) => {
      const s = records[records.length - 1].state;
      chip.textContent = `CPU pressure: ${s}`;
      chip.className = `chip ${s}`;
      chip.hidden = false;
    });
    await obs.observe("cpu", { sampleInterval: 2000 });
    page.pressure = obs;
  } catch { /* unsupported or not allowed here: stay hidden */ }
}

// ------------------------------------------------------------------ OPFS autosave

async function opfsRoot() {
  try { return navigator.storage && navigator.storage.getDirectory ? await navigator.storage.getDirectory() : null; } catch { return null; }
}

async function opfsWrite(root, name, data) {
  const fh = await root.getFileHandle(name, { create: true });
  const w = await fh.createWritable();   // written to a swap file, swapped in at close: atomic
  await w.write(data);
  await w.close();
}

async function readAutosave() {
  const root = await opfsRoot();
  if (!root) return null;
  try {
    const meta = JSON.parse(await (await (await root.getFileHandle("autosave.json")).getFile()).text());
    return meta;
  } catch { return null; }
}

async function autosaveBytes() {
  const root = await opfsRoot();
  return new Uint8Array(await (await (await root.getFileHandle("autosave.zip")).getFile()).arrayBuffer());
}

async function autosave(model = page.model) {
  if (!model || model !== page.model) return;
  const root = await opfsRoot();
  if (!root) { $("autosave-line").textContent = "This browser has no origin private file system: training is not saved across reloads (download it)."; return; }
  const ck = await model.exportCheckpoint();
  await opfsWrite(root, "autosave.zip", ck.bytes);
  const meta = { artifact: page.current.artifact, preset: model.settings.preset, step: model.step, savedAt: Date.now(), name: ck.name,
                 checkpointId: ck.checkpointId, corpus: model.settings.corpus ?? null, bytes: ck.bytes.length };
  await opfsWrite(root, "autosave.json", JSON.stringify(meta));
  page.autosave = meta;
  renderAutosave();
  renderPicker();
}

function renderAutosave() {
  const a = page.autosave;
  $("autosave-line").textContent = a ? `Autosaved in this browser: ${a.name} (step ${a.step}, ${fmtBytes(a.bytes || 0)}, ${new Date(a.savedAt).toLocaleTimeString()}).` : "Nothing autosaved yet: training saves itself here as it goes.";
}

// ------------------------------------------------------------------ models: open, load, switch

const artifactUrl = (rel) => new URL(rel, location.href).href;
const siteArtifacts = () => new Set([...page.site.models.map((m) => m.artifact), ...page.site.presets.filter((p) => p.artifact).map((p) => p.artifact), page.site.artifact]);

/** Bytes and parsed tokenizer of a model source: {kind: "gallery", name} | {kind: "yours"} | {kind: "fresh"}. */
async function sourceFiles(target) {
  let bytes;
  if (target.kind === "gallery") {
    const m = page.site.models.find((x) => x.name === target.name);
    const r = await fetch(m.checkpoint);
    if (!r.ok) throw new Error(`${m.checkpoint}: HTTP ${r.status}`);
    bytes = new Uint8Array(await r.arrayBuffer());
  } else if (target.kind === "yours") {
    bytes = target.bytes || await autosaveBytes();
  } else {
    return null;
  }
  const files = checkpointFiles(bytes);
  let tok = null;
  if (files["tokenizer.json"]) {
    const kind = files["tokenizer_config.json"] ? JSON.parse(dec.decode(files["tokenizer_config.json"])).tgc_tokenizer || null : null;
    tok = new Tokenizer(JSON.parse(dec.decode(files["tokenizer.json"])), kind);
  }
  return { files, tok };
}

/** Make `target` the current model: open its artifact (or reuse the open one), load its
 * weights. On failure the previous model stays loaded and current. */
async function activate(target, { backend = $("backend").value, reason = "", reopen = false } = {}) {
  const prev = page.model;
  page.ready = false;
  refresh();
  const src = await sourceFiles(target);
  const url = artifactUrl(target.artifact);
  let model = prev;
  if (reopen || !prev || prev.base !== url || (backend !== "auto" && prev.backend !== backend) || prev.executor.lost) {
    const manifest = await loadManifest(url);
    const can = await checkArtifact(manifest);
    page.check = can;
    status(`opening ${target.label || target.name || target.preset || "the model"} (${gib(can.bytes.wasm)} WebAssembly / ${gib(can.bytes.webgpu)} WebGPU)…`);
    const t0 = performance.now();
    model = await openArtifact(target.artifact, { backend, tokenizer: src && src.tok ? src.tok : undefined, programs: ["prefill", "decode_step"] });
    page.openMs = performance.now() - t0;
  }
  try {
    if (src) await model.importCheckpoint(src.files);
    else { await model.init(target.seed ?? 0); model.configure({ seed: target.seed ?? 0, warmup: null, totalSteps: null }); }
  } catch (e) {
    if (model !== prev) await model.close();
    throw e;
  }
  if (model !== prev) {
    if (prev) { closing.add(prev); if (prev.executor.lost) prev.executor.destroy(); else await prev.close(); }
    page.model = model;
    watchDevice(model);
  }
  page.current = { ...target, bytes: undefined, preset: model.settings.preset };
  page.backendChoice = backend;
  localStorage.setItem("tgc.current", JSON.stringify({ kind: target.kind, name: target.name || null }));
  renderBackend(model, backend, reason);
  if (page.fit && page.fit.backend !== model.backend) { page.fit = null; renderPresets(); measureSoon(); }   // the estimate is per backend
  renderModelCard();
  renderPicker();
  drawChart(true);
  renderStats();
  page.ready = true;
  refresh();
  return model;
}

function watchDevice(model) {
  if (model.backend !== "webgpu") return;
  model.executor.device.lost.then((info) => {
    if (closing.has(model) || page.model !== model) return;
    onDeviceLost(model, info);
  });
}

async function onDeviceLost(model, info) {
  page.lost += 1;
  const tr = page.training;
  if (tr) { tr.stop = true; if (tr.resume) tr.resume(); }
  const target = page.current;
  const from = target.kind === "yours" && page.autosave ? `your model from its autosave (step ${page.autosave.step})` : target.kind === "gallery" ? `${target.name} from the site` : "fresh weights";
  const backend = $("backend").value === "webgpu" ? "auto" : $("backend").value;
  $("backend").value = backend;
  const what = `The GPU device was lost (${info.reason || "unknown"}${info.message ? `: ${info.message.replace(/\.$/, "")}` : ""})`;
  message(`${what}. Reopening ${from}…`);
  try {
    await waitIdle();
    const kind = target.kind === "yours" && !page.autosave ? "fresh" : target.kind;
    await activate({ ...target, kind }, { backend, reason: "the WebGPU device was lost" });
    message(`${what}. The page reopened ${from} on ${BACKEND_NAME[page.model.backend]}; it keeps working.`);
    status(`${from} reopened on ${BACKEND_NAME[page.model.backend]} after the device loss`);
  } catch (e) {
    message(`The GPU device was lost, and reopening the model failed: ${e.message}`);
  }
}

async function waitIdle() {
  while (page.training || page.generating) await new Promise((r) => setTimeout(r, 50));
}

function renderBackend(model, asked, reason) {
  const chip = $("backend-chip");
  const c = page.caps, can = page.check || {};
  let why = reason;
  if (!why && model.backend === "wasm" && asked !== "wasm") {
    why = !c.webgpu.ok ? `no WebGPU: ${c.webgpu.reason}` : can.webgpu && !can.webgpu.ok ? can.webgpu.reason
      : c.webgpu.software ? `the WebGPU adapter is a software one (${c.webgpu.architecture || c.webgpu.vendor || "SwiftShader"}): WebAssembly is faster here` : "";
  }
  chip.className = `chip ${model.backend}`;
  chip.textContent = `${BACKEND_NAME[model.backend]}${why ? " · fallback" : ""}`;
  chip.title = why || (model.backend === "webgpu" ? `${c.webgpu.vendor} ${c.webgpu.architecture}` : "Memory64 WebAssembly in a worker");
  page.fallbackReason = why || null;
  $("backend-reason-line").textContent = why ? `Running on WebAssembly: ${why}.` : "";
}

function renderModelCard() {
  const m = page.model, cur = page.current, c = m.config;
  const shape = `${c.layers} layers, ${c.heads} heads, d ${c.d}, context ${c.ctx}, ${fmtCount(m.info.params)} parameters`;
  let text;
  if (cur.kind === "gallery") {
    const g = page.site.models.find((x) => x.name === cur.name);
    const card = g.card || {};
    const extra = [card.description, g.corpus ? `trained on ${g.corpus}` : "", g.step ? `${g.step.toLocaleString()} steps` : "",
                   card.val_loss != null ? `val loss ${Number(card.val_loss).toFixed(2)}` : "", g.dtype === "F16" ? "fp16 weights" : ""].filter(Boolean).join(" · ");
    text = `Pretrained: ${g.title} — ${shape}${extra ? ` · ${extra}` : ""}.`;
  } else if (cur.kind === "yours") {
    text = `Your model: ${m.settings.preset || "custom"} at step ${m.step} — ${shape}${m.settings.corpus ? `, trained on ${m.settings.corpus}` : ""}.`;
  } else {
    text = `Fresh weights (${m.settings.preset}) — ${shape}: train it to get text.`;
  }
  $("model-card").textContent = text;
}

function renderPicker() {
  const sel = $("model-pick");
  const cur = page.current ? (page.current.kind === "gallery" ? `g:${page.current.name}` : page.current.kind) : "";
  sel.innerHTML = "";
  for (const m of page.site.models) sel.append(new Option(`${m.title} · ${fmtCount(m.params)}`, `g:${m.name}`));
  if (page.autosave && siteArtifacts().has(page.autosave.artifact)) sel.append(new Option(`Your model (step ${page.autosave.step})`, "yours"));
  if (cur === "fresh") sel.append(new Option("Fresh weights", "fresh"));
  sel.value = cur;
}

$("model-pick").onchange = async () => {
  const v = $("model-pick").value;
  const target = v.startsWith("g:") ? galleryTarget(v.slice(2)) : { kind: "yours", artifact: page.autosave.artifact, label: "your model" };
  try {
    await activate(target);
    status(`${target.kind === "gallery" ? target.name : "your model"} loaded`);
  } catch (e) {
    message(`Could not load that model: ${e.message}. ${page.model ? "The previous model is still loaded." : ""}`);
    renderPicker();
    page.ready = !!page.model;
    refresh();
  }
};

$("backend").onchange = async () => {
  // move the current model, weights and optimizer state, to the other backend
  const prev = page.model;
  if (!prev) return;
  try {
    await waitIdle();
    const ck = await prev.exportCheckpoint();
    const target = { ...page.current, kind: "yours", bytes: ck.bytes, label: "the model" };
    const cur = page.current;
    const backend = $("backend").value;
    const manifest = await loadManifest(artifactUrl(cur.artifact));
    const can = await checkArtifact(manifest);
    if (backend !== "auto" && !can[backend].ok) throw new Error(`cannot run this model on ${BACKEND_NAME[backend]}: ${can[backend].reason}`);
    await activate(target, { backend, reopen: true });   // the previous model is closed only once this one is open
    page.current = { ...cur };
    page.fit = null;
    measureSoon();
    status(`now on ${BACKEND_NAME[page.model.backend]}`);
  } catch (e) {
    message(`Could not switch the backend: ${e.message}. The model stays on ${BACKEND_NAME[page.model.backend]}.`);
    $("backend").value = page.backendChoice;
    page.ready = true;
    refresh();
  }
};

function galleryTarget(name) {
  const m = page.site.models.find((x) => x.name === name);
  return { kind: "gallery", name, artifact: m.artifact, label: m.title };
}

// ------------------------------------------------------------------ controls' state

function refresh() {
  const ready = page.ready && !!page.model;
  const tr = page.training, gen = page.generating, idle = ready && !tr && !gen;
  $("generate").disabled = !idle;
  $("gen-stop").disabled = !gen;
  const p = selectedPreset();
  $("train").disabled = !idle || !p || !p.artifact || page.preflightBlocked;
  $("continue").disabled = !idle;
  $("pause").disabled = !tr;
  $("stop").disabled = !tr;
  $("pause").textContent = tr && tr.paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", tr && tr.paused ? "true" : "false");
  $("download").disabled = !idle;
  $("upload").disabled = !idle;
  $("model-pick").disabled = !idle;
  $("backend").disabled = !idle;
}

// ------------------------------------------------------------------ generation

let stopGen = false;
$("gen-stop").onclick = () => { stopGen = true; };
$("generate").onclick = () => generate();
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("generate").disabled) generate(); });

async function generate() {
  const tClick = performance.now();
  const model = page.model;
  page.generating = true;
  stopGen = false;
  refresh();
  const prompt = $("prompt").value;
  $("out-prompt").textContent = prompt;
  const out = $("out-text");
  out.textContent = "";
  $("gen-stats").textContent = "";
  const topP = $("top-p").value === "" ? null : Number($("top-p").value);
  let firstMs = null, lastPaint = performance.now();
  try {
    const gen = model.generate(prompt, {
      maxNewTokens: Number($("max-new").value), temperature: Number($("temperature").value),
      topK: Number($("top-k").value) || null, topP, seed: Number($("gen-seed").value) || 0, kvCache: true,
    });
    const show = () => {
      const s = gen.stats;
      $("gen-stats").textContent = `${s.newTokens} tokens · ${s.newTokens > 1 ? s.tokensPerS.toFixed(1) : "–"} tokens/s (prompt excluded) · first token ${firstMs === null ? "–" : fmtMs(firstMs)} · ${s.promptTokens}-token prompt · KV cache · ${BACKEND_NAME[s.backend]}`;
    };
    for await (const piece of gen) {
      if (firstMs === null) firstMs = performance.now() - tClick;   // from the click: tokenizing and the prompt's prefill included
      out.textContent += piece;
      show();
      if (stopGen) break;
      // let the page paint: a frame at least every 50 ms, otherwise just yield the task
      if (performance.now() - lastPaint > 50) { await nextFrame(); lastPaint = performance.now(); } else await yieldTask();
    }
    show();
    page.lastGen = { ...gen.stats, tokenIds: gen.stats.tokenIds.slice(), firstTokenFromClickMs: firstMs, text: out.textContent, prompt };
  } catch (e) {
    handleError(e, "Generation failed");
  }
  page.generating = false;
  refresh();
}

function handleError(e, what) {
  if (page.model && page.model.executor.lost) return; // onDeviceLost says it and recovers
  const oom = /out of memory|could not allocate|Array buffer allocation|RangeError/i.test(e.message);
  message(`${what}: ${e.message}${oom ? " (out of memory: close other tabs or pick a smaller preset)" : ""}. The current model is still loaded.`);
}

// ------------------------------------------------------------------ presets, estimate, preflight

const selectedPreset = () => page.site && page.site.presets.find((p) => p.name === $("preset").value);

/** FLOPs of one run of a program: the matmuls (12·d² per layer per token), the tied lm
 * head (V·d), attention over the full window (2·T·d per layer per token), 2 per
 * multiply-add; a training step is forward + backward, about 3 forwards; decode_step is
 * one token at position 0. */
function stepFlops(cfg, batch, program = "train_step") {
  const { vocab: V, ctx: T, d, layers: L } = cfg;
  if (program === "decode_step") return 2 * (12 * d * d * L + V * d + 2 * L * d);
  const fwd = batch * T * 2 * (12 * d * d * L + V * d + 2 * L * T * d);
  return program === "train_step" ? 3 * fwd : fwd;
}

/** Overhead units of a program: its kernel launches on WebGPU (dispatch cost), one call on wasm. */
function overheadUnits(backend, launches, layers, refLayers) {
  if (backend !== "webgpu") return 1;
  return refLayers === undefined ? launches : launches * (layers + 2) / (refLayers + 2);
}

/** step_time = overhead + math: fit c (per overhead unit) and b (per FLOP) from the
 * warm-up's train_step and decode_step medians on the current model (decode_step is
 * nearly all overhead, train_step mostly math: the two separate well). */
function fitCost(m, model) {
  const cfg = model.config, B = model.batch, be = m.backend;
  const Ft = stepFlops(cfg, B, "train_step"), Fe = stepFlops(cfg, B, "decode_step");
  const nt = overheadUnits(be, m.launches.train_step), ne = overheadUnits(be, m.launches.decode_step);
  const det = nt * Fe - ne * Ft;
  let c = det ? (m.trainMs * Fe - m.decodeMs * Ft) / det : 0, b = det ? (nt * m.decodeMs - ne * m.trainMs) / det : m.trainMs / Ft;
  if (!(c >= 0 && b >= 0)) {
    // noise put one term below zero: keep the larger share (all math, or all overhead)
    if (!(b > 0)) { b = 0; c = m.trainMs / nt; } else { c = 0; b = m.trainMs / Ft; }
  }
  return { c, b, backend: be, layers: cfg.layers, launches: m.launches.train_step, measured: m, evalBatchMs: m.evalMs,
           config: cfg, batch: B, preset: model.settings.preset || "this model" };
}

function estimateStepMs(p) {
  const f = page.fit;
  if (!f) return null;
  const units = overheadUnits(f.backend, f.launches, p.config.layers, f.layers);
  return f.c * units + f.b * stepFlops(p.config, p.batch);
}

function renderPresets() {
  const sel = $("preset"), keep = sel.value || page.site.train_preset;
  sel.innerHTML = "";
  for (const p of page.site.presets) {
    const est = estimateStepMs(p);
    const o = new Option(`${p.name} — ${fmtCount(p.params)} params · ${p.train_bytes ? `${p.train_bytes_exact ? "" : "~"}${fmtBytes(p.train_bytes)}` : "?"} · ${est ? `~${fmtMs(est)}/step` : "step time: measuring"}${p.artifact ? "" : " · not in this bundle"}`, p.name);
    o.disabled = !p.artifact;
    sel.append(o);
  }
  sel.value = keep;
}

async function preflight() {
  const p = selectedPreset(), line = $("preflight");
  page.preflightBlocked = true;
  if (!p) return refresh();
  if (!p.artifact) {
    line.className = "bad";
    line.textContent = `${p.name} is not in this bundle: make the site with tgc bundle --train-preset ${p.name}.`;
  } else {
    const can = await checkArtifact(await loadManifest(artifactUrl(p.artifact)));
    const want = $("backend").value;
    const ok = want === "auto" ? can.wasm.ok || can.webgpu.ok : can[want].ok;
    if (!ok) {
      line.className = "bad";
      line.textContent = `This browser cannot train ${p.name}: ${want === "auto" ? `WebAssembly: ${can.wasm.reason}; WebGPU: ${can.webgpu.reason}` : can[want].reason}.`;
    } else {
      const dm = navigator.deviceMemory;
      line.className = "good";
      line.textContent = `✓ ${p.name} fits this browser: training needs ${fmtBytes(can.bytes.wasm)} of WebAssembly memory (${fmtBytes(can.bytes.webgpu)} of WebGPU buffers)${dm ? `; this device reports ${dm} GiB of RAM` : ""}.`;
      page.preflightBlocked = false;
    }
  }
  refresh();
}

function renderEstimate() {
  const p = selectedPreset(), f = page.fit, n = Number($("steps").value) || 0;
  if (!f || !p) return;
  const per = estimateStepMs(p), every = Number($("eval-every").value) || 0;
  const evals = every ? Math.floor(n / every) + (n % every ? 1 : 0) : 0;
  const evalMs = evals * 8 * f.evalBatchMs * (stepFlops(p.config, p.batch, "eval_loss") / Math.max(1, stepFlops(f.config, f.batch, "eval_loss")));
  const total = n * per + evalMs;
  const m = f.measured;
  const el = $("estimate");
  el.innerHTML = "";
  const head = document.createElement("strong");
  head.textContent = `Training ${p.name} for ${n.toLocaleString()} steps takes about ${fmtDuration(total)} on this machine`;
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = ` (${BACKEND_NAME[f.backend]}, ~${fmtMs(per)} a step). Measured here: ${fmtMs(m.trainMs)} a training step, ${fmtMs(m.evalMs)} an evaluation batch and ${fmtMs(m.decodeMs)} a decode step of ${f.preset} (medians of ${m.steps}); ` +
    `fit: ${f.c > 0 ? `${fmtMs(f.c)} fixed${f.backend === "webgpu" ? " per kernel launch" : " per step"}` : "no measurable fixed overhead"} + ${f.b > 0 ? `${(1 / f.b / 1e6).toFixed(2)} GFLOP/s of math` : "no measurable math term"}.`;
  el.append(head, detail);
  page.estimate = { preset: p.name, steps: n, stepMs: per, totalMs: total };
}

let measuring = null;
function measureSoon() {
  setTimeout(() => { measuring = measuring || measure().finally(() => { measuring = null; }); }, 300);
}

/** The warm-up: a few steps of the default training preset (site.train_preset) on the
 * current backend, on the open model when it is that artifact, else on a second model
 * opened for it and closed after (a large gallery model is not stepped, and generation
 * from it is not held up). */
async function measure() {
  await waitIdle();
  const model = page.model;
  if (!model || page.fit) return;
  const p = page.site.presets.find((x) => x.name === page.site.train_preset && x.artifact);
  const own = !p || artifactUrl(p.artifact) === model.base;
  $("estimate").textContent = `measuring this machine (a few training steps of ${own ? model.settings.preset || "this model" : p.name} on ${BACKEND_NAME[model.backend]})…`;
  let probe = model;
  try {
    if (!own) {
      probe = await openArtifact(p.artifact, { backend: model.backend, programs: ["train_step", "eval_loss", "decode_step"] });
      await probe.init(0);
    }
    const m = await probe.measure({ steps: model.backend === "webgpu" ? 2 : 3 });
    if (model !== page.model) return;
    page.fit = fitCost(m, probe);
    renderPresets();
    renderEstimate();
  } catch (e) {
    if (model.executor.lost) return;
    $("estimate").textContent = `Could not measure this machine: ${e.message}`;
  } finally {
    if (probe !== model) { closing.add(probe); await probe.close(); }
  }
}

$("preset").onchange = () => { renderEstimate(); preflight(); };
$("steps").oninput = renderEstimate;
$("eval-every").oninput = renderEstimate;

// ------------------------------------------------------------------ training

let uploadedCorpus = null;
$("corpus-file").onchange = async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    const text = await f.text();
    if (text.length < 1000) throw new Error(`${f.name} holds ${text.length} characters; a corpus needs at least a few thousand`);
    uploadedCorpus = { name: f.name, text };
    const o = new Option(`${f.name} (yours, ${fmtBytes(text.length)})`, `file:${f.name}`);
    $("corpus").append(o);
    $("corpus").value = o.value;
  } catch (err) {
    message(`That text file cannot be used: ${err.message}`);
  }
};

async function ensureCorpus(model) {
  const v = $("corpus").value;
  const name = v.startsWith("file:") ? uploadedCorpus.name : v;
  if (model.data && model.data.name === name) return;
  let text;
  if (v.startsWith("file:")) text = uploadedCorpus.text;
  else {
    const c = page.site.corpora.find((x) => x.name === v);
    if (!c) throw new Error("this site has no corpus: upload a text file, or bundle one with tgc bundle --corpus NAME");
    status(`fetching and tokenizing ${c.name}…`);
    const r = await fetch(c.file);
    if (!r.ok) throw new Error(`${c.file}: HTTP ${r.status}`);
    text = await r.text();
  }
  const info = await model.setCorpus(name, text);
  if (info.note) status(info.note);
}

$("train").onclick = async () => {
  const p = selectedPreset();
  const seed = Number($("train-seed").value) || 0, n = Number($("steps").value);
  try {
    await activate({ kind: "fresh", artifact: p.artifact, preset: p.name, seed, label: `fresh ${p.name}` });
    page.current = { kind: "yours", artifact: p.artifact, preset: p.name };
    page.model.configure({ seed, totalSteps: n, warmup: null, lr: Number($("lr").value) || 3e-4 });
    await trainLoop(n);
  } catch (e) {
    handleError(e, "Training could not start");
    page.ready = !!page.model;
    refresh();
  }
};

$("continue").onclick = async () => {
  const model = page.model, n = Number($("steps").value);
  if (!model.settings.totalSteps || model.settings.totalSteps < model.step + n) model.configure({ totalSteps: model.step + n });
  if (Number($("lr").value) > 0) model.configure({ lr: Number($("lr").value) });
  page.current = { ...page.current, kind: "yours", name: undefined };
  await trainLoop(n);
};

$("pause").onclick = () => {
  const tr = page.training;
  if (!tr) return;
  tr.paused = !tr.paused;
  if (!tr.paused && tr.resume) { tr.resume(); tr.resume = null; }
  refresh();
};
$("stop").onclick = () => {
  const tr = page.training;
  if (!tr) return;
  tr.stop = true;
  if (tr.resume) { tr.resume(); tr.resume = null; }
};

async function trainLoop(n) {
  const model = page.model;
  const tr = page.training = { model, target: model.step + n, paused: false, stop: false, ema: null, evalMs: null, lastSave: performance.now(), t0: performance.now(), pauses: 0 };
  refresh();
  const every = Math.max(1, Number($("eval-every").value) || 100);
  try {
    await ensureCorpus(model);
    localStorage.setItem("tgc.current", JSON.stringify({ kind: "yours" }));
    status(`training ${model.settings.preset} on ${BACKEND_NAME[model.backend]}, steps ${model.step + 1}–${tr.target}…`);
    while (model.step < tr.target && !tr.stop) {
      if (tr.paused) {
        tr.pauses += 1;
        status(`paused at step ${model.step}; saving…`);
        await autosave(model);
        status(`paused at step ${model.step} (autosaved): Resume continues, Stop ends the run`);
        page.pausedAt = model.step;
        if (tr.paused && !tr.stop) await new Promise((r) => { tr.resume = r; });
        if (!tr.stop) status(`training resumed at step ${model.step + 1}…`);
        continue;
      }
      const [r] = await model.train(1);
      tr.ema = tr.ema === null ? r.ms : 0.8 * tr.ema + 0.2 * r.ms;
      if (!Number.isFinite(r.loss)) { message(`The loss became ${r.loss} at step ${r.step}: training diverged and stopped (try a smaller learning rate or another seed).`); break; }
      if (model.step % every === 0 || model.step === tr.target) {
        const t0 = performance.now();
        tr.val = await model.evaluate();
        tr.evalMs = performance.now() - t0;
      }
      renderStats();
      drawChart();
      if (performance.now() - tr.lastSave > 30000) { await autosave(model); tr.lastSave = performance.now(); }
      await nextFrame();
    }
    await autosave(model);
    status(`${tr.stop ? "stopped" : "trained"} at step ${model.step} (autosaved) in ${fmtDuration(performance.now() - tr.t0)}`);
  } catch (e) {
    handleError(e, `Training stopped at step ${model.step}`);
  } finally {
    page.training = null;
    drawChart(true);
    renderStats();
    renderModelCard();
    refresh();
  }
}

function renderStats() {
  const model = page.model, tr = page.training;
  if (!model) return;
  const last = model.history[model.history.length - 1], val = model.valHistory[model.valHistory.length - 1];
  $("st-step").textContent = tr ? `${model.step} / ${tr.target}` : String(model.step);
  $("st-loss").textContent = last ? last[1].toFixed(4) : "–";
  $("st-val").textContent = val ? val[1].toFixed(4) : "–";
  if (tr && tr.ema) {
    $("st-tps").textContent = Math.round(model.batch * model.config.ctx / (tr.ema / 1000)).toLocaleString();
    const left = tr.target - model.step, every = Math.max(1, Number($("eval-every").value) || 100);
    const evals = Math.floor(tr.target / every) - Math.floor(model.step / every);
    $("st-eta").textContent = left > 0 ? fmtDuration(left * tr.ema + evals * (tr.evalMs || 0)) : "done";
  } else if (!tr) {
    $("st-eta").textContent = "–";
  }
}

// ------------------------------------------------------------------ loss chart (uPlot)

let chart = null, lastDraw = 0;
function chartData() {
  const m = page.model;
  const xs = m.history.map(([s]) => s), val = new Map(m.valHistory.map(([s, v]) => [s, v]));
  for (const s of val.keys()) if (!xs.includes(s)) xs.push(s);
  xs.sort((a, b) => a - b);
  const train = new Map(m.history);
  return [xs, xs.map((s) => train.get(s) ?? null), xs.map((s) => val.get(s) ?? null)];
}

function drawChart(force = false) {
  if (!page.model) return;
  const now = performance.now();
  if (!force && now - lastDraw < 250) return;
  lastDraw = now;
  const el = $("chart"), data = chartData();
  page.chartPoints = data[0].length;
  if (!chart) {
    chart = new uPlot({
      width: Math.max(200, el.clientWidth), height: 220, scales: { x: { time: false } }, legend: { live: false },
      series: [{ label: "step" }, { label: "train loss", stroke: "#1a5fb4", width: 1.5, spanGaps: true },
               { label: "val loss", stroke: "#d93025", width: 2, spanGaps: true, points: { show: true, size: 5 } }],
      axes: [{ label: "step" }, { label: "loss", size: 50 }],
    }, data, el);
    new ResizeObserver(() => chart.setSize({ width: Math.max(200, el.clientWidth), height: 220 })).observe(el);
  } else {
    chart.setData(data);
  }
}

// ------------------------------------------------------------------ checkpoints

$("download").onclick = async () => {
  try {
    const ck = await page.model.exportCheckpoint();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(ck.blob());
    a.download = ck.name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    status(`downloaded ${ck.name} (${fmtBytes(ck.bytes.length)})`);
  } catch (e) {
    handleError(e, "Download failed");
  }
};

$("upload").onchange = async (e) => {
  const f = e.target.files[0];
  e.target.value = "";
  if (!f) return;
  const model = page.model;
  page.ready = false;
  refresh();
  try {
    const info = await model.importCheckpoint(f);
    page.current = { ...page.current, kind: "yours", name: undefined };
    localStorage.setItem("tgc.current", JSON.stringify({ kind: "yours" }));
    await autosave(model);
    renderModelCard();
    drawChart(true);
    renderStats();
    status(`uploaded ${f.name}: step ${info.step}${info.resumable ? ", with its optimizer state (training continues where it stopped)" : ", weights only"}`);
    page.uploaded = { name: f.name, ...info };
  } catch (err) {
    message(`Upload refused (${f.name}): ${err.message}. The current model is still loaded.`);
  }
  page.ready = true;
  refresh();
};

// ------------------------------------------------------------------ test hooks

page.loseDevice = () => {   // simulate a lost GPU device (tests): what a driver reset does
  if (!page.model || page.model.backend !== "webgpu") throw new Error("the current model is not on WebGPU");
  page.model.executor.device.destroy();
};

// ------------------------------------------------------------------ start

async function main() {
  if (params.has("noload")) return;
  if (params.get("backend")) $("backend").value = params.get("backend");
  try {
    page.site = await (await fetch("site.json")).json();
  } catch (e) {
    message(`site.json is missing or corrupt: ${e.message}`);
    return;
  }
  const site = page.site;
  site.models = site.models || [];
  site.presets = site.presets || [];
  for (const c of site.corpora || []) $("corpus").append(new Option(`${c.name} (${fmtBytes(c.bytes)})`, c.name));
  page.caps = await capabilities();
  renderPills(page.caps);
  watchPressure();
  renderPresets();
  page.autosave = await readAutosave();
  renderAutosave();
  // what to show: the model in use before the reload (autosave), else the default gallery model
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem("tgc.current") || "null"); } catch { /* none */ }
  const targets = [];
  if (page.autosave && siteArtifacts().has(page.autosave.artifact) && (!saved || saved.kind === "yours")) targets.push({ kind: "yours", artifact: page.autosave.artifact, label: "your autosaved model" });
  if (saved && saved.kind === "gallery" && site.models.some((m) => m.name === saved.name)) targets.push(galleryTarget(saved.name));
  if (site.default_model) targets.push(galleryTarget(site.default_model));
  targets.push({ kind: "fresh", artifact: site.artifact, preset: site.preset, seed: 0, label: `fresh ${site.preset}` });
  for (const t of targets) {
    try {
      const t0 = performance.now();
      await activate(t);
      page.restored = t.kind === "yours" ? { ...page.autosave } : null;
      status(`${t.kind === "yours" ? `restored your autosaved model (step ${page.model.step})` : t.kind === "gallery" ? `${t.label} loaded: type a prompt and Generate` : "fresh weights: train a model to get text"} · ${BACKEND_NAME[page.model.backend]}${page.model.info.pipelineMs !== undefined ? `, ${page.model.info.pipelines} pipelines in ${fmtMs(page.model.info.pipelineMs)}` : ""} · ready in ${fmtMs(performance.now() - t0)}`);
      break;
    } catch (e) {
      message(`Could not load ${t.label}: ${e.message}`);
    }
  }
  if (!page.model) return;
  await preflight();
  measureSoon();
}

main();
