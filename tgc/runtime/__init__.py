"""Runtimes that execute a compiled artifact (manifest.json + kernels + model.wasm): WebGPU via wgpu, WebAssembly via wasmtime."""
