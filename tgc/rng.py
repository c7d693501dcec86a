"""The one host RNG: counter-based, 32-bit, identical in Python and JavaScript.

Every random number tgc draws on the host (parameter init, batch positions,
sampling during generation) is a pure function of (seed, stream, counter):

    key(seed, stream) = mix(seed ^ mix(stream))         stream: FNV-1a of a name, or an int
    bits(seed, stream, i) = mix(key + mix(i))           uint32, wrapping arithmetic
    uniform = (bits + 0.5) / 2^32                       in (0, 1)
    normal_i = sqrt(-2 ln u(2i)) * cos(2 pi u(2i+1))     Box-Muller, f64, then rounded to f32

mix is Chris Wellons' "lowbias32" integer hash. Only 32-bit multiply, xor and
shift are needed, so JavaScript computes it with Math.imul and gets the same bits.
No state is carried between calls: resuming a run needs only (seed, counter).
"""

from __future__ import annotations

import numpy as np

M32 = 0xFFFFFFFF


def mix(x):
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        x = x ^ (x >> np.uint32(16))
    return x


def fnv1a(name: str) -> int:
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & M32
    return h


def key(seed: int, stream) -> np.uint32:
    s = fnv1a(stream) if isinstance(stream, str) else int(stream) & M32
    return mix(np.uint32(seed & M32) ^ mix(np.uint32(s)))


def bits(seed: int, stream, start: int, n: int) -> np.ndarray:
    i = np.arange(start, start + n, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        return mix(key(seed, stream) + mix(i))


def uniform(seed: int, stream, n: int, start: int = 0) -> np.ndarray:
    return (bits(seed, stream, start, n).astype(np.float64) + 0.5) / 4294967296.0


def normal(seed: int, stream, n: int, std: float = 1.0) -> np.ndarray:
    u = uniform(seed, stream, 2 * n)
    z = np.sqrt(-2.0 * np.log(u[0::2])) * np.cos(2.0 * np.pi * u[1::2])
    return (z * std).astype(np.float32)


def randint(seed: int, stream, n: int, high: int, start: int = 0) -> np.ndarray:
    """Integers in [0, high): floor(uniform * high) (bias below 2^-20 for high < 2^12)."""
    return np.floor(uniform(seed, stream, n, start) * high).astype(np.int64)
