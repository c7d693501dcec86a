// Tokenizers read from tokenizer.json (the `tokenizers` format), as tgc/tokenizer.py writes them.
//
// The byte tokenizer (256 tokens, id == byte value) and byte-level BPE both go through
// the vendored @huggingface/tokenizers (vendor/README.md): its ids equal the Python
// `tokenizers` library's on every string (tests/test_browser.py checks the bundled
// corpora and 1,000 random Unicode strings). No special tokens are added.
// Leaves out: tokenizers other than byte-level BPE (tgc writes no other kind).

import { Tokenizer as HFTokenizer } from "./vendor/tokenizers.mjs";

export const BYTE_VOCAB = 256;
const utf8 = new TextEncoder();

/** GPT-2's printable stand-in for each byte (the ByteLevel alphabet), as tgc/tokenizer.py. */
export function byteSymbols() {
  const keep = new Set();
  for (let b = 0x21; b <= 0x7e; b++) keep.add(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.add(b);
  for (let b = 0xae; b <= 0xff; b++) keep.add(b);
  const out = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(keep.has(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++));
  return out;
}

/** The tokenizer.json that tgc/tokenizer.py::byte_tokenizer() writes. */
export function byteTokenizerJSON() {
  const vocab = {};
  byteSymbols().forEach((s, i) => { vocab[s] = i; });
  return {
    version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
             fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
}

export class Tokenizer {
  /** json: the parsed tokenizer.json; kind: "byte" | "bpe:N" (detected as tgc does when absent). */
  constructor(json, kind = null) {
    if (!json || typeof json !== "object" || !json.model) throw new Error("tokenizer.json: not a tokenizers file (no model)");
    if (json.model.type !== "BPE") throw new Error(`tokenizer.json: model type ${json.model.type} is not supported (tgc writes BPE)`);
    this.json = json;
    this.tk = new HFTokenizer(json, {});
    const vocab = json.model.vocab || {};
    this.vocabSize = Object.keys(vocab).length + (json.added_tokens || []).filter((t) => !(t.content in vocab)).length;
    this.kind = kind || (this.vocabSize === BYTE_VOCAB && vocab["!"] === 33 ? "byte" : `bpe:${this.vocabSize}`);
    // fast paths, same ids (tests/test_browser.py::test_tokenizer_parity): the byte
    // tokenizer's ids are the UTF-8 bytes; a BPE without added tokens or normalizer is
    // pre-tokenized once and each distinct word goes through the model once
    const byteOrder = byteSymbols().every((c, i) => vocab[c] === i) && !(json.model.merges || []).length;
    this.fast = (json.added_tokens || []).length || json.normalizer ? null
      : byteOrder && json.pre_tokenizer && json.pre_tokenizer.type === "ByteLevel" ? "bytes"
        : json.pre_tokenizer && json.pre_tokenizer.type === "ByteLevel" && !json.pre_tokenizer.add_prefix_space ? "words" : null;
    this.words = new Map();
  }

  static byte() { return new Tokenizer(byteTokenizerJSON(), "byte"); }

  encode(text) {
    if (text === "") return [];
    if (this.fast === "bytes") return Array.from(utf8.encode(text));
    if (this.fast === "words") {
      // ByteLevel's own split (its regex, or the whole text), then bytes -> its alphabet -> BPE
      const pre = this.tk.pre_tokenizer;
      const out = [];
      for (const w of pre.use_regex ? text.match(pre.pattern) || [] : [text]) {
        let ids = this.words.get(w);
        if (ids === undefined) {
          const mapped = Array.from(utf8.encode(w), (b) => pre.byte_encoder[b]).join("");
          ids = this.tk.model([mapped]).map((t) => this.tk.model.tokens_to_ids.get(t));
          if (this.words.size < 200000) this.words.set(w, ids);
        }
        for (const i of ids) out.push(i);
      }
      return out;
    }
    return this.tk.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids) {
    if (!ids.length) return "";
    return this.tk.decode(Array.from(ids), { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  toJSON() { return this.json; }
}

/** Token ids to text pieces as they come, holding a piece back while it ends inside a
 * UTF-8 sequence (a byte token can be half a character): tgc/tokenizer.py::StreamDecoder. */
export class StreamDecoder {
  constructor(tok) { this.tok = tok; this.ids = []; this.emitted = 0; }

  push(token) {
    this.ids.push(token);
    const text = this.tok.decode(this.ids);
    if (text.endsWith("\ufffd")) return "";
    const piece = text.slice(this.emitted);
    this.emitted = text.length;
    return piece;
  }

  flush() {
    const text = this.tok.decode(this.ids);
    const piece = text.slice(this.emitted);
    this.emitted = text.length;
    return piece;
  }
}
