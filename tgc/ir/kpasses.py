"""Kernel passes: scheduled kernels -> distinct kernels with their loop nests and launch decisions.

    kernels, launches = dedup(schedules)       # one kernel per distinct computation
    kernels = run_kernel_passes(kernels)        # PIPELINE, the verifier after each pass in tests

1. dedup: every scheduled kernel becomes a canonical kernel over parameters p0, p1, ...
   (tgc/ir/kernel.py `canonical`) plus a launch (kernel, the tensors bound to its
   parameters); equal canonical kernels are one kernel. Every layer's copy of a
   computation, and the same computation in several programs, share one kernel.
2. plan_nest (elementwise, reduce): the loop nest a CPU target runs. gid is split as
   row * L + j, with L the gcd of every divisor applied to gid, so that index math
   becomes row arithmetic and j walks memory in unit steps. The innermost loop (j, or
   r for a reduce over a contiguous axis) is cut into regions where that pays: into
   equal pieces on which every IDIV/MOD/MIN/MAX of j is affine (a head split, a
   concat's pad masks), or at a causal mask's per-row split point, each half with the
   mask decided. A reduce whose loads are contiguous along j but not along r keeps the
   output row as its accumulator with j innermost ("column" layout).
3. wgsl_launch: threads and tiles for WebGPU: outputs per thread of elementwise
   kernels, the thread layout of reductions (lanes per output, which index is fastest,
   accumulators per lane) from the loads' strides, the matmul tile (and split-K).
4. wasm_launch: the blocked matmul's register tile and cache blocks, or the scatter
   form of a one-hot matmul.

Every decision is plain data in `Kernel.decisions` (shown in the .kir dump and the
manifest) and the renderers only read it. docs/architecture.md lists where each
decision is made.
"""

from __future__ import annotations

import math
import os

from tgc.ir import kernel as K
from tgc.ir import schedule as S
from tgc.ir.affine import Aff, AffineIn, Unresolved, to_expr
from tgc.ir.kernel import Interner, Kernel, KExpr, Nest, Region, canonical, const, kernel_key, rebuild, walk
from tgc.ir.ops import Op

# ---------------------------------------------------------------- dedup


def dedup(schedules: dict) -> tuple[dict[str, Kernel], dict[str, list[tuple[str, tuple[str, ...]]]]]:
    """(distinct kernels by name, per program its launches: (kernel name, tensors bound to
    its parameters)). Kernels are named k<n>_<kind> in order of first use."""
    intern = Interner()
    kernels: dict[str, Kernel] = {}
    by_key: dict[tuple, str] = {}
    launches: dict[str, list] = {}
    for pname, s in schedules.items():
        out = launches[pname] = []
        for k in s.kernels:
            c, tensors = canonical(k, s.tensors, intern)
            key = kernel_key(c)
            name = by_key.get(key)
            if name is None:
                name = by_key[key] = f"k{len(kernels)}_{c.kind}"
                c.name = name
                kernels[name] = c
            out.append((name, tuple(tensors)))
    return kernels, launches


# ---------------------------------------------------------------- plan_nest


def _subst(e: KExpr, fn, memo: dict) -> KExpr:
    """e rebuilt bottom-up with fn(node) -> replacement or None."""

    def post(x: KExpr, srcs: tuple) -> KExpr:
        return x if all(a is b for a, b in zip(srcs, x.srcs)) else KExpr(x.op, x.dtype, srcs, x.arg, x.vmin, x.vmax)

    return rebuild(e, post, memo, pre=fn)


def split_gid(k: Kernel) -> tuple[int, int, KExpr, KExpr, list]:
    """gid = row * L + j (L the gcd of the divisors applied to gid): (rows, L, row, j, outputs
    with GIDX replaced, every IDIV/MOD of gid turned into row arithmetic)."""
    roots = [e for _, e in k.outputs]
    divs = [e.srcs[1].arg for e in walk(roots) if e.op in (Op.IDIV, Op.MOD) and e.srcs[0].op is Op.GIDX]
    L = math.gcd(*divs) if divs else k.size
    L = L if k.size % L == 0 else 1
    rows = k.size // L
    row, j = K.axis("row", rows), K.axis("j", L)

    def fn(e):
        if e.op is Op.GIDX:
            return row * L + j
        if e.op in (Op.IDIV, Op.MOD) and e.srcs[0].op is Op.GIDX:
            q = e.srcs[1].arg // L
            return row // q if e.op is Op.IDIV else (row % q) * L + j
        return None

    memo: dict = {}
    return rows, L, row, j, [(t, _subst(e, fn, memo)) for t, e in k.outputs]


