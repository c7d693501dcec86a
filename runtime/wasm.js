// The WebAssembly executor: model.wasm with its 64-bit memory in a Web Worker
// (wasm-worker.js), so the page stays responsive while a program runs.
//
// Open: check the engine has Memory64, check the memory the artifact needs against the
// browser's cap, then the worker fetches model.wasm, compares its sha256 with the
// manifest's, checks its one memory import is 64-bit, creates the memory ONCE at
// manifest.wasm.memory_bytes and instantiates. A run is one message: the inputs and the
// uniform block are written at wasm.buffers[buffer] + offset and wasm.uniforms_address,
// the program's export is called once, the outputs asked for come back.
// Leaves out: wasm threads.

import { Executor, numel } from "./executor.js";
import { MEMORY64_MAX_BYTES, gib, memory64Support } from "./wasm-common.js";

export class WasmExecutor extends Executor {
  constructor(manifest, worker, info) {
    super(manifest);
    this.backend = "wasm";
    this.worker = worker;
    this.info = info;
    this.w = manifest.wasm;
  }

  /** Memory the artifact needs, and whether this browser can give it (no allocation). */
  static check(manifest) {
    const s = memory64Support();
    if (!s.ok) return s;
    const need = Number(manifest.wasm.memory_bytes);
    if (need > MEMORY64_MAX_BYTES) {
      return { ok: false, reason: `this model needs ${gib(need)} of WebAssembly memory; browsers give at most ${gib(MEMORY64_MAX_BYTES)}` };
    }
    return { ok: true, reason: "", bytes: need };
  }

  static async open(manifest, baseUrl, opts = {}) {
    if (!manifest.wasm) throw new Error("the artifact was compiled without the wasm target");
    const c = WasmExecutor.check(manifest);
    if (!c.ok) throw new Error(c.reason);
    const worker = new Worker(new URL("./wasm-worker.js", import.meta.url), { type: "module" });
    const ex = new WasmExecutor(manifest, worker, null);
    ex._pending = new Map();
    ex._next = 1;
    worker.onmessage = (e) => {
      const p = ex._pending.get(e.data.id);
      if (!p) return;
      ex._pending.delete(e.data.id);
      if (e.data.ok) p.resolve(e.data.result); else p.reject(new Error(e.data.error));
    };
    worker.onerror = (e) => {
      const err = new Error(`the WebAssembly worker failed: ${e.message || "see the console"}`);
      for (const p of ex._pending.values()) p.reject(err);
      ex._pending.clear();
    };
    const url = new URL(manifest.wasm.file, baseUrl).href;
    try {
      const r = await ex.call({ op: "open", url, memoryBytes: Number(manifest.wasm.memory_bytes), sha256: manifest.wasm.sha256 || null });
      ex.info = { backend: "wasm", url, ...r, expectedSha256: manifest.wasm.sha256 || null, ...(opts.info || {}) };
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return ex;
  }

  call(msg, transfer = []) {
    const id = this._next++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }

  addr(place) {
    const base = this.w.buffers[place.buffer];
    if (base === undefined) throw new Error(`model.wasm has no base address for buffer ${place.buffer}`);
    return Number(base) + Number(place.offset);
  }

  async write(name, data) {
    const t = this.tensor(name);
    await this.call({ op: "write", writes: [[this.addr(t), t.dtype, this.coerce(name, t, data)]] });
  }

  async read(name) {
    const t = this.tensor(name);
    return (await this.call({ op: "read", reads: [[this.addr(t), t.dtype, numel(t.shape)]] }))[0];
  }

  /** Raw access for tests: bytes at absolute addresses. */
  async readAt(addr, dtype, count) { return (await this.call({ op: "read", reads: [[addr, dtype, count]] }))[0]; }
  async writeAt(addr, dtype, data) { await this.call({ op: "write", writes: [[addr, dtype, data]] }); }
  async callExport(fn) { return this.call({ op: "run", fn, writes: [], reads: [] }); }

  async run(program, opts = {}) {
    const { prog, reads } = this.checkRun(program, opts);
    const writes = Object.entries(opts.inputs || {}).map(([n, d]) => {
      const t = this.tensor(n);
      return [this.addr(t), t.dtype, this.coerce(n, t, d)];
    });
    const ub = this.uniformBytes(opts.uniforms || {});
    writes.push([Number(this.w.uniforms_address), "u8", new Uint8Array(ub.buffer.slice(0, this.manifest.uniforms.size))]);
    const places = reads.map((r) => prog.outputs[r]);
    const fn = this.w.exports[program];
    if (!fn) throw new Error(`model.wasm exports no function for program ${program}`);
    const r = await this.call({ op: "run", fn, writes, reads: places.map((p) => [this.addr(p), p.dtype, numel(p.shape)]) });
    this.lastMs = r.ms;
    return Object.fromEntries(reads.map((n, i) => [n, r.outputs[i]]));
  }

  async close() {
    this.worker.terminate();
    for (const p of this._pending.values()) p.reject(new Error("executor closed"));
    this._pending.clear();
  }
}
