"""The WGSL renderer: scheduled kernels (tgc/ir/kernel.py) -> WebGPU compute shaders.

Binding scheme (docs/wgsl.md): a kernel binds whole *buffers*, never tensors. Every
distinct buffer it touches is one `array<f32>` storage binding (read_write if the
kernel writes any tensor in it), numbered from 0 in order of first use; tensors are
compile-time element offsets into their buffer; i32 tensors (token ids) are the
same words read and written through bitcast. The uniform block is one
`var<uniform>` struct after the storage bindings, bound only by kernels that read
a uniform. Runtime values stay uniforms: nothing about a step is baked in.

Three templates, one per kernel kind; the scalar expression DAG is rendered once
per node as a `let` through the OPS table. Elementwise kernels give large index
spaces 2 or 4 outputs per thread; reductions pick their thread layout from the
strides of their loads (row vs column) and keep several accumulators per lane;
matmuls prefetch the next k slice into registers, avoid tiles that are mostly
padding and split K inside the workgroup for weight gradients (docs/wgsl.md).
Not here: vec4 loads in elementwise kernels, a GEMV path for decode, subgroups and
f16 (browser defaults only).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tgc.codegen.base import Layout
from tgc.errors import TgcError
from tgc.ir.kernel import Kernel, KExpr, walk
from tgc.ir.ops import Op

# browser WebGPU defaults the generated code stays within
MAX_STORAGE_BUFFERS = 8
MAX_WORKGROUP_BYTES = 16384
MAX_INVOCATIONS = 256
MAX_DISPATCH = 65535
WG = 256  # elementwise / reduce workgroup size
# template features that can be switched off (benchmarks and tests compare them)
OPTIONS = {"prefetch": True, "splitk": True, "waste": True, "ew_multi": True, "reduce_shape": True}
for _o in os.environ.get("TGC_WGSL_OPTIONS", "").split(","):  # e.g. "-prefetch,-splitk"
    if _o.strip("+-") in OPTIONS:
        OPTIONS[_o.strip("+-")] = not _o.startswith("-")

TYPES = {"f32": "f32", "i32": "i32"}

# op -> WGSL text from rendered operands (type map and op map in one table)
OPS = {
    Op.ADD: lambda a, b: f"({a} + {b})",
    Op.SUB: lambda a, b: f"({a} - {b})",
    Op.MUL: lambda a, b: f"({a} * {b})",
    Op.DIV: lambda a, b: f"({a} / {b})",
    Op.IDIV: lambda a, b: f"({a} / {b})",  # operands >= 0: truncation is floor
    Op.MOD: lambda a, b: f"({a} % {b})",
    Op.MAX: lambda a, b: f"max({a}, {b})",
    Op.MIN: lambda a, b: f"min({a}, {b})",
    Op.NEG: lambda a: f"(-{a})",
    Op.EXP: lambda a: f"exp({a})",
    Op.LOG: lambda a: f"log({a})",
    Op.SQRT: lambda a: f"sqrt({a})",
    Op.RECIP: lambda a: f"(1.0 / {a})",
    Op.TANH: lambda a: f"tanh(clamp({a}, -15.0, 15.0))",  # some drivers give NaN for large |x|
    Op.ERF: lambda a: f"tgc_erf({a})",
    Op.COS: lambda a: f"cos({a})",
    Op.CMPLT: lambda a, b: f"select(0.0, 1.0, {a} < {b})",
    Op.CMPEQ: lambda a, b: f"select(0.0, 1.0, {a} == {b})",
    Op.WHERE: lambda c, a, b: f"select({b}, {a}, {c} != 0.0)",
}

# erf has no WGSL builtin: a Taylor series near 0 (relative error < 1e-7), elsewhere
# Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7).
ERF_FN = """fn tgc_erf(x: f32) -> f32 {
  let z = abs(x);
  if (z < 0.5) {
    let x2 = x * x;
    return x * (1.1283791671 + x2 * (-0.3761263890 + x2 * (0.1128379167 + x2 * (-0.0268661706 + x2 * (0.0052239776 + x2 * -0.0008548327)))));
  }
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return sign(x) * (1.0 - r);
}
"""


@dataclass
class RenderedKernel:
    name: str
    source: str
    bindings: list[tuple[int, str, str]]  # (binding, buffer, "read" | "read_write")
    workgroup_size: tuple[int, int, int]
    dispatch: tuple[int, int, int]
    uniform_binding: int | None = None
    workgroup_bytes: int = 0
    info: dict = field(default_factory=dict)


def uniform_field(name: str) -> str:
    return "u_" + "".join(c if c.isalnum() else "_" for c in name)


def _const(e: KExpr) -> str:
    if e.dtype == "i32":
        return f"{int(e.arg)}i"
    v = float(np.float32(e.arg))
    if math.isinf(v):
        return "bitcast<f32>(0x7f800000u)" if v > 0 else "bitcast<f32>(0xff800000u)"
    if math.isnan(v):
        return "bitcast<f32>(0x7fc00000u)"
    return f"{v!r}f"


class _Exprs:
    """Renders a KExpr DAG as `let` lines, each shared node once."""

    def __init__(self, layout: Layout, buf_var: dict[str, str], leaves: dict[Op, str]):
        self.layout, self.buf_var, self.leaves = layout, buf_var, leaves
        self.names: dict[KExpr, str] = {}
        self.lines: list[str] = []

    def __call__(self, e: KExpr) -> str:
        if e in self.names:
            return self.names[e]
        op = e.op
        if op is Op.CONST:
            return _const(e)
        if op in self.leaves:
            return self.leaves[op]
        if op is Op.UNIFORM:
            return f"u.{uniform_field(e.arg)}"
        if op is Op.LOAD:
            idx = self(e.srcs[0])
            off = self.layout.element_offset(e.arg)
            buf = self.buf_var[self.layout.places[e.arg][0]]
            text = f"{buf}[{off} + {idx}]" if off else f"{buf}[{idx}]"
            text = f"bitcast<i32>({text})" if e.dtype == "i32" else text
        elif op is Op.CAST:
            text = f"{TYPES[e.arg]}({self(e.srcs[0])})"
        else:
            fn = OPS.get(op)
            if fn is None:
                raise TgcError(f"WGSL: no lowering for op {op.name}")
            text = fn(*(self(s) for s in e.srcs))
        n = f"v{len(self.lines)}"
        self.lines.append(f"let {n}: {TYPES[e.dtype]} = {text};")
        self.names[e] = n
        return n


def _bindings(k: Kernel, layout: Layout) -> tuple[list[tuple[int, str, str]], dict[str, str]]:
    """One binding per distinct buffer, in order of first use; read_write when written."""
    writes = {layout.places[t][0] for t in k.writes()}
    order: list[str] = []
    for t in [*k.writes(), *sorted(k.loads())]:
        b = layout.places[t][0]
        if b not in order:
            order.append(b)
    if len(order) > MAX_STORAGE_BUFFERS:
        raise TgcError(
            f"kernel {k.name} needs {len(order)} storage buffers ({', '.join(order)}); "
            f"WebGPU allows {MAX_STORAGE_BUFFERS} per stage: split the kernel or the buffers"
        )
    binds = [(i, b, "read_write" if b in writes else "read") for i, b in enumerate(order)]
    return binds, {b: f"buf{i}" for i, b, _ in binds}


def _header(binds, layout: Layout, uses_uniforms: bool) -> tuple[str, int | None]:
    lines = []
    for i, b, access in binds:
        lines.append(f"@group(0) @binding({i}) var<storage, {access}> buf{i}: array<f32>;  // {b}")
    ub = None
    if uses_uniforms:
        ub = len(binds)
        fields = sorted(layout.uniforms.items(), key=lambda kv: kv[1][0])
        body = "".join(f"  {uniform_field(n)}: {TYPES[d]},\n" for n, (_, d) in fields)
        lines.append(f"struct Uniforms {{\n{body}}}")
        lines.append(f"@group(0) @binding({ub}) var<uniform> u: Uniforms;")
    return "\n".join(lines) + "\n", ub


def _store(layout: Layout, buf_var, tensor: str, idx: str, value: str, dtype: str) -> str:
    off = layout.element_offset(tensor)
    val = f"bitcast<f32>({value})" if dtype == "i32" else value
    return f"{buf_var[layout.places[tensor][0]]}[{off} + {idx}] = {val};"


def _grid(groups: int) -> tuple[int, int, int]:
    """1D workgroup count spilled into y past the 65535 limit."""
    if groups <= MAX_DISPATCH:
        return (max(groups, 1), 1, 1)
    y = -(-groups // MAX_DISPATCH)
    return (-(-groups // y), y, 1)


# ------------------------------------------------------------------ elementwise


def elementwise_per_thread(size: int) -> int:
    """Outputs per thread: 4 (or 2) where that still leaves at least 512 workgroups, so
    that each thread has several independent loads in flight."""
    if not OPTIONS["ew_multi"]:
        return 1
    for e in (4, 2):
        if size >= e * WG * 512:
            return e
    return 1


def _elementwise(k: Kernel, layout: Layout, buf_var) -> tuple[str, tuple, tuple]:
    ept = elementwise_per_thread(k.size)
    grid = _grid(-(-k.size // (WG * ept)))
    blocks = []
    for j in range(ept):
        ex = _Exprs(layout, buf_var, {Op.GIDX: "gidx"})
        vals = [ex(e) for _, e in k.outputs]
        stores = [_store(layout, buf_var, t, "gidx", v, e.dtype) for (t, e), v in zip(k.outputs, vals)]
        body = "\n    ".join(ex.lines + stores)
        blocks.append(f"""{{
    let gidx = g0 + {j * WG};
    if (gidx < {k.size}) {{
    {body}
    }}
  }}""")
    # one thread: outputs g0, g0 + WG, ... (a warp's loads stay contiguous)
    src = f"""@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
  let g0 = i32((wid.y * {grid[0]}u + wid.x) * {WG * ept}u + lid);
  {chr(10).join('  ' + b if i else b for i, b in enumerate(blocks))}
}}
"""
    return src, (WG, 1, 1), grid


# ------------------------------------------------------------------ index analysis


def _eval_index(e: KExpr, g: int, r: int, memo: dict):
    """An i32 index expression at gidx = g, ridx = r; None where it depends on loaded
    data (token ids) or on anything but constants and the two indices."""
    if e in memo:
        return memo[e]
    op = e.op
    if op is Op.CONST:
        v = int(e.arg) if e.dtype == "i32" else None
    elif op is Op.GIDX:
        v = g
    elif op is Op.RIDX:
        v = r
    elif op in (Op.ADD, Op.SUB, Op.MUL, Op.IDIV, Op.MOD, Op.MAX, Op.MIN) and e.dtype == "i32":
        a, b = (_eval_index(x, g, r, memo) for x in e.srcs)
        if a is None or b is None:
            v = None
        elif op is Op.ADD:
            v = a + b
        elif op is Op.SUB:
            v = a - b
        elif op is Op.MUL:
            v = a * b
        elif op is Op.MAX:
            v = max(a, b)
        elif op is Op.MIN:
            v = min(a, b)
        elif b == 0:
            v = None
        else:  # operands are non-negative: truncation is floor
            v = a // b if op is Op.IDIV else a % b
    else:
        v = None
    memo[e] = v
    return v


def _loads(e: KExpr) -> list[KExpr]:
    return [x for x in walk([e]) if x.op is Op.LOAD]


def load_strides(e: KExpr, size: int, reduce_len: int) -> list[tuple[int | None, int | None]]:
    """(stride along gidx, stride along ridx) of every load of `e`, from a few sample
    points; None where the step is not the same at every sample."""
    gs = sorted({0, max(0, size // 2 - 1), max(0, size - 2)})
    rs = sorted({0, max(0, reduce_len // 2 - 1), max(0, reduce_len - 2)})
    out = []
    for ld in _loads(e):
        idx = ld.srcs[0]

        def at(g, r, idx=idx):
            return _eval_index(idx, g, r, {})

        dg, dr = set(), set()
        for g in gs:
            for r in rs:
                v = at(g, r)
                if v is None:
                    dg.add(None)
                    dr.add(None)
                    continue
                if size > 1:
                    w = at(g + 1, r)
                    dg.add(None if w is None else w - v)
                if reduce_len > 1:
                    w = at(g, r + 1)
                    dr.add(None if w is None else w - v)
        out.append((dg.pop() if len(dg) == 1 else None, dr.pop() if len(dr) == 1 else None))
    return out


# ------------------------------------------------------------------ reduce


def reduce_lanes(reduce_len: int) -> int:
    """Threads cooperating on one output: a power of two, about reduce_len / 4, at most WG."""
    lanes = 1
    while lanes * 2 <= min(WG, max(1, reduce_len // 4)):
        lanes *= 2
    return lanes


def reduce_shape(k: Kernel) -> tuple[int, bool, int]:
    """(lanes, outputs_fast, unroll) for a reduce kernel.

    lanes_fast (the default): the lanes of one output are consecutive threads, right
    when the loads walk ridx contiguously (row reductions). outputs_fast: consecutive
    threads take consecutive outputs and the lanes lie WG / lanes apart, right when the
    loads are contiguous along gidx and strided along ridx (column reductions); then at
    least 32 outputs share a workgroup so that a warp's loads coalesce. `unroll`
    independent accumulators per lane keep several loads in flight on long rows (the
    combining order is fixed: still deterministic)."""
    lanes = reduce_lanes(k.reduce_len)
    if not OPTIONS["reduce_shape"]:
        return lanes, False, 1
    (_, e), = k.outputs
    strides = load_strides(e, k.size, k.reduce_len)
    row = any(dr in (1, -1) for _, dr in strides)
    col = any(dg in (1, -1) for dg, dr in strides if dr not in (1, -1))
    outputs_fast = bool(strides) and col and not row and k.size > 1
    if outputs_fast:
        while lanes > 1 and (WG // lanes < 32 or lanes * 8 > k.reduce_len):
            lanes //= 2
    iters = -(-k.reduce_len // lanes)
    unroll = 8 if iters >= 64 else 4 if iters >= 8 else 1
    return lanes, outputs_fast, unroll


def _reduce(k: Kernel, layout: Layout, buf_var) -> tuple[str, tuple, tuple]:
    # WG threads = (WG / lanes) outputs x lanes; each lane strides over ridx with
    # `unroll` accumulators, then a fixed-order tree in workgroup memory: deterministic,
    # no atomics.
    lanes, ofast, unroll = reduce_shape(k)
    per_group = WG // lanes
    (t, e), = k.outputs
    is_sum = k.reduce_op is Op.SUM
    init = "0.0" if is_sum else "bitcast<f32>(0xff800000u)"
    comb = (lambda a, b: f"{a} + {b}") if is_sum else (lambda a, b: f"max({a}, {b})")
    grid = _grid(-(-k.size // per_group))
    R = k.reduce_len

    def body(ridx: str, acc: str) -> str:
        ex = _Exprs(layout, buf_var, {Op.GIDX: "gidx", Op.RIDX: "ridx"})
        val = ex(e)
        return "{ let ridx: i32 = " + ridx + ";\n        " + "\n        ".join(ex.lines) + f"\n        {acc} = {comb(acc, val)}; }}"

    accs = [f"acc{j}" for j in range(unroll)]
    decl = "\n    ".join(f"var {a}: f32 = {init};" for a in accs)
    if unroll > 1:
        blocks = "\n      ".join(body(f"r0 + {j * lanes}", a) for j, a in enumerate(accs))
        main = f"""for (; r0 + {(unroll - 1) * lanes} < {R}; r0 += {unroll * lanes}) {{
      {blocks}
    }}
    """
    else:
        main = ""
    tail = f"""for (; r0 < {R}; r0 += {lanes}) {{
      {body("r0", "acc0")}
    }}"""
    # fixed pairwise order
    parts = list(accs)
    while len(parts) > 1:
        parts = [f"({comb(parts[i], parts[i + 1])})" if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    if ofast:
        lane_of, out_of = f"lid / {per_group}u", f"lid % {per_group}u"
        step = per_group
    else:
        lane_of, out_of = f"lid % {lanes}u", f"lid / {lanes}u"
        step = 1
    tree = ""
    s = lanes // 2
    while s >= 1:
        tree += f"  if (lane < {s}u) {{ red[lid] = {comb('red[lid]', f'red[lid + {s * step}u]')}; }}\n  workgroupBarrier();\n"
        s //= 2
    src = f"""var<workgroup> red: array<f32, {WG}>;

