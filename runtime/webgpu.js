// The WebGPU executor: an artifact's WGSL kernels (format version 2) on navigator.gpu.
//
// Open: the adapter (high-performance), a device asking for the adapter's higher limits
// where it offers them, a check that the artifact fits those limits (bindings, workgroup
// memory, invocations, buffer sizes), one GPUBuffer per manifest buffer plus the uniform
// buffer (inside an out-of-memory error scope), then every distinct kernel's pipeline,
// all created in parallel with createComputePipelineAsync (the time is in info.pipelineMs).
// A kernel's bind group layout is its parameters, each `chunks` storage bindings, and
// the uniform block at uniform_binding. A program's bind groups (one per launch: entry i
// is the buffer/offset/size of the launch's i-th tensor) are built on its first run,
// with the staging buffers its outputs are read through; after that a run allocates
// nothing: it writes inputs and uniforms through the queue, encodes one compute pass
// with every launch and the output copies, submits once, and maps only the outputs
// asked for (train_step: the loss).
// Leaves out: timestamp queries and several devices.

import { Executor, numel, typed } from "./executor.js";

// device limits asked for when the adapter offers more than WebGPU's defaults
export const WANTED_LIMITS = [
  "maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize",
  "maxStorageBuffersPerShaderStage", "maxComputeInvocationsPerWorkgroup",
];

const U = () => globalThis.GPUBufferUsage;

// A stopgap for a compiler quirk (to go once tgc/codegen/wgsl.py emits it differently):
// WGSL makes a constant expression that evaluates to inf or NaN a shader-creation error,
// and Chrome's compiler (Tint) enforces it, so `bitcast<f32>(0xff800000u)` (-inf, the
// identity of a max reduction) is refused where wgpu's naga accepts it. The bits go
// through a function parameter instead, which is not a constant expression: the same
// value at run time. info.wgslPatched counts the kernels this touched.
const NONFINITE_CONST = /bitcast<f32>\((0x7f800000u|0xff800000u|0x7fc00000u)\)/g;

export function tintSafe(code) {
  if (!NONFINITE_CONST.test(code)) return [code, false];
  NONFINITE_CONST.lastIndex = 0;
  return [code.replace(NONFINITE_CONST, "tgc_f32_bits($1)") + "\nfn tgc_f32_bits(b: u32) -> f32 { return bitcast<f32>(b); }\n", true];
}

export async function gpuAdapter() {
  if (!("gpu" in navigator)) return { adapter: null, reason: "this browser has no WebGPU (navigator.gpu is missing; it needs a secure context: https or localhost)" };
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }); } catch (e) { return { adapter: null, reason: `WebGPU adapter request failed: ${e.message}` }; }
  if (!adapter) return { adapter: null, reason: "WebGPU is present but no adapter was found (blocklisted GPU or driver?)" };
  return { adapter, reason: "" };
}

function adapterInfo(adapter) {
  const i = adapter.info || {};
  return { vendor: i.vendor || "", architecture: i.architecture || "", device: i.device || "", description: i.description || "" };
}

export class WebGPUExecutor extends Executor {
  constructor(manifest) {
    super(manifest);
    this.backend = "webgpu";
    this.programs = new Map();   // program -> [[pipeline, bindGroup, [x, y, z]], ...]
    this.staging = new Map();    // "program/output" -> GPUBuffer
    this.errors = [];
    this.lost = null;
  }

  /** Whether the artifact fits the device limits (with what is wrong if not). */
  static fits(manifest, limits) {
    const w = manifest.wgsl || {};
    const probs = [];
    const need = (what, have, want) => { if (want !== undefined && want > have) probs.push(`${what}: needs ${want}, the device gives ${have}`); };
    need("storage buffers per shader stage", limits.maxStorageBuffersPerShaderStage, w.max_storage_buffers);
    need("workgroup storage bytes", limits.maxComputeWorkgroupStorageSize, w.max_workgroup_bytes);
    need("invocations per workgroup", limits.maxComputeInvocationsPerWorkgroup, w.max_invocations);
    need("storage binding bytes", limits.maxStorageBufferBindingSize, w.max_binding_bytes);
    for (const b of manifest.buffers) need(`buffer ${b.name} bytes`, limits.maxBufferSize, b.size);
    return probs;
  }

