"""Scheduling: a Program's graph -> an ordered list of kernels (tgc/ir/kernel.py).

Decides which nodes become tensors in memory ("materialized") and fuses
everything else into the kernels that read it:

- materialized: inputs, program outputs and updates, MATMUL/SUM/RMAX results,
  matmul operands that are not a strided view of a tensor, and elementwise
  values read by two or more consumers that cost something to recompute.
- every materialized node is one kernel; movement ops (reshape, permute, expand,
  slice, pad, dynamic slice), embedding lookups and cache writes become index
  arithmetic inside the loads of the kernels that read them.
- updates of persistent state are written in place when the kernel that
  computes them reads the old value only at its own index and nothing later
  reads the old value; otherwise through a temporary and a copy at the end.

The result names every tensor with its shape, dtype and role; the memory plan
(tgc/ir/memplan.py) gives them places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tgc.errors import TgcError
from tgc.ir import kernel as K
from tgc.ir.kernel import Band, Kernel, KExpr, View
from tgc.ir.node import Node, toposort
from tgc.ir.ops import GroupOp, Op
from tgc.ir.structure import analyze


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # parameter / optimizer_state / kv_cache / input / output / activation / gradient

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)


@dataclass
class Schedule:
    program: str
    kernels: list[Kernel]
    tensors: dict[str, TensorInfo]
    outputs: dict[str, str]  # program output name -> tensor
    updates: dict[str, str] = field(default_factory=dict)  # state -> tensor holding its new value (same name when in place)
    uniforms: dict[str, str] = field(default_factory=dict)  # name -> dtype


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def reshape_strides(old_shape, old_strides, new_shape):
    """Strides that view (old_shape, old_strides) as new_shape without copying, or None.
    Works chunk by chunk: runs of old dims that are contiguous with each other can be
    split or merged freely."""
    old = [(s, st) for s, st in zip(old_shape, old_strides) if s != 1]
    new_strides = [0] * len(new_shape)
    vd = len(new_shape) - 1
    if not old:
        return tuple(0 for _ in new_shape) if math.prod(new_shape) == 1 else None
    chunk_stride = old[-1][1]
    t_numel = v_numel = 1
    for td in range(len(old) - 1, -1, -1):
        t_numel *= old[td][0]
        if td == 0 or old[td - 1][1] != t_numel * chunk_stride:
            while vd >= 0 and (v_numel < t_numel or new_shape[vd] == 1):
                new_strides[vd] = v_numel * chunk_stride
                v_numel *= new_shape[vd]
                vd -= 1
            if v_numel != t_numel:
                return None
            if td > 0:
                chunk_stride = old[td - 1][1]
                t_numel = v_numel = 1
    while vd >= 0 and new_shape[vd] == 1:
        vd -= 1
    return tuple(new_strides) if vd == -1 else None


def _view_chain(n: Node, is_mat) -> tuple[Node, tuple, tuple, int] | Node:
    """Follow movement ops down to a materialized node. Returns (base, shape, strides, offset),
    or the first node that stops the walk (not materialized, or not expressible as strides)."""
    chain = []
    x = n
    while not is_mat(x):
        if x.op in (Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.RESHAPE):
            chain.append(x)
            x = x.srcs[0]
        else:
            return x
    shape, strides, offset = x.shape, contiguous_strides(x.shape), 0
    for m in reversed(chain):
        if m.op is Op.PERMUTE:
            shape, strides = tuple(shape[p] for p in m.arg), tuple(strides[p] for p in m.arg)
        elif m.op is Op.EXPAND:
            strides = tuple(0 if s != t else st for s, t, st in zip(shape, m.arg, strides))
            shape = tuple(m.arg)
        elif m.op is Op.SLICE:
            axis, start, stop = m.arg
            offset += start * strides[axis]
            shape = shape[:axis] + (stop - start,) + shape[axis + 1 :]
        else:
            st = reshape_strides(shape, strides, m.arg)
            if st is None:
                return m
            shape, strides = tuple(m.arg), st
    return x, shape, strides, offset


def _onehot_index(n: Node) -> Node | None:
    """For a 2-D matmul whose A is onehot(x, M) transposed (A[m, k] = x[k] == m, the form of
    an embedding's gradient, tgc/ir/rules.py _g_embed), the i32 node x; else None."""
    a = n.srcs[0]
    if n.ndim != 2 or a.op is not Op.PERMUTE or tuple(a.arg) != (1, 0):
        return None
    eq = a.srcs[0]
    if eq.op is not Op.CMPEQ:
        return None
    for x, io in (eq.srcs, eq.srcs[::-1]):
        if io.op is Op.IOTA and io.arg["axis"] == 1 and x.dtype == "i32":
            x = x.srcs[0] if x.op is Op.EXPAND else x  # (gone when M == 1)
            if x.shape == (eq.shape[0], 1):
                return x.srcs[0] if x.op is Op.RESHAPE else x
    return None


SHARED_COST = 6
MAX_COST = 48
# rough cost of one evaluation relative to an add; transcendental functions are
# polynomial evaluations on every target (wasm has no such instructions at all)
OP_COST = {Op.ERF: 12, Op.TANH: 4, Op.EXP: 8, Op.EMBED: 8}


class Scheduler:
    def __init__(self, prog):
        self.prog = prog
        self.roots = prog.nodes()
        self.order = toposort(self.roots)
        self.users: dict[Node, int] = {}
        for n in self.order:
            for s in n.srcs:
                self.users[s] = self.users.get(s, 0) + 1
        self.mat: set[Node] = set()
        self.names: dict[Node, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.zero, self.dead = analyze(self.order, self.roots)
        self._index_memo: dict[Node, bool] = {}

    # ------------------------------------------------------------ what to materialize

    def is_mat(self, n: Node) -> bool:
        return n.op is Op.INPUT or n in self.mat

    def _scalar_uniform_expr(self, n: Node, memo={}) -> bool:
        """Shape-() values computed from uniforms and constants only are inlined everywhere."""
        if n.shape != () and n.size != 1:
            return False
        if n.op in (Op.UNIFORM, Op.CONST):
            return True
        if n.op in GroupOp.Elementwise or n.op in GroupOp.Movement:
            return all(self._scalar_uniform_expr(s) for s in n.srcs)
        return False

    def _index_expr(self, n: Node) -> bool:
        """i32 values of iotas, constants and uniforms only (positions): readers recompute
        them, which keeps their loads affine, even where a kernel needs them stored."""
        hit = self._index_memo.get(n)
        if hit is None:
            if n.dtype != "i32" or n.op is Op.INPUT:
                hit = False
            elif n.op in (Op.IOTA, Op.CONST, Op.UNIFORM):
                hit = True
            else:
                hit = (n.op in GroupOp.Elementwise or n.op in GroupOp.Movement - {Op.DSLICE}) and all(self._index_expr(s) for s in n.srcs)
            self._index_memo[n] = hit
        return hit

    def choose(self):
        mat = self.mat
        mat.update(r for r in self.roots)
        # Elementwise values are recomputed by each reader while that is cheap: a value read
        # twice is stored once its inlined expression costs more than SHARED_COST ops, and
        # any value once it costs more than MAX_COST (this bounds the recomputation, e.g.
        # along the residual stream's gradient, which every layer adds to).
        cost: dict[Node, int] = {}
        for n in self.order:
            if n.op in (Op.MATMUL, Op.SUM, Op.RMAX):
                mat.add(n)
            if n in mat or n.op in GroupOp.Leaf:
                cost[n] = 0
                continue
            c = sum(cost.get(s, 0) for s in n.srcs) + (0 if n.op in GroupOp.Movement else OP_COST.get(n.op, 1))
            if n.op in GroupOp.Elementwise and not self._scalar_uniform_expr(n) and (
                (self.users.get(n, 0) >= 2 and c > SHARED_COST) or c > MAX_COST
            ):
                mat.add(n)
                c = 0
            cost[n] = c
        # matmul operands must be strided views of tensors, but for a one-hot A (an embedding's
        # gradient), which the kernel computes from the indices
        for n in self.order:
            if n.op is Op.MATMUL:
                ix = _onehot_index(n)
                if ix is not None and not self.is_mat(ix):
                    mat.add(ix)
                for s in n.srcs[1:] if ix is not None else n.srcs:
                    r = _view_chain(s, self.is_mat)
                    if isinstance(r, Node):
                        mat.add(r if r.op not in GroupOp.Movement or r.op in (Op.PAD, Op.DSLICE) else s)
                        if isinstance(_view_chain(s, self.is_mat), Node):
                            mat.add(s)
        self._limit_bindings()

    def _inlined(self, n: Node) -> tuple[set, list]:
        """(stored nodes the expression of n loads, the nodes inlined into it): a walk of
        n's sources through what is not stored (positions and uniform scalars are
        recomputed, not loaded)."""
        loads, inlined, seen, stack = set(), [], set(), list(n.srcs)
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if self.is_mat(x) and not self._index_expr(x):
                loads.add(x)
            elif not (x.op in GroupOp.Leaf or self._index_expr(x)):
                inlined.append(x)
                stack.extend(x.srcs)
        return loads, inlined

    def _limit_bindings(self):
        """Every kernel binds each tensor it touches (WebGPU allows MAX_BINDINGS storage
        bindings, a tensor over the binding size taking several): where a kernel's inlined
        expression would load too many, store the inlined part that loads the most of them
        while fitting a kernel itself, and look again."""
        for n in self.order:
            if n not in self.mat or n.op in (Op.MATMUL, Op.INPUT):
                continue
            loads, inlined = self._inlined(n)
            while bindings(loads | {n}) > MAX_BINDINGS:
                best, best_loads = None, 0
                for x in inlined:
                    r = self._inlined(x)[0] | ({x} if self.is_mat(x) else set())
                    if bindings(r | {x}) <= MAX_BINDINGS and len(r) >= 2 and len(r) > best_loads:
                        best, best_loads = x, len(r)
                if best is None:
                    raise TgcError(f"a kernel for {n} needs more than {MAX_BINDINGS} storage bindings")
                self.mat.add(best)
                loads, inlined = self._inlined(n)

    # ------------------------------------------------------------ expressions

    def emit(self, n: Node, idx: tuple[KExpr, ...], root: bool = False) -> KExpr:
        key = (n, tuple((i, i.vmin, i.vmax) for i in idx), root)  # bounds too: KExpr equality ignores them
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        e = self._emit(n, idx, root)
        self._memo[key] = e
        return e

    def _emit(self, n: Node, idx, root) -> KExpr:
        if not root and self.is_mat(n) and not self._index_expr(n):
            return K.load(self.names[n], K.flatten(idx, n.shape), n.dtype, n.size)
        op = n.op
        if op is Op.INPUT:
            return K.load(n.arg["name"], K.flatten(idx, n.shape), n.dtype, n.size)
        if op is Op.CONST:
            return K.const(n.arg["value"], n.dtype)
        if op is Op.UNIFORM:
            return KExpr(Op.UNIFORM, n.dtype, (), n.arg["name"], -K.INF if n.dtype == "f32" else 0, K.INF)
        if op is Op.IOTA:
            return idx[n.arg["axis"]]
        if op in GroupOp.Elementwise:
            srcs = [self.emit(s, idx) for s in n.srcs]
            if op in (Op.ADD, Op.MUL) and n.dtype == "i32":
                return K.iadd(*srcs) if op is Op.ADD else K.imul(*srcs)
            return K.expr(op, n.dtype, *srcs, arg=n.arg)
        if op is Op.RESHAPE:
            src = n.srcs[0]
            return self.emit(src, tuple(K.unflatten(K.flatten(idx, n.shape), src.shape)))
        if op is Op.PERMUTE:
            inv = [0] * len(n.arg)
            for i, p in enumerate(n.arg):
                inv[p] = i
            return self.emit(n.srcs[0], tuple(idx[inv[d]] for d in range(len(inv))))
        if op is Op.EXPAND:
            src = n.srcs[0]
            return self.emit(src, tuple(K.const(0) if s == 1 and t != 1 else i for i, s, t in zip(idx, src.shape, n.shape)))
        if op is Op.SLICE:
            axis, start, _ = n.arg
            return self.emit(n.srcs[0], idx[:axis] + (K.iadd(idx[axis], start),) + idx[axis + 1 :])
        if op is Op.PAD:
            axis, before, _ = n.arg
            src = n.srcs[0]
            i = idx[axis]
            inside = K.expr(
                Op.MUL, "f32",
                K.expr(Op.CMPLT, "f32", K.const(before - 1), i),
                K.expr(Op.CMPLT, "f32", i, K.const(before + src.shape[axis])),
            )
            clamped = K.KExpr(Op.MIN, "i32", (K.KExpr(Op.MAX, "i32", (K.iadd(i, -before), K.const(0)), None, 0, K.INF), K.const(src.shape[axis] - 1)), None, 0, src.shape[axis] - 1)
            val = self.emit(src, idx[:axis] + (clamped,) + idx[axis + 1 :])
            return K.select(inside, val, K.const(0.0, n.dtype) if n.dtype == "f32" else K.const(0))
        if op is Op.DSLICE:
            axis, _ = n.arg
            x, off = n.srcs
            o = self.emit(off, ())
            return self.emit(x, idx[:axis] + (K.iadd(idx[axis], _bounded(o, 0, x.shape[axis] - 1)),) + idx[axis + 1 :])
        if op is Op.EMBED:
            table, ind = n.srcs
            row = _bounded(self.emit(ind, idx[:-1]), 0, table.shape[0] - 1)
            return self.emit(table, (row, idx[-1]))
        if op is Op.UPDATE_SLICE:
            buf, new, pos = n.srcs
            axis = n.arg
            p = self.emit(pos, ())
            i = idx[axis]
            rel = K.KExpr(Op.SUB, "i32", (i, p), None, i.vmin - p.vmax, i.vmax - p.vmin)
            inside = K.expr(
                Op.MUL, "f32",
                K.expr(Op.CMPLT, "f32", K.const(-1), rel),
                K.expr(Op.CMPLT, "f32", rel, K.const(new.shape[axis])),
            )
            clamped = K.KExpr(Op.MIN, "i32", (K.KExpr(Op.MAX, "i32", (rel, K.const(0)), None, 0, K.INF), K.const(new.shape[axis] - 1)), None, 0, new.shape[axis] - 1)
            fresh = self.emit(new, idx[:axis] + (clamped,) + idx[axis + 1 :])
            return K.select(inside, fresh, self.emit(buf, idx))
        raise NotImplementedError(f"scheduler cannot inline op {op.name}")

    # ------------------------------------------------------------ kernels

    def run(self) -> Schedule:
        self.choose()
        prog = self.prog
        out_name = {node: name for name, node in prog.outputs.items()}
        upd_name = {node: name for name, node in prog.updates.items()}
        for n in self.order:
            if n.op is Op.INPUT:
                name = n.arg["name"]
                self.names[n] = name
                self.tensors[name] = TensorInfo(name, n.shape, n.dtype, n.arg["role"])
        counter = 0
        kernels: list[Kernel] = []
        self._memo = {}
        kernel_of: dict[Node, Kernel] = {}
        for n in self.order:
            if n not in self.mat or (n.op is Op.INPUT and n not in out_name and n not in upd_name):
                continue
            if n in out_name:
                name, role = out_name[n], "gradient" if out_name[n].startswith("grad/") else "output"
            elif n in upd_name:
                name, role = upd_name[n] + "~new", "activation"
            else:
                name, role = f"t{counter}", "activation"
                counter += 1
            if n.op is Op.INPUT:  # an output that is an input: copy it
                name = name if name != n.arg["name"] else name + "~copy"
            self.names[n] = name
            self.tensors[name] = TensorInfo(name, n.shape, n.dtype, role)
            k = self.kernel_for(n, name, f"k{len(kernels)}_{n.op.name.lower()}")
            kernels.append(k)
            kernel_of[n] = k
        updates = self._place_updates(kernels, kernel_of, upd_name)
        kernels = fuse_elementwise(hoist_to_fuse(kernels, self.tensors), self.tensors)
        outputs = {name: self.names[node] for name, node in prog.outputs.items()}
        uniforms = {n.arg["name"]: n.dtype for n in self.order if n.op is Op.UNIFORM}
        return Schedule(prog.name, kernels, self.tensors, outputs, updates, uniforms)

    def kernel_for(self, n: Node, out: str, kname: str) -> Kernel:
        ix = _onehot_index(n) if n.op is Op.MATMUL else None
        if ix is not None:
            return Kernel(kname, "matmul", n.size, a_onehot=self.names[ix], b=self.view(n.srcs[1]), out=out,
                          M=n.shape[0], N=n.shape[1], K=n.srcs[0].shape[1])  # fmt: skip
        if n.op is Op.MATMUL:
            a, b = (self.view(s) for s in n.srcs)
            band = Band.of(self.zero.get(n.srcs[0]), self.zero.get(n.srcs[1]), self.dead.get(n))
            return Kernel(kname, "matmul", n.size, a=a, b=b, out=out, batch=n.shape[:-2], M=n.shape[-2], N=n.shape[-1],
                          K=n.srcs[0].shape[-1], band=band)  # fmt: skip
        if n.op in (Op.SUM, Op.RMAX):
            (x,) = n.srcs
            axis = n.arg
            g = K.gidx(n.size)
            idx = list(K.unflatten(g, n.shape))
            idx[axis] = K.ridx(x.shape[axis])
            return Kernel(kname, "reduce", n.size, [(out, self.emit(x, tuple(idx)))], reduce_op=n.op, reduce_len=x.shape[axis])
        g = K.gidx(n.size)
        return Kernel(kname, "elementwise", n.size, [(out, self.emit(n, tuple(K.unflatten(g, n.shape)), root=True))])

    def view(self, n: Node) -> View:
        r = _view_chain(n, self.is_mat)
        assert not isinstance(r, Node), f"matmul operand {n} is not a strided view of a tensor"
        base, shape, strides, offset = r
        return View(self.names[base], tuple(shape), tuple(strides), offset)

    def _place_updates(self, kernels, kernel_of, upd_name) -> dict[str, str]:
        """Write updates in place when safe; otherwise keep the temporary and append a copy."""
        updates = {}
        position = {id(k): i for i, k in enumerate(kernels)}
        last_read: dict[str, int] = {}
        for i, k in enumerate(kernels):
            for t in k.loads():
                last_read[t] = i
        renames: dict[str, str] = {}
        copies = []
        for node, state in upd_name.items():
            tmp = self.names[node]
            k = kernel_of[node]
            later_reads = last_read.get(state, -1) > position[id(k)]
            own_reads_aligned = k.kind == "elementwise" and len(k.outputs) == 1 and _reads_only_at_gid(k.outputs[0][1], state)
            if own_reads_aligned and not later_reads and state in self.tensors:
                renames[tmp] = state
                del self.tensors[tmp]
                self.names[node] = state
            else:
                g = K.gidx(node.size)
                copies.append(Kernel(f"k{len(kernels) + len(copies)}_copy", "elementwise", node.size, [(state, K.load(tmp, g, node.dtype, node.size))]))
            updates[state] = state
        _rename_tensors(kernels, renames)
        kernels.extend(copies)
        return updates


MAX_BINDINGS = 8  # storage bindings a kernel may use: WebGPU's default maxStorageBuffersPerShaderStage
MAX_BINDING_BYTES = 128 << 20  # WebGPU's default maxStorageBufferBindingSize: larger tensors take several


MAX_CHUNKS = 2  # bindings one tensor may take: past 256 MiB (the default maxBufferSize) each binding grows


def chunking(nbytes: int) -> tuple[int, int]:
    """(bindings, bytes per binding but the last) for a tensor of nbytes: one binding up to
    MAX_BINDING_BYTES, else chunks of MAX_BINDING_BYTES, or of a quarter of the tensor when
    that is larger (a 1.6 GB logits tensor: 2 x 823 MB, which needs an adapter's higher limit)."""
    if nbytes <= MAX_BINDING_BYTES:
        return 1, max(nbytes, 4)
    per = max(MAX_BINDING_BYTES, -(-nbytes // MAX_CHUNKS + 255) // 256 * 256)
    return -(-nbytes // per), per


def bindings(tensors) -> int:
    """Storage bindings a kernel needs for these tensors (Nodes or TensorInfos), as the browser's
    default limits count them. A tensor over MAX_CHUNKS * MAX_BINDING_BYTES counts as one: no
    browser at default limits holds it at all, and an adapter that does (the runtime asks for
    its higher limits) allows more bindings per stage too; the runtime checks the real count."""
    out = 0
    for t in tensors:
        nbytes = 4 * math.prod(t.shape)
        out += chunking(nbytes)[0] if nbytes <= MAX_CHUNKS * MAX_BINDING_BYTES else 1
    return out


def _substitute_loads(e: KExpr, values: dict[str, KExpr], memo: dict) -> KExpr:
    """Replace LOAD(t, gid) by values[t] (a value computed earlier in the same thread)."""
    r = memo.get(id(e))
    if r is None:
        if e.op is Op.LOAD and e.arg in values and e.srcs[0].op is Op.GIDX:
            r = values[e.arg]
        else:
            srcs = tuple(_substitute_loads(s, values, memo) for s in e.srcs)
            r = e if all(a is b for a, b in zip(srcs, e.srcs)) else KExpr(e.op, e.dtype, srcs, e.arg, e.vmin, e.vmax)
        memo[id(e)] = r
    return r


class _Facts:
    """What fusion asks of a kernel, computed once: the tensors it writes, and for each
    tensor it loads, whether every load is at the thread's own index (gid)."""

    def __init__(self):
        self.memo: dict[int, tuple] = {}  # id -> (facts, the kernel: kept alive, so ids stay unique)

    def __call__(self, k: Kernel) -> tuple[set, dict[str, bool]]:
        hit = self.memo.get(id(k))
        if hit is not None:
            return hit[0]
        loads: dict[str, bool] = {}
        if k.kind == "matmul":
            loads = {t: False for t in k.loads()}
        else:
            for x in K.walk([e for _, e in k.outputs]):
                if x.op is Op.LOAD:
                    loads[x.arg] = loads.get(x.arg, True) and x.srcs[0].op is Op.GIDX
        hit = (set(k.writes()), loads)
        self.memo[id(k)] = (hit, k)
        return hit


def hoist_to_fuse(kernels: list[Kernel], tensors: dict, facts: _Facts | None = None) -> list[Kernel]:
    """Move each elementwise kernel up to just after an earlier one it can fuse with, when
    no kernel in between writes what it reads, reads what it writes, or writes the same
    tensor (e.g. the KV cache's v write next to its k write in decode_step)."""
    facts = facts or _Facts()
    ks = list(kernels)
    for i in range(len(ks)):
        k = ks[i]
        if k.kind != "elementwise":
            continue
        writes, reads = facts(k)
        target = None
        for j in range(i - 1, -1, -1):
            m = ks[j]
            if m.kind == "elementwise" and m.size == k.size and _fusable(m, k, tensors, facts):
                target = j
            m_writes, m_reads = facts(m)
            if not m_writes.isdisjoint(reads) or not writes.isdisjoint(m_reads) or not writes.isdisjoint(m_writes):
                break
        if target is not None and target < i - 1:
            ks.insert(target + 1, ks.pop(i))
    return ks


def fuse_elementwise(kernels: list[Kernel], tensors: dict, facts: _Facts | None = None) -> list[Kernel]:
    """Merge each elementwise kernel into the one before it when both run over the same
    index space and every dependency between them is at the thread's own index: one
    pass over memory instead of two, values passed in registers (e.g. AdamW's m, v and
    parameter updates; LayerNorm's normalised input and output)."""
    facts = facts or _Facts()
    out: list[Kernel] = []
    for k in kernels:
        prev = out[-1] if out else None
        if prev is not None and prev.kind == k.kind == "elementwise" and prev.size == k.size and _fusable(prev, k, tensors, facts):
            values = {t: e for t, e in prev.outputs}
            memo: dict = {}
            merged = prev.outputs + [(t, _substitute_loads(e, values, memo)) for t, e in k.outputs]
            out[-1] = Kernel(prev.name, "elementwise", prev.size, merged)
            continue
        out.append(k)
    return out


def _fusable(a: Kernel, b: Kernel, tensors: dict, facts: _Facts) -> bool:
    a_writes, a_loads = facts(a)
    b_writes, b_loads = facts(b)
    if any(not b_loads.get(t, True) for t in a_writes):
        return False  # b reads a's result at another thread's index
    if any(not a_loads.get(t, True) for t in b_writes):
        return False  # a reads, at another index, what b overwrites
    if not a_writes.isdisjoint(b_writes):
        return False
    touched = a_writes | b_writes | set(a_loads) | set(b_loads)
    return bindings(tensors[t] for t in touched) <= MAX_BINDINGS


def _bounded(e: KExpr, lo: int, hi: int) -> KExpr:
    """Clamp an index that comes from data (token ids, positions) into range: a bad value
    reads a wrong row instead of out of bounds."""
    return KExpr(Op.MIN, "i32", (KExpr(Op.MAX, "i32", (e, K.const(lo)), None, lo, K.INF), K.const(hi)), None, lo, hi)


def _reads_only_at_gid(e: KExpr, tensor: str) -> bool:
    return all(x.srcs[0].op is Op.GIDX for x in K.walk([e]) if x.op is Op.LOAD and x.arg == tensor)


def _rename_tensors(kernels: list[Kernel], renames: dict[str, str]) -> None:
    """Rename tensors in every kernel's outputs, loads and matmul views, in one pass."""
    if not renames:
        return
    memo: dict = {}

    def ren(e: KExpr) -> KExpr:
        r = memo.get(id(e))
        if r is None:
            srcs = tuple(ren(s) for s in e.srcs)
            arg = renames.get(e.arg, e.arg) if e.op is Op.LOAD else e.arg
            r = e if srcs == e.srcs and arg == e.arg else KExpr(e.op, e.dtype, srcs, arg, e.vmin, e.vmax)
            memo[id(e)] = r
        return r

    for k in kernels:
        k.outputs = [(renames.get(t, t), ren(e)) for t, e in k.outputs]
        if k.kind == "matmul":
            k.out = renames.get(k.out, k.out)
            k.a_onehot = renames.get(k.a_onehot, k.a_onehot)
            for attr in ("a", "b"):
                v = getattr(k, attr)
                if v is not None and v.tensor in renames:
                    setattr(k, attr, View(renames[v.tensor], v.shape, v.strides, v.offset))


def schedule(prog) -> Schedule:
    return Scheduler(prog).run()
