"""GPT-2 interop (issue 14): `tgc import` of what Hugging Face's save_pretrained writes, the
tokenizer, weight dtypes, the 1,024-token context, the gpt2 preset, and shape mismatches.

The reference is transformers (GPT2LMHeadModel, GPT2TokenizerFast); every numeric comparison
goes through tgc.compare.compare with the tolerance stated beside it. Fast tests use a
GPT-2-shaped small model: GPT2Config's defaults (gelu_new, eps 1e-5, ctx 1024) with 2 layers,
d 64 and a 1,024-token byte-level BPE trained here (<|endoftext|> last, as in GPT-2). The
`slow` tests run the 124M model itself (GPT2Config() exactly) on wasm and WebGPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tgc.checkpoint import (
    CONFIG,
    WEIGHTS,
    import_hf,
    load_checkpoint,
    model_config_from_hf,
    param_shapes,
    save_checkpoint,
)
from tgc.cli import main
from tgc.compare import compare
from tgc.errors import TgcError
from tgc.presets import get_preset, model_config
from tgc.runtime import _module_available
from tgc.tokenizer import GPT2_SPECIAL, hf_tokenizer

torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")

LOGITS_ATOL = 1e-4  # f32 throughout on both sides; only the summation order differs (docs/parity.md)
EOT = GPT2_SPECIAL
SMALL_VOCAB = 1024  # 1,023 BPE tokens + <|endoftext|>
TEXTS = [
    "Hello, world! It's a test: we're 100% sure, aren't we?",
    "def import_hf(src_dir, out_dir):\n\treturn  {'a': 1}   # trailing   spaces  \n\n",
    f"first document{EOT}second document{EOT}{EOT}",
    f"<|endoftext| not special <|endoftext|>> {EOT}x",
    "Héllo wörld — naïve café ☕ 日本語のテキスト 🎉👩‍👩‍👧 Ωμέγα Привет مرحبا",
    "\x00\x01\x7f ÿÿÿ \u00a0\u2028 \ufffd",
    "   leading spaces and CAPITALS and 12345 67.89e-3",
    "",
]


def dir_digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir()) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    """Artifacts go to a per-module cache, not the user's ~/.cache/tgc."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TGC_CACHE_DIR", str(tmp_path_factory.mktemp("tgc-cache")))
    yield
    mp.undo()


def write_vocab_merges(d: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """vocab.json + merges.txt as GPT-2's own files (and save_pretrained of a slow GPT2Tokenizer) are."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return d


def train_bpe(size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A real byte-level BPE of at most `size` tokens, trained with `tokenizers` on tgc's own
    source plus TEXTS: (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = "".join(p.read_text() for p in sorted((Path(__file__).parents[1] / "tgc").rglob("*.py"))) + "".join(TEXTS)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tk.to_str())["model"]
    return dict(model["vocab"]), [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def trained_bpe(d: Path, size: int = SMALL_VOCAB) -> Path:
    """vocab.json + merges.txt of `size - 1` trained tokens, then <|endoftext|> as the last id."""
    vocab, merges = train_bpe(size - 1)
    assert len(vocab) == size - 1
    return write_vocab_merges(d, {**vocab, EOT: size - 1}, merges)


def synthetic_gpt2_bpe(d: Path, size: int = 50257) -> Path:
    """GPT-2's shape of vocabulary without GPT-2's files (no hub here): the merges trained on
    tgc's source (some thousands), then merges of earlier tokens drawn with a fixed seed up
    to `size - 1` tokens, then <|endoftext|> = size - 1."""
    vocab, merges = train_bpe(size - 1)
    r = np.random.default_rng(14)
    pool = list(vocab)
    while len(vocab) < size - 1:
        a, b = pool[int(r.integers(len(pool)))], pool[int(r.integers(len(pool)))]
        if a + b not in vocab and len(a + b) <= 16:
            merges.append((a, b))
            vocab[a + b] = len(vocab)
            pool.append(a + b)
    return write_vocab_merges(d, {**vocab, EOT: size - 1}, merges)


def gpt2_tokenizer_fast(d: Path):
    return transformers.GPT2TokenizerFast.from_pretrained(str(d))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    return trained_bpe(tmp_path_factory.mktemp("bpe"))


def perturbed_gpt2(config, scale: float, seed: int = 0):
    """A random GPT2LMHeadModel whose biases and LayerNorms are not 0/1 and whose greedy
    continuation wanders (init alone gives near-uniform logits and repeated tokens)."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def small_config(**kw):
    return transformers.GPT2Config(vocab_size=SMALL_VOCAB, n_embd=64, n_layer=2, n_head=4,
                                   bos_token_id=SMALL_VOCAB - 1, eos_token_id=SMALL_VOCAB - 1, **kw)


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory, bpe_dir):
    """(save_pretrained directory with vocab.json + merges.txt, the model): GPT-2-shaped, small."""
    d = tmp_path_factory.mktemp("hf-small")
    model = perturbed_gpt2(small_config(), 0.3)
    model.save_pretrained(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(bpe_dir / f, d / f)
    return d, model


@pytest.fixture(scope="module")
def small_ck(tmp_path_factory, small_hf) -> Path:
    out = tmp_path_factory.mktemp("ck-small") / "ck"
    assert main(["import", str(small_hf[0]), "-o", str(out)]) == 0
    return out


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids, n: int, **kw) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


