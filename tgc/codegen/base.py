"""The interface every code generator shares.

A renderer turns scheduled kernels (tgc/ir/kernel.py) into target code, given a
Layout: where each tensor of the program lives. Renderers never decide anything
the scheduler or the memory plan decided; target quirks are rewrites inside the
renderer before text is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNIFORM_BLOCK = "uniforms"


@dataclass
class Layout:
    """Where the tensors and uniforms of one program live.

    places:   tensor -> (buffer name, byte offset); offsets are 256-byte aligned
    buffers:  buffer name -> size in bytes
    uniforms: uniform name -> (byte offset in the uniform block, "f32" | "i32");
              the block is one WebGPU uniform buffer, and in wasm the bytes at
              wasm_base["uniforms"]
    wasm_base: buffer name (and "uniforms") -> absolute byte address in the wasm64
              linear memory; tensors at wasm_base[buffer] + offset
    """

    program: str
    places: dict[str, tuple[str, int]]
    buffers: dict[str, int]
    uniforms: dict[str, tuple[int, str]]
    uniform_block_size: int
    wasm_base: dict[str, int] = field(default_factory=dict)
    tensor_dtypes: dict[str, str] = field(default_factory=dict)

    def element_offset(self, tensor: str) -> int:
        return self.places[tensor][1] // 4

    def wasm_address(self, tensor: str) -> int:
        buf, off = self.places[tensor]
        return self.wasm_base[buf] + off
