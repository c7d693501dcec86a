// The WebAssembly executor's worker: owns model.wasm's instance and its 64-bit memory.
//
// The memory is created once, at manifest.wasm.memory_bytes, before the module is
// instantiated, and never grows (a grow would leave views stale; design.md). Every
// request is one message: {id, op, ...} -> {id, ok, result} or {id, ok: false, error}.
//   open   {url, memoryBytes, sha256?}      fetch + hash + check + instantiate
//   write  {writes: [[addr, dtype, data]]}
//   read   {reads: [[addr, dtype, count]]}
//   run    {fn, writes, reads}              writes, one call of export `fn`, reads
// Addresses are absolute byte addresses (numbers; past 2^32 for large models).
// Leaves out: threads (one worker, one instance).

import { importedMemories, memory64Support, newMemory64 } from "./wasm-common.js";

let instance = null, memory = null;

function view(addr, dtype, count) {
  const C = dtype === "i32" ? Int32Array : dtype === "u8" ? Uint8Array : Float32Array;
  return new C(memory.buffer, addr, count);
}

function doWrites(writes) {
  for (const [addr, dtype, data] of writes || []) view(addr, dtype, data.length).set(data);
}

function doReads(reads) {
  return (reads || []).map(([addr, dtype, count]) => view(addr, dtype, count).slice());
}

async function open({ url, memoryBytes, sha256 }) {
  const support = memory64Support();
  if (!support.ok) throw new Error(support.reason);
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
  if (sha256 && digest !== sha256) throw new Error(`${url}: sha256 ${digest} differs from the manifest's ${sha256}: not the module tgc compiled with this manifest`);
  const mems = importedMemories(bytes);
  if (mems.length !== 1 || !mems[0].memory64 || mems[0].module !== "env" || mems[0].name !== "memory") {
    throw new Error(`${url}: expected one imported 64-bit memory env.memory, found ${JSON.stringify(mems)}`);
  }
  const t0 = performance.now();
  const module = await WebAssembly.compile(bytes);
  const compileMs = performance.now() - t0;
  const m = newMemory64(memoryBytes); // throws a clear RangeError message when the browser refuses
  memory = m.memory;
  instance = await WebAssembly.instantiate(module, { env: { memory } });
  return {
    sha256: digest, bytes: bytes.length, compileMs, memoryBytes: memory.buffer.byteLength,
    memory64: mems[0].memory64, memoryApi: m.api, exports: WebAssembly.Module.exports(module).map((e) => e.name),
  };
}

const ops = {
  open,
  write: ({ writes }) => { doWrites(writes); return null; },
  read: ({ reads }) => doReads(reads),
  run: ({ fn, writes, reads }) => {
    doWrites(writes);
    const f = instance.exports[fn];
    if (typeof f !== "function") throw new Error(`model.wasm has no export ${fn}`);
    const t0 = performance.now();
    f();
    const ms = performance.now() - t0;
    return { outputs: doReads(reads), ms };
  },
};

self.onmessage = async (e) => {
  const { id, op } = e.data;
  try {
    const result = await ops[op](e.data);
    const transfer = [];
    const outs = result && (result.outputs || (Array.isArray(result) ? result : null));
    if (outs) for (const a of outs) transfer.push(a.buffer);
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    const msg = err instanceof WebAssembly.RuntimeError ? `wasm trap in ${e.data.fn || op}: ${err.message}` : (err && err.message) || String(err);
    self.postMessage({ id, ok: false, error: msg });
  }
};