def tgc_logits(ck_dir: Path, ids, backend: str) -> np.ndarray:
    from tgc.generate import open_checkpoint_runtime

    ck, rt = open_checkpoint_runtime(ck_dir, backend)
    x = np.zeros((1, ck.config["ctx"]), np.int32)
    x[0, : len(ids)] = ids
    return rt.run("forward", inputs={"tokens": x}, read=["logits"])["logits"][0, : len(ids)]


def tgc_greedy(ck_dir: Path, prompt: str, n: int, backend: str, **kw) -> list[int]:
    from tgc.generate import generate

    g = generate(ck_dir, prompt, max_new_tokens=n, temperature=0, backend=backend, **kw)
    "".join(g)
    return g.stats.token_ids


def runtime_backends(webgpu_slow: bool = False):
    out = []
    for b in ("wasm", "webgpu"):
        marks = [pytest.mark.gpu] if b == "webgpu" else []
        if not _module_available(b):
            marks.append(pytest.mark.skip(reason=f"tgc.runtime.{b} is not in this build"))
        if b == "webgpu" and webgpu_slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(b, marks=marks))
    return out


# ---- tokenizer: ids identical to GPT2TokenizerFast built from the same vocab.json + merges.txt

def assert_same_tokenizer(d: Path, texts=TEXTS):
    ref = gpt2_tokenizer_fast(d)
    ours = hf_tokenizer(d)
    assert ours.vocab_size == len(ref)
    for text in texts:
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids), text
    return ours, ref


