// safetensors read and write (f32 only, as tgc writes; F16/BF16 are widened on read).
//
// Layout: u64 little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {...}} padded with spaces to 8 bytes,
// then the raw little-endian data.

const enc = new TextEncoder();
const dec = new TextDecoder();

export function readSafetensors(buffer, where = "safetensors") {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.length < 8) throw new Error(`${where}: truncated (${bytes.length} bytes)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (8 + n > bytes.length) throw new Error(`${where}: truncated header`);
  let header;
  try { header = JSON.parse(dec.decode(bytes.subarray(8, 8 + n))); } catch (e) { throw new Error(`${where}: corrupt header (${e.message})`); }
  const data = bytes.subarray(8 + n);
  const tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [b, e] = t.data_offsets;
    if (e > data.length || b > e) throw new Error(`${where}: tensor ${name} runs past the end of the file (truncated?)`);
    const count = t.shape.reduce((a, x) => a * x, 1);
    const raw = data.slice(b, e); // copy: aligned
    let out;
    if (t.dtype === "F32") out = new Float32Array(raw.buffer);
    else if (t.dtype === "F16" || t.dtype === "BF16") out = widen(new Uint16Array(raw.buffer), t.dtype);
    else throw new Error(`${where}: tensor ${name} has dtype ${t.dtype}, expected floating point`);
    if (out.length !== count) throw new Error(`${where}: tensor ${name} has ${out.length} values for shape [${t.shape}]`);
    tensors[name] = { shape: t.shape, data: out };
  }
  return { tensors, metadata: header.__metadata__ || {} };
}

function widen(u16, dtype) {
  const out = new Float32Array(u16.length);
  const tmp = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < u16.length; i++) {
    const h = u16[i];
    if (dtype === "BF16") { tmp.setUint32(0, h << 16); out[i] = tmp.getFloat32(0); continue; }
    const s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    const v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
    out[i] = s ? -v : v;
  }
  return out;
}

/** tensors: {name: {shape, data: Float32Array}} (in the order given) -> Uint8Array. */
export function writeSafetensors(tensors, metadata = {}) {
  const header = { __metadata__: metadata };
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.data.length * 4;
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let h = enc.encode(JSON.stringify(header));
  const padded = Math.ceil(h.length / 8) * 8;
  const out = new Uint8Array(8 + padded + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(h, 8);
  out.fill(0x20, 8 + h.length, 8 + padded);
  let p = 8 + padded;
  for (const t of Object.values(tensors)) {
    const b = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    out.set(b, p);
    p += b.length;
  }
  return out;
}