  static async open(manifest, baseUrl, opts = {}) {
    if (!manifest.wgsl || !manifest.kernels) throw new Error("the artifact has no WGSL kernels (format version 2 with the wgsl target is needed)");
    const { adapter, reason } = await gpuAdapter();
    if (!adapter) throw new Error(reason);
    const requiredLimits = {};
    for (const k of WANTED_LIMITS) if (k in adapter.limits) requiredLimits[k] = adapter.limits[k];
    const probs = WebGPUExecutor.fits(manifest, requiredLimits);
    if (probs.length) throw new Error(`this model does not fit the WebGPU adapter's limits: ${probs.join("; ")}`);
    const ex = new WebGPUExecutor(manifest);
    const device = ex.device = await adapter.requestDevice({ requiredLimits });
    ex.info = { backend: "webgpu", adapter: adapterInfo(adapter), limits: Object.fromEntries(WANTED_LIMITS.map((k) => [k, device.limits[k]])) };
    device.lost.then((i) => { ex.lost = `the WebGPU device was lost (${i.reason}: ${i.message})`; });
    device.addEventListener("uncapturederror", (e) => { ex.errors.push(e.error.message); });
    // buffers: all of them now, so an out-of-memory shows at open, not mid-training
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    ex.buffers = {};
    for (const b of manifest.buffers) {
      ex.buffers[b.name] = device.createBuffer({ label: b.name, size: Math.ceil(Math.max(16, b.size) / 16) * 16, usage: U().STORAGE | U().COPY_SRC | U().COPY_DST });
    }
    ex.ubuffer = device.createBuffer({ label: "uniforms", size: Math.ceil(Math.max(16, manifest.uniforms.size) / 16) * 16, usage: U().UNIFORM | U().COPY_DST });
    const verr = await device.popErrorScope();
    const oom = await device.popErrorScope();
    if (oom || verr) {
      const total = manifest.buffers.reduce((a, b) => a + b.size, 0);
      ex.destroy();
      throw new Error(`the GPU could not allocate this model's ${(total / 2 ** 20).toFixed(1)} MiB of buffers (${(oom || verr).message})`);
    }
    await ex._pipelines(baseUrl);
    return ex;
  }