def test_tokenizer_matches_gpt2_tokenizer_fast(bpe_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # built without transformers
    ours = hf_tokenizer(bpe_dir)
    monkeypatch.undo()
    ref = gpt2_tokenizer_fast(bpe_dir)
    corpus_line = (Path(__file__).parents[1] / "tgc" / "checkpoint.py").read_text()[:3000]
    for text in [*TEXTS, corpus_line]:
        assert ours.encode(text) == ref(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == ref.decode(ref(text)["input_ids"]) == text
    assert ours.encode(EOT) == [SMALL_VOCAB - 1] == [ref.eos_token_id]
    assert len(ours.encode(corpus_line)) < len(corpus_line) / 2  # the merges do something
    assert_same_tokenizer(bpe_dir)


def test_tokenizer_config_variants(bpe_dir, tmp_path):
    """tokenizer_config.json's add_prefix_space, added tokens with fixed ids, and extra
    special tokens are honoured as transformers honours them."""
    d = tmp_path / "tok"
    shutil.copytree(bpe_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": True, "tokenizer_class": "GPT2Tokenizer",
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": "<|pad|>",
        "added_tokens_decoder": {
            str(SMALL_VOCAB - 1): {"content": EOT, "lstrip": False, "normalized": True, "rstrip": False,
                                   "single_word": False, "special": True},
            str(SMALL_VOCAB): {"content": "<|pad|>", "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True},
        },
    }))
    ours, _ = assert_same_tokenizer(d, [*TEXTS, "a<|pad|>b <|pad|>"])
    assert ours.vocab_size == SMALL_VOCAB + 1 and ours.encode("<|pad|>") == [SMALL_VOCAB]


def test_tokenizer_full_gpt2_vocabulary(tmp_path):
    """50,257 tokens with <|endoftext|> = 50256, as GPT-2's (its merges are synthetic here)."""
    d = synthetic_gpt2_bpe(tmp_path / "tok")
    ours, _ = assert_same_tokenizer(d)
    assert ours.vocab_size == 50257 and ours.encode(EOT) == [50256]
    long_text = " ".join(TEXTS) * 20
    assert len(ours.encode(long_text)) < len(long_text.encode()) * 0.5  # merges fire on ordinary text


def test_tokenizer_survives_the_checkpoint(small_hf, small_ck):
    """The imported checkpoint's tokenizer.json gives the same ids in tgc and in transformers."""
    ref = gpt2_tokenizer_fast(small_hf[0])
    ck = load_checkpoint(small_ck)
    auto = transformers.AutoTokenizer.from_pretrained(str(small_ck))
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert ck.tokenizer.encode(text) == ids == auto(text)["input_ids"]


def test_stream_decoder_special_tokens_and_split_characters(small_hf):
    """Streamed pieces add up to decode(ids) when tokens split a UTF-8 character or are special."""
    from tgc.tokenizer import StreamDecoder

    tok = hf_tokenizer(small_hf[0])
    for text in TEXTS:
        ids = tok.encode(text)
        dec = StreamDecoder(tok)
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == tok.decode(ids) == text
        assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


# ---- weights: fp32, fp16, bf16 safetensors; dtype errors

@pytest.mark.parametrize("dtype,bits", [("float16", 11), ("bfloat16", 8)])
def test_half_precision_import_gives_the_fp32_weights(small_hf, tmp_path, monkeypatch, dtype, bits):
    """A model saved in fp16 / bf16 imports (numpy only: torch and transformers are hidden)
    as exactly the fp32 model rounded to that dtype, i.e. within half an ulp of `bits`
    mantissa bits of the fp32 weights."""
    model = small_hf[1]
    d = tmp_path / "hf"
    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(d)  # .to() is in place
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(small_hf[0] / f, d / f)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    import_hf(d, tmp_path / "ck")
    monkeypatch.undo()
    got = load_checkpoint(tmp_path / "ck").params
    want = {k: v.detach() for k, v in model.state_dict().items() if k in got}
    assert set(want) == set(got)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v.to(getattr(torch, dtype)).float().numpy(), err_msg=k)
        row = compare(k, got[k], v.numpy(), rtol=2.0 ** -bits, atol=2.0 ** -24)
        assert row.ok, row.format()


