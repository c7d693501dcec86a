// tgc's browser runtime: open a compiled artifact, train, evaluate, generate, export and
// import checkpoints -- the same manifest.json, model.wasm and WGSL kernels the Python
// runtimes run, the same host RNG, batches, sampling and checkpoint files.
//
//   import { openArtifact, capabilities } from "./runtime/tgc.js";
//   const model = await openArtifact("artifact/", { backend: "auto", tokenizer: "tokenizer.json" });
//   await model.init(0);                              // weights from the host RNG
//   await model.setCorpus("shakespeare", text);
//   const losses = await model.train(20, { onStep }); // [{step, loss, ms}]
//   const val = await model.evaluate();
//   for await (const piece of model.generate("ROMEO:", { maxNewTokens: 100, temperature: 0 })) ...
//   const { bytes, name } = await model.exportCheckpoint();   // one .zip: a GPT-2 directory
//   await model.importCheckpoint(bytes);
//
// docs/browser.md is the manual. Leaves out: the page (index.html, page.js) and compiling
// (the artifact comes from `tgc bundle` / `tgc compile`).

import { Tokenizer, StreamDecoder } from "./tokenizer.js";
import { Dataset } from "./data.js";
import { loadManifest } from "./manifest.js";
import { normal, uniform } from "./rng.js";
import { sample } from "./sample.js";
import { numel } from "./executor.js";
import { WasmExecutor } from "./wasm.js";
import { WebGPUExecutor, gpuAdapter } from "./webgpu.js";
import { memory64Support, gib } from "./wasm-common.js";
import { packCheckpoint, checkpointFiles, readCheckpoint } from "./checkpoint.js";

export { Tokenizer, StreamDecoder, Dataset, sample };
export * as rng from "./rng.js";

export const DEFAULT_EVAL_BATCHES = 8;

/** What this browser offers: WebGPU (adapter, limits), Memory64, isolation. */
export async function capabilities() {
  const { adapter, reason } = await gpuAdapter();
  const m64 = memory64Support();
  const info = adapter ? (adapter.info || {}) : {};
  return {
    webgpu: { ok: !!adapter, reason, vendor: info.vendor || "", architecture: info.architecture || "", description: info.description || "",
              features: adapter ? [...adapter.features] : [],
              software: !!adapter && isSoftwareAdapter(adapter),
              limits: adapter ? Object.fromEntries(["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize", "maxStorageBuffersPerShaderStage", "maxComputeInvocationsPerWorkgroup"].map((k) => [k, adapter.limits[k]])) : null },
    memory64: m64,
    crossOriginIsolated: !!globalThis.crossOriginIsolated,
    deviceMemoryGiB: navigator.deviceMemory ?? null,
    userAgent: navigator.userAgent,
  };
}

function isSoftwareAdapter(adapter) {
  const i = adapter.info || {};
  return !!(adapter.isFallbackAdapter || i.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|software/i.test(`${i.vendor} ${i.architecture} ${i.description} ${i.device}`));
}

/** Whether this browser can run the artifact on each backend, before allocating anything. */
export async function checkArtifact(manifest) {
  const out = { wasm: WasmExecutor.check(manifest), webgpu: { ok: false, reason: "" } };
  const { adapter, reason } = await gpuAdapter();
  if (!adapter) out.webgpu = { ok: false, reason };
  else if (!manifest.kernels) out.webgpu = { ok: false, reason: "the artifact has no WGSL kernels" };
  else {
    const probs = WebGPUExecutor.fits(manifest, adapter.limits);
    out.webgpu = probs.length ? { ok: false, reason: `this model does not fit the adapter's limits: ${probs.join("; ")}` } : { ok: true, reason: "", software: isSoftwareAdapter(adapter) };
  }
  const bytes = manifest.buffers.reduce((a, b) => a + b.size, 0);
  out.bytes = { wasm: Number(manifest.wasm ? manifest.wasm.memory_bytes : 0), webgpu: bytes };
  return out;
}

function resolveUrl(u) { return new URL(u, globalThis.location ? location.href : undefined).href; }

async function fetchJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

/** Open the artifact directory at `url` ("artifact/" or a full URL) on a backend.
 * opts: backend "auto" | "webgpu" | "wasm"; tokenizer: a Tokenizer, tokenizer.json's URL
 * or its parsed JSON (default: the byte tokenizer); validate (default true); log;
 * programs: on WebGPU, the programs whose pipelines are made at open (default all; any
 * other is prepared on its first run: model.executor.prepare([...]) does it ahead). */
