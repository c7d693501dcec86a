"""Nothing lost (issue 16): bad input of every kind is a one-line error (exit 2) that changes no file.

Covered here: every command-line number and the prompt; --out and import targets that hold
the user's files; a corrupt-checkpoint matrix (every file truncated, wrong dtypes and shapes,
a wrong type or value in every JSON field); divergence (a diverging run keeps its last
finite checkpoint, loading refuses NaN weights); a full disk (an injected ENOSPC, and a real
small tmpfs where this machine lets us mount one); the memory preflight (behemoth says what
it needs before allocating anything); DSL programs that used to crash or hang the compiler.
Kills during saves are tests/test_robust_kill.py; the DSL fuzz is tests/test_robust_fuzz.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, assert_user_error, run_cli, tree_digest

from tgc import checkpoint as C
from tgc.checkpoint import load_checkpoint, save_checkpoint
from tgc.errors import TgcError
from tgc.runtime import _module_available
from tgc.train import Diverged, train

BACKEND = "wasm" if _module_available("wasm") else "numpy"
QUIET = {"progress": False, "log": None}


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory) -> Path:
    """A real 4-step run of tiny (checkpoints at 2 and 4): every file and field a run writes."""
    out = tmp_path_factory.mktemp("robust") / "ck"
    train("tiny", str(corpus_file), steps=4, out=out, backend=BACKEND, ckpt_every=2, eval_every=2, eval_batches=1,
          **QUIET)
    return out


@pytest.fixture
def ck(trained, tmp_path) -> Path:
    d = tmp_path / "ck"
    shutil.copytree(trained, d)
    return d


def assert_refused(argv, match=None, unchanged=()) -> str:
    """`tgc ARGV` exits 2 with one line, and every directory in `unchanged` is byte for byte as it was."""
    before = [tree_digest(d) for d in unchanged]
    rc, _, err = run_cli(*argv)
    first = assert_user_error(rc, err, match)
    for d, b in zip(unchanged, before):
        assert tree_digest(d) == b, f"{d} changed"
    return first


# ---------------------------------------------------------------- command-line numbers and text

TRAIN_BAD = [
    (["--lr", "-1"], "--lr must be a positive"), (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"), (["--batch", "0"], "--batch"), (["--batch", "-4"], "--batch"),
    (["--warmup", "-5"], "--warmup"), (["--ckpt-every", "-1"], "--ckpt-every"), (["--ckpt-every", "0"], "--ckpt-every"),
    (["--eval-every", "-2"], "--eval-every"), (["--seed", "-1"], "--seed"), (["--seed", str(2**32)], "--seed"),
    (["--steps", "0"], "--steps"), (["--batch", "abc"], "invalid int"), (["--lr", "fast"], "invalid float"),
    (["--preset", "gigantic"], "invalid choice"), (["--tokenizer", "bpe:3"], "unknown tokenizer"),
    (["--backend", "cuda"], "invalid choice"), (["--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("args, match", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_options_are_validated_before_anything(args, match, corpus_file, tmp_path):
    argv = ["train", "--corpus", corpus_file, "--out", tmp_path / "out", *args]
    if "--steps" not in args:
        argv += ["--steps", "3"]
    assert_refused(argv, match)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


GENERATE_BAD = [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--top-k", "0"], "--top-k"), (["--top-k", "-3"], "--top-k"),
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--seed", "-2"], "--seed"), (["--prompt", "caf\udce9"], "not valid UTF-8"),
]


@pytest.mark.parametrize("args, match", GENERATE_BAD, ids=[repr(" ".join(a)) for a, _ in GENERATE_BAD])
def test_generate_options_and_prompt_are_validated(args, match, trained):
    assert_refused(["generate", trained, *args], match, unchanged=[trained])


def test_binary_corpus_is_refused(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert_refused(["train", "--corpus", f, "--steps", "2", "--out", tmp_path / "out"], "not UTF-8 text")
    assert not (tmp_path / "out").exists()


def test_help_shows_defaults_and_presets_and_version():
    from tgc import __version__, presets

    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.strip() == f"tgc {__version__}"
    rc, out, _ = run_cli("train", "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert all(name in text for name in presets.preset_names())
    assert "(default: auto)" in text and "behemoth" in text
    rc, out, _ = run_cli("generate", "--help")
    assert "(default: 0.8)" in " ".join(out.split()) and "(default: 200)" in " ".join(out.split())


# ---------------------------------------------------------------- the user's files are never overwritten

def test_out_with_user_files_is_refused_before_training(corpus_file, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("model.tg", "loss.png", "tokenizer.json"):
        (mine / name).write_text(f"my own {name}\n")
    assert_refused(["train", "--corpus", corpus_file, "--steps", "2", "--out", mine], "not empty", unchanged=[mine])
    f = tmp_path / "file"
    f.write_text("x")
    assert_refused(["train", "--corpus", corpus_file, "--steps", "2", "--out", f], "not a directory")
    assert_refused(["compile", C.presets.default_model_path(), "--preset", "tiny", "-o", mine, "--targets", "none"],
                   "not a tgc artifact", unchanged=[mine])


def test_out_is_never_the_working_directory(corpus_file, tmp_path, monkeypatch):
    """A save switches a whole directory in: the one the process stands in (or above it) is refused."""
    d = tmp_path / "empty"
    d.mkdir()
    monkeypatch.chdir(d)
    for out in (".", "..", str(d)):
        assert_refused(["train", "--corpus", corpus_file, "--steps", "2", "--out", out], "working directory")
    assert list(d.iterdir()) == []


def test_existing_checkpoint_needs_resume(corpus_file, ck):
    assert_refused(["train", "--corpus", corpus_file, "--steps", "2", "--out", ck], "already holds a checkpoint",
                   unchanged=[ck])


def test_import_never_writes_into_its_source(ck, tmp_path):
    assert_refused(["import", ck, "-o", ck], "its own source", unchanged=[ck])
    assert_refused(["import", ck, "-o", ck / "sub"], "inside the source", unchanged=[ck])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_refused(["import", ck, "-o", other], "not empty", unchanged=[ck, other])


def test_unwritable_out_is_found_before_the_first_step(corpus_file, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    t0 = time.perf_counter()
    assert_refused(["train", "--corpus", corpus_file, "--steps", "1000", "--out", blocker / "ck"],
                   "cannot write checkpoints")
    assert time.perf_counter() - t0 < 30


# ---------------------------------------------------------------- the corrupt-checkpoint matrix

def _other_type(v):
    return 5 if isinstance(v, str) else "x"


def _json_cases(trained) -> list[tuple[str, tuple, object]]:
    """(file, key path, new value): a wrong type for every field of every JSON file, then wrong values."""
    cases = []
    for name in (C.CONFIG, C.TRAINER_STATE, C.TOKENIZER_CONFIG):
        obj = json.loads((trained / name).read_text())

        def walk(o, path, name=name):
            for k, v in o.items():
                if isinstance(v, dict) and v:
                    walk(v, (*path, k))
                if k in ("history", "val_history") and v:  # lists of pairs: a bad entry as well
                    cases.append((name, (*path, k), [[1, "x"]]))
                cases.append((name, (*path, k), _other_type(v)))

        walk(obj, ())
    values = {
        C.CONFIG: [("model_type", "bert"), ("vocab_size", 0), ("vocab_size", 300), ("n_positions", 16),
                   ("n_embd", 47), ("n_layer", 3), ("n_layer", 0), ("n_layer", 10**9), ("n_head", 0), ("n_head", 5),
                   ("n_inner", 100), ("activation_function", "relu"), ("layer_norm_epsilon", 0),
                   ("layer_norm_epsilon", -1), ("tie_word_embeddings", False), ("scale_attn_weights", False),
                   ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True), ("resid_pdrop", 2),
                   ("initializer_range", -1), ("bos_token_id", -1), ("tgc.preset", "nope"), ("tgc.batch", 0),
                   ("tgc.step", -1), ("tgc.checkpoint_id", "other"), ("tgc.activation", "relu"),
                   ("tgc.tokenizer", "bpe:3"), ("tgc.train.lr", 0), ("tgc.train.seed", -1)],
        C.TOKENIZER_CONFIG: [("tgc_tokenizer", "bpe:3"), ("model_max_length", 0)],
        C.TRAINER_STATE: [("step", -1), ("step", 3), ("seed", -1), ("lr", 0), ("batch", 0), ("batch", 8),
                          ("warmup", -1), ("total_steps", 0), ("tokenizer", "bpe:3"), ("preset", "nope"),
                          ("preset", "small"), ("corpus", "/no/such/corpus.txt"), ("checkpoint_id", "other"),
                          ("history", [[0, 1.0]]), ("history", [[1, float("nan")]]), ("data.next_counter", 5),
                          ("data.stream", "other"), ("rng.batches", 7)],
    }
    cases += [(name, tuple(k.split(".")), v) for name, vs in values.items() for k, v in vs]
    return cases


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _truncate(frac):
    def f(p: Path):
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * frac)])
    return f


_STORED = {"I32": "<i4", "U8": "u1", "F16": "<f2"}


def _tensor_as(dtype: str):
    """Rewrite model.safetensors with transformer.wpe.weight stored as `dtype` (metadata kept)."""
    def f(p: Path):
        tensors, _ = C.read_safetensors(p)
        header, blobs, off = {"__metadata__": C.safetensors_metadata(p)}, [], 0
        for k, v in tensors.items():
            dt, raw = "F32", v.astype("<f4")
            if k == "transformer.wpe.weight":
                dt = dtype
                raw = (v.view(np.uint32) >> 16).astype("<u2") if dtype == "BF16" else v.astype(_STORED[dtype])
            b = raw.tobytes()
            header[k] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        p.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    return f


def _wrong_shape(p: Path):
    tensors, _ = C.read_safetensors(p)
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:16]
    C.write_safetensors(p, tensors, C.safetensors_metadata(p))


def _file_cases() -> list[tuple[str, object, str]]:
    cases = []
    for name in (C.CONFIG, C.WEIGHTS, C.TOKENIZER, C.TOKENIZER_CONFIG, C.MODEL_SOURCE, C.OPTIMIZER, C.TRAINER_STATE):
        cases += [(name, _truncate(0.5), f"truncated half {name}"), (name, _truncate(0), f"empty {name}")]
    for name in (C.CONFIG, C.WEIGHTS, C.TOKENIZER, C.OPTIMIZER, C.TRAINER_STATE):
        cases.append((name, Path.unlink, f"missing {name}"))
    cases += [(C.WEIGHTS, _tensor_as("I32"), "an int32 tensor"), (C.WEIGHTS, _tensor_as("U8"), "a uint8 tensor"),
              (C.WEIGHTS, _wrong_shape, "a tensor of the wrong shape"), (C.WEIGHTS, _truncate(0.9), "a lost tail"),
              (C.OPTIMIZER, _truncate(0.9), "an optimizer's lost tail")]
    return cases


RESUME_FILES = (C.OPTIMIZER, C.TRAINER_STATE)


def _command(name: str, d: Path) -> list:
    if name in RESUME_FILES:
        return ["train", "--out", d, "--resume", "--steps", "6", "--backend", BACKEND]
    return ["generate", d, "--max-new-tokens", "2", "--backend", BACKEND]


def test_corrupt_checkpoint_matrix(trained, tmp_path):
    """Every case: exit 2, one line, and every file (siblings included) unchanged."""
    json_cases = _json_cases(trained)
    file_cases = _file_cases()
    assert len(json_cases) > 100 and len(file_cases) >= 20
    failures = []
    for i, case in enumerate(json_cases + file_cases):
        d = tmp_path / f"c{i}"
        shutil.copytree(trained, d)
        if len(case) == 3 and isinstance(case[1], tuple):
            name, path, value = case
            obj = json.loads((d / name).read_text())
            _set(obj, path, value)
            (d / name).write_text(json.dumps(obj))
            what = f"{name} {'.'.join(path)} = {value!r}"
        else:
            name, damage, what = case
            damage(d / name)
        before = tree_digest(d)
        rc, _, err = run_cli(*_command(name, d))
        try:
            assert_user_error(rc, err)
            assert tree_digest(d) == before, "files changed"
        except AssertionError as e:
            failures.append(f"{what}: {e}")
        shutil.rmtree(d)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_weights_load_and_are_not_called_mixed_saves(ck, dtype):
    _tensor_as(dtype)(ck / C.WEIGHTS)
    got = load_checkpoint(ck).params["transformer.wpe.weight"]
    want = load_checkpoint_params_f32(ck)
    assert_close(got, want, 1e-2, 0, f"{dtype} weights")


def load_checkpoint_params_f32(d):
    tensors, _ = C.read_safetensors(d / C.WEIGHTS)
    return tensors["transformer.wpe.weight"]


# ---------------------------------------------------------------- divergence

def test_divergence_keeps_the_last_finite_checkpoint(corpus_file, tmp_path):
    out = tmp_path / "d"
    with pytest.raises(Diverged, match=r"diverged at step \d+.*lower the learning rate") as e:
        train("tiny", str(corpus_file), steps=40, out=out, backend=BACKEND, lr=1e3, ckpt_every=2, eval_every=100,
              eval_batches=1, **QUIET)
    assert "\n" not in str(e.value)
    ck = load_checkpoint(out, resume=True)  # refuses non-finite weights: this one is finite
    bad_step = int(str(e.value).split("step ")[1].split(":")[0])
    assert 0 < ck.step < bad_step and ck.step % 2 == 0
    assert all(np.isfinite(v).all() for v in ck.params.values())
    assert f"step {ck.step}, is kept" in str(e.value)
    # it resumes with a lower learning rate (weights blown up by lr 1e3 may still diverge: then nothing changes)
    before = tree_digest(out)
    try:
        r = train(None, None, steps=ck.step + 2, out=out, backend=BACKEND, resume=True, lr=1e-4, **QUIET)
        assert r.step == ck.step + 2 and np.isfinite(r.loss)
    except Diverged:
        assert tree_digest(out) == before


def test_divergence_before_any_save_writes_nothing(corpus_file, tmp_path):
    with pytest.raises(Diverged, match="no checkpoint was written"):
        train("tiny", str(corpus_file), steps=40, out=tmp_path / "d", backend=BACKEND, lr=1e6, ckpt_every=1000,
              eval_every=1000, eval_batches=1, **QUIET)
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tgc-*"))


def test_nonfinite_weights_are_refused_unless_asked(ck):
    params, _ = C.read_safetensors(ck / C.WEIGHTS)
    params["transformer.h.0.ln_1.bias"][3] = np.nan
    with pytest.raises(TgcError, match="refusing to save non-finite"):
        save_checkpoint(ck, params, load_checkpoint(ck).config, load_checkpoint(ck).tokenizer)
    C.write_safetensors(ck / C.WEIGHTS, params, C.safetensors_metadata(ck / C.WEIGHTS))
    assert_refused(["generate", ck, "--max-new-tokens", "2", "--backend", BACKEND], "non-finite", unchanged=[ck])
    rc, _, err = run_cli("generate", ck, "--max-new-tokens", "2", "--backend", BACKEND, "--allow-nonfinite")
    assert rc == 0, err


# ---------------------------------------------------------------- a full disk

def _enospc_after(limit: int):
    """An `open` for tgc.checkpoint whose files fail with ENOSPC once `limit` bytes are written in all."""
    written = [0]
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            n = len(memoryview(b).cast("B"))
            if written[0] + n > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)
            written[0] += n
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    def fake(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if "w" in mode else f

    return fake


@pytest.mark.parametrize("limit", [0, 50_000, 400_000])
def test_disk_full_is_one_line_and_the_old_checkpoint_stays(ck, monkeypatch, limit):
    before = tree_digest(ck)
    old = load_checkpoint(ck, resume=True)
    monkeypatch.setattr(C, "open", _enospc_after(limit), raising=False)
    params = {k: v + 1 for k, v in old.params.items()}
    with pytest.raises(TgcError, match="No space left on device.*previous checkpoint is unchanged") as e:
        save_checkpoint(ck, params, old.config, old.tokenizer, old.tgc, optimizer=old.optimizer, state=old.state)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert tree_digest(ck) == before
    load_checkpoint(ck, resume=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.5 MiB tmpfs, where this machine lets us mount one (root in CI); else skip."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(d)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_disk_full_on_a_real_tmpfs_during_training(corpus_file, small_tmpfs):
    """tiny's checkpoint takes ~0.9 MB: the first save fits, the second cannot (the old one is still there)."""
    out = small_tmpfs / "ck"
    argv = ["train", "--corpus", corpus_file, "--steps", "6", "--ckpt-every", "2", "--eval-every", "100",
            "--out", out, "--backend", BACKEND]
    rc, _, err = run_cli(*argv)
    assert_user_error(rc, err, "No space left on device.*previous checkpoint is unchanged")
    ck = load_checkpoint(out, resume=True)
    assert ck.step == 2 and not list(small_tmpfs.glob(".ck.tgc-*"))