def test_dtype_problems_are_named(small_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "hf"
    shutil.copytree(small_hf[0], d)
    tensors = load_file(str(d / WEIGHTS))
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"].astype(np.int32)
    save_file(tensors, str(d / WEIGHTS), metadata={"format": "pt"})
    rc, err = run_cli(["import", str(d), "-o", str(tmp_path / "ck")])
    assert rc == 2 and "transformer.wpe.weight has dtype I32" in err and not (tmp_path / "ck").exists()


def test_a_bf16_tgc_checkpoint_loads(small_ck, tmp_path):
    """A tgc checkpoint whose weights were converted to bf16 (metadata kept) loads, widened;
    one re-saved by another tool is reported as that, not as an interrupted copy."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    shutil.copytree(small_ck, ck)
    with safe_open(str(ck / WEIGHTS), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(ck / WEIGHTS), metadata=meta)
    params = load_checkpoint(ck).params
    np.testing.assert_array_equal(params["transformer.wte.weight"], tensors["transformer.wte.weight"].float().numpy())
    save_file(tensors, str(ck / WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(TgcError, match="not written by tgc") as e:
        load_checkpoint(ck)
    assert "\n" not in str(e.value)


# ---- the imported model computes what transformers computes

@pytest.mark.parametrize("backend", runtime_backends())
def test_small_gpt2_logits_and_greedy_match_transformers(small_hf, small_ck, backend):
    hf_dir, model = small_hf
    ck = load_checkpoint(small_ck)
    assert ck.config["ctx"] == 1024 and ck.config["activation"] == "gelu_tanh" and ck.config["eos_token_id"] == SMALL_VOCAB - 1
    prompt = f"def import_hf(src_dir, out_dir):{EOT}\n    naïve ☕"
    ids = gpt2_tokenizer_fast(hf_dir)(prompt)["input_ids"]
    row = compare("logits", tgc_logits(small_ck, ids, backend), hf_logits(model, ids), rtol=0, atol=LOGITS_ATOL)
    assert row.ok, row.format()
    want = hf_greedy(model, ids, 20)
    assert len(set(want)) > 3  # a continuation that wanders, not one token repeated
    assert tgc_greedy(small_ck, prompt, 20, backend) == want


def windowed_greedy(model, ids: list[int], n: int, ctx: int) -> list[int]:
    """tgc's documented context rule (tgc/generate.py) computed with transformers: keep the
    last ctx tokens of the prompt; when the window is full, keep its last ctx/2 and go on."""
    tokens, new = list(ids), []
    start = max(0, len(tokens) - ctx)
    for i in range(n):
        nxt = int(np.argmax(hf_logits(model, tokens[start:])[-1]))
        tokens.append(nxt)
        new.append(nxt)
        if len(tokens) - start > ctx:
            start = len(tokens) - ctx // 2
    return new


def test_context_of_1024_tokens_truncates_and_slides_like_transformers(small_hf, small_ck):
    """Prompts at the 1,024-token window: one longer than ctx (its last 1,024 tokens are kept
    and the window slides at once) and one that fills it during generation (KV cache on and off)."""
    hf_dir, model = small_hf
    tok = hf_tokenizer(hf_dir)
    text = (Path(__file__).parents[1] / "tgc" / "generate.py").read_text()
    ids = tok.encode(text)
    assert len(ids) > 1100
    long_prompt = tok.decode(ids[:1100])
    long_ids = tok.encode(long_prompt)
    assert len(long_ids) > 1024
    assert tgc_greedy(small_ck, long_prompt, 4, "wasm") == windowed_greedy(model, long_ids, 4, 1024)
    prompt = tok.decode(ids[:1010])
    p_ids = tok.encode(prompt)
    want = windowed_greedy(model, p_ids, 24, 1024)  # the window fills at new token 1024 - len + 1
    assert tgc_greedy(small_ck, prompt, 24, "wasm") == want
    assert tgc_greedy(small_ck, prompt, 24, "wasm", kv_cache=False) == want


def test_generation_stops_at_end_of_text(small_hf, tmp_path):
    """With eos_token_id set to a token the greedy continuation reaches, tgc stops there as
    transformers does (the token counted, not printed)."""
    hf_dir, model = small_hf
    prompt = "def import_hf(src_dir, out_dir):"
    ids = gpt2_tokenizer_fast(hf_dir)(prompt)["input_ids"]
    free = hf_greedy(model, ids, 20)
    eos = next(t for t in free[3:] if t not in free[:3])
    d = tmp_path / "hf"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / CONFIG).read_text())
    (d / CONFIG).write_text(json.dumps({**cfg, "eos_token_id": eos}))
    import_hf(d, tmp_path / "ck")
    want = hf_greedy(model, ids, 20, eos_token_id=eos)
    assert want[-1] == eos and len(want) < 20
    assert tgc_greedy(tmp_path / "ck", prompt, 20, "wasm") == want


# ---- a model of another shape: one line, exit 2, nothing changed

def run_cli(argv) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def assert_refused(argv, d: Path, message: str):
    before = dir_digest(d)
    rc, err = run_cli(argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and message in err, err
    assert dir_digest(d) == before


def tiny_hf(d: Path) -> Path:
    perturbed_gpt2(transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=48, n_layer=2, n_head=3), 0.05).save_pretrained(d)
    return d


def test_import_into_an_existing_checkpoint_is_refused(small_hf, small_ck, tmp_path):
    tiny = tiny_hf(tmp_path / "tiny")
    assert_refused(["import", str(tiny), "-o", str(small_ck)], small_ck, "holds a checkpoint of another shape")
    assert_refused(["import", str(small_hf[0]), "-o", str(small_ck)], small_ck, "already holds a checkpoint")


def test_generate_with_a_config_of_another_shape_is_refused(small_ck, tmp_path):
    """config.json says tiny, the weights are the GPT-2-shaped model's."""
    ck = tmp_path / "ck"
    shutil.copytree(small_ck, ck)
    cfg = json.loads((ck / CONFIG).read_text())
    (ck / CONFIG).write_text(json.dumps({**cfg, "n_layer": 1, "n_embd": 48, "n_head": 3}))
    assert_refused(["generate", str(ck), "--prompt", "x", "--backend", "wasm"], ck, "model.safetensors")


def test_resume_of_an_imported_checkpoint_is_refused(small_ck, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(small_ck, ck)
    assert_refused(["train", "--out", str(ck), "--steps", "2", "--resume"], ck, "cannot be resumed")


def test_resume_into_another_shape_is_refused(small_ck, tmp_path):
    """A resumable checkpoint of the GPT-2-shaped model resumed as preset tiny."""
    ck = load_checkpoint(small_ck)
    out = tmp_path / "ck"
    opt = {f"{m}/{k}": np.zeros_like(v) for k, v in ck.params.items() for m in ("adam_m", "adam_v")}
    save_checkpoint(out, ck.params, ck.config, ck.tokenizer, {**ck.tgc, "step": 1}, optimizer=opt,
                    state={"step": 1, "seed": 0, "history": []}, source=ck.source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((Path(__file__).parents[1] / "tgc" / "generate.py").read_text())
    assert_refused(["train", "--out", str(out), "--steps", "2", "--resume", "--preset", "tiny", "--corpus", str(corpus)],
                   out, "does not match preset tiny")


# ---- the gpt2 preset

def test_gpt2_preset_is_hugging_faces_gpt2():
    p = get_preset("gpt2")
    assert model_config(p) == model_config(model_config_from_hf(transformers.GPT2Config().to_dict(), "GPT2Config()"))
    assert p["params"] == sum(math.prod(s) for s in param_shapes(p).values()) == 124_439_808
    n_hf = sum(t.numel() for t in transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1)).parameters())
    n_hf += 11 * sum(math.prod(s) for k, s in param_shapes(p).items() if k.startswith("transformer.h.0."))
    assert n_hf == p["params"]  # transformers' own count (the tied lm head counted once)


# ---- the 124M model (slow: ~0.5 GB of weights, ~12 GB for train_step)

@pytest.fixture(scope="module")
def gpt2_124m(tmp_path_factory):
    """GPT2Config() exactly, randomly initialised (seed 0), saved with save_pretrained beside a
    50,257-token vocab.json + merges.txt, and imported."""
    d = tmp_path_factory.mktemp("hf-124m")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    model.save_pretrained(d)
    synthetic_gpt2_bpe(d)
    out = d.parent / "ck-124m"
    assert main(["import", str(d), "-o", str(out)]) == 0
    return d, model, out


@pytest.mark.slow  # 124M: compiling both targets, ~1 GB of files; on lavapipe a 1,024-token forward takes >10 min
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("backend", runtime_backends())
def test_gpt2_124m_matches_transformers(gpt2_124m, backend):
    hf_dir, model, ck_dir = gpt2_124m
    ck = load_checkpoint(ck_dir)
    assert ck.tgc["preset"] == "gpt2" and ck.tgc["batch"] == 1 and ck.tokenizer.vocab_size == 50257
    prompt = f"The tokenizer {EOT} keeps its special tokens: naïve café ☕ 日本語"
    ids = gpt2_tokenizer_fast(hf_dir)(prompt)["input_ids"]
    assert ck.tokenizer.encode(prompt) == ids and 50256 in ids
    row = compare("logits", tgc_logits(ck_dir, ids, backend), hf_logits(model, ids), rtol=0, atol=LOGITS_ATOL)
    assert row.ok, row.format()
    assert tgc_greedy(ck_dir, prompt, 20, backend) == hf_greedy(model, ids, 20)


@pytest.mark.slow  # builds the 124M fixture
def test_gpt2_124m_into_another_shape_is_refused(gpt2_124m, small_ck, tmp_path):
    hf_dir, _, ck_dir = gpt2_124m
    assert_refused(["import", str(hf_dir), "-o", str(small_ck)], small_ck, "holds a checkpoint of another shape")
    ck = tmp_path / "ck"
    shutil.copytree(small_ck, ck)
    shutil.copy(ck_dir / WEIGHTS, ck / WEIGHTS)  # the 124M weights under the small model's config
    assert_refused(["generate", str(ck), "--prompt", "x", "--backend", "wasm"], ck, "model.safetensors")


@pytest.mark.slow  # compiles the 124M model for wasm; a train step of 4 x 1024 tokens (~12 GB, minutes on 2 cores)
def test_gpt2_preset_trains_a_step_on_wasm():
    """The gpt2 preset compiles and takes a training step on wasm: its loss is transformers'
    loss for the same initial weights and batch, and the step changes the weights."""
    from tgc.artifacts import runtime_for
    from tgc.presets import default_model_path
    from tgc.rng import randint

    p = get_preset("gpt2")
    rt, _ = runtime_for(default_model_path().read_text(), "gpt2", {}, "wasm")
    rt.init_state(0)
    names = [t["name"] for t in rt.manifest["tensors"] if t["role"] == "parameter"]
    init = {n: rt.read(n).copy() for n in names}
    B, T, V = p["batch"], p["ctx"], p["vocab"]
    idx = randint(0, "gpt2-step", B * (T + 1), V).reshape(B, T + 1).astype(np.int32)
    loss = float(rt.run("train_step", inputs={"idx": idx[:, :-1], "targets": idx[:, 1:]},
                        uniforms={"step": np.float32(1), "lr": np.float32(3e-4), "warmup": np.float32(1),
                                  "total_steps": np.float32(1)}, read=["loss"])["loss"])
    assert not np.array_equal(rt.read("transformer.wte.weight"), init["transformer.wte.weight"])
    del rt

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(activation_function="gelu")).eval()  # gpt.tg: exact GELU
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to wte
    with torch.no_grad():
        logits = model(torch.from_numpy(idx[:, :-1]).long()).logits
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(idx[:, 1:]).long().reshape(-1))
    row = compare("loss", loss, float(want), rtol=1e-5)  # a mean over 4,096 f32 terms of about 11
    assert row.ok, row.format()