export async function openArtifact(url, opts = {}) {
  const base = resolveUrl(url.endsWith("/") ? url : `${url}/`);
  const log = opts.log || (() => {});
  const manifest = await loadManifest(base, { validate: opts.validate !== false, schemaUrl: opts.schemaUrl });
  const can = await checkArtifact(manifest);
  let backend = opts.backend || "auto";
  if (backend === "auto") {
    // WebGPU on a real GPU; WebAssembly on a software adapter (SwiftShader) or none
    backend = can.webgpu.ok && !(can.webgpu.software && can.wasm.ok) ? "webgpu" : can.wasm.ok ? "wasm" : can.webgpu.ok ? "webgpu" : null;
    if (!backend) throw new Error(`this browser cannot run this model: WebGPU: ${can.webgpu.reason}; WebAssembly: ${can.wasm.reason}`);
  }
  if (!["webgpu", "wasm"].includes(backend)) throw new Error(`unknown backend ${backend}: use auto, webgpu or wasm`);
  if (!can[backend].ok) throw new Error(`cannot run this model on ${backend}: ${can[backend].reason}`);
  const t0 = performance.now();
  const executor = backend === "webgpu" ? await WebGPUExecutor.open(manifest, base, { programs: opts.programs }) : await WasmExecutor.open(manifest, base);
  log(`${backend} ready in ${(performance.now() - t0).toFixed(0)} ms`);
  let tok = opts.tokenizer;
  if (!tok) tok = Tokenizer.byte();
  else if (typeof tok === "string") tok = new Tokenizer(await fetchJSON(resolveUrl(tok)));
  else if (!(tok instanceof Tokenizer)) tok = new Tokenizer(tok);
  let source = null;
  try { const r = await fetch(new URL("model.tg", base)); if (r.ok) source = await r.text(); } catch { /* optional */ }
  const model = new Model(manifest, executor, tok, { base, source, log });
  return model;
}

