"""The WebGPU runtime (wgpu-py): executes an artifact's WGSL kernels from its manifest.

At load: one adapter (high-performance) and a device asking for the adapter's higher
limits, one GPUBuffer per manifest buffer plus the uniform buffer. `prepare(programs)`
creates the pipelines of every distinct kernel those programs launch, once and up
front, on several threads at a time, and says how long that took; it also builds each
launch's bind group (kernel parameter i bound to its tensor's buffer, offset and size,
split into chunks where the kernel says so). Every run after that allocates nothing on
the GPU: it writes the inputs and the uniform block, submits one command buffer (every
launch in one compute pass, then the output copies) and maps back only what was asked
for (for train_step, the loss). The command buffer holds no values, so the next run's
is encoded right after each submit, while the GPU works.

Not here: browsers (runtime/ in JavaScript reads the same manifest), multiple GPUs.
"""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tgc.errors import TgcError
from tgc.runtime.base import Runtime

# limits asked of the device when the adapter offers more than the defaults
WANTED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-storage-buffers-per-shader-stage",
    "max-compute-invocations-per-workgroup",
)


def _wgpu():
    from tgc.runtime import quiet_vulkan_loader

    quiet_vulkan_loader()
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover
        raise TgcError(f"the WebGPU backend needs wgpu-py ({e})") from None
    return wgpu