// reduce over {R}: {lanes} lanes per output ({'outputs' if ofast else 'lanes'} fastest), {unroll} accumulators
@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
  let lane = {lane_of};
  let gidx = i32((wid.y * {grid[0]}u + wid.x) * {per_group}u + {out_of});
  var acc: f32 = {init};
  if (gidx < {k.size}) {{
    {decl}
    var r0: i32 = i32(lane);
    {main}{tail}
    acc = {parts[0]};
  }}
  red[lid] = acc;
  workgroupBarrier();
{tree}  if (lane == 0u && gidx < {k.size}) {{
    {_store(layout, buf_var, t, 'gidx', 'red[lid]', 'f32')}
  }}
}}
"""
    return src, (WG, 1, 1), grid


# ------------------------------------------------------------------ matmul


@dataclass(frozen=True)
class Tile:
    """BM x BN outputs per workgroup of TY x TX threads (x S k-groups); each thread owns
    QM x QN quadrants of 4x4 outputs, quadrants BM/QM (BN/QN) apart; BK deep k slices per
    k-group. With S > 1 the S groups of TY x TX threads each take BK of every S*BK deep
    slice and their partial sums meet in workgroup memory at the end, in a fixed order
    (split-K inside one workgroup: no atomics, deterministic)."""

    BM: int
    BN: int
    BK: int
    TY: int
    TX: int
    QM: int
    QN: int
    S: int = 1

    @property
    def threads(self) -> int:
        return self.TY * self.TX * self.S

    @property
    def smem_bytes(self) -> int:
        return 4 * self.BK * self.S * (self.BM + self.BN)

    @property
    def name(self) -> str:
        return f"{self.BM}x{self.BN}" + (f"s{self.S}" if self.S > 1 else "")


TILES = (Tile(128, 128, 16, 16, 16, 2, 2), Tile(64, 64, 16, 16, 16, 1, 1), Tile(32, 32, 16, 8, 8, 1, 1),
         Tile(32, 32, 16, 8, 8, 1, 1, 4))
SPLIT_K = TILES[3]
# features of the matmul template that can be switched off (benchmarks compare them)



def choose_tile(M: int, N: int, batch: int, K: int = 0) -> Tile:
    """The largest tile that still gives the GPU a few hundred workgroups and does not
    pad M or N by more than a quarter; split-K inside the workgroup for long-K products
    with few output tiles (weight gradients)."""
    def groups(t):
        return batch * -(-M // t.BM) * -(-N // t.BN)

    def waste_ok(t):
        if not OPTIONS["waste"]:
            return True
        return -(-M // t.BM) * t.BM <= 1.25 * max(M, 32) and -(-N // t.BN) * t.BN <= 1.25 * max(N, 32)

    for t in TILES[:2]:
        if groups(t) >= 128 and waste_ok(t):
            return t
    small = TILES[2]
    if OPTIONS["splitk"] and K >= 8 * SPLIT_K.BK * SPLIT_K.S and groups(small) < 512:
        return SPLIT_K
    return small


def _tile_load(name: str, sm: str, outer: int, BK: int, threads: int, base: str, s_out: int, s_k: int,
               lim_out: int, lim_k: int, guard_out: bool, guard_k: bool, buf: str, kvar: str = "k0",
               onehot: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Copy a BK x outer slice into `sm` (k-major vec4s of 4 consecutive outer indices)
    with whole-vec4 stores; threads run along whichever dimension is contiguous.
    Returns (declarations, global loads into registers at k = `kvar`, stores into `sm`)
    so that the loads of the next slice can be issued before the current one is used."""
    quads = outer // 4
    n = BK * quads // threads
    decls, loads, stores = [], [], []
    for p in range(n):
        v = f"(lid + {p * threads}u)"
        if s_k == 1 and s_out != 1:
            kk, q = f"{v} % {BK}u", f"{v} / {BK}u"
        else:
            kk, q = f"{v} / {quads}u", f"{v} % {quads}u"
        reg = f"p{name}{p}"
        decls.append(f"let {reg}_s = ({kk}) * {quads}u + {q}; let {reg}_k = i32({kk}); let {reg}_o = {name}0 + 4 * i32({q});")
        decls.append(f"var {reg}: vec4<f32>;")
        comps = []
        for r in range(4):
            gk = f"({kvar} + {reg}_k)"
            if onehot:  # A[m, k] = (index[k] == m): the i32 index at `base`, nothing stored
                ok = f"{gk} < {lim_k}" if guard_k else "true"
                comps.append(f"select(0.0, 1.0, {ok} && bitcast<i32>({buf}[{base} + select(0, {gk}, {ok})]) == {reg}_o + {r})")
                continue
            idx = f"{base} + ({reg}_o + {r}) * {s_out} + {gk} * {s_k}"
            conds = ([f"{reg}_o + {r} < {lim_out}"] if guard_out else []) + ([f"{gk} < {lim_k}"] if guard_k else [])
            if conds:
                ok = " && ".join(conds)
                comps.append(f"select(0.0, {buf}[select(0, {idx}, {ok})], {ok})")
            else:
                comps.append(f"{buf}[{idx}]")
        loads.append(f"{reg} = vec4<f32>({', '.join(comps)});")
        stores.append(f"{sm}[{reg}_s] = {reg};")
    return decls, loads, stores


