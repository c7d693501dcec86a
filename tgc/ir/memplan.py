"""Memory planning: every tensor of every program gets a buffer and a byte offset.

- Persistent tensors (parameters, AdamW moments, KV caches, data inputs) are
  packed once and shared by all programs.
- Everything else lives in the arena, planned per program from liveness over the
  kernel order (first kernel writing it .. last kernel reading it; program
  outputs live to the end) with greedy-by-size placement. Programs run one at a
  time, so they share the arena.
- Offsets are 256-byte aligned (WebGPU's minStorageBufferOffsetAlignment) and no
  tensor crosses a buffer. Buffers are pools of at most `max_buffer` bytes (WebGPU's
  default maxBufferSize is 256 MiB); a tensor larger than that gets a buffer of its
  own size (persistent), or starts a pool that is extended to hold it (arena). Each
  target applies its own limits beyond that: wasm64 places every buffer in its linear
  memory as it is; WebGPU binds a tensor over the binding size in chunks
  (tgc/codegen/wgsl.py) and needs an adapter whose maxBufferSize fits the largest
  buffer (the runtime checks).

`PlanReport.lower_bound` is parameters + gradients + optimizer state + the
largest set of simultaneously live activations, measured on the same liveness
intervals with no fragmentation: no plan can use less. docs/architecture.md
says how the 1.3x check uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 256
PERSISTENT_ROLES = ("parameter", "optimizer_state", "kv_cache", "input")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Buffer:
    name: str
    size: int
    kind: str  # "persistent" | "arena"


@dataclass
class PlanReport:
    program: str
    persistent_bytes: int
    arena_bytes: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    max_live_activation_bytes: int
    other_state_bytes: int  # KV caches and data inputs this program uses

    @property
    def planned_bytes(self) -> int:
        return self.persistent_bytes + self.arena_bytes

    @property
    def lower_bound(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.max_live_activation_bytes + self.other_state_bytes


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    places: dict[str, tuple[str, int]]  # persistent tensor -> (buffer, offset)
    arena_places: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # program -> tensor -> place
    reports: dict[str, PlanReport] = field(default_factory=dict)

    def place(self, program: str, tensor: str) -> tuple[str, int]:
        p = self.places.get(tensor)
        return p if p is not None else self.arena_places[program][tensor]

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.buffers)


def _pack_persistent(tensors, max_buffer: int, prefix: str) -> tuple[list[Buffer], dict]:
    buffers: list[Buffer] = []
    places = {}
    for name, nbytes in tensors:
        size = _align(nbytes)
        for b in buffers:  # first fit (a tensor over max_buffer gets a buffer of its own)
            if size <= max_buffer and b.size + size <= max_buffer:
                break
        else:
            b = Buffer(f"{prefix}{len(buffers)}", 0, "persistent")
            buffers.append(b)
        places[name] = (b.name, b.size)
        b.size += size
    return buffers, places


def _liveness(sched) -> dict[str, list[int]]:
    live: dict[str, list[int]] = {}
    end = len(sched.kernels)
    for i, k in enumerate(sched.kernels):
        for t in k.writes():
            live.setdefault(t, [i, i])
        for t in k.loads():
            if t in live:
                live[t][1] = max(live[t][1], i)
    for t in sched.outputs.values():
        if t in live:
            live[t][1] = end
    return live


def _place_arena(intervals: list[tuple[str, int, int, int]], max_buffer: int) -> tuple[dict[str, int], int]:
    """Greedy by size: largest tensor first, at the lowest offset where it overlaps no
    placed tensor that is live at the same time and does not cross a pool boundary (a
    tensor over max_buffer starts at one and spans the pools it needs)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, start_t, end_t)
    offsets: dict[str, int] = {}
    top = 0

    def fit(off: int, size: int) -> int:
        crosses = off // max_buffer != (off + size - 1) // max_buffer
        if (size <= max_buffer and crosses) or (size > max_buffer and off % max_buffer):
            return (off // max_buffer + 1) * max_buffer
        return off

    for name, size, s, e in sorted(intervals, key=lambda x: (-x[1], x[2], x[0])):
        busy = sorted((o, oe) for o, oe, ps, pe in placed if not (pe < s or e < ps))
        off = 0
        for o, oe in busy:
            off = fit(off, size)
            if off + size <= o:
                break
            off = max(off, oe)
        off = fit(off, size)
        offsets[name] = off
        placed.append((off, off + size, s, e))
        top = max(top, off + size)
    return offsets, top


def _arena_buffers(spans: list[tuple[int, int]], top: int, max_buffer: int) -> list[tuple[int, int]]:
    """The arena's pools as (start, end) byte ranges of the arena space: one per
    max_buffer unit, except that units a tensor spans (offset, end) are one pool."""
    units = -(-top // max_buffer)
    joined = [False] * units  # joined[u]: unit u belongs to the pool of unit u - 1
    for off, end in spans:
        for u in range(off // max_buffer + 1, -(-end // max_buffer)):
            joined[u] = True
    pools, start = [], 0
    for u in range(1, units + 1):
        if u == units or not joined[u]:
            pools.append((start * max_buffer, min(u * max_buffer, top)))
            start = u
    return pools


def plan_memory(schedules: dict, max_buffer: int = 128 << 20, keep_all: bool = False) -> MemoryPlan:
    """Place every tensor of every scheduled program (name -> Schedule). With `keep_all`
    no two tensors of a program share memory (tests read every intermediate afterwards)."""
    persistent: dict[str, tuple[str, int]] = {}
    for s in schedules.values():
        for t in s.tensors.values():
            if t.role in PERSISTENT_ROLES:
                persistent.setdefault(t.name, (t.role, t.nbytes))
    buffers: list[Buffer] = []
    places: dict[str, tuple[str, int]] = {}
    for role, prefix in (("parameter", "params"), ("optimizer_state", "optim"), ("kv_cache", "kv"), ("input", "io")):
        group = [(n, nb) for n, (r, nb) in persistent.items() if r == role]
        if group:
            bufs, pl = _pack_persistent(group, max_buffer, prefix)
            buffers += bufs
            places.update(pl)
    persistent_bytes = sum(b.size for b in buffers)

    offsets_of: dict[str, dict[str, int]] = {}
    arena_top = 0
    reports = {}
    spans = []
    for pname, s in schedules.items():
        live = _liveness(s)
        if keep_all:
            live = {t: [0, len(s.kernels)] for t in live}
        intervals = [
            (t, _align(s.tensors[t].nbytes), a, b) for t, (a, b) in live.items() if t not in places
        ]
        offsets, top = _place_arena(intervals, max_buffer)
        offsets_of[pname] = offsets
        spans += [(o, o + _align(s.tensors[t].nbytes)) for t, o in offsets.items() if s.tensors[t].nbytes > max_buffer]
        arena_top = max(arena_top, top)
        # the lower bound: P + G + O + max live activations (no fragmentation)
        steps = [0] * (len(s.kernels) + 1)
        for t, size, a, b in intervals:
            if s.tensors[t].role != "gradient":
                for i in range(a, b + 1):
                    steps[i] += size
        role_bytes = lambda role: sum(_align(t.nbytes) for t in s.tensors.values() if t.role == role)
        reports[pname] = PlanReport(
            pname, persistent_bytes, _align(top), role_bytes("parameter"), role_bytes("gradient"),
            role_bytes("optimizer_state"), max(steps) if steps else 0, role_bytes("kv_cache") + role_bytes("input"),
        )
    pools = _arena_buffers(spans, arena_top, max_buffer)
    arena_places: dict[str, dict[str, tuple[str, int]]] = {}
    used = [0] * len(pools)
    for pname, offsets in offsets_of.items():
        pl = arena_places[pname] = {}
        for t, o in offsets.items():
            i = next(i for i, (a, b) in enumerate(pools) if a <= o < b)
            pl[t] = (f"arena{i}", o - pools[i][0])
            used[i] = max(used[i], o - pools[i][0] + _align(schedules[pname].tensors[t].nbytes))
    # a pool is as large as some program uses it
    buffers += [Buffer(f"arena{i}", _align(u), "arena") for i, u in enumerate(used)]
    return MemoryPlan(buffers, places, arena_places, reports)
