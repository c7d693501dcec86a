// Training text, its split and its batches: tgc/data.py, number for number.
//
// Split: the last 10% of the UTF-8 bytes, moved forward to the next line start (never
// inside a character), is validation; each part is tokenized on its own (BPE in chunks
// of 256 lines, as Python's encode_batch sees them). Row r of 1-based training step s
// starts at randint(seed, "batches", ..., counter (s - 1) * B + r) over len(train) - ctx;
// validation batch i draws stream "val" at counters i * B + r.
// Leaves out: reading corpora by name (the page fetches the text `tgc bundle` shipped).

import { randint } from "./rng.js";

export const VAL_FRACTION = 0.1;

const utf8 = new TextEncoder();
const utf8dec = new TextDecoder("utf-8");

export function splitText(text, valFraction = VAL_FRACTION) {
  const data = utf8.encode(text);
  const n = data.length;
  let cut = Math.trunc(n * (1 - valFraction));
  const nl = data.indexOf(10, cut);
  if (nl >= 0 && nl < n - 1) cut = nl + 1;
  while (cut > 0 && cut < n && (data[cut] & 0xc0) === 0x80) cut++;
  return [utf8dec.decode(data.subarray(0, cut)), utf8dec.decode(data.subarray(cut))];
}

// Python's str.splitlines(keepends=True) line boundaries
const LINE_END = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;

export function splitLines(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(LINE_END)) {
    const end = m.index + m[0].length;
    out.push(text.slice(last, end));
    last = end;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

export function tokenizeText(tok, text) {
  if (tok.kind === "byte") return Uint16Array.from(utf8.encode(text));
  const lines = splitLines(text);
  const ids = [];
  for (let i = 0; i < lines.length; i += 256) {
    for (const t of tok.encode(lines.slice(i, i + 256).join(""))) ids.push(t);
  }
  return tok.vocabSize <= 65536 ? Uint16Array.from(ids) : Int32Array.from(ids);
}

export async function sha256Hex(bytes) {
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Dataset {
  constructor(name, digest, train, val) {
    Object.assign(this, { name, digest, train, val });
  }

  /** (name, full text, tokenizer) -> Dataset; throws when a split holds no window of ctx + 1. */
  static async fromText(name, text, tok, ctx) {
    const [tr, va] = splitText(text);
    const ds = new Dataset(name, await sha256Hex(utf8.encode(text)), tokenizeText(tok, tr), tokenizeText(tok, va));
    for (const [part, arr] of [["training", ds.train], ["validation", ds.val]]) {
      if (arr.length < ctx + 2) {
        throw new Error(`corpus ${name} is too small: its ${part} split has ${arr.length} tokens, a window needs ${ctx + 1} (the last 10% is validation)`);
      }
    }
    return ds;
  }

  _windows(tokens, offsets, ctx) {
    const B = offsets.length;
    const idx = new Int32Array(B * ctx), targets = new Int32Array(B * ctx);
    offsets.forEach((o, r) => {
      for (let t = 0; t < ctx; t++) {
        idx[r * ctx + t] = tokens[o + t];
        targets[r * ctx + t] = tokens[o + t + 1];
      }
    });
    return { idx, targets };
  }

  /** {idx, targets}, each [batch, ctx] Int32Array, for 1-based training step `step`. */
  batch(seed, step, batch, ctx) {
    return this._windows(this.train, randint(seed, "batches", batch, this.train.length - ctx, (step - 1) * batch), ctx);
  }

  valBatch(seed, i, batch, ctx) {
    return this._windows(this.val, randint(seed, "val", batch, this.val.length - ctx, i * batch), ctx);
  }
}
