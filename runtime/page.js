// The minimal page `tgc bundle` writes: capabilities, load (site.json says what the site
// holds), streaming generation, a few training steps, checkpoint export and import.
// Everything it does goes through the library API in tgc.js; tests drive it and read
// window.tgcPage. (The full page is issue 11.)

import { capabilities, checkArtifact, openArtifact, gib } from "./tgc.js";
import { loadManifest } from "./manifest.js";

const $ = (id) => document.getElementById(id);
const page = (window.tgcPage = { model: null, site: null, caps: null, ready: false, error: null, events: [] });

function status(msg, error = false) {
  $("status").textContent = msg;
  $("status").className = error ? "error" : "";
  if (error) page.error = msg;
  page.events.push({ t: performance.now(), msg, error });
}

function enable(on) {
  for (const id of ["generate", "init", "train", "evaluate", "export", "import"]) $(id).disabled = !on;
}

async function main() {
  if (new URLSearchParams(location.search).has("noload")) return; // tests drive the library themselves
  try {
    page.site = await (await fetch("site.json")).json();
  } catch (e) {
    status(`site.json is missing or corrupt: ${e.message}`, true);
    return;
  }
  const site = page.site;
  for (const c of site.corpora || []) $("corpus").append(new Option(`${c.name} (${(c.bytes / 2 ** 20).toFixed(1)} MiB)`, c.name));
  page.caps = await capabilities();
  const c = page.caps;
  const li = (ok, text) => `<li><span class="${ok ? "ok" : "no"}">${ok ? "✓" : "✗"}</span> ${text}</li>`;
  $("caps").innerHTML = [
    li(c.webgpu.ok, `WebGPU: ${c.webgpu.ok ? `${c.webgpu.vendor} ${c.webgpu.architecture}${c.webgpu.software ? " (software adapter: slow)" : ""}` : c.webgpu.reason}`),
    li(c.memory64.ok, `WebAssembly Memory64: ${c.memory64.ok ? "yes" : c.memory64.reason}`),
    li(c.crossOriginIsolated, `cross-origin isolated: ${c.crossOriginIsolated ? "yes" : "no (serve with tgc serve for COOP/COEP)"}`),
  ].join("");
  $("reload").onclick = () => load();
  await load();
}

async function load() {
  enable(false);
  page.ready = false;
  page.error = null;
  const site = page.site;
  if (page.model) { await page.model.close(); page.model = null; }
  try {
    const manifest = await loadManifest(new URL(site.artifact, location.href));
    const m = manifest.model;
    $("model-line").textContent = `${m.preset || "custom"}: ${m.config.layers} layers, ${m.config.heads} heads, d ${m.config.d}, context ${m.config.ctx}, ${m.param_count.toLocaleString()} parameters`;
    // memory first: a model this browser cannot hold gets a message, not a crash
    const can = await checkArtifact(manifest);
    page.check = can;
    const want = $("backend").value;
    if (!can.wasm.ok && !can.webgpu.ok) {
      status(`This browser cannot run this model. WebAssembly: ${can.wasm.reason}. WebGPU: ${can.webgpu.reason}.`, true);
      return;
    }
    if (want !== "auto" && !can[want].ok) {
      status(`Cannot run this model on ${want}: ${can[want].reason}`, true);
      return;
    }
    status(`loading (${gib(can.bytes.wasm)} WebAssembly / ${gib(can.bytes.webgpu)} WebGPU)…`);
    const t0 = performance.now();
    const model = await openArtifact(site.artifact, { backend: want, tokenizer: site.tokenizer });
    page.model = model;
    if (site.checkpoint) {
      const r = await fetch(site.checkpoint);
      if (!r.ok) throw new Error(`${site.checkpoint}: HTTP ${r.status}`);
      const info = await model.importCheckpoint(new Uint8Array(await r.arrayBuffer()));
      status(`checkpoint loaded (step ${info.step})`);
    } else {
      await model.init(Number($("train-seed").value) || 0);
    }
    const i = model.info;
    status(`ready: ${i.backend}${i.pipelineMs !== undefined ? `, ${i.pipelines} pipelines in ${i.pipelineMs.toFixed(0)} ms` : ""}${i.sha256 ? `, model.wasm ${i.sha256.slice(0, 12)}…, ${gib(i.memoryBytes)} 64-bit memory` : ""} (${(performance.now() - t0).toFixed(0)} ms)${site.checkpoint ? `, checkpoint at step ${model.step}` : ", fresh weights"}`);
    page.ready = true;
    enable(true);
  } catch (e) {
    status(`Could not load the model: ${e.message}`, true);
  }
}