class GPU:
    """A device plus shader/pipeline construction that turns WGSL errors into TgcErrors."""

    def __init__(self, adapter=None, features=()):
        wgpu = self.wgpu = _wgpu()
        try:
            adapter = adapter or wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        except Exception as e:  # noqa: BLE001 -- no loader, no driver: all mean "no adapter"
            raise TgcError(f"no WebGPU adapter: {e}") from None
        if adapter is None:
            raise TgcError("no WebGPU adapter (on Linux without a GPU: apt-get install mesa-vulkan-drivers)")
        self.adapter = adapter
        limits = {k: adapter.limits[k] for k in WANTED_LIMITS if k in adapter.limits}
        # optional features (profiling asks for timestamp queries) where the adapter has them
        feats = [f for f in features if f in adapter.features]
        self.device = adapter.request_device_sync(required_limits=limits, required_features=feats)
        self.limits = dict(self.device.limits)
        self.features = set(feats)
        self.queue = self.device.queue
        self._layouts: dict[tuple, object] = {}

    def buffer(self, size: int, usage=None, label=""):
        u = self.wgpu.BufferUsage
        usage = usage if usage is not None else u.STORAGE | u.COPY_SRC | u.COPY_DST
        return self.device.create_buffer(size=max(16, -(-size // 16) * 16), usage=usage, label=label)

    def bind_group_layout(self, storage: int, uniform_binding: int | None):
        """The layout of `storage` read_write storage bindings (0..storage-1) and an optional
        uniform binding; one per distinct shape, shared by kernels."""
        key = (storage, uniform_binding)
        hit = self._layouts.get(key)
        if hit is None:
            wgpu = self.wgpu
            entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": wgpu.BufferBindingType.storage}}
                       for i in range(storage)]  # fmt: skip
            if uniform_binding is not None:
                entries.append({"binding": uniform_binding, "visibility": wgpu.ShaderStage.COMPUTE,
                                "buffer": {"type": wgpu.BufferBindingType.uniform}})
            bgl = self.device.create_bind_group_layout(entries=entries)
            hit = self._layouts[key] = (bgl, self.device.create_pipeline_layout(bind_group_layouts=[bgl]))
        return hit

    def pipeline(self, name: str, source: str, storage: int, uniform_binding: int | None):
        """A compute pipeline for one kernel; a WGSL error names the kernel."""
        bgl, layout = self.bind_group_layout(storage, uniform_binding)
        dev = self.device
        try:
            module = dev.create_shader_module(code=source, label=name)
            msgs = [m for m in (module.get_compilation_info_sync() or []) if getattr(m, "type", "error") == "error"]
            if msgs:
                raise TgcError(f"WGSL error in kernel {name}: {msgs[0].message}")
            pipe = dev.create_compute_pipeline(layout=layout, compute={"module": module, "entry_point": "main"}, label=name)
        except TgcError:
            raise
        except Exception as e:  # noqa: BLE001 -- wgpu raises GPUValidationError and friends
            msg = str(e).strip()
            detail = next((ln.strip() for ln in msg.splitlines() if "error" in ln.lower() and "Validation Error" not in ln), msg[:300])
            raise TgcError(f"WGSL error in kernel {name}: {detail}\n{msg}") from None
        return pipe, bgl


class WebGPURuntime(Runtime):
    backend = "webgpu"

    def __init__(self, artifact_dir, adapter=None, gpu: GPU | None = None):
        super().__init__(artifact_dir)
        a = self.art
        if a.wgsl is None:
            raise TgcError(f"{self.dir}: artifact was compiled without the wgsl target")
        self.gpu = gpu or GPU(adapter)
        biggest = max(a.buffers.values(), default=0)

        if biggest > self.gpu.limits.get("max-buffer-size", 1 << 62):
            raise TgcError(f"the artifact needs a {biggest / 2**20:.0f} MiB buffer; this WebGPU adapter allows "
                           f"{self.gpu.limits['max-buffer-size'] / 2**20:.0f} MiB (try --backend wasm)")  # fmt: skip
        self.buffers = {n: self.gpu.buffer(size, label=n) for n, size in a.buffers.items()}
        self.ublock = bytearray(a.uniform_block_size)
        self.ubuffer = self.gpu.buffer(len(self.ublock), self.gpu.wgpu.BufferUsage.UNIFORM | self.gpu.wgpu.BufferUsage.COPY_DST, "uniforms")
        self._pipelines: dict[str, tuple] = {}
        self._programs: dict[str, list] = {}
        self._staging: dict[tuple, object] = {}
        # the command buffer for the next run of (program, reads), encoded while the GPU
        # executes the current one: it holds no values (inputs and uniforms are written
        # through the queue before each submit), so it is valid for any later run
        self._next: dict[tuple, object] = {}
        self.pipeline_seconds = 0.0

    @property
    def adapter_info(self) -> dict:
        return dict(self.gpu.adapter.info)

    # ---------------------------------------------------------------- load

    def prepare(self, programs=None, threads: int | None = None) -> float:
        """Create the pipeline of every distinct kernel the programs launch (all programs by
        default) and their bind groups, before the first run; returns the seconds it took."""
        t0 = time.perf_counter()
        names = list(programs or self.art.programs)
        for p in names:
            if p not in self.art.programs:
                raise TgcError(f"artifact has no program {p!r}")
        todo = []
        for p in names:
            for k, _ in self.art.programs[p].launches:
                if k not in self._pipelines and k not in todo:
                    todo.append(k)

        limit = self.gpu.limits.get("max-storage-buffer-binding-size", 1 << 62)
        per_stage = self.gpu.limits.get("max-storage-buffers-per-shader-stage", 8)
        for name in todo:
            w = self.art.kernels[name].wgsl
            if sum(w["chunks"]) > per_stage:
                raise TgcError(f"kernel {name} of {', '.join(names)} needs {sum(w['chunks'])} storage bindings; this WebGPU "
                               f"adapter allows {per_stage} (try --backend wasm, or a smaller batch)")
            widest = max((b for b, n in zip(w["chunk_bytes"], w["chunks"]) if b and n > 1), default=0)
            if widest > limit:
                raise TgcError(f"kernel {name} of {', '.join(names)} binds {widest / 2**20:.0f} MiB at once; this WebGPU "
                               f"adapter allows {limit / 2**20:.0f} MiB (try --backend wasm, or a smaller batch)")

        def make(name):
            ki = self.art.kernels[name]
            w = ki.wgsl
            src = (self.dir / w["file"]).read_text()
            return name, self.gpu.pipeline(name, src, sum(w["chunks"]), w["uniform_binding"])

        # pipeline creation compiles each shader in the driver: spread it over threads
        # (wgpu-native is thread-safe and releases the GIL in these calls); meanwhile this
        # thread makes one round trip through the queue, which costs the first run ~0.1-2 s
        # of one-time binding setup (cffi parsing wgpu's structs) otherwise
        n = threads or min(16, os.cpu_count() or 1)
        if n > 1 and len(todo) > 1:
            with ThreadPoolExecutor(n) as ex:
                made = ex.map(make, todo)
                self._warm_up()
                self._pipelines.update(made)
        else:
            self._pipelines.update(make(k) for k in todo)
        for p in names:
            self._load_program(p)
        dt = time.perf_counter() - t0
        self.pipeline_seconds += dt
        return dt

    def _warm_up(self) -> None:
        """An empty compute pass and a 16-byte readback: the queue's first use, done early."""
        if getattr(self, "_warm", False):
            return
        from tgc.artifact import Place

        enc = self.gpu.device.create_command_encoder()
        enc.begin_compute_pass().end()
        self.gpu.queue.write_buffer(self.ubuffer, 0, bytes(self.ublock))
        self._readback([(("warm",), Place("warm", (4,), "f32", next(iter(self.buffers)), 0))], enc)
        self._warm = True

    def _bind_group(self, kernel: str, pipe_bgl, tensors, program: str):
        ki = self.art.kernels[kernel]
        w = ki.wgsl
        entries, b = [], 0
        for t, chunks, step in zip(tensors, w["chunks"], w["chunk_bytes"]):
            pl = self.art.place(program, t)
            buf, size = self.buffers[pl.buffer], pl.nbytes
            step = step or size
            for c in range(chunks):
                part = min(step, size - c * step) if chunks > 1 else size
                entries.append({"binding": b, "resource": {"buffer": buf, "offset": pl.offset + c * step, "size": max(part, 4)}})
                b += 1
        if w["uniform_binding"] is not None:
            entries.append({"binding": w["uniform_binding"], "resource": {"buffer": self.ubuffer, "offset": 0, "size": self.ubuffer.size}})
        return self.gpu.device.create_bind_group(layout=pipe_bgl[1], entries=entries)

    def _load_program(self, program: str) -> list:
        plan = self._programs.get(program)
        if plan is not None:
            return plan
        if program not in self.art.programs:
            raise TgcError(f"artifact has no program {program!r}")
        missing = [k for k, _ in self.art.programs[program].launches if k not in self._pipelines]
        if missing:
            self.prepare([program])
            return self._programs[program]
        plan = []
        for kernel, tensors in self.art.programs[program].launches:
            pipe = self._pipelines[kernel]
            plan.append((pipe[0], self._bind_group(kernel, pipe, tensors, program), tuple(self.art.kernels[kernel].wgsl["dispatch"])))
        self._programs[program] = plan
        return plan

    def load_all(self) -> None:
        self.prepare()

    # ---------------------------------------------------------------- tensors

    def _write_place(self, place, array) -> None:
        dt = np.int32 if place.dtype == "i32" else np.float32
        a = np.ascontiguousarray(np.asarray(array, dtype=dt))
        n = int(np.prod(place.shape))
        if a.size != n:
            raise TgcError(f"{place.name}: expected {n} elements {list(place.shape)}, got shape {a.shape}")
        self.gpu.queue.write_buffer(self.buffers[place.buffer], place.offset, a.tobytes())

    def write(self, name: str, array) -> None:
        self._write_place(self._tensor(name), array)

    def _staging_for(self, key, size: int):
        s = self._staging.get(key)
        if s is None or s.size < size:
            u = self.gpu.wgpu.BufferUsage
            s = self._staging[key] = self.gpu.buffer(size, u.MAP_READ | u.COPY_DST, f"staging {key}")
        return s

    def _readback(self, places: list[tuple[tuple, object]], encoder=None) -> dict:
        """Copy each place into its staging buffer at the end of `encoder`, submit once, map."""
        encoder = encoder or self.gpu.device.create_command_encoder()
        jobs = []
        for key, p in places:
            st = self._staging_for(key, p.nbytes)
            encoder.copy_buffer_to_buffer(self.buffers[p.buffer], p.offset, st, 0, p.nbytes)
            jobs.append((key, p, st, p.nbytes))
        self.gpu.queue.submit([encoder.finish()])
        return self._map_outputs(jobs)

    def _map_outputs(self, jobs) -> dict:
        """Wait for the staging copies of `jobs` and return their contents by name."""
        out = {}
        for key, p, st, size in jobs:
            st.map_sync(self.gpu.wgpu.MapMode.READ, 0, st.size)
            data = st.read_mapped(0, size, copy=True)
            st.unmap()
            dt = np.int32 if p.dtype == "i32" else np.float32
            out[key[-1]] = np.frombuffer(data, dtype=dt).reshape(p.shape).copy()
        return out

    def read(self, name: str) -> np.ndarray:
        return self._readback([(("tensor", name), self._tensor(name))])[name]

    def read_tensor(self, program: str, name: str) -> np.ndarray:
        """Any tensor of a program as it is now (arena tensors hold the last run's values
        only until another program reuses the arena)."""
        return self._readback([((program, "tensor", name), self.art.place(program, name))])[name]

    # ---------------------------------------------------------------- run

    def set_uniforms(self, uniforms: dict) -> None:
        for n, v in (uniforms or {}).items():
            f = self.art.uniforms.get(n)
            if f is None:
                raise TgcError(f"artifact has no uniform {n!r}")
            off, dt = f
            struct.pack_into("<i" if dt == "i32" else "<f", self.ublock, off, int(v) if dt == "i32" else float(v))

    def _encode(self, plan, jobs):
        """One command encoder: every launch in one compute pass, then the output copies."""
        enc = self.gpu.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        for pipe, bg, (x, y, z) in plan:
            cp.set_pipeline(pipe)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(x, y, z)
        cp.end()
        for _key, p, st, size in jobs:
            enc.copy_buffer_to_buffer(self.buffers[p.buffer], p.offset, st, 0, size)
        return enc.finish()

    def run(self, program: str, inputs: dict | None = None, uniforms: dict | None = None, read=None) -> dict:
        plan = self._load_program(program)
        prog = self.art.programs[program]
        reads = self.default_reads(program) if read is None else list(read)
        for r in reads:
            if r not in prog.outputs:
                raise TgcError(f"program {program} has no output {r!r}")
        for name, value in (inputs or {}).items():
            self.write(name, value)
        self.set_uniforms(uniforms)
        self.gpu.queue.write_buffer(self.ubuffer, 0, bytes(self.ublock))
        jobs = []
        for r in reads:
            p = prog.outputs[r]
            jobs.append(((program, "out", r), p, self._staging_for((program, "out", r), p.nbytes), p.nbytes))
        key = (program, tuple(reads))
        cb = self._next.pop(key, None) or self._encode(plan, jobs)
        # one submit per run: the launches and the output copies
        self.gpu.queue.submit([cb])
        # encode the next run's commands while the GPU works (the staging buffers are
        # mapped only below, after this)
        self._next[key] = self._encode(plan, jobs)
        return self._map_outputs(jobs)

    def sync(self) -> None:
        """Wait for the queue (benchmarks): a no-op submit then a tiny readback."""
        from tgc.artifact import Place

        first = next(iter(self.buffers))
        self._readback([(("sync",), Place("sync", (1,), "f32", first, 0))])
