// Memory64 in this JavaScript engine: detection, creating a 64-bit memory, and reading a
// module's memory imports from its bytes (so a test can tell a 64-bit module from a
// 32-bit one without trusting names).

export const WASM_PAGE = 65536;
// browsers cap a 64-bit memory at 16 GiB (Chrome 133+, Firefox 134+)
export const MEMORY64_MAX_BYTES = 16 * 2 ** 30;

// (module (import "env" "memory" (memory i64 1)))
const PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 2, 15, 1, 3, 101, 110, 118, 6, 109, 101, 109, 111, 114, 121, 2, 4, 1]);

export function memory64Support() {
  if (typeof WebAssembly !== "object") return { ok: false, reason: "this browser has no WebAssembly" };
  if (!WebAssembly.validate(PROBE)) {
    return { ok: false, reason: "this browser's WebAssembly has no 64-bit memories (Memory64: Chrome/Edge 133+, Firefox 134+; not Safari)" };
  }
  return { ok: true, reason: "" };
}

/** A non-growing 64-bit memory of at least `bytes`; the JS API spelling differs between
 * engine versions ({address: "i64"} with BigInt sizes now, {index: "i64"} before). */
export function newMemory64(bytes) {
  const pages = Math.ceil(bytes / WASM_PAGE);
  if (bytes > MEMORY64_MAX_BYTES) {
    throw new Error(`this model needs ${gib(bytes)} of WebAssembly memory; browsers give a 64-bit memory at most ${gib(MEMORY64_MAX_BYTES)}`);
  }
  const tries = [
    ["address", { initial: BigInt(pages), maximum: BigInt(pages), address: "i64" }],
    ["index", { initial: BigInt(pages), maximum: BigInt(pages), index: "i64" }],
    ["index-number", { initial: pages, maximum: pages, index: "i64" }],
  ];
  let last = null;
  for (const [api, desc] of tries) {
    try {
      return { memory: new WebAssembly.Memory(desc), api };
    } catch (e) {
      last = e;
      if (e instanceof RangeError && /alloc|memory|size|maximum|initial/i.test(e.message) && api === "address") break;
    }
  }
  throw new Error(`this browser could not give the ${gib(bytes)} of WebAssembly memory this model needs (${last && last.message}); try a smaller preset, close other tabs, or use a 64-bit browser with more memory`);
}

export function gib(n) { return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`; }

/** [{module, name, memory64, min}] for every memory the module imports (import section only). */
export function importedMemories(bytes) {
  let p = 8;
  const leb = () => { let r = 0n, s = 0n, b; do { b = bytes[p++]; r |= BigInt(b & 0x7f) << s; s += 7n; } while (b & 0x80); return r; };
  const name = () => { const n = Number(leb()); const s = new TextDecoder().decode(bytes.subarray(p, p + n)); p += n; return s; };
  const out = [];
  while (p < bytes.length) {
    const id = bytes[p++];
    const size = Number(leb());
    const end = p + size;
    if (id === 2) {
      const count = Number(leb());
      for (let i = 0; i < count; i++) {
        const module = name(), field = name(), kind = bytes[p++];
        if (kind === 0) leb();                                   // func: type index
        else if (kind === 1) { p++; const f = bytes[p++]; leb(); if (f & 1) leb(); } // table
        else if (kind === 2) {                                   // memory: limits flags
          const f = bytes[p++];
          const min = leb();
          if (f & 1) leb();
          out.push({ module, name: field, memory64: (f & 4) !== 0, shared: (f & 2) !== 0, min: Number(min) });
        } else if (kind === 3) { p++; p++; }                     // global: type, mutability
        else if (kind === 4) { p++; leb(); }                     // tag
      }
      return out;
    }
    p = end;
  }
  return out;
}
