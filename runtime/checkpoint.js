// Checkpoints as a Hugging Face GPT-2 directory packed into one .zip: what tgc/checkpoint.py
// writes and reads, so a browser checkpoint loads in `tgc generate`, `tgc train --resume`
// and transformers, and theirs load here.
//
//   config.json                 GPT2Config fields + the "tgc" section
//   model.safetensors           GPT-2 names and layouts (the lm head is tied, not stored)
//   tokenizer.json, tokenizer_config.json
//   model.tg                    the DSL source the weights belong to (when the artifact has it)
//   optimizer.safetensors       adam_m/<param>, adam_v/<param>                (resume only)
//   trainer_state.json          step, seed, schedule, data position, history (resume only)
// Every file of one export carries the same checkpoint id; import refuses a mix.

import { unzipSync, zipSync } from "./vendor/fflate.js";
import { readSafetensors, writeSafetensors } from "./safetensors.js";

export const HF_ACTIVATION = { gelu: "gelu", gelu_tanh: "gelu_new" };
export const ACTIVATIONS = { gelu: "gelu", gelu_new: "gelu_tanh", gelu_pytorch_tanh: "gelu_tanh" };
const enc = new TextEncoder();
const dec = new TextDecoder();
const json = (o) => enc.encode(JSON.stringify(o, null, 2) + "\n");

/** config.json for model config cfg {vocab, ctx, d, heads, layers, eps, activation}; a model of
 * another family brings its config.json as `template` (the manifest's model.hf_config). */
export function hfConfig(cfg, tgc, template = null) {
  if (template) return { ...template, eos_token_id: cfg.eos_token_id ?? null, tgc };
  return {
    model_type: "gpt2", architectures: ["GPT2LMHeadModel"], vocab_size: cfg.vocab, n_positions: cfg.ctx, n_embd: cfg.d,
    n_layer: cfg.layers, n_head: cfg.heads, n_inner: null, activation_function: HF_ACTIVATION[cfg.activation || "gelu"],
    layer_norm_epsilon: cfg.eps ?? 1e-5, tie_word_embeddings: true, scale_attn_weights: true,
    scale_attn_by_inverse_layer_idx: false, reorder_and_upcast_attn: false, add_cross_attention: false,
    resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0, initializer_range: 0.02,
    bos_token_id: null, eos_token_id: cfg.eos_token_id ?? null, pad_token_id: null, use_cache: true, dtype: "float32", tgc,
  };
}

/** The model config of a GPT2Config, or an Error for what tgc cannot run. A checkpoint of another
 * family must be of the artifact's model: every field of `template` (the manifest's
 * model.hf_config) but the token ids equal, and then its config is `modelConfig`. */
export function configFromHF(hf, where = "config.json", template = null, modelConfig = null) {
  if (template && hf.model_type === template.model_type) {
    for (const [k, v] of Object.entries(template)) {
      if (k.endsWith("_token_id")) continue;
      if (JSON.stringify(hf[k] ?? null) !== JSON.stringify(v)) throw new Error(`the checkpoint is for another model: its ${k} is ${JSON.stringify(hf[k] ?? null)}, this artifact's is ${JSON.stringify(v)} (bundle that checkpoint to load it)`);
    }
    return { ...modelConfig };
  }
  if (hf.model_type !== "gpt2") throw new Error(`${where}: model_type is ${JSON.stringify(hf.model_type)}; only GPT-2 checkpoints are supported`);
  const cfg = { vocab: hf.vocab_size, ctx: hf.n_positions, d: hf.n_embd, heads: hf.n_head, layers: hf.n_layer };
  for (const [k, v] of Object.entries(cfg)) if (!Number.isInteger(v)) throw new Error(`${where}: missing or bad ${k}`);
  const act = hf.activation_function ?? "gelu_new";
  if (!(act in ACTIVATIONS)) throw new Error(`${where}: activation_function ${act} is not supported`);
  cfg.activation = ACTIVATIONS[act];
  cfg.eps = Number(hf.layer_norm_epsilon ?? 1e-5);
  if (hf.tie_word_embeddings === false) throw new Error(`${where}: untied word embeddings are not supported`);
  return cfg;
}

export function checkpointId() {
  return (crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("")).replace(/-/g, "");
}

/** Pack a checkpoint: {params: {name: {shape, data}}, optimizer?, config, tgc, tokenizerJSON,
 * tokenizerKind, source?, state?} -> {bytes: Uint8Array (zip), name, files: [names]}. */