export class Model {
  constructor(manifest, executor, tokenizer, { base, source, log }) {
    this.manifest = manifest;
    this.executor = executor;
    this.backend = executor.backend;
    this.base = base;
    this.source = source;
    this.log = log;
    const mc = manifest.model.config;
    this.hfTemplate = manifest.model.hf_config || null;  // a family other than GPT-2 (tgc/family.py)
    this.config = this.hfTemplate ? { ...mc }
      : { ...mc, activation: mc.activation || (source && /\bgelu_tanh\(/.test(source) ? "gelu_tanh" : "gelu"), eps: mc.eps ?? epsFromSource(source) };
    this.batch = manifest.model.batch;
    this.setTokenizer(tokenizer);
    const tr = manifest.model.train || {};
    this.settings = { preset: manifest.model.preset, seed: 0, lr: tr.lr ?? 3e-4, warmup: null, totalSteps: null, batch: this.batch, tokenizer: this.tokenizer.kind };
    this.step = 0;
    this.history = [];
    this.valHistory = [];
    this.data = null;
    this.eosTokenId = null;
    this._lock = Promise.resolve();
    this.paramNames = manifest.tensors.filter((t) => t.role === "parameter").map((t) => t.name);
    this.momentNames = manifest.tensors.filter((t) => t.role === "optimizer_state").map((t) => t.name);
  }

  get info() { return { ...this.executor.info, backend: this.backend, preset: this.manifest.model.preset, config: this.config, batch: this.batch, params: this.manifest.model.param_count, step: this.step, tokenizer: this.tokenizer.kind }; }

  setTokenizer(tok) {
    if (tok.vocabSize !== this.config.vocab) throw new Error(`the tokenizer has ${tok.vocabSize} tokens but the model's vocabulary is ${this.config.vocab}`);
    this.tokenizer = tok;
  }

  /** Run fn with the executor to itself (train, generate and export never interleave). */
  _exclusive(fn) {
    const run = this._lock.then(fn, fn);
    this._lock = run.catch(() => {});
    return run;
  }

  /** Parameters from their init rules and the host RNG (tgc/runtime/base.py::initial_state);
   * AdamW moments and KV caches zero; the step back to 0. */
  init(seed = 0) {
    return this._exclusive(async () => {
      for (const t of this.manifest.tensors) {
        const n = numel(t.shape);
        if (t.role === "parameter") await this.executor.write(t.name, initValue(t, seed, n));
        else if (t.role === "optimizer_state" || t.role === "kv_cache") await this.executor.write(t.name, new Float32Array(n));
      }
      this.settings.seed = seed;
      this.resumeDigest = null;
      this.step = 0;
      this.history = [];
      this.valHistory = [];
    });
  }

  /** Tokenize a corpus's text with the model's tokenizer: the batches train() draws. */
  async setCorpus(name, text) {
    this.data = await Dataset.fromText(name, text, this.tokenizer, this.config.ctx);
    this.settings.corpus = name;
    const out = { name, train: this.data.train.length, val: this.data.val.length, digest: this.data.digest };
    if (this.resumeDigest && this.resumeDigest !== this.data.digest) {
      out.note = `corpus ${name} differs from the one the checkpoint was trained on: batches will differ`;
    }
    return out;
  }

  /** Schedule settings (as `tgc train`): seed, lr (peak), totalSteps (the schedule's
   * length), warmup (default min(warmup_steps, max(1, totalSteps / 10))). */
  configure({ seed, lr, totalSteps, warmup } = {}) {
    if (seed !== undefined) this.settings.seed = seed;
    if (lr !== undefined) this.settings.lr = lr;
    if (totalSteps !== undefined) this.settings.totalSteps = totalSteps;
    if (warmup !== undefined) this.settings.warmup = warmup;
    return this.settings;
  }

  _schedule(n) {
    const s = this.settings;
    const total = s.totalSteps ?? Math.max(this.step + n, 1);
    const warm = s.warmup ?? Math.min((this.manifest.model.train || {}).warmup_steps ?? 100, Math.max(1, Math.floor(total / 10)));
    return { total, warm };
  }

  _uniforms(values) {
    const f = this.manifest.uniforms.fields;
    return Object.fromEntries(Object.entries(values).filter(([k]) => k in f));
  }

  /** n training steps from the current step; onStep({step, loss, ms}) after each. */
  train(n, { onStep } = {}) {
    return this._exclusive(async () => {
      if (!this.data) throw new Error("no corpus: call setCorpus(name, text) first");
      const { total, warm } = this._schedule(n);
      this.settings.totalSteps = total;
      this.settings.warmup = warm;
      const T = this.config.ctx, B = this.batch, s = this.settings;
      const out = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        const { idx, targets } = this.data.batch(s.seed, this.step + 1, B, T);
        const r = await this.executor.run("train_step", {
          inputs: { idx, targets },
          uniforms: this._uniforms({ step: this.step + 1, lr: s.lr, warmup: warm, total_steps: total }),
          read: ["loss"],
        });
        this.step += 1;
        const loss = r.loss[0];
        const rec = { step: this.step, loss, ms: performance.now() - t0 };
        this.history.push([this.step, loss]);
        out.push(rec);
        if (onStep) await onStep(rec);
        if (!Number.isFinite(loss)) break;
      }
      return out;
    });
  }

  /** Mean eval_loss over the fixed validation batches (stream "val"), as `tgc train` logs. */
  evaluate({ batches = DEFAULT_EVAL_BATCHES, record = true } = {}) {
    return this._exclusive(async () => {
      if (!this.data) throw new Error("no corpus: call setCorpus(name, text) first");
      let sum = 0;
      for (let i = 0; i < batches; i++) {
        const { idx, targets } = this.data.valBatch(this.settings.seed, i, this.batch, this.config.ctx);
        sum += (await this.executor.run("eval_loss", { inputs: { idx, targets }, read: ["loss"] })).loss[0];
      }
      const v = sum / batches;
      if (record) this.valHistory.push([this.step, v]);
      return v;
    });
  }

  /** The logits `forward` gives for a whole (padded) window of token ids: [ctx, vocab]. */
  forward(ids) {
    return this._exclusive(async () => {
      const T = this.config.ctx, tokens = new Int32Array(T);
      tokens.set(ids.slice(-T));
      return (await this.executor.run("forward", { inputs: { tokens }, read: ["logits"] })).logits;
    });
  }

