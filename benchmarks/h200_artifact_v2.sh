#!/usr/bin/env bash
# The H200 runs behind docs/benchmarks.md's "Artifact v2" section (issue 9), as one device command.
# Run from the repository root on the GPU machine, after the GPU kit's prefix (../shared/gpu-kit/prep),
# with .bench/ carried: old.tar.xz (the old commit's source tree and its artifacts, compiled
# beforehand: `tgc compile models/gpt.tg --preset P -o old_art/P --targets wgsl` at 347b64b),
# new_art.tar.xz (the same presets compiled by this commit), corpus.txt (any text).
set -uo pipefail
: "${OUT:=/tmp/out}"
mkdir -p "$OUT" /tmp/cmp
export PYTHONUNBUFFERED=1 TGC_CACHE_DIR=/tmp/tgccache
nvidia-smi -L | tee "$OUT/gpu.txt"
tar xJf .bench/old.tar.xz -C /tmp/cmp && tar xJf .bench/new_art.tar.xz -C /tmp/cmp || exit 1

# the product path: tgc train (compiles the WebGPU kernels, builds pipelines, step 1) and tgc generate
python3 -m tgc.cli train --preset huge --backend webgpu --corpus .bench/corpus.txt --steps 30 --out /tmp/ck_huge \
  --eval-every 30 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee "$OUT/train_huge.log"
python3 -m tgc.cli train --preset huge --backend webgpu --corpus .bench/corpus.txt --steps 30 --out /tmp/ck_huge2 \
  --eval-every 30 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee "$OUT/train_huge_cached.log"
for kv in "" "--no-kv-cache"; do
  python3 -m tgc.cli generate /tmp/ck_huge --prompt "ROMEO:" --max-new-tokens 100 --temperature 0 --backend webgpu $kv \
    2>&1 | tee -a "$OUT/generate_huge.log"
done

# old and new commits side by side, interleaved, every preset
python3 benchmarks/compare_commits.py --old /tmp/cmp/old --old-art /tmp/cmp/old_art --new . --new-art /tmp/cmp/new_art \
  --rounds 2 --steps 10 2>"$OUT/compare.err" | tee "$OUT/compare.md"
# the generated matmul next to cuBLAS
python3 benchmarks/bench_webgpu.py --skip-train --sizes 1024 2048 4096 2>&1 | tee "$OUT/matmul.md"