export function packCheckpoint({ folder, params, optimizer, config, tgc, tokenizerJSON, tokenizerKind, source, state, template = null }) {
  const cid = checkpointId();
  const meta = { format: "pt", tgc_checkpoint_id: cid };
  const files = {
    "tokenizer.json": enc.encode(JSON.stringify(tokenizerJSON)),
    "tokenizer_config.json": json({ tokenizer_class: "PreTrainedTokenizerFast", model_max_length: config.ctx, clean_up_tokenization_spaces: false, tgc_tokenizer: tokenizerKind }),
  };
  if (source) files["model.tg"] = enc.encode(source);
  if (optimizer) files["optimizer.safetensors"] = writeSafetensors(optimizer, meta);
  if (state) files["trainer_state.json"] = json({ ...state, checkpoint_id: cid });
  files["model.safetensors"] = writeSafetensors(params, meta);
  const section = { ...tgc, model_file: "model.tg", checkpoint_id: cid, ...(template ? {} : { activation: config.activation || "gelu" }) };
  files["config.json"] = json(hfConfig(config, section, template));
  const tree = {};
  for (const [n, b] of Object.entries(files)) tree[`${folder}/${n}`] = [b, { level: n.endsWith(".safetensors") ? 1 : 6 }];
  return { bytes: zipSync(tree), name: `${folder}.zip`, files: Object.keys(files), checkpointId: cid };
}

/** Files of a checkpoint from a .zip (one folder or none) or a {name: bytes} map. */
export function checkpointFiles(input) {
  let files;
  if (input instanceof Uint8Array || input instanceof ArrayBuffer) {
    const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
    if (bytes[0] !== 0x50 || bytes[1] !== 0x4b) throw new Error("not a checkpoint: expected a .zip (as exported) holding config.json and model.safetensors");
    try { files = unzipSync(bytes); } catch (e) { throw new Error(`the checkpoint .zip is corrupt or truncated (${e.message})`); }
  } else {
    files = input;
  }
  const out = {};
  for (const [path, b] of Object.entries(files)) {
    if (path.endsWith("/")) continue;
    const name = path.split("/").pop();
    if (name in out) throw new Error(`the checkpoint holds two files named ${name}`);
    out[name] = b;
  }
  return out;
}

/** Parse and check a checkpoint's files -> {config, hf, tgc, params, optimizer?, state?, tokenizerJSON?, tokenizerKind?, source?}. */
export function readCheckpoint(files, template = null, modelConfig = null) {
  const need = (n) => { if (!files[n]) throw new Error(`the checkpoint has no ${n}`); return files[n]; };
  const parse = (n) => { try { return JSON.parse(dec.decode(need(n))); } catch (e) { throw new Error(`${n}: corrupt (${e.message})`); } };
  const hf = parse("config.json");
  const config = configFromHF(hf, "config.json", template, modelConfig);
  const gpt2 = hf.model_type === "gpt2";  // GPT-2's names are normalized; another family's are the model file's
  const tgc = hf.tgc || {};
  const cid = tgc.checkpoint_id;
  const w = readSafetensors(need("model.safetensors"), "model.safetensors");
  if (cid && w.metadata.tgc_checkpoint_id !== cid) throw new Error("model.safetensors and config.json are from different saves (an interrupted copy?)");
  const params = {};
  for (const [k, v] of Object.entries(w.tensors)) {
    if (!gpt2) { params[k] = v; continue; }
    if (k === "lm_head.weight" || /\.attn\.(masked_)?bias$/.test(k) && v.shape.length !== 1) continue;
    params[k.startsWith("transformer.") ? k : `transformer.${k}`] = v;
  }
  const out = { config, hf, tgc, params };
  if (files["tokenizer.json"]) out.tokenizerJSON = parse("tokenizer.json");
  if (files["tokenizer_config.json"]) out.tokenizerKind = parse("tokenizer_config.json").tgc_tokenizer || null;
  if (files["model.tg"]) out.source = dec.decode(files["model.tg"]);
  if (files["optimizer.safetensors"] && files["trainer_state.json"]) {
    const o = readSafetensors(files["optimizer.safetensors"], "optimizer.safetensors");
    const state = parse("trainer_state.json");
    if (cid && (o.metadata.tgc_checkpoint_id !== cid || state.checkpoint_id !== cid)) throw new Error("optimizer/trainer state and weights are from different saves");
    if (!Number.isInteger(state.step) || state.step < 0) throw new Error("trainer_state.json: bad or missing step");
    out.optimizer = o.tensors;
    out.state = state;
  }
  return out;
}