  /** Stream new text after `prompt` (tgc/generate.py's rule, window and sampling):
   *   for await (const piece of model.generate(prompt, opts)) ...
   * opts: maxNewTokens (200), temperature (0.8; 0 = greedy), topK, topP, seed (0),
   * kvCache (true), slide (true). The iterator's `stats` fills in as it runs. */
  generate(prompt = "", opts = {}) {
    const o = { maxNewTokens: 200, temperature: 0.8, topK: null, topP: null, seed: 0, kvCache: true, slide: true, ...opts };
    if (!(o.maxNewTokens >= 0)) throw new Error(`maxNewTokens must be >= 0, got ${o.maxNewTokens}`);
    if (!(o.temperature >= 0)) throw new Error(`temperature must be >= 0, got ${o.temperature}`);
    if (o.topP != null && !(o.topP > 0 && o.topP <= 1)) throw new Error(`topP must be in (0, 1], got ${o.topP}`);
    // tokensPerS counts the tokens after the first over the time after it: the prompt's
    // prefill (which gives the first token) is firstTokenMs, never part of the rate
    const stats = { promptTokens: 0, newTokens: 0, firstTokenMs: 0, totalMs: 0, tokensPerS: 0, tokenIds: [], backend: this.backend, kvCache: o.kvCache };
    const self = this;
    let release;
    const gen = (async function* () {
      await new Promise((resolve) => {
        self._exclusive(() => new Promise((done) => { release = done; resolve(); }));
      });
      try { yield* self._generate(prompt, o, stats); } finally { release(); }
    })();
    gen.stats = stats;
    return gen;
  }

  async *_generate(prompt, o, stats) {
    const ex = this.executor, tok = this.tokenizer, ctx = this.config.ctx, V = this.config.vocab;
    let ids = tok.encode(prompt);
    if (!ids.length) ids = tok.encode("\n");
    stats.promptTokens = ids.length;
    const t0 = performance.now();
    const windowLogits = async (tokens, start) => {
      const w = tokens.slice(start);
      const padded = new Int32Array(ctx);
      padded.set(w);
      if (o.kvCache) return (await ex.run("prefill", { inputs: { tokens: padded }, uniforms: this._uniforms({ len: w.length }), read: ["logits"] })).logits;
      const all = (await ex.run("forward", { inputs: { tokens: padded }, read: ["logits"] })).logits;
      return all.subarray((w.length - 1) * V, w.length * V);
    };
    const tokens = ids.slice();
    let start = Math.max(0, tokens.length - ctx);
    let logits = await windowLogits(tokens, start);
    const dec = new StreamDecoder(tok);
    for (let i = 0; i < o.maxNewTokens; i++) {
      const u = uniform(o.seed, "sample", 1, i)[0];
      const nxt = sample(logits, o.temperature, o.topK, o.topP, u);
      tokens.push(nxt);
      stats.tokenIds.push(nxt);
      stats.newTokens = i + 1;
      const now = performance.now();
      if (i === 0) stats.firstTokenMs = now - t0;
      stats.totalMs = now - t0;
      stats.tokensPerS = decodeRate(stats);
      if (nxt === this.eosTokenId) break; // end of text (config.json's eos_token_id): counted, not printed
      const piece = dec.push(nxt);
      if (piece) yield piece;
      if (i + 1 === o.maxNewTokens) break;
      if (tokens.length - start > ctx) { // the window is full: slide by half, or stop
        if (!o.slide) break;
        start = tokens.length - Math.floor(ctx / 2);
        logits = await windowLogits(tokens, start);
      } else if (o.kvCache) {
        const pos = tokens.length - 1 - start;
        logits = (await ex.run("decode_step", { inputs: { token: new Int32Array([nxt]) }, uniforms: this._uniforms({ pos }), read: ["logits"] })).logits;
      } else {
        logits = await windowLogits(tokens, start);
      }
    }
    const rest = dec.flush();
    stats.tokensPerS = decodeRate(stats);
    if (rest) yield rest;
  }

