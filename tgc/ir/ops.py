"""The one op set of tgc's IR, shared by every pass, the interpreter and both backends.

An op says *what* is computed, never how: shapes, dtypes and the numpy meaning of
each op live in tgc/ir/rules.py, keyed by this enum, next to the gradient rule.
Groups name the families that passes and the scheduler treat alike.
"""

from __future__ import annotations

from enum import Enum, auto


class Op(Enum):
    # leaves
    INPUT = auto()      # arg=(name, role): a tensor the runtime provides (parameter, batch, state)
    CONST = auto()      # arg=python scalar, broadcast to shape
    UNIFORM = auto()    # arg=name: a runtime scalar (step, lr, pos, ...), shape ()
    IOTA = auto()       # arg=axis: value = index along axis (i32)
    # unary elementwise
    NEG = auto()
    EXP = auto()
    LOG = auto()
    SQRT = auto()
    RECIP = auto()
    TANH = auto()
    ERF = auto()
    COS = auto()
    CAST = auto()       # arg=dtype
    # binary elementwise (numpy broadcasting is made explicit with EXPAND first)
    ADD = auto()
    SUB = auto()
    MUL = auto()
    DIV = auto()
    MAX = auto()
    MIN = auto()
    CMPLT = auto()      # a < b as f32 1.0/0.0
    CMPEQ = auto()      # a == b as f32 1.0/0.0
    # ternary elementwise
    WHERE = auto()      # cond != 0 ? a : b
    # reductions over one axis, keepdims
    SUM = auto()        # arg=axis
    RMAX = auto()       # arg=axis
    # movement: pure index remapping
    RESHAPE = auto()    # arg=new shape
    PERMUTE = auto()    # arg=perm
    EXPAND = auto()     # arg=new shape (size-1 dims broadcast)
    SLICE = auto()      # arg=(axis, start, stop)
    PAD = auto()        # arg=(axis, before, after), zeros
    DSLICE = auto()     # srcs=(x, offset scalar i32), arg=(axis, size): x[offset:offset+size]
    # contraction
    MATMUL = auto()     # [..., M, K] @ [..., K, N] with equal batch dims
    # indexed
    EMBED = auto()      # (table[V, D], idx[...]) -> [..., D]
    # model-level ops with known meaning (decomposed before scheduling)
    ATTENTION = auto()  # (q, k, v [B, T, d]) arg=heads: causal self-attention
    CACHED_ATTENTION = auto()  # (q [B,Tq,d], kc, vc [B,S,d], pos scalar) arg=heads
    UPDATE_SLICE = auto()      # (buf [B,S,d], new [B,Tq,d], pos scalar) arg=axis: buf with new written at pos
    DETACH = auto()     # identity whose gradient is zero (stop_gradient); folded away after autodiff
    DROPOUT = auto()    # arg=p: x * keep / (1 - p) in train_step, the identity elsewhere; resolved by
                        # tgc/ir/program.py before autodiff (RAND over the host's key), never scheduled
    RAND = auto()       # (counter i32, key i32) -> f32 in [0, 1): the host RNG's bits (tgc/rng.py) at that
                        # counter under that key, top 24 bits / 2^24
    # kernel IR only (tgc/ir/kernel.py): scalar code inside one kernel
    LOAD = auto()       # arg=tensor name, srcs=(flat element index,)
    GIDX = auto()       # the flat output index this invocation computes
    RIDX = auto()       # the reduction loop index
    IDIV = auto()       # integer floor division (operands >= 0)
    MOD = auto()        # integer remainder (operands >= 0)
    AXIS = auto()       # arg=name: an index of the kernel's loop nest ("row", "j", "r"; tgc/ir/kpasses.py)


class GroupOp:
    Leaf = frozenset({Op.INPUT, Op.CONST, Op.UNIFORM, Op.IOTA})
    Unary = frozenset({Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.RECIP, Op.TANH, Op.ERF, Op.COS, Op.CAST})
    Binary = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MAX, Op.MIN, Op.CMPLT, Op.CMPEQ, Op.RAND})
    Ternary = frozenset({Op.WHERE})
    Elementwise = Unary | Binary | Ternary
    Reduce = frozenset({Op.SUM, Op.RMAX})
    Movement = frozenset({Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.PAD, Op.DSLICE})
    Composite = frozenset({Op.ATTENTION, Op.CACHED_ATTENTION})
    Kernel = frozenset({Op.LOAD, Op.GIDX, Op.RIDX, Op.IDIV, Op.MOD, Op.AXIS})
    Commutative = frozenset({Op.ADD, Op.MUL, Op.MAX, Op.MIN, Op.CMPEQ})


DTYPES = ("f32", "i32")
ROLES = ("parameter", "gradient", "optimizer_state", "activation", "kv_cache", "input", "output")