# ---------------------------------------------------------------- memory preflight

def test_behemoth_states_its_memory_need_before_allocating(tmp_path, corpus_file):
    """Its first words are the need; under a 2 GiB cap that is also its last: nothing compiled, nothing written."""
    cache = tmp_path / "cache"
    env = {**os.environ, "TGC_MEMORY_LIMIT": "2G", "TGC_CACHE_DIR": str(cache)}
    r = subprocess.run([sys.executable, "-m", "tgc", "train", "--preset", "behemoth", "--steps", "2",
                        "--corpus", str(corpus_file), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stdout.splitlines() == [r.stdout.splitlines()[0]], r.stdout
    need = r.stdout.splitlines()[0]
    assert need.startswith("memory: training behemoth (batch 1) needs about") and " available (" in need, r.stdout
    assert_user_error(2, r.stderr, r"needs about \d+\.\d GiB of memory, but only 2\.0 GiB is available")
    assert not (cache / "artifacts").exists() and not (tmp_path / "b").exists()


def test_absurd_checkpoint_config_is_refused_with_both_numbers(ck):
    cfg = json.loads((ck / C.CONFIG).read_text())
    cfg["n_layer"] = 10**9
    (ck / C.CONFIG).write_text(json.dumps(cfg))
    first = assert_refused(["generate", ck, "--backend", BACKEND], unchanged=[ck])
    assert "TiB of memory, but only" in first and "available" in first


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_memory_estimate_is_close_to_the_plan(preset):
    from tgc import preflight, presets
    from tgc.compiler import compile_model

    p = presets.get_preset(preset)
    planned = compile_model(preset=preset, targets=()).plan.reports["train_step"].planned_bytes
    est = preflight.estimate(presets.model_config(p), p["batch"], "train").bytes
    assert 0.7 < est / planned < 1.4, (est, planned)
    assert preflight.param_count(presets.model_config(p)) == p["params"]


def test_available_memory_honours_limits(monkeypatch):
    from tgc import preflight

    monkeypatch.setenv("TGC_MEMORY_LIMIT", "512MiB")
    assert preflight.available() == (512 << 20, "TGC_MEMORY_LIMIT")
    need = preflight.Need("a test", 1 << 30)
    with pytest.raises(TgcError, match=r"needs about 1\.0 GiB of memory, but only 512\.0 MiB is available"):
        preflight.require(need, log=None)
    preflight.require(preflight.Need("a test", 600 << 20), log=None)  # an estimate within its error margin
    with pytest.raises(TgcError, match=r"needs 600\.0 MiB of memory"):  # the compiled plan's exact figure
        preflight.require(preflight.Need("a test", 600 << 20, exact=True), log=None)
    lines = []
    preflight.require(need, log=lines.append, backend="webgpu")  # a GPU's memory: stated, not checked
    assert lines and "on the GPU" in lines[0]


# ---------------------------------------------------------------- DSL programs that crashed or hung the compiler

GPT_TEXT = C.presets.default_model_path().read_text()
FINAL_LN = "x = layernorm(x, transformer.ln_f, eps)"
LOSS = "loss(idx: i32[B, T], targets: i32[B, T]) = cross_entropy(logits(idx), targets)"


def _nested_for(n):
    body = "x = x * 1.0"
    for i in range(n):
        body = f"for h{i} in transformer.h {{ {body} }}"
    return GPT_TEXT.replace(FINAL_LN, f"x = g({FINAL_LN[4:]})") + f"\ndef g(x) {{\n {body}\n return x\n}}\n"


def _call_chain(n):
    chain = "".join(f"def f{i}(x) {{ return f{i + 1}(x) }}\n" for i in range(n)) + f"def f{n}(x) {{ return x }}\n"
    return GPT_TEXT.replace(FINAL_LN, f"x = f0({FINAL_LN[4:]})") + chain


HANGS = {
    "500-deep repeat": (GPT_TEXT + "repeat j < 1 {\n" * 500 + "param zz.w [d] = ones\n" + "}\n" * 500,
                        "nested too deeply"),
    "1000-long call chain": (_call_chain(1000), "function calls nest"),
    "40 nested for loops": (_nested_for(40), "unrolling this for loop"),
    "repeat layers * 1000": (GPT_TEXT.replace("repeat i < layers", "repeat i < layers * 1000"), "parameter tensors"),
    "repeat layers * 300": (GPT_TEXT.replace("repeat i < layers", "repeat i < layers * 300"), "unrolling this for loop"),
    "tuple loss": (GPT_TEXT.replace(LOSS, LOSS.replace("cross_entropy(logits(idx), targets)", "split(logits(idx), 2, 0)")),
                   "loss must return an f32 scalar"),
    "non-scalar loss": (GPT_TEXT.replace(LOSS, LOSS.replace("cross_entropy(logits(idx), targets)", "logits(idx)")),
                        "loss must return an f32 scalar"),
    "deep unary minus": (GPT_TEXT.replace(FINAL_LN, "x = " + "-" * 600 + FINAL_LN[4:]), "nested too deeply"),
    "long sum": (GPT_TEXT.replace(FINAL_LN, FINAL_LN + " + x" * 400), "nested too deeply"),
}


@pytest.mark.parametrize("case", list(HANGS))
def test_programs_that_crashed_or_hung_are_located_errors(case, tmp_path):
    """`tgc check` and `tgc compile` both: exit 2, FILE:LINE:COL at the user's file, the same place,
    well under 5 s, and a failed compile leaves nothing in the artifact cache or -o."""
    src, match = HANGS[case]
    f = tmp_path / "user.tg"
    f.write_text(src)
    t0 = time.perf_counter()
    rc, _, err = run_cli("check", f)
    check_time = time.perf_counter() - t0
    first = assert_user_error(rc, err, match)
    assert first.startswith(f"{f}:"), first
    assert check_time < 5, check_time
    rc, _, err = run_cli("compile", f, "--preset", "tiny", "-o", tmp_path / "art")
    assert assert_user_error(rc, err, match) == first
    assert not (tmp_path / "art").exists()


def test_dsl_errors_of_a_run_name_the_users_file_and_compiles_leave_nothing(corpus_file, tmp_path):
    from tgc.artifacts import cache_root

    f = tmp_path / "mine.tg"
    f.write_text(HANGS["tuple loss"][0])
    before = set((cache_root() / "artifacts").glob("*")) if (cache_root() / "artifacts").exists() else set()
    rc, _, err = run_cli("train", "--corpus", corpus_file, "--steps", "2", "--out", tmp_path / "out", "--model", f,
                         "--backend", BACKEND)
    first = assert_user_error(rc, err, "loss must return")
    assert first.startswith(f"{f}:")
    after = set((cache_root() / "artifacts").glob("*")) if (cache_root() / "artifacts").exists() else set()
    assert after == before
    assert not (tmp_path / "out").exists()