  async _pipelines(baseUrl) {
    const m = this.manifest, device = this.device;
    const t0 = performance.now();
    // kernels[k].wgsl.file is relative to the artifact ("kernels/k0.wgsl"); a bare name is in wgsl.dir
    const dir = new URL((m.wgsl.dir || "kernels").replace(/\/?$/, "/"), baseUrl);
    const fileUrl = (f) => new URL(f, f.includes("/") ? baseUrl : dir);
    this.kernels = {};
    device.pushErrorScope("validation");
    const jobs = Object.entries(m.kernels).map(async ([name, k]) => {
      const resp = await fetch(fileUrl(k.wgsl.file));
      if (!resp.ok) throw new Error(`kernel ${name}: ${k.wgsl.file}: HTTP ${resp.status}`);
      const [code, patched] = tintSafe(await resp.text());
      if (patched) this.info.wgslPatched = (this.info.wgslPatched || 0) + 1;
      const entries = [];
      const chunks = k.wgsl.chunks || k.params.map(() => 1);
      let binding = 0;
      k.params.forEach((_, i) => {
        for (let c = 0; c < chunks[i]; c++) entries.push({ binding: binding++, visibility: GPUShaderStage.COMPUTE, buffer: { type: "storage" } });
      });
      if (k.wgsl.uniform_binding !== null && k.wgsl.uniform_binding !== undefined) {
        entries.push({ binding: k.wgsl.uniform_binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } });
      }
      const module = device.createShaderModule({ label: name, code });
      const layout = device.createBindGroupLayout({ label: name, entries });
      let pipeline;
      try {
        pipeline = await device.createComputePipelineAsync({
          label: name, layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }), compute: { module, entryPoint: "main" },
        });
      } catch (e) {
        const info = await module.getCompilationInfo();
        const msg = info.messages.find((x) => x.type === "error");
        throw new Error(`WGSL kernel ${name} (${k.wgsl.file}): ${msg ? `${msg.lineNum}:${msg.linePos}: ${msg.message}` : e.message}`);
      }
      this.kernels[name] = { pipeline, layout, chunks, uniformBinding: k.wgsl.uniform_binding, dispatch: k.wgsl.dispatch };
    });
    const results = await Promise.allSettled(jobs);
    const verr = await device.popErrorScope();
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    if (verr) throw new Error(`WebGPU validation error while creating pipelines: ${verr.message}`);
    this.info.pipelines = Object.keys(this.kernels).length;
    this.info.pipelineMs = performance.now() - t0;
  }

  _check() {
    if (this.lost) throw new Error(this.lost);
    if (this.errors.length) throw new Error(`WebGPU error: ${this.errors.shift()}`);
  }

  /** Bind groups of a program's launches, built once. */
  _plan(program) {
    let plan = this.programs.get(program);
    if (plan) return plan;
    const prog = this.program(program);
    const chunkBytes = this.manifest.wgsl.chunk_bytes || this.manifest.wgsl.max_binding_bytes;
    this.device.pushErrorScope("validation");
    plan = prog.launches.map((launch, li) => {
      const [kname, ...tensors] = launch;
      const k = this.kernels[kname];
      if (!k) throw new Error(`program ${program} launch ${li}: unknown kernel ${kname}`);
      const entries = [];
      let binding = 0;
      tensors.forEach((tn, i) => {
        const p = this.place(program, tn);
        const size = Math.max(4, 4 * numel(p.shape));
        const n = k.chunks[i] || 1;
        for (let c = 0; c < n; c++) {
          const off = c * chunkBytes;
          const sz = n === 1 ? size : Math.min(chunkBytes, size - off);
          entries.push({ binding: binding++, resource: { buffer: this.buffers[p.buffer], offset: Number(p.offset) + off, size: sz } });
        }
      });
      if (k.uniformBinding !== null && k.uniformBinding !== undefined) entries.push({ binding: k.uniformBinding, resource: { buffer: this.ubuffer } });
      const bg = this.device.createBindGroup({ label: `${program}#${li} ${kname}`, layout: k.layout, entries });
      return [k.pipeline, bg, k.dispatch];
    });
    this.programs.set(program, plan);
    return plan;
  }

  _stagingFor(key, size) {
    let s = this.staging.get(key);
    if (!s || s.size < size) {
      if (s) s.destroy();
      s = this.device.createBuffer({ label: `staging ${key}`, size: Math.ceil(Math.max(16, size) / 16) * 16, usage: U().MAP_READ | U().COPY_DST });
      this.staging.set(key, s);
    }
    return s;
  }

  async _map(jobs) {
    await Promise.all(jobs.map((j) => j.st.mapAsync(GPUMapMode.READ, 0, j.st.size)));
    const out = {};
    for (const j of jobs) {
      const C = typed(j.place.dtype);
      out[j.name] = new C(j.st.getMappedRange(0, j.size).slice(0));
      j.st.unmap();
    }
    return out;
  }

  async write(name, data) {
    this._check();
    const t = this.tensor(name);
    const a = this.coerce(name, t, data);
    this.device.queue.writeBuffer(this.buffers[t.buffer], Number(t.offset), a.buffer, a.byteOffset, a.byteLength);
  }

  async read(name) {
    this._check();
    const t = this.tensor(name);
    const size = 4 * numel(t.shape);
    const st = this._stagingFor(`tensor/${name}`, size);
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.buffers[t.buffer], Number(t.offset), st, 0, Math.ceil(size / 4) * 4);
    this.device.queue.submit([enc.finish()]);
    const out = (await this._map([{ name, place: t, st, size }]))[name];
    this.staging.delete(`tensor/${name}`); // reads of persistent tensors are for export: do not keep the memory
    st.destroy();
    return out;
  }

  async run(program, opts = {}) {
    this._check();
    const { prog, reads } = this.checkRun(program, opts);
    const plan = this._plan(program);
    for (const [n, d] of Object.entries(opts.inputs || {})) await this.write(n, d);
    const ub = this.uniformBytes(opts.uniforms || {});
    this.device.queue.writeBuffer(this.ubuffer, 0, ub.buffer, 0, ub.byteLength);
    const jobs = reads.map((name) => {
      const place = prog.outputs[name];
      const size = 4 * numel(place.shape);
      return { name, place, size, st: this._stagingFor(`${program}/${name}`, size) };
    });
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (const [pipeline, bg, [x, y, z]] of plan) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(x, y, z);
    }
    pass.end();
    for (const j of jobs) enc.copyBufferToBuffer(this.buffers[j.place.buffer], Number(j.place.offset), j.st, 0, j.size);
    this.device.queue.submit([enc.finish()]); // one submit per run
    const out = await this._map(jobs);
    this._check();
    return out;
  }

  destroy() {
    for (const b of Object.values(this.buffers || {})) b.destroy();
    for (const b of this.staging.values()) b.destroy();
    if (this.ubuffer) this.ubuffer.destroy();
    if (this.device) this.device.destroy();
  }

  async close() { this.destroy(); }
}
