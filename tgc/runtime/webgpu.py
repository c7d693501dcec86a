"""The WebGPU runtime (wgpu-py): executes an artifact's WGSL kernels from its manifest.

At load: one adapter (high-performance) and a device asking for the adapter's higher
limits, one GPUBuffer per manifest buffer plus the uniform buffer. On a program's
first run: its shader modules, pipelines (explicit bind group layouts from the
manifest's bindings, identical sources shared) and bind groups, and the staging
buffers its outputs are read through. Every run after that allocates nothing on the
GPU: it writes the inputs and the uniform block, submits one command buffer (every
launch in one compute pass, then the output copies) and maps back only what was
asked for (for train_step, the loss). The command buffer holds no values, so the
next run's is encoded right after each submit, while the GPU works: encoding ~1,500
launches costs the host 10-20 ms, which would otherwise add to every step.

Not here: browsers (runtime/ in JavaScript reads the same manifest), multiple GPUs.
"""

from __future__ import annotations

import struct

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
        self.features = set(feats)
        self.queue = self.device.queue
        self._pipelines: dict[tuple, object] = {}

    def buffer(self, size: int, usage=None, label=""):
        u = self.wgpu.BufferUsage
        usage = usage if usage is not None else u.STORAGE | u.COPY_SRC | u.COPY_DST
        return self.device.create_buffer(size=max(16, -(-size // 16) * 16), usage=usage, label=label)

    def pipeline(self, name: str, source: str, bindings, uniform_binding):
        """(pipeline, bind group layout) for a kernel; a WGSL error names the kernel."""
        key = (source, tuple(bindings), uniform_binding)
        hit = self._pipelines.get(key)
        if hit is not None:
            return hit
        wgpu, dev = self.wgpu, self.device
        entries = [
            {
                "binding": i,
                "visibility": wgpu.ShaderStage.COMPUTE,
                "buffer": {"type": wgpu.BufferBindingType.storage if a == "read_write" else wgpu.BufferBindingType.read_only_storage},
            }
            for i, _, a in bindings
        ]
        if uniform_binding is not None:
            entries.append({"binding": uniform_binding, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": wgpu.BufferBindingType.uniform}})
        try:
            module = dev.create_shader_module(code=source, label=name)
            msgs = [m for m in (module.get_compilation_info_sync() or []) if getattr(m, "type", "error") == "error"]
            if msgs:
                raise TgcError(f"WGSL error in kernel {name}: {msgs[0].message}")
            bgl = dev.create_bind_group_layout(entries=entries, label=name)
            layout = dev.create_pipeline_layout(bind_group_layouts=[bgl])
            pipe = dev.create_compute_pipeline(layout=layout, compute={"module": module, "entry_point": "main"}, label=name)
        except TgcError:
            raise
        except Exception as e:  # noqa: BLE001 -- wgpu raises GPUValidationError and friends
            msg = str(e).strip()
            detail = next((ln.strip() for ln in msg.splitlines() if "error" in ln.lower() and "Validation Error" not in ln), msg[:300])
            raise TgcError(f"WGSL error in kernel {name}: {detail}\n{msg}") from None
        self._pipelines[key] = (pipe, bgl)
        return pipe, bgl

    def bind_group(self, bgl, bindings, buffers: dict, uniform_binding, uniform_buffer):
        entries = [{"binding": i, "resource": {"buffer": buffers[b], "offset": 0, "size": buffers[b].size}} for i, b, _ in bindings]
        if uniform_binding is not None:
            entries.append({"binding": uniform_binding, "resource": {"buffer": uniform_buffer, "offset": 0, "size": uniform_buffer.size}})
        return self.device.create_bind_group(layout=bgl, entries=entries)


class WebGPURuntime(Runtime):
    backend = "webgpu"

    def __init__(self, artifact_dir, adapter=None, gpu: GPU | None = None):
        super().__init__(artifact_dir)
        self.gpu = gpu or GPU(adapter)
        m = self.manifest
        self.buffers = {b["name"]: self.gpu.buffer(b["size"], label=b["name"]) for b in m["buffers"]}
        self.ublock = bytearray(m["uniforms"]["size"])
        self.ufields = m["uniforms"]["fields"]
        self.ubuffer = self.gpu.buffer(len(self.ublock), self.gpu.wgpu.BufferUsage.UNIFORM | self.gpu.wgpu.BufferUsage.COPY_DST, "uniforms")
        self._programs: dict[str, list] = {}
        self._staging: dict[tuple, object] = {}
        # the command buffer for the next run of (program, reads), encoded while the GPU
        # executes the current one: it holds no values (inputs and uniforms are written
        # through the queue before each submit), so it is valid for any later run
        self._next: dict[tuple, object] = {}

    @property
    def adapter_info(self) -> dict:
        return dict(self.gpu.adapter.info)

    # ---------------------------------------------------------------- load

    def _load_program(self, program: str) -> list:
        plan = self._programs.get(program)
        if plan is not None:
            return plan
        if program not in self.manifest["programs"]:
            raise TgcError(f"artifact has no program {program!r}")
        plan = []
        for launch in self.manifest["programs"][program]["launches"]:
            w = launch.get("webgpu")
            if w is None:
                raise TgcError(f"artifact was compiled without the wgsl target (launch {launch['kernel']})")
            src = (self.dir / w["wgsl"]).read_text()
            binds = [(b["binding"], b["buffer"], b["access"]) for b in w["bindings"]]
            pipe, bgl = self.gpu.pipeline(launch["kernel"], src, binds, w["uniform_binding"])
            bg = self.gpu.bind_group(bgl, binds, self.buffers, w["uniform_binding"], self.ubuffer)
            plan.append((pipe, bg, tuple(w["dispatch"])))
        self._programs[program] = plan
        return plan

    def load_all(self) -> None:
        for p in self.manifest["programs"]:
            self._load_program(p)

    # ---------------------------------------------------------------- tensors

    def _place(self, program: str | None, name: str) -> dict:
        if program is not None:
            places = self.manifest["programs"][program].get("places", {})
            if name in places:
                return places[name]
        t = self._tensor(name)
        return t

    def _write_place(self, place: dict, array) -> None:
        dt = np.int32 if place["dtype"] == "i32" else np.float32
        a = np.ascontiguousarray(np.asarray(array, dtype=dt))
        n = int(np.prod(place["shape"]))
        if a.size != n:
            raise TgcError(f"{place.get('name', place.get('tensor'))}: expected {n} elements {place['shape']}, got shape {a.shape}")
        self.gpu.queue.write_buffer(self.buffers[place["buffer"]], place["offset"], a.tobytes())

    def write(self, name: str, array) -> None:
        self._write_place(self._tensor(name), array)

    def _staging_for(self, key, size: int):
        s = self._staging.get(key)
        if s is None or s.size < size:
            u = self.gpu.wgpu.BufferUsage
            s = self._staging[key] = self.gpu.buffer(size, u.MAP_READ | u.COPY_DST, f"staging {key}")
        return s

    def _readback(self, places: list[tuple[tuple, dict]], encoder=None) -> dict:
        """Copy each place into its staging buffer at the end of `encoder`, submit once, map."""
        encoder = encoder or self.gpu.device.create_command_encoder()
        jobs = []
        for key, p in places:
            size = 4 * int(np.prod(p["shape"]))
            st = self._staging_for(key, size)
            encoder.copy_buffer_to_buffer(self.buffers[p["buffer"]], p["offset"], st, 0, size)
            jobs.append((key, p, st, size))
        self.gpu.queue.submit([encoder.finish()])
        return self._map_outputs(jobs)

    def _map_outputs(self, jobs) -> dict:
        """Wait for the staging copies of `jobs` and return their contents by name."""
        out = {}
        for key, p, st, size in jobs:
            st.map_sync(self.gpu.wgpu.MapMode.READ, 0, st.size)
            data = st.read_mapped(0, size, copy=True)
            st.unmap()
            dt = np.int32 if p["dtype"] == "i32" else np.float32
            out[key[-1]] = np.frombuffer(data, dtype=dt).reshape(p["shape"]).copy()
        return out

    def read(self, name: str) -> np.ndarray:
        return self._readback([(("tensor", name), self._tensor(name))])[name]

    def read_tensor(self, program: str, name: str) -> np.ndarray:
        """Any tensor of a program as it is now (arena tensors hold the last run's values
        only until another program reuses the arena)."""
        return self._readback([((program, "tensor", name), self._place(program, name))])[name]

    # ---------------------------------------------------------------- run

    def set_uniforms(self, uniforms: dict) -> None:
        for n, v in (uniforms or {}).items():
            f = self.ufields.get(n)
            if f is None:
                raise TgcError(f"artifact has no uniform {n!r}")
            struct.pack_into("<i" if f["dtype"] == "i32" else "<f", self.ublock, f["offset"], int(v) if f["dtype"] == "i32" else float(v))

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
            enc.copy_buffer_to_buffer(self.buffers[p["buffer"]], p["offset"], st, 0, size)
        return enc.finish()

    def run(self, program: str, inputs: dict | None = None, uniforms: dict | None = None, read=None) -> dict:
        plan = self._load_program(program)
        prog = self.manifest["programs"][program]
        reads = self.default_reads(program) if read is None else list(read)
        for r in reads:
            if r not in prog["outputs"]:
                raise TgcError(f"program {program} has no output {r!r}")
        for name, value in (inputs or {}).items():
            self.write(name, value)
        self.set_uniforms(uniforms)
        self.gpu.queue.write_buffer(self.ubuffer, 0, bytes(self.ublock))
        jobs = []
        for r in reads:
            p = prog["outputs"][r]
            size = 4 * int(np.prod(p["shape"]))
            jobs.append(((program, "out", r), p, self._staging_for((program, "out", r), size), size))
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
        self._readback([(("sync",), {"buffer": next(iter(self.buffers)), "offset": 0, "shape": [1], "dtype": "f32"})])
