// The one host RNG, bit-identical to tgc/rng.py: counter-based, 32-bit, no state.
//
//   key(seed, stream)     = mix(seed ^ mix(stream))     stream: FNV-1a of a name (UTF-8), or an int
//   bits(seed, stream, i) = mix(key + mix(i))           uint32, wrapping
//   uniform               = (bits + 0.5) / 2^32          in (0, 1), a float64
//   normal_i              = sqrt(-2 ln u(2i)) * cos(2 pi u(2i+1)) * std, rounded to f32
//
// mix is Chris Wellons' lowbias32; Math.imul and >>> 0 give numpy's uint32 wrapping.
// Leaves out: any other distribution (tgc draws none).

export function mix(x) {
  x >>>= 0;
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  return x;
}

const utf8 = new TextEncoder();

export function fnv1a(name) {
  let h = 0x811c9dc5;
  for (const b of utf8.encode(name)) h = Math.imul((h ^ b) >>> 0, 0x01000193) >>> 0;
  return h;
}

export function key(seed, stream) {
  const s = typeof stream === "string" ? fnv1a(stream) : Number(BigInt.asUintN(32, BigInt(stream)));
  return mix((Number(BigInt.asUintN(32, BigInt(seed))) ^ mix(s)) >>> 0);
}

/** n uint32 draws of (seed, stream) at counters start .. start+n-1 (mod 2^32). */
export function bits(seed, stream, start, n) {
  const k = key(seed, stream);
  const out = new Uint32Array(n);
  const s = Number(BigInt.asUintN(32, BigInt(start)));
  for (let j = 0; j < n; j++) out[j] = mix((k + mix((s + j) >>> 0)) >>> 0);
  return out;
}

export function uniform(seed, stream, n, start = 0) {
  const b = bits(seed, stream, start, n);
  const out = new Float64Array(n);
  for (let j = 0; j < n; j++) out[j] = (b[j] + 0.5) / 4294967296;
  return out;
}

/** n normals N(0, std) as a Float32Array (Box-Muller over consecutive uniform pairs, in float64). */
export function normal(seed, stream, n, std = 1.0) {
  const u = uniform(seed, stream, 2 * n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const z = Math.sqrt(-2.0 * Math.log(u[2 * i])) * Math.cos(2.0 * Math.PI * u[2 * i + 1]);
    out[i] = z * std;
  }
  return out;
}

/** Integers in [0, high): floor(uniform * high), as numbers. */
export function randint(seed, stream, n, high, start = 0) {
  const u = uniform(seed, stream, n, start);
  const out = new Array(n);
  for (let j = 0; j < n; j++) out[j] = Math.floor(u[j] * high);
  return out;
}