def _matmul(k: Kernel, layout: Layout, buf_var, tile: Tile | None = None) -> tuple[str, tuple, tuple, int, Tile]:
    M, N, K = k.M, k.N, k.K
    nb = math.prod(k.batch)
    t = tile or choose_tile(M, N, nb, K)
    a, b = k.a, k.b
    nd = len(k.batch)
    onehot = a is None  # A from an index tensor (Kernel.a_onehot); no batch then
    sam, sak = (0, 0) if onehot else (a.strides[nd], a.strides[nd + 1])
    sbk, sbn = b.strides[nd], b.strides[nd + 1]
    # batch offsets: unflatten wid.z over the batch dims
    pre = ["let bz = i32(wid.z);"]
    a_off = [str(layout.element_offset(k.a_onehot) if onehot else layout.element_offset(a.tensor) + a.offset)]
    b_off = [str(layout.element_offset(b.tensor) + b.offset)]
    rest = "bz"
    for d in reversed(range(nd)):
        pre.append(f"let bi{d} = {rest} % {k.batch[d]};")
        rest = f"({rest} / {k.batch[d]})"
        a_off.append(f"bi{d} * {a.strides[d]}")
        b_off.append(f"bi{d} * {b.strides[d]}")
    pre.append(f"let abase = {' + '.join(a_off)};")
    pre.append(f"let bbase = {' + '.join(b_off)};")
    pre.append(f"let cbase = {layout.element_offset(k.out)} + bz * {M * N};")
    KT = t.BK * t.S  # k depth of one slice in workgroup memory
    gm, gn, gk = M % t.BM != 0, N % t.BN != 0, K % KT != 0
    bufa, bufb = buf_var[layout.places[k.a_onehot if onehot else a.tensor][0]], buf_var[layout.places[b.tensor][0]]
    prefetch = OPTIONS["prefetch"]
    kv = "kn" if prefetch else "k0"
    da, la, sa_ = _tile_load("m", "As", t.BM, KT, t.threads, "abase", sam, sak, M, K, gm, gk, bufa, kv, onehot)
    db, lb, sb_ = _tile_load("n", "Bs", t.BN, KT, t.threads, "bbase", sbn, sbk, N, K, gn, gk, bufb, kv)
    qa, qb = t.BM // 4, t.BN // 4
    # acc c_i_r_j: row quadrant i, row r within it, column quadrant j (a vec4 of 4 columns)
    accs = [(i, r, j) for i in range(t.QM) for r in range(4) for j in range(t.QN)]
    decl = [f"var c_{i}_{r}_{j} = vec4<f32>(0.0);" for i, r, j in accs]
    kg = "kg + " if t.S > 1 else ""
    step = []  # the k loop unrolled, each step in its own block so `let` names repeat
    for kk in range(t.BK):
        step.append("{")
        for i in range(t.QM):
            step.append(f"  let a{i} = As[{kg}{kk * qa}u + ty + {i * qa // t.QM}u];")
        for j in range(t.QN):
            step.append(f"  let b{j} = Bs[{kg}{kk * qb}u + tx + {j * qb // t.QN}u];")
        for i, r, j in accs:
            step.append(f"  c_{i}_{r}_{j} = fma(vec4<f32>(a{i}.{'xyzw'[r]}), b{j}, c_{i}_{r}_{j});")
        step.append("}")
    ind = "\n  "
    ind4 = ind + "  "
    # the k range this tile needs (kernel.Band): aligned down to a slice, empty for a dead tile
    krange = ["let klo = 0;", f"let khi = {K};"]
    bd = k.band
    if bd is not None:
        lo = ["0"] + [f"{v} + {off}" for v, off in (("m0", bd.k_from_m), ("n0", bd.k_from_n)) if off is not None]
        hi = [str(K)] + [f"{v} + {off}" for v, off in ((f"min(m0 + {t.BM}, {M}) - 1", bd.k_to_m), (f"min(n0 + {t.BN}, {N}) - 1", bd.k_to_n)) if off is not None]
        dead = ([f"n0 > min(m0 + {t.BM}, {M}) - 1 + {bd.dead_above}"] if bd.dead_above is not None else []) + (
            [f"min(n0 + {t.BN}, {N}) - 1 < m0 + {bd.dead_below}"] if bd.dead_below is not None else [])
        mx = lambda xs: xs[0] if len(xs) == 1 else f"max({xs[0]}, {mx(xs[1:])})"
        mn = lambda xs: xs[0] if len(xs) == 1 else f"min({xs[0]}, {mn(xs[1:])})"
        khi = f"select({mn(hi)}, 0, {' || '.join(dead)})" if dead else mn(hi)
        krange = [f"let khi = {khi};", f"let klo = min(({mx(lo)}) / {KT} * {KT}, max(khi, 0));"]
    if prefetch:
        loop = f"""if (klo < khi) {{ let kn = klo;
    {ind4.join(la + lb)}
  }}
  for (var k0: i32 = klo; k0 < khi; k0 += {KT}) {{
    workgroupBarrier();
    {ind4.join(sa_ + sb_)}
    workgroupBarrier();
    if (k0 + {KT} < khi) {{
      let kn = k0 + {KT};
      {(ind4 + '  ').join(la + lb)}
    }}
    {ind4.join(step)}
  }}"""
    else:
        loop = f"""for (var k0: i32 = klo; k0 < khi; k0 += {KT}) {{
    workgroupBarrier();
    {ind4.join(la + lb)}
    {ind4.join(sa_ + sb_)}
    workgroupBarrier();
    {ind4.join(step)}
  }}"""
    # split-K: groups 1..S-1 park their sums in the (then free) tile memory, group 0 adds
    # them in group order and stores
    combine = []
    nacc = len(accs)
    if t.S > 1:
        tg = t.TX * t.TY
        cap_a = KT * qa
        combine.append("workgroupBarrier();")
        for g in range(1, t.S):
            combine.append(f"if (l.z == {g}u) {{")
            for n_, (i, r, j) in enumerate(accs):
                slot = (g - 1) * tg * nacc + n_
                arr, off = ("As", slot) if (g - 1) * tg * nacc + tg * nacc <= cap_a else ("Bs", slot - cap_a)
                combine.append(f"  {arr}[{off}u + tl * {nacc}u] = c_{i}_{r}_{j};")
            combine.append("}")
        combine.append("workgroupBarrier();")
        combine.append("if (l.z != 0u) { return; }")
        for g in range(1, t.S):
            for n_, (i, r, j) in enumerate(accs):
                slot = (g - 1) * tg * nacc + n_
                arr, off = ("As", slot) if (g - 1) * tg * nacc + tg * nacc <= cap_a else ("Bs", slot - cap_a)
                combine.append(f"c_{i}_{r}_{j} = c_{i}_{r}_{j} + {arr}[{off}u + tl * {nacc}u];")
        assert (t.S - 1) * tg * nacc <= KT * (qa + qb), "split-K partials do not fit the tile memory"
    store = []
    for i, r, j in accs:
        row = f"m0 + {i * t.BM // t.QM + r} + 4 * i32(ty)"
        col = f"n0 + {j * t.BN // t.QN} + 4 * i32(tx)"
        for c in range(4):
            cond = ([f"{row} < {M}"] if gm else []) + ([f"{col} + {c} < {N}"] if gn else [])
            st = f"{buf_var[layout.places[k.out][0]]}[cbase + ({row}) * {N} + {col} + {c}] = c_{i}_{r}_{j}.{'xyzw'[c]};"
            store.append(f"if ({' && '.join(cond)}) {{ {st} }}" if cond else st)
    wgs = (t.TX, t.TY, t.S)
    extra = ""
    if t.S > 1:
        extra = f"\n  let kg = l.z * {t.BK * qa}u;  // this k-group's rows of the slice (qa == qb)\n  let tl = l.y * {t.TX}u + l.x;"
        assert qa == qb
    src = f"""var<workgroup> As: array<vec4<f32>, {KT * qa}>;  // [BK*S][BM/4], k-major
var<workgroup> Bs: array<vec4<f32>, {KT * qb}>;  // [BK*S][BN/4]

// {k.out}[b, m, n] = sum_k A[b, m, k] * B[b, k, n]; M={M} N={N} K={K} batch={list(k.batch)}
// tile {t.BM}x{t.BN}x{t.BK}, {t.TY}x{t.TX} threads x {t.S} k-groups, {t.QM}x{t.QN} quadrants of 4x4 per thread{', next slice prefetched into registers' if prefetch else ''}
@compute @workgroup_size({wgs[0]}, {wgs[1]}, {wgs[2]})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let tx = l.x;
  let ty = l.y;{extra}
  let m0 = i32(wid.y) * {t.BM};
  let n0 = i32(wid.x) * {t.BN};
  {ind.join(pre)}
  {ind.join(decl)}
  {ind.join(da + db)}
  {ind.join(krange)}
  {loop}
  {ind.join(combine)}
  {ind.join(store)}
}}
"""
    grid = (-(-N // t.BN), -(-M // t.BM), nb)
    if max(grid) > MAX_DISPATCH:
        raise TgcError(f"kernel {k.name}: matmul grid {grid} exceeds {MAX_DISPATCH} workgroups per dimension")
    return src, wgs, grid, t.smem_bytes, t


# ------------------------------------------------------------------ entry points


def render_kernel(k: Kernel, layout: Layout, name: str | None = None) -> RenderedKernel:
    binds, buf_var = _bindings(k, layout)
    uses_u = bool(k.uniforms())
    head, ub = _header(binds, layout, uses_u)
    info, wg_bytes = {}, 0
    if k.kind == "elementwise":
        body, wgs, grid = _elementwise(k, layout, buf_var)
    elif k.kind == "reduce":
        body, wgs, grid = _reduce(k, layout, buf_var)
        lanes, ofast, unroll = reduce_shape(k)
        wg_bytes, info = 4 * WG, {"lanes": lanes, "outputs_fast": ofast, "unroll": unroll}
    elif k.kind == "matmul":
        body, wgs, grid, wg_bytes, t = _matmul(k, layout, buf_var)
        info = {"tile": [t.BM, t.BN, t.BK] + ([t.S] if t.S > 1 else [])}
    else:
        raise TgcError(f"kernel {k.name}: unknown kind {k.kind!r}")
    name = name or k.name
    src = f"// {name}: {k.kind} kernel generated by tgc\n" + head + "\n" + (ERF_FN + "\n" if "tgc_erf(" in body else "") + body
    return RenderedKernel(name, src, binds, wgs, grid, ub, wg_bytes, info)


def emit(compiled, manifest: dict, out_dir, dump_dir=None) -> dict:
    """Write kernels/<program>.<kernel>.wgsl for every launch and describe each launch's
    bindings and dispatch under launch["webgpu"]; also every tensor's place per program."""
    out_dir = Path(out_dir)
    kdir = out_dir / "kernels"
    kdir.mkdir(parents=True, exist_ok=True)
    stats = {"kernels": 0, "max_storage_buffers": 0, "max_workgroup_bytes": 0, "max_invocations": 0}
    for pname, prog in manifest["programs"].items():
        sched, layout = compiled.schedules[pname], compiled.layouts[pname]
        kernels = {f"{pname}.{k.name}": k for k in sched.kernels}
        for launch in prog["launches"]:
            r = render_kernel(kernels[launch["kernel"]], layout, launch["kernel"])
            rel = f"kernels/{r.name}.wgsl"
            (out_dir / rel).write_text(r.source)
            launch["webgpu"] = {
                "wgsl": rel,
                "bindings": [{"binding": i, "buffer": b, "access": a} for i, b, a in r.bindings],
                "uniform_binding": r.uniform_binding,
                "dispatch": list(r.dispatch),
                "workgroup_size": list(r.workgroup_size),
                "workgroup_bytes": r.workgroup_bytes,
                **r.info,
            }
            stats["kernels"] += 1
            stats["max_storage_buffers"] = max(stats["max_storage_buffers"], len(r.bindings))
            stats["max_workgroup_bytes"] = max(stats["max_workgroup_bytes"], r.workgroup_bytes)
            stats["max_invocations"] = max(stats["max_invocations"], math.prod(r.workgroup_size))
        prog["places"] = {
            t: {"buffer": layout.places[t][0], "offset": layout.places[t][1], "shape": list(info.shape), "dtype": info.dtype}
            for t, info in sched.tensors.items()
        }
    if dump_dir is not None:
        shutil.copytree(kdir, Path(dump_dir) / "wgsl", dirs_exist_ok=True)
    return {"dir": "kernels", **stats}