  /** The warm-up behind the training-time estimate: `steps` timed runs each of train_step,
   * eval_loss and decode_step (little math, as many launches as a forward pass: the
   * overhead probe) on random tokens, after one untimed run each (which on WebGPU creates
   * the pipelines); medians in ms. The parameters, moments and KV caches are read before
   * and written back after, so the model is as it was. */
  measure({ steps = 3 } = {}) {
    return this._exclusive(async () => {
      const keep = await this._readState(true);
      const T = this.config.ctx, B = this.batch, V = this.config.vocab;
      const rand = () => Int32Array.from({ length: B * T }, () => Math.floor(Math.random() * V));
      const time = async (program, uniforms) => {
        const ms = [];
        const decode = program === "decode_step";
        for (let i = 0; i <= steps; i++) {
          const t0 = performance.now();
          const inputs = decode ? { token: new Int32Array([Math.floor(Math.random() * V)]) } : { idx: rand(), targets: rand() };
          await this.executor.run(program, { inputs, uniforms: this._uniforms(uniforms), read: [decode ? "logits" : "loss"] });
          if (i) ms.push(performance.now() - t0);
        }
        return ms.sort((a, b) => a - b)[ms.length >> 1];
      };
      try {
        const trainMs = await time("train_step", { step: 1, lr: 0, warmup: 1, total_steps: 1 });
        const evalMs = await time("eval_loss", {});
        const decodeMs = await time("decode_step", { pos: 0 });
        const launches = (p) => this.manifest.programs[p].launches.length;
        return { trainMs, evalMs, decodeMs, steps, backend: this.backend,
                 launches: { train_step: launches("train_step"), eval_loss: launches("eval_loss"), decode_step: launches("decode_step") } };
      } finally {
        for (const [n, t] of Object.entries(keep)) await this.executor.write(n, t.data);
        for (const t of this.manifest.tensors) if (t.role === "kv_cache") await this.executor.write(t.name, new Float32Array(numel(t.shape)));
      }
    });
  }

  /** Every parameter (and with `moments`, every AdamW moment) as {name: {shape, data}}. */
  readState({ moments = false } = {}) {
    return this._exclusive(() => this._readState(moments));
  }

  async _readState(moments) {
    const out = {};
    for (const n of moments ? [...this.paramNames, ...this.momentNames] : this.paramNames) {
      out[n] = { shape: this.executor.tensor(n).shape, data: await this.executor.read(n) };
    }
    return out;
  }

  /** The checkpoint as one .zip (a Hugging Face GPT-2 directory in a folder):
   * {bytes, name, blob(), files}. weightsOnly leaves out the optimizer and trainer state. */
  exportCheckpoint({ weightsOnly = false, folder } = {}) {
    return this._exclusive(async () => {
      const all = await this._readState(!weightsOnly);
      const params = Object.fromEntries(this.paramNames.map((n) => [n, all[n]]));
      const optimizer = weightsOnly ? null : Object.fromEntries(this.momentNames.map((n) => [n, all[n]]));
      const s = this.settings, tr = this.manifest.model.train || {};
      const { total, warm } = this._schedule(0);
      const B = this.batch;
      const tgc = {
        version: this.manifest.tgc_version || "browser", preset: s.preset, batch: B, step: this.step, corpus: s.corpus ?? null,
        tokenizer: this.tokenizer.kind, model_origin: this.manifest.model.file || "gpt.tg", backend: `browser-${this.backend}`,
        train: { beta1: tr.beta1, beta2: tr.beta2, eps: tr.eps, weight_decay: tr.weight_decay, grad_clip: tr.grad_clip, lr: s.lr, warmup: warm, total_steps: total, seed: s.seed },
      };
      const state = weightsOnly ? null : {
        preset: s.preset, corpus: s.corpus ?? null, tokenizer: this.tokenizer.kind, seed: s.seed, lr: s.lr, batch: B, warmup: warm,
        step: this.step, total_steps: total, corpus_digest: this.data ? this.data.digest : null,
        data: { stream: "batches", next_counter: this.step * B, rows_per_step: B },
        rng: { batches: this.step * B, val: DEFAULT_EVAL_BATCHES * B },
        history: this.history, val_history: this.valHistory,
      };
      const p = packCheckpoint({
        folder: folder || `tgc-${s.preset || "model"}-step${this.step}`, params, optimizer,
        config: { ...this.config, eos_token_id: this.eosTokenId }, tgc,
        tokenizerJSON: this.tokenizer.toJSON(), tokenizerKind: this.tokenizer.kind, source: this.source, state,
        template: this.hfTemplate,
      });
      p.blob = () => new Blob([p.bytes], { type: "application/zip" });
      return p;
    });
  }

