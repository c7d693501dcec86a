"""Kills during saves: a checkpoint is an atomic set (issue 16).

1. Every boundary of one save, both switches (renameat2 exchange, and the two-rename
   fallback): a forked child saves checkpoint B over checkpoint A and is SIGKILLed at that
   point by the documented hook (TGC_TEST_KILL_AT, tgc/checkpoint.py). Afterwards A or B
   loads and resumes whole -- B once the switch has begun -- never a mix, and the next save
   cleans up what the kill left.
2. Real training: `tgc train` is killed at rename boundaries of chosen saves and at random
   times, then resumed from whatever complete save is on disk (or rerun when there is none);
   the final weights, moments and loss history equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tgc import checkpoint as C
from tgc.checkpoint import load_checkpoint, recover, save_checkpoint
from tgc.errors import TgcError
from tgc.runtime import _module_available
from tgc.tokenizer import byte_tokenizer

TINY = {"vocab": 256, "ctx": 32, "d": 48, "heads": 3, "layers": 2}
FILES = [C.TOKENIZER, C.TOKENIZER_CONFIG, C.MODEL_SOURCE, C.OPTIMIZER, C.TRAINER_STATE, C.WEIGHTS, C.CONFIG]


def _params(step: int) -> dict:
    """Weights whose every value encodes `step` (its integer part)."""
    return {k: np.full(s, step, np.float32) + (np.arange(np.prod(s), dtype=np.float32).reshape(s) % 997) * 1e-3
            for k, s in C.param_shapes(TINY).items()}


class _Tokenizer:
    """The byte tokenizer as save_checkpoint sees it, its JSON made up front: the forked children
    below then run no Rust library code (its thread pools do not survive a fork)."""

    kind, vocab_size, _json = "byte", 256, None

    def to_json(self) -> str:
        return self._json


_Tokenizer._json = byte_tokenizer().to_json()


def _save(out: Path, step: int) -> dict:
    """A resumable checkpoint of _params(step); returns its params."""
    params = _params(step)
    opt = {f"{m}/{k}": v * 0.5 for k, v in params.items() for m in ("adam_m", "adam_v")}
    state = {"step": step, "seed": 0, "batch": 16, "history": [[i, 1.0] for i in range(1, step + 1)],
             "data": {"stream": "batches", "next_counter": step * 16, "rows_per_step": 16}}
    save_checkpoint(out, params, TINY, _Tokenizer(), {"preset": "tiny", "batch": 16, "step": step},
                    optimizer=opt, state=state)
    return params


def _killed_save(out: Path, step: int, point: str, exchange: bool) -> None:
    """Save `step` over `out` in a forked child that the hook SIGKILLs at `point`."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ["TGC_TEST_KILL_AT"] = point
            if not exchange:
                os.environ["TGC_TEST_NO_EXCHANGE"] = "1"
            C._HOOK_COUNTS.clear()
            _save(out, step)
        finally:
            os._exit(3)  # the hook did not fire
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point}: child exited {status}"


POINTS = {  # exchange? -> the hook points of one save; after those in AFTER_SWITCH a reader sees the new save
    True: [*(f"write:{f}" for f in FILES), "written", "exchanged", "saved"],
    False: [*(f"write:{f}" for f in FILES), "written", "old-moved", "new-moved", "saved"],
}
AFTER_SWITCH = {"exchanged", "saved", "old-moved", "new-moved"}


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_kill_at_every_boundary_of_a_save(tmp_path, exchange):
    if exchange and C._renameat2() is None:
        pytest.skip("no renameat2 on this platform: the two-rename switch is what runs")
    for point in POINTS[exchange]:
        out = tmp_path / point.replace(":", "_")
        _save(out, 2)
        _killed_save(out, 4, point, exchange)
        want_step = 4 if point in AFTER_SWITCH else 2
        ck = load_checkpoint(out, resume=True)  # reads without repairing anything
        assert ck.step == want_step and ck.state["step"] == want_step, point
        for k, v in _params(want_step).items():  # all of one save, nothing mixed
            np.testing.assert_array_equal(ck.params[k], v, err_msg=f"{point}: {k}")
            np.testing.assert_array_equal(ck.optimizer[f"adam_m/{k}"], v * 0.5, err_msg=f"{point}: {k}")
        # the next save (or run) finishes what the kill left and cleans up
        recover(out)
        assert not list(tmp_path.glob(f".{out.name}.tgc-*")), point
        assert load_checkpoint(out, resume=True).step == want_step
        _save(out, 6)
        assert load_checkpoint(out, resume=True).step == 6 and not list(tmp_path.glob(f".{out.name}.tgc-*"))