def _piece(outs, j: KExpr, j0: int, P: int):
    """outs on j in [j0, j0 + P): every IDIV/MOD/MIN/MAX of j resolved to affine index math
    (and compares against j decided), so loads walk j with constant strides. Raises
    Unresolved when some index op does not resolve on this piece."""
    aff = AffineIn(j, j0, P)
    has_j = aff.has_j
    jn = KExpr(Op.AXIS, "i32", (), j.arg, j0, j0 + P - 1)  # j, its bounds narrowed to the piece

    def absolute(a: Aff) -> KExpr:  # AffineIn counts from j0: terms + cj * (j - j0) + k
        return to_expr(Aff(a.terms, a.cj, a.k - a.cj * j0), jn)

    def fn(e):
        if not has_j(e):
            return e
        if e == j:
            return jn
        if e.dtype == "i32" and e.op is not Op.LOAD:
            return absolute(aff(e))
        if e.op in _CMP and e.srcs[0].dtype == "i32":
            try:
                d = aff(e.srcs[0]) + aff(e.srcs[1]).scale(-1)
            except Unresolved:
                return None
            if d.terms:
                return None
            lo, hi = sorted((d.k, d.k + d.cj * (P - 1)))
            if e.op is Op.CMPLT and (hi < 0 or lo >= 0):
                return const(1.0 if hi < 0 else 0.0, "f32")
            if e.op is Op.CMPEQ and (lo == hi or lo > 0 or hi < 0):
                return const(1.0 if lo == hi == 0 else 0.0, "f32")
        return None

    memo: dict = {}
    return tuple((t, _subst(e, fn, memo)) for t, e in outs)


_CMP = (Op.CMPLT, Op.CMPEQ)