  /** Load a checkpoint (.zip bytes, a File, or {name: bytes}) into this model: weights,
   * and where present the AdamW moments, step, schedule and history, so train() continues
   * as `tgc train --resume` does. Its config must be this artifact's. */
  importCheckpoint(input) {
    return this._exclusive(async () => {
      if (typeof Blob !== "undefined" && input instanceof Blob) input = new Uint8Array(await input.arrayBuffer());
      const ck = readCheckpoint(checkpointFiles(input), this.hfTemplate, this.config);
      const c = ck.config, m = this.config;
      for (const k of ["vocab", "ctx", "d", "heads", "layers"]) {
        if (c[k] !== m[k]) throw new Error(`the checkpoint is for another model: its ${k} is ${c[k]}, this artifact's is ${m[k]} (bundle its preset to load it)`);
      }
      if (!this.hfTemplate && (c.activation !== m.activation || Math.abs(c.eps - m.eps) > 1e-12)) throw new Error(`the checkpoint's model (${c.activation}, eps ${c.eps}) differs from this artifact's (${m.activation}, eps ${m.eps})`);
      for (const n of this.paramNames) {
        const t = ck.params[n], want = this.executor.tensor(n).shape;
        if (!t) throw new Error(`model.safetensors is missing ${n}`);
        if (t.shape.join(",") !== want.join(",")) throw new Error(`tensor ${n} has shape [${t.shape}], the model needs [${want}]`);
      }
      const extra = Object.keys(ck.params).filter((n) => !this.paramNames.includes(n));
      if (extra.length) throw new Error(`model.safetensors has unexpected tensor(s), e.g. ${extra[0]}`);
      let tok = this.tokenizer;
      if (ck.tokenizerJSON) tok = new Tokenizer(ck.tokenizerJSON, ck.tokenizerKind);
      if (tok.vocabSize !== c.vocab) throw new Error(`tokenizer.json has ${tok.vocabSize} tokens but the model's vocab_size is ${c.vocab}`);
      if (ck.optimizer) for (const n of this.momentNames) if (!ck.optimizer[n]) throw new Error(`optimizer.safetensors is missing ${n}`);
      for (const n of this.paramNames) await this.executor.write(n, ck.params[n].data);
      for (const t of this.manifest.tensors) {
        if (t.role === "optimizer_state") await this.executor.write(t.name, ck.optimizer ? ck.optimizer[t.name].data : new Float32Array(numel(t.shape)));
        else if (t.role === "kv_cache") await this.executor.write(t.name, new Float32Array(numel(t.shape)));
      }
      const retokenize = tok !== this.tokenizer;
      this.eosTokenId = Number.isInteger(ck.hf.eos_token_id) ? ck.hf.eos_token_id : null;
      this.tokenizer = tok;
      const st = ck.state;
      this.step = st ? st.step : 0;
      this.history = st ? (st.history || []).slice() : [];
      this.valHistory = st ? (st.val_history || []).slice() : [];
      const s = this.settings;
      s.tokenizer = tok.kind;
      if (st) Object.assign(s, { seed: st.seed ?? s.seed, lr: st.lr ?? s.lr, warmup: st.warmup ?? null, totalSteps: st.total_steps ?? null, corpus: st.corpus ?? s.corpus });
      this.resumeDigest = st ? st.corpus_digest || null : null;
      if (retokenize && this.data) this.data = null; // batches must come from the new tokenizer: setCorpus again
      return { step: this.step, resumable: !!st, corpus: st ? st.corpus : null, tokenizer: tok.kind, checkpointId: ck.tgc.checkpoint_id || null };
    });
  }

  async close() { await this._lock; await this.executor.close(); }
}

function decodeRate(stats) {
  const ms = stats.totalMs - stats.firstTokenMs;
  return stats.newTokens > 1 && ms > 0 ? (stats.newTokens - 1) / (ms / 1000) : 0;
}

function epsFromSource(source) {
  const m = source && /\bconfig\b[^\n]*\beps\s*=\s*([0-9.eE+-]+)/.exec(source);
  return m ? Number(m[1]) : 1e-5;
}

/** A parameter's initial value: its init rule with the host RNG (stream = its name). */
export function initValue(t, seed, n = numel(t.shape)) {
  const [kind, std] = t.init || [];
  if (kind === "normal") return normal(seed, t.name, n, Number(std));
  if (kind === "zeros") return new Float32Array(n);
  if (kind === "ones") return new Float32Array(n).fill(1);
  throw new Error(`unknown init rule ${JSON.stringify(t.init)} for ${t.name}`);
}

export { gib };