@pytest.mark.parametrize("point", ["write:model.safetensors", "written"])
def test_kill_during_the_first_save_leaves_nothing_to_resume(tmp_path, point):
    out = tmp_path / "first"
    _killed_save(out, 2, point, exchange=True)
    with pytest.raises(TgcError, match="not found"):
        load_checkpoint(out, resume=True)
    assert recover(out) and not out.exists() and not list(tmp_path.glob(".first.tgc-*"))


def test_a_failed_switch_keeps_the_old_save(tmp_path, monkeypatch):
    """The second rename of the fallback switch fails: the previous save is put back."""
    out = tmp_path / "ck"
    _save(out, 2)
    monkeypatch.setenv("TGC_TEST_NO_EXCHANGE", "1")
    real = os.rename

    def rename(a, b):
        if str(a).endswith(C.NEW_SUFFIX):
            raise OSError(28, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(C.os, "rename", rename)
    with pytest.raises(TgcError, match="previous checkpoint is unchanged"):
        _save(out, 4)
    monkeypatch.undo()
    assert load_checkpoint(out, resume=True).step == 2 and not list(tmp_path.glob(".ck.tgc-*"))


def test_user_files_in_a_checkpoint_are_carried_over(tmp_path):
    out = tmp_path / "ck"
    _save(out, 2)
    (out / "NOTES.md").write_text("my notes")
    (out / "samples").mkdir()
    (out / "samples" / "a.txt").write_text("sample")
    _save(out, 4)
    assert (out / "NOTES.md").read_text() == "my notes" and (out / "samples" / "a.txt").read_text() == "sample"


# ---------------------------------------------------------------- real training, killed and resumed

BACKEND = "wasm" if _module_available("wasm") else "numpy"
STEPS = 8


def _train_cmd(out: Path, corpus: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "tgc", "train", "--out", str(out), "--steps", str(STEPS), "--backend", BACKEND]
    if resume:
        return [*cmd, "--resume"]
    return [*cmd, "--preset", "tiny", "--corpus", str(corpus), "--seed", "3", "--ckpt-every", "2", "--eval-every", "4"]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _run(cmd, **extra):
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**extra), timeout=300, check=False)


def _finish(out: Path, corpus: Path) -> None:
    """After a kill: resume from the complete save on disk, or start again when there is none."""
    try:
        load_checkpoint(out, resume=True)
        resume = True
    except TgcError:
        resume = False
    r = _run(_train_cmd(out, corpus, resume))
    assert r.returncode == 0, r.stderr
    assert not list(out.parent.glob(f".{out.name}.tgc-*")), "leftovers after the resumed run"


def _assert_same_run(a: Path, b: Path, what: str) -> None:
    x, y = load_checkpoint(a, resume=True), load_checkpoint(b, resume=True)
    assert x.step == y.step == STEPS, what
    for k in x.params:
        assert np.array_equal(x.params[k], y.params[k]), f"{what}: {k}"
    for k in x.optimizer:
        assert np.array_equal(x.optimizer[k], y.optimizer[k]), f"{what}: {k}"
    assert x.state["history"] == y.state["history"] and x.state["val_history"] == y.state["val_history"], what


@pytest.fixture(scope="module")
def whole(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "ck"
    r = _run(_train_cmd(out, corpus_file))
    assert r.returncode == 0, r.stderr
    return out


# saves happen at steps 2, 4, 6 and 8 (the last at the end of the run); the first one has nothing to switch with,
# so "exchanged@N", "old-moved@N" and "new-moved@N" are the saves at steps 2 (N + 1)
KILLS = [("exchanged@1", False), ("written@3", False), ("write:model.safetensors@2", False), ("exchanged@3", False),
         ("old-moved@2", True), ("new-moved@1", True)]


@pytest.mark.parametrize("point, no_exchange", KILLS, ids=[k for k, _ in KILLS])
def test_training_killed_at_a_save_boundary_resumes_bit_for_bit(point, no_exchange, whole, corpus_file, tmp_path):
    out = tmp_path / "ck"
    extra = {"TGC_TEST_KILL_AT": point, **({"TGC_TEST_NO_EXCHANGE": "1"} if no_exchange else {})}
    r = _run(_train_cmd(out, corpus_file), **extra)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    _finish(out, corpus_file)
    _assert_same_run(whole, out, point)


@pytest.mark.parametrize("trial", range(2))
def test_training_killed_at_a_random_time_resumes_bit_for_bit(trial, whole, corpus_file, tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 2.5)
    out = tmp_path / "ck"
    p = subprocess.Popen(_train_cmd(out, corpus_file), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    for line in p.stdout:  # the model is compiled and loaded: training starts now
        if "ready in" in line:
            break
    time.sleep(delay)
    p.kill()
    p.communicate()
    _finish(out, corpus_file)
    _assert_same_run(whole, out, f"killed {delay:.2f}s after start (seed {seed})")
