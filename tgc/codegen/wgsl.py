"""The WGSL renderer: canonical kernels (tgc/ir/kernel.py) -> WebGPU compute shaders.

A kernel is rendered once, however many launches use it: its parameters are storage
bindings (parameter i at binding i, `read_write` and typed `array<f32>` or
`array<i32>`), bound at launch to the tensor's place, so nothing in the source says
where a tensor lives (docs/artifact.md). A parameter over the binding size is split
over several consecutive bindings and read and written through an accessor. The
uniform block is one `var<uniform>` struct after the storage bindings, bound only by
kernels that read a uniform.

Three templates, one per kernel kind, and the OPS table (an op's WGSL from its
operands' text; erf from its one definition in tgc/ir/kmath.py). Every choice a
template makes -- outputs per thread, the reduction's thread layout, the matmul tile,
prefetch, chunks -- was made by the kernel passes (tgc/ir/kpasses.py) and is read from
`kernel.decisions["wgsl"]`. Not here: vec4 loads in elementwise kernels, a GEMV path
for decode, subgroups and f16 (browser defaults only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tgc.errors import TgcError
from tgc.ir import kmath
from tgc.ir.kernel import Kernel, KExpr
from tgc.ir.ops import Op

MAX_DISPATCH = 65535
TYPES = {"f32": "f32", "i32": "i32"}

# op -> WGSL text from rendered operands
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
    Op.ERF: lambda a: f"tgc_erf({a})",  # tgc/ir/kmath.py
    Op.COS: lambda a: f"cos({a})",
    Op.RAND: lambda a, b: f"tgc_rand({a}, {b})",  # RAND_FNS below
    Op.CMPLT: lambda a, b: f"select(0.0, 1.0, {a} < {b})",
    Op.CMPEQ: lambda a, b: f"select(0.0, 1.0, {a} == {b})",
    Op.WHERE: lambda c, a, b: f"select({b}, {a}, {c} != 0.0)",
}


@dataclass
class RenderedKernel:
    name: str
    source: str
    workgroup_size: tuple[int, int, int]
    dispatch: tuple[int, int, int]
    uniform_binding: int | None
    workgroup_bytes: int
    chunks: list[int]  # bindings per parameter
    chunk_bytes: list  # per parameter: the size of each binding but the last, or None when not split


def uniform_field(name: str) -> str:
    return "u_" + "".join(c if c.isalnum() else "_" for c in name)


def _const(e: KExpr) -> str:
    if e.dtype == "i32":
        return f"{int(e.arg)}i"
    v = float(np.float32(e.arg))
    if math.isinf(v):
        return "tgc_f32_bits(0x7f800000u)" if v > 0 else NEG_INF
    if math.isnan(v):
        return "tgc_f32_bits(0x7fc00000u)"
    return f"{v!r}f"


# WGSL makes a constant expression that is inf or NaN a shader-creation error (Chrome's
# compiler enforces it; wgpu's naga does not): non-finite values come from their bits
# through a function parameter, which is not a constant expression.
NEG_INF = "tgc_f32_bits(0xff800000u)"
F32_BITS_FN = "fn tgc_f32_bits(b: u32) -> f32 { return bitcast<f32>(b); }\n"


class Params:
    """Loads and stores of a kernel's parameters: p<i>[idx], or through an accessor that
    picks the binding when the parameter is split into chunks."""

    def __init__(self, k: Kernel):
        self.k = k
        self.chunks = k.decisions["wgsl"].get("chunks") or [1] * len(k.params)
        self.chunk_bytes = k.decisions["wgsl"].get("chunk_bytes") or [None] * len(k.params)  # per split parameter

    def load(self, i: int, idx: str) -> str:
        return f"p{i}[{idx}]" if self.chunks[i] == 1 else f"ld_p{i}({idx})"

    def store(self, i: int, idx: str, value: str) -> str:
        return f"p{i}[{idx}] = {value};" if self.chunks[i] == 1 else f"st_p{i}({idx}, {value});"

    def declarations(self, uniforms: dict | None) -> tuple[str, int | None]:
        lines, b = [], 0
        for i, (p, n) in enumerate(zip(self.k.params, self.chunks)):
            ty = TYPES[p.dtype]
            if n == 1:
                lines.append(f"@group(0) @binding({b}) var<storage, read_write> p{i}: array<{ty}>;")
                b += 1
                continue
            CHUNK_ELEMENTS = self.chunk_bytes[i] // 4
            for c in range(n):
                lines.append(f"@group(0) @binding({b}) var<storage, read_write> p{i}_{c}: array<{ty}>;")
                b += 1
            ld = " ".join(f"if (i < {(c + 1) * CHUNK_ELEMENTS}) {{ return p{i}_{c}[i - {c * CHUNK_ELEMENTS}]; }}" for c in range(n - 1))
            st = " ".join(f"if (i < {(c + 1) * CHUNK_ELEMENTS}) {{ p{i}_{c}[i - {c * CHUNK_ELEMENTS}] = v; return; }}" for c in range(n - 1))
            last = f"p{i}_{n - 1}[i - {(n - 1) * CHUNK_ELEMENTS}]"
            lines.append(f"fn ld_p{i}(i: i32) -> {ty} {{ {ld} return {last}; }}")
            lines.append(f"fn st_p{i}(i: i32, v: {ty}) {{ {st} {last} = v; }}")
        ub = None
        if uniforms is not None:
            ub = b
            fields = sorted(uniforms.items(), key=lambda kv: kv[1][0])
            body = "".join(f"  {uniform_field(n)}: {TYPES[d]},\n" for n, (_, d) in fields)
            lines.append(f"struct Uniforms {{\n{body}}}")
            lines.append(f"@group(0) @binding({ub}) var<uniform> u: Uniforms;")
        return "\n".join(lines) + "\n", ub


class _Exprs:
    """Renders a KExpr DAG as `let` lines, each shared node once."""

    def __init__(self, params: Params | None, leaves: dict[Op, str]):
        self.params, self.leaves = params, leaves
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
            text = self.params.load(int(e.arg[1:]), self(e.srcs[0]))
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


# RAND: tgc/rng.py's mix (lowbias32) on u32, wrapping like the host's; top 24 bits / 2^24.
RAND_FNS = """fn tgc_mix(x0: u32) -> u32 {
  var x = x0;
  x = x ^ (x >> 16u); x = x * 0x7feb352du; x = x ^ (x >> 15u); x = x * 0x846ca68bu; x = x ^ (x >> 16u);
  return x;
}
fn tgc_rand(counter: i32, key: i32) -> f32 {
  return f32(tgc_mix(bitcast<u32>(key) + tgc_mix(bitcast<u32>(counter))) >> 8u) * 5.9604644775390625e-8;
}
"""


def math_functions(body: str) -> str:
    """The tgc/ir/kmath.py functions `body` calls (and tgc_f32_bits, tgc_rand), as WGSL functions."""
    out = [F32_BITS_FN] if "tgc_f32_bits(" in body else []
    if "tgc_rand(" in body:
        out.append(RAND_FNS)
    for op, definition in kmath.FUNCTIONS.items():
        name = f"tgc_{op.name.lower()}"
        if name + "(" in body:
            ex = _Exprs(None, {Op.INPUT: "x"})
            result = ex(definition)
            lines = "\n  ".join(ex.lines)
            out.append(f"fn {name}(x: f32) -> f32 {{\n  {lines}\n  return {result};\n}}\n")
    return "".join(out)


def _grid(groups: int) -> tuple[int, int, int]:
    """1D workgroup count spilled into y past the 65535 limit."""
    if groups <= MAX_DISPATCH:
        return (max(groups, 1), 1, 1)
    y = -(-groups // MAX_DISPATCH)
    return (-(-groups // y), y, 1)


# ------------------------------------------------------------------ elementwise


def _elementwise(k: Kernel, prm: Params) -> tuple[str, tuple, tuple, int]:
    d = k.decisions["wgsl"]
    WG, ept = d["workgroup"], d["per_thread"]
    grid = _grid(-(-k.size // (WG * ept)))
    blocks = []
    for j in range(ept):
        ex = _Exprs(prm, {Op.GIDX: "gidx"})
        vals = [ex(e) for _, e in k.outputs]
        stores = [prm.store(int(t[1:]), "gidx", v) for (t, _), v in zip(k.outputs, vals)]
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
    return src, (WG, 1, 1), grid, 0


# ------------------------------------------------------------------ reduce


def _reduce(k: Kernel, prm: Params) -> tuple[str, tuple, tuple, int]:
    # WG threads = (WG / lanes) outputs x lanes; each lane strides over ridx with
    # `unroll` accumulators, then a fixed-order tree in workgroup memory: deterministic,
    # no atomics.
    d = k.decisions["wgsl"]
    WG, lanes, ofast, unroll = d["workgroup"], d["lanes"], d["outputs_fast"], d["unroll"]
    per_group = WG // lanes
    (t, e), = k.outputs
    is_sum = k.reduce_op is Op.SUM
    init = "0.0" if is_sum else NEG_INF
    comb = (lambda a, b: f"{a} + {b}") if is_sum else (lambda a, b: f"max({a}, {b})")
    grid = _grid(-(-k.size // per_group))
    R = k.reduce_len

    def body(ridx: str, acc: str) -> str:
        ex = _Exprs(prm, {Op.GIDX: "gidx", Op.RIDX: "ridx"})
        val = ex(e)
        return "{ let ridx: i32 = " + ridx + ";\n        " + "\n        ".join(ex.lines) + f"\n        {acc} = {comb(acc, val)}; }}"

    accs = [f"acc{j}" for j in range(unroll)]
    decl = "\n    ".join(f"var {a}: f32 = {init};" for a in accs)
    main = ""
    if unroll > 1:
        blocks = "\n      ".join(body(f"r0 + {j * lanes}", a) for j, a in enumerate(accs))
        main = f"""for (; r0 + {(unroll - 1) * lanes} < {R}; r0 += {unroll * lanes}) {{
      {blocks}
    }}
    """
    tail = f"""for (; r0 < {R}; r0 += {lanes}) {{
      {body("r0", "acc0")}
    }}"""
    parts = list(accs)  # combined in a fixed pairwise order
    while len(parts) > 1:
        parts = [f"({comb(parts[i], parts[i + 1])})" if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    if ofast:
        lane_of, out_of, step = f"lid / {per_group}u", f"lid % {per_group}u", per_group
    else:
        lane_of, out_of, step = f"lid % {lanes}u", f"lid / {lanes}u", 1
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
    {prm.store(int(t[1:]), 'gidx', 'red[lid]')}
  }}
}}
"""
    return src, (WG, 1, 1), grid, 4 * WG