def split_pieces(L: int, j: KExpr, outs) -> list[Region] | None:
    """When the inner loop divides, takes remainders of, or clamps j, cut [0, L) into the
    largest equal pieces on which all of that is affine; None when nothing needs it or no
    cut resolves."""
    if not any(e.op in (Op.IDIV, Op.MOD, Op.MAX, Op.MIN) and e.dtype == "i32" and any(x is j or x == j for x in walk([e]))
               for e in walk([x for _, x in outs])):  # fmt: skip
        return None
    for P in sorted((d for d in range(4, L + 1) if L % d == 0 and L // d <= 32), reverse=True):
        try:
            return [Region(const(j0), const(j0 + P), _piece(outs, j, j0, P)) for j0 in range(0, L, P)]
        except Unresolved:
            continue
    return None


def compare_split(v: KExpr, outs):
    """A mask `x < y` with x - y = +-v + r (r free of the loop index v, like the causal
    mask's key <= query): (the compare, r, sign), or None. The mask is 1 on one side of a
    split point and 0 on the other."""
    aff = AffineIn(v)
    for e in walk([x for _, x in outs]):
        if e.op is Op.CMPLT and e.srcs[0].dtype == "i32" and aff.has_j(e):
            try:
                d = aff(e.srcs[0]) + aff(e.srcs[1]).scale(-1)
            except Unresolved:
                continue
            if d.cj in (1, -1):
                return e, to_expr(Aff(d.terms, 0, d.k)), d.cj
    return None


def _decide(outs, cmp: KExpr, value: float):
    memo: dict = {}
    return tuple((t, _subst(e, lambda x: const(value, "f32") if x is cmp or x == cmp else None, memo)) for t, e in outs)


def _clamp(x: KExpr, n: int) -> KExpr:
    lo = KExpr(Op.MAX, "i32", (x, const(0)), None, max(x.vmin, 0), max(x.vmax, 0))
    return KExpr(Op.MIN, "i32", (lo, const(n)), None, min(lo.vmin, n), min(lo.vmax, n))


def halves(v: KExpr, n: int, outs) -> list[Region]:
    """[0, n) as one region, or cut in two at a compare_split's point, the mask decided in each."""
    split = compare_split(v, outs)
    outs = tuple(outs)
    if split is None:
        return [Region(const(0), const(n), outs)]
    cmp, rest, sign = split  # the mask holds for v < -rest (sign 1) or v > rest (sign -1)
    at = _clamp(K.imul(rest, -1) if sign == 1 else K.iadd(rest, 1), n)
    first = 1.0 if sign == 1 else 0.0
    return [Region(const(0), at, _decide(outs, cmp, first)), Region(at, const(n), _decide(outs, cmp, 1.0 - first))]


def _unit_stride_in(e: KExpr, var: KExpr) -> bool:
    """Does some load's index move by one element per step of `var`?"""
    for x in walk([e]):
        if x.op is Op.LOAD:
            idx = x.srcs[0]
            if idx is var or idx == var or (idx.op is Op.ADD and var in idx.srcs):
                return True
    return False


def nest_form(k: Kernel) -> tuple[int, int, list]:
    """(rows, L, outputs over the axes row < rows, j < L and, for a reduce, r): gid split as
    row * L + j, RIDX as the axis r."""
    rows, L, _, _, outs = split_gid(k)
    if k.kind == "reduce":
        r = K.axis("r", k.reduce_len)
        outs = [(t, _subst(e, lambda x: r if x.op is Op.RIDX else None, {})) for t, e in outs]
    return rows, L, outs


def plan_nest(k: Kernel) -> Kernel:
    if k.kind == "matmul":
        return k
    rows, L, outs = nest_form(k)
    j = K.axis("j", L)
    if k.kind == "elementwise":
        regions = split_pieces(L, j, outs) or halves(j, L, outs)
        k.nest = Nest((("row", rows), ("j", L)), "j", tuple(regions))
        return k
    r = K.axis("r", k.reduce_len)
    ((t, e),) = outs
    if L >= 4 and not _unit_stride_in(e, r) and _unit_stride_in(e, j):
        # reduce over a non-contiguous axis: the output row is the accumulator, j innermost
        k.nest = Nest((("row", rows), ("r", k.reduce_len), ("j", L)), "j", (Region(const(0), const(L), ((t, e),)),))
    else:  # one accumulator per output, r innermost (cut at a causal mask)
        k.nest = Nest((("row", rows), ("j", L), ("r", k.reduce_len)), "r", tuple(halves(r, k.reduce_len, [(t, e)])))
    return k


# ---------------------------------------------------------------- wgsl_launch

WG = 256  # elementwise / reduce workgroup size
# template features that can be switched off (benchmarks and tests compare them), e.g.
# TGC_WGSL_OPTIONS=-prefetch,-splitk
OPTIONS = {"prefetch": True, "splitk": True, "waste": True, "ew_multi": True, "reduce_shape": True}
for _o in os.environ.get("TGC_WGSL_OPTIONS", "").split(","):
    if _o.strip("+-") in OPTIONS:
        OPTIONS[_o.strip("+-")] = not _o.startswith("-")

# matmul tiles: BM x BN outputs per workgroup of TY x TX threads (x S k-groups); each thread
# owns QM x QN quadrants of 4x4 outputs; BK deep k slices per k-group. With S > 1 the S
# groups each take BK of every S*BK deep slice and their partial sums meet in workgroup
# memory at the end, in a fixed order (split-K inside one workgroup: deterministic).
TILES = (
    {"BM": 128, "BN": 128, "BK": 16, "TY": 16, "TX": 16, "QM": 2, "QN": 2, "S": 1},
    {"BM": 64, "BN": 64, "BK": 16, "TY": 16, "TX": 16, "QM": 1, "QN": 1, "S": 1},
    {"BM": 32, "BN": 32, "BK": 16, "TY": 8, "TX": 8, "QM": 1, "QN": 1, "S": 1},
    {"BM": 32, "BN": 32, "BK": 16, "TY": 8, "TX": 8, "QM": 1, "QN": 1, "S": 4},
)
SPLIT_K = TILES[3]


def tile_name(t: dict) -> str:
    return f"{t['BM']}x{t['BN']}" + (f"s{t['S']}" if t["S"] > 1 else "")


def tile_smem_bytes(t: dict) -> int:
    return 4 * t["BK"] * t["S"] * (t["BM"] + t["BN"])


def choose_tile(M: int, N: int, batch: int, K: int = 0) -> dict:
    """The largest tile that still gives the GPU a few hundred workgroups and does not
    pad M or N by more than a quarter; split-K inside the workgroup for long-K products
    with few output tiles (weight gradients)."""

    def groups(t):
        return batch * -(-M // t["BM"]) * -(-N // t["BN"])

    def waste_ok(t):
        if not OPTIONS["waste"]:
            return True
        return -(-M // t["BM"]) * t["BM"] <= 1.25 * max(M, 32) and -(-N // t["BN"]) * t["BN"] <= 1.25 * max(N, 32)

    for t in TILES[:2]:
        if groups(t) >= 128 and waste_ok(t):
            return t
    if OPTIONS["splitk"] and K >= 8 * SPLIT_K["BK"] * SPLIT_K["S"] and groups(TILES[2]) < 512:
        return SPLIT_K
    return TILES[2]


def elementwise_per_thread(size: int) -> int:
    """Outputs per thread: 4 (or 2) where that still leaves at least 512 workgroups, so
    that each thread has several independent loads in flight."""
    if not OPTIONS["ew_multi"]:
        return 1
    for e in (4, 2):
        if size >= e * WG * 512:
            return e
    return 1


def reduce_lanes(reduce_len: int) -> int:
    """Threads cooperating on one output: a power of two, about reduce_len / 4, at most WG."""
    lanes = 1
    while lanes * 2 <= min(WG, max(1, reduce_len // 4)):
        lanes *= 2
    return lanes


def load_strides(k: Kernel) -> list[tuple[int | None, int | None]]:
    """(stride along gid between neighbouring outputs, stride along ridx) of every load of a
    reduce kernel, from the affine forms of its nest form; None where not constant."""
    rows, L, ((_, e),) = nest_form(k)
    along_gid, n = (K.axis("j", L), L) if L > 1 else (K.axis("row", rows), rows)

    def stride(idx, var, n):
        if n <= 1:
            return None
        try:
            return AffineIn(var, 0, n)(idx).cj
        except Unresolved:
            return None

    return [(stride(x.srcs[0], along_gid, n), stride(x.srcs[0], K.axis("r", k.reduce_len), k.reduce_len))
            for x in walk([e]) if x.op is Op.LOAD]  # fmt: skip


def reduce_shape(k: Kernel) -> dict:
    """lanes, outputs_fast, unroll for a reduce kernel.

    lanes fastest (the default): the lanes of one output are consecutive threads, right
    when the loads walk ridx contiguously (row reductions). outputs_fast: consecutive
    threads take consecutive outputs and the lanes lie WG / lanes apart, right when the
    loads are contiguous along gid and strided along ridx (column reductions); then at
    least 32 outputs share a workgroup so that a warp's loads coalesce. `unroll`
    independent accumulators per lane keep several loads in flight on long rows (the
    combining order is fixed: still deterministic)."""
    lanes = reduce_lanes(k.reduce_len)
    if not OPTIONS["reduce_shape"]:
        return {"lanes": lanes, "outputs_fast": False, "unroll": 1}
    strides = load_strides(k)
    row = any(dr in (1, -1) for _, dr in strides)
    col = any(dg in (1, -1) for dg, dr in strides if dr not in (1, -1))
    outputs_fast = bool(strides) and col and not row and k.size > 1
    if outputs_fast:
        while lanes > 1 and (WG // lanes < 32 or lanes * 8 > k.reduce_len):
            lanes //= 2
    iters = -(-k.reduce_len // lanes)
    unroll = 8 if iters >= 64 else 4 if iters >= 8 else 1
    return {"lanes": lanes, "outputs_fast": outputs_fast, "unroll": unroll}


def wgsl_launch(k: Kernel) -> Kernel:
    if k.kind == "elementwise":
        d = {"workgroup": WG, "per_thread": elementwise_per_thread(k.size)}
    elif k.kind == "reduce":
        d = {"workgroup": WG, **reduce_shape(k)}
    else:
        d = {"tile": dict(choose_tile(k.M, k.N, math.prod(k.batch), k.K)), "prefetch": OPTIONS["prefetch"]}
    split = [S.chunking(4 * p.elements) for p in k.params]  # (bindings, bytes each) per parameter
    if any(n > 1 for n, _ in split):
        d["chunks"] = [n for n, _ in split]
        d["chunk_bytes"] = [b if n > 1 else None for n, b in split]
    k.decisions = {**k.decisions, "wgsl": d}
    return k


# ---------------------------------------------------------------- wasm_launch

# the blocked matmul (docs/wasm.md): an MR x NR register tile of <4 x float> accumulators,
# A packed in MC x KC blocks (L2), B in KC x NC panels (L3), an NR-wide B sliver in L1.
# 4 x 8 keeps the 8 accumulators, 2 B vectors, A's column and its broadcast in x86's 16
# vector registers under Cranelift (4 x 16 spilled half its accumulators every k step).
BLOCKING = {"MR": 4, "NR": 8, "KC": 256, "MC": 128, "NC": 2048}


def wasm_launch(k: Kernel) -> Kernel:
    if k.kind == "matmul":
        d = {"form": "scatter"} if k.a_onehot is not None else {"form": "blocked", **BLOCKING}
    else:
        d = {"loops": [name for name, _ in k.nest.axes], "cut": k.nest.cut, "regions": len(k.nest.regions)}
    k.decisions = {**k.decisions, "wasm": d}
    return k


PIPELINE = (("plan_nest", plan_nest), ("wgsl_launch", wgsl_launch), ("wasm_launch", wasm_launch))


def run_kernel_passes(kernels: dict[str, Kernel], verify: bool = False) -> dict[str, Kernel]:
    """The kernel pass pipeline over distinct kernels, top to bottom; with `verify`, the
    kernel-IR verifier (tgc/ir/kverify.py) after every pass."""
    from tgc.ir.kverify import verify_kernel

    for name, p in PIPELINE:
        for k in kernels.values():
            p(k)
            if verify:
                verify_kernel(k, after=name)
    return kernels