let stopFlag = false;
$("stop").onclick = () => { stopFlag = true; };
$("generate").onclick = async () => {
  const model = page.model;
  $("generate").disabled = true;
  $("stop").disabled = false;
  stopFlag = false;
  $("output").textContent = $("prompt").value;
  const gen = model.generate($("prompt").value, {
    maxNewTokens: Number($("max-new").value), temperature: Number($("temperature").value),
    topK: Number($("top-k").value) || null, seed: Number($("gen-seed").value) || 0,
  });
  try {
    for await (const piece of gen) {
      $("output").textContent += piece;
      if (stopFlag) break;
    }
    const s = gen.stats;
    $("gen-stats").textContent = `${s.newTokens} new tokens, ${s.tokensPerS.toFixed(1)} tokens/s, first token ${s.firstTokenMs.toFixed(0)} ms (${s.backend})`;
  } catch (e) {
    status(`generation failed: ${e.message}`, true);
  }
  $("generate").disabled = false;
  $("stop").disabled = true;
};

async function ensureCorpus() {
  const model = page.model, name = $("corpus").value;
  if (model.data && model.data.name === name) return;
  const c = page.site.corpora.find((x) => x.name === name);
  if (!c) throw new Error("this site has no corpus (bundle one with tgc bundle --corpus NAME)");
  status(`tokenizing ${name}…`);
  const text = await (await fetch(c.file)).text();
  await model.setCorpus(name, text);
}

$("init").onclick = async () => {
  await page.model.init(Number($("train-seed").value) || 0);
  $("train-log").textContent = "";
  status("fresh weights");
};

$("train").onclick = async () => {
  enable(false);
  try {
    await ensureCorpus();
    const model = page.model, n = Number($("steps").value);
    if (model.step === 0) model.configure({ seed: Number($("train-seed").value) || 0, totalSteps: n });
    else if (model.settings.totalSteps < model.step + n) model.configure({ totalSteps: model.step + n });
    status(`training ${n} steps on ${model.backend}…`);
    await model.train(n, { onStep: (r) => { $("train-log").textContent += `step ${r.step}: loss ${r.loss.toFixed(4)} (${r.ms.toFixed(0)} ms)\n`; } });
    status(`trained to step ${model.step}`);
  } catch (e) {
    status(`training failed: ${e.message}`, true);
  }
  enable(true);
};

$("evaluate").onclick = async () => {
  enable(false);
  try {
    await ensureCorpus();
    const v = await page.model.evaluate();
    $("train-log").textContent += `step ${page.model.step}: validation loss ${v.toFixed(4)}\n`;
  } catch (e) {
    status(`evaluation failed: ${e.message}`, true);
  }
  enable(true);
};

$("export").onclick = async () => {
  const ck = await page.model.exportCheckpoint();
  const a = $("download");
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(ck.blob());
  a.download = ck.name;
  a.textContent = `download ${ck.name} (${(ck.bytes.length / 2 ** 20).toFixed(1)} MiB)`;
  a.hidden = false;
  a.click();
};

$("import").onchange = async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    const info = await page.model.importCheckpoint(f);
    status(`imported ${f.name}: step ${info.step}${info.resumable ? ", resumable" : ", weights only"}`);
  } catch (err) {
    status(`import failed: ${err.message}`, true);
  }
};

main();