# ------------------------------------------------------------------ matmul


def _tile_load(name: str, sm: str, outer: int, BK: int, threads: int, base: str, s_out: int, s_k: int,
               lim_out: int, lim_k: int, guard_out: bool, guard_k: bool, ld, kvar: str = "k0",
               onehot: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Copy a BK x outer slice into `sm` (k-major vec4s of 4 consecutive outer indices)
    with whole-vec4 stores; threads run along whichever dimension is contiguous.
    Returns (declarations, global loads into registers at k = `kvar`, stores into `sm`)
    so that the loads of the next slice can be issued before the current one is used.
    `ld(idx)` is the text that loads element idx of the operand's parameter."""
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
                comps.append(f"select(0.0, 1.0, {ok} && {ld(f'{base} + select(0, {gk}, {ok})')} == {reg}_o + {r})")
                continue
            idx = f"{base} + ({reg}_o + {r}) * {s_out} + {gk} * {s_k}"
            conds = ([f"{reg}_o + {r} < {lim_out}"] if guard_out else []) + ([f"{gk} < {lim_k}"] if guard_k else [])
            if conds:
                ok = " && ".join(conds)
                comps.append(f"select(0.0, {ld(f'select(0, {idx}, {ok})')}, {ok})")
            else:
                comps.append(ld(idx))
        loads.append(f"{reg} = vec4<f32>({', '.join(comps)});")
        stores.append(f"{sm}[{reg}_s] = {reg};")
    return decls, loads, stores


def _matmul(k: Kernel, prm: Params) -> tuple[str, tuple, tuple, int]:
    M, N, K = k.M, k.N, k.K
    nb = math.prod(k.batch)
    d = k.decisions["wgsl"]
    t, prefetch = d["tile"], d["prefetch"]
    BM, BN, BK, TY, TX, QM, QN, S = (t[x] for x in ("BM", "BN", "BK", "TY", "TX", "QM", "QN", "S"))
    threads = TY * TX * S
    a, b = k.a, k.b
    nd = len(k.batch)
    onehot = a is None  # A from an index tensor (Kernel.a_onehot); no batch then
    sam, sak = (0, 0) if onehot else (a.strides[nd], a.strides[nd + 1])
    sbk, sbn = b.strides[nd], b.strides[nd + 1]
    pa, pb, pc = int((k.a_onehot if onehot else a.tensor)[1:]), int(b.tensor[1:]), int(k.out[1:])
    # batch offsets: unflatten wid.z over the batch dims
    pre = ["let bz = i32(wid.z);"]
    a_off = [str(0 if onehot else a.offset)]
    b_off = [str(b.offset)]
    rest = "bz"
    for dd in reversed(range(nd)):
        pre.append(f"let bi{dd} = {rest} % {k.batch[dd]};")
        rest = f"({rest} / {k.batch[dd]})"
        a_off.append(f"bi{dd} * {a.strides[dd]}")
        b_off.append(f"bi{dd} * {b.strides[dd]}")
    pre.append(f"let abase = {' + '.join(a_off)};")
    pre.append(f"let bbase = {' + '.join(b_off)};")
    pre.append(f"let cbase = bz * {M * N};")
    KT = BK * S  # k depth of one slice in workgroup memory
    gm, gn, gk = M % BM != 0, N % BN != 0, K % KT != 0
    kv = "kn" if prefetch else "k0"
    da, la, sa_ = _tile_load("m", "As", BM, KT, threads, "abase", sam, sak, M, K, gm, gk, lambda i: prm.load(pa, i), kv, onehot)
    db, lb, sb_ = _tile_load("n", "Bs", BN, KT, threads, "bbase", sbn, sbk, N, K, gn, gk, lambda i: prm.load(pb, i), kv)
    qa, qb = BM // 4, BN // 4
    # acc c_i_r_j: row quadrant i, row r within it, column quadrant j (a vec4 of 4 columns)
    accs = [(i, r, j) for i in range(QM) for r in range(4) for j in range(QN)]
    decl = [f"var c_{i}_{r}_{j} = vec4<f32>(0.0);" for i, r, j in accs]
    kg = "kg + " if S > 1 else ""
    step = []  # the k loop unrolled, each step in its own block so `let` names repeat
    for kk in range(BK):
        step.append("{")
        for i in range(QM):
            step.append(f"  let a{i} = As[{kg}{kk * qa}u + ty + {i * qa // QM}u];")
        for j in range(QN):
            step.append(f"  let b{j} = Bs[{kg}{kk * qb}u + tx + {j * qb // QN}u];")
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
        hi = [str(K)] + [f"{v} + {off}" for v, off in ((f"min(m0 + {BM}, {M}) - 1", bd.k_to_m), (f"min(n0 + {BN}, {N}) - 1", bd.k_to_n)) if off is not None]
        dead = ([f"n0 > min(m0 + {BM}, {M}) - 1 + {bd.dead_above}"] if bd.dead_above is not None else []) + (
            [f"min(n0 + {BN}, {N}) - 1 < m0 + {bd.dead_below}"] if bd.dead_below is not None else [])
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
    if S > 1:
        tg = TX * TY
        cap_a = KT * qa
        combine.append("workgroupBarrier();")
        for g in range(1, S):
            combine.append(f"if (l.z == {g}u) {{")
            for n_, (i, r, j) in enumerate(accs):
                slot = (g - 1) * tg * nacc + n_
                arr, off = ("As", slot) if (g - 1) * tg * nacc + tg * nacc <= cap_a else ("Bs", slot - cap_a)
                combine.append(f"  {arr}[{off}u + tl * {nacc}u] = c_{i}_{r}_{j};")
            combine.append("}")
        combine.append("workgroupBarrier();")
        combine.append("if (l.z != 0u) { return; }")
        for g in range(1, S):
            for n_, (i, r, j) in enumerate(accs):
                slot = (g - 1) * tg * nacc + n_
                arr, off = ("As", slot) if (g - 1) * tg * nacc + tg * nacc <= cap_a else ("Bs", slot - cap_a)
                combine.append(f"c_{i}_{r}_{j} = c_{i}_{r}_{j} + {arr}[{off}u + tl * {nacc}u];")
        assert (S - 1) * tg * nacc <= KT * (qa + qb), "split-K partials do not fit the tile memory"
    store = []
    for i, r, j in accs:
        row = f"m0 + {i * BM // QM + r} + 4 * i32(ty)"
        col = f"n0 + {j * BN // QN} + 4 * i32(tx)"
        for c in range(4):
            cond = ([f"{row} < {M}"] if gm else []) + ([f"{col} + {c} < {N}"] if gn else [])
            st = prm.store(pc, f"cbase + ({row}) * {N} + {col} + {c}", f"c_{i}_{r}_{j}.{'xyzw'[c]}")
            store.append(f"if ({' && '.join(cond)}) {{ {st} }}" if cond else st)
    wgs = (TX, TY, S)
    extra = ""
    if S > 1:
        assert qa == qb
        extra = f"\n  let kg = l.z * {BK * qa}u;  // this k-group's rows of the slice (qa == qb)\n  let tl = l.y * {TX}u + l.x;"
    src = f"""var<workgroup> As: array<vec4<f32>, {KT * qa}>;  // [BK*S][BM/4], k-major
var<workgroup> Bs: array<vec4<f32>, {KT * qb}>;  // [BK*S][BN/4]

// p{pc}[b, m, n] = sum_k A[b, m, k] * B[b, k, n]; M={M} N={N} K={K} batch={list(k.batch)}
// tile {BM}x{BN}x{BK}, {TY}x{TX} threads x {S} k-groups, {QM}x{QN} quadrants of 4x4 per thread{', next slice prefetched into registers' if prefetch else ''}
@compute @workgroup_size({wgs[0]}, {wgs[1]}, {wgs[2]})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let tx = l.x;
  let ty = l.y;{extra}
  let m0 = i32(wid.y) * {BM};
  let n0 = i32(wid.x) * {BN};
  {ind.join(pre)}
  {ind.join(decl)}
  {ind.join(da + db)}
  {ind.join(krange)}
  {loop}
  {ind.join(combine)}
  {ind.join(store)}
}}
"""
    grid = (-(-N // BN), -(-M // BM), nb)
    if max(grid) > MAX_DISPATCH:
        raise TgcError(f"kernel {k.name}: matmul grid {grid} exceeds {MAX_DISPATCH} workgroups per dimension")
    return src, wgs, grid, 4 * BK * S * (BM + BN)


# ------------------------------------------------------------------ entry point

TEMPLATES = {"elementwise": _elementwise, "reduce": _reduce, "matmul": _matmul}


def render_kernel(k: Kernel, uniforms: dict[str, tuple[int, str]]) -> RenderedKernel:
    """WGSL for a canonical kernel after the kernel passes; `uniforms`: the uniform block's
    fields (name -> (byte offset, dtype)), declared whole by every kernel that reads one."""
    prm = Params(k)
    uses_u = any(e.op is Op.UNIFORM for e in _walk_outputs(k))
    template = TEMPLATES.get(k.kind)
    if template is None:
        raise TgcError(f"kernel {k.name}: unknown kind {k.kind!r}")
    body, wgs, grid, wg_bytes = template(k, prm)
    head, ub = prm.declarations(uniforms if uses_u else None)
    src = f"// {k.name}: {k.kind} kernel generated by tgc\n" + head + "\n" + math_functions(body) + body
    return RenderedKernel(k.name, src, wgs, grid, ub, wg_bytes, list(prm.chunks), list(prm.chunk_bytes))


def _walk_outputs(k: Kernel):
    from tgc.ir.kernel import walk

    return walk([e for _, e in k.outputs])
