// What both executors share: where a tensor lives, the uniform block, and the one
// interface the Model (tgc.js) drives:
//
//   ex.backend                          "webgpu" | "wasm"
//   await ex.write(name, data)          a persistent tensor (parameter, moment, cache, input)
//   await ex.read(name) -> TypedArray   a persistent tensor
//   await ex.run(program, {inputs, uniforms, read}) -> {output: TypedArray}
//   ex.info                             what was opened (adapter, limits, module hash...)
//   await ex.close()
//
// `run` writes the inputs and the uniform block, runs every launch of the program (one
// submit / one wasm call) and reads back only the outputs in `read` (default: every
// output, but only `loss` for train_step). Nothing here re-derives a compiler decision.

export const numel = (shape) => shape.reduce((a, b) => a * b, 1);
export const typed = (dtype) => (dtype === "i32" ? Int32Array : Float32Array);

export class Executor {
  constructor(manifest) {
    this.manifest = manifest;
    this.tensors = Object.fromEntries(manifest.tensors.map((t) => [t.name, t]));
    this.ufields = manifest.uniforms.fields;
  }

  tensor(name) {
    const t = this.tensors[name];
    if (!t) throw new Error(`the artifact has no persistent tensor ${JSON.stringify(name)}`);
    return t;
  }

  program(name) {
    const p = this.manifest.programs[name];
    if (!p) throw new Error(`the artifact has no program ${JSON.stringify(name)}`);
    return p;
  }

  /** {buffer, offset, shape, dtype} of a tensor in a program (its places) or persistent. */
  place(program, name) {
    const pl = program && this.manifest.programs[program].places && this.manifest.programs[program].places[name];
    if (pl) return Array.isArray(pl) ? { buffer: pl[0], offset: pl[1], shape: pl[2], dtype: pl[3] } : pl;
    return this.tensor(name);
  }

  /** data coerced to the tensor's dtype, its length checked against the shape. */
  coerce(name, t, data) {
    const C = typed(t.dtype);
    const a = data instanceof C ? data : C.from(data);
    if (a.length !== numel(t.shape)) throw new Error(`${name}: expected ${numel(t.shape)} values (shape [${t.shape}]), got ${a.length}`);
    return a;
  }

  checkRun(program, { inputs = {}, uniforms = {}, read = null } = {}) {
    const prog = this.program(program);
    const missing = prog.uniforms.filter((u) => !(u in uniforms));
    if (missing.length) throw new Error(`program ${program} needs uniforms ${missing.join(", ")}`);
    for (const u of Object.keys(uniforms)) if (!this.ufields[u]) throw new Error(`the artifact has no uniform ${u}`);
    const reads = read || (program === "train_step" ? ["loss"] : Object.keys(prog.outputs));
    for (const r of reads) if (!prog.outputs[r]) throw new Error(`program ${program} has no output ${r}`);
    for (const n of Object.keys(inputs)) this.tensor(n);
    return { prog, reads };
  }

  /** The uniform block's bytes with `uniforms` written in (the block persists between runs). */
  uniformBytes(uniforms) {
    if (!this._ublock) this._ublock = new DataView(new ArrayBuffer(Math.max(16, this.manifest.uniforms.size)));
    for (const [n, v] of Object.entries(uniforms)) {
      const f = this.ufields[n];
      if (f.dtype === "i32") this._ublock.setInt32(f.offset, Number(v), true);
      else this._ublock.setFloat32(f.offset, Number(v), true);
    }
    return this._ublock;
  }
}
