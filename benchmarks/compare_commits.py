"""Two versions of tgc side by side: benchmarks/bench_webgpu.py of each, run interleaved per preset.

    python benchmarks/compare_commits.py --old OLD_SRC --old-art OLD_ART --new NEW_SRC --new-art NEW_ART
                                         [--presets tiny ...] [--rounds 2] [--steps 10]

OLD_SRC and NEW_SRC are source trees (each with its own benchmarks/bench_webgpu.py);
OLD_ART/<preset> and NEW_ART/<preset> are artifacts each compiled beforehand (the GPU
machine has no wasm-ld and should not spend its time compiling). For every round and
preset, the old and then the new version run train_step in a process of its own (so each
builds its own pipelines), and the table gives the median over rounds of each: step ms,
and the seconds from opening the runtime to the end of the first step (pipelines
included). The machines are noisy: interleaving keeps both versions under the same noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = ("tiny", "small", "medium", "large", "xl", "huge", "massive", "mega")


def run(src: Path, art: Path, preset: str, steps: int) -> dict | None:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OUT": out, "PYTHONPATH": f"{src}:{os.environ.get('PYTHONPATH', '')}"}
        cmd = [sys.executable, str(src / "benchmarks" / "bench_webgpu.py"), "--skip-torch", "--sizes", "--presets", preset,
               "--steps", str(steps), "--artifacts", str(art)]  # fmt: skip
        r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=900)
        f = Path(out) / "bench_webgpu.json"
        if r.returncode != 0 or not f.exists():
            print(f"{src.name} {preset}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            return None
        rows = json.loads(f.read_text())["train_step"]
        return rows[0]["wgsl"] if rows else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--old-art", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--new-art", type=Path, required=True)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    res: dict[str, dict[str, list]] = {p: {"old": [], "new": []} for p in a.presets}
    for r in range(a.rounds):
        for p in a.presets:
            for which, src, art in (("old", a.old, a.old_art), ("new", a.new, a.new_art)):
                row = run(src.resolve(), art.resolve(), p, a.steps)
                if row:
                    res[p][which].append(row)
                    print(f"round {r} {p} {which}: {row['ms']:.2f} ms/step, first step {row['first_step_s']:.2f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
    med = lambda rows, k: statistics.median(x[k] for x in rows) if rows else float("nan")  # noqa: E731
    print("| preset | launches old → new | kernels new | old ms/step | new ms/step | new / old | "
          "old first step s | new first step s |")
    print("|---|---|---|---|---|---|---|---|")
    for p, d in res.items():
        o, n = d["old"], d["new"]
        if not o or not n:
            print(f"| {p} | — | — | — | — | — | — | — |")
            continue
        print(f"| {p} | {o[0]['launches']} → {n[0]['launches']} | {n[0].get('kernels', '—')} | {med(o, 'ms'):.2f} | "
              f"{med(n, 'ms'):.2f} | {med(n, 'ms') / med(o, 'ms'):.2f} | {med(o, 'first_step_s'):.1f} | "
              f"{med(n, 'first_step_s'):.2f} |")  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "compare_commits.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
