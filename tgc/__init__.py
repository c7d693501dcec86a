"""tgc, the TinyGPT Compiler: models/gpt.tg -> WGSL kernels + a Memory64 wasm module (see docs/)."""

__version__ = "0.1.0"
