"""The LLaMA-style model (issue 17): models/llama.tg against transformers' LlamaForCausalLM.

- a random LlamaForCausalLM (GQA: 4 query heads on 2 key/value heads; its weights perturbed
  so that RMSNorm scales are not 1 and greedy continuations wander), saved with
  save_pretrained and brought in by `tgc import`: logits within LOGITS_ATOL on wasm and
  WebGPU (lavapipe), and the same 50 greedy tokens as transformers with and without the KV
  cache;
- a llama.tg checkpoint trained by tgc loads in transformers (no missing or unexpected
  keys, its tokenizer through AutoTokenizer) and gives the same logits;
- `tgc parity` over 20 steps of the tiny preset (WebGPU, wasm and the interpreter);
- the presets' parameter counts, and the import's one-line refusals of what llama.tg does
  not compute.

Every comparison goes through tests/helpers.py's assert_close with the tolerance beside it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, run_cli

from tgc import family, presets
from tgc.checkpoint import import_hf, load_checkpoint
from tgc.cli import main
from tgc.errors import TgcError
from tgc.runtime import _module_available

torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")

LOGITS_ATOL = 1e-4  # f32 on both sides; summation order and the rotary angles' last bits differ (docs/parity.md)
LLAMA = "Llama"
PROMPT = "To be, or not"


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    """Artifacts go to a per-module cache, not the user's ~/.cache/tgc."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TGC_CACHE_DIR", str(tmp_path_factory.mktemp("tgc-cache")))
    yield
    mp.undo()


def hf_config(**kw):
    args = {"vocab_size": 256, "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "bos_token_id": None,
                "eos_token_id": None}
    args.update(kw)
    return transformers.LlamaConfig(**args)


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """(save_pretrained directory, the model): byte vocabulary, no tokenizer files (tgc's byte
    tokenizer then), context 64."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    d = tmp_path_factory.mktemp("hf-llama")
    model.save_pretrained(d)
    return d, model


@pytest.fixture(scope="module")
def llama_ck(tmp_path_factory, hf_llama) -> Path:
    out = tmp_path_factory.mktemp("ck-llama") / "ck"
    assert main(["import", str(hf_llama[0]), "-o", str(out)]) == 0
    return out


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def tgc_logits(ck_dir: Path, ids, backend: str) -> np.ndarray:
    from tgc.generate import open_checkpoint_runtime

    ck, rt = open_checkpoint_runtime(ck_dir, backend, programs=("forward",))
    x = np.zeros((1, ck.config["ctx"]), np.int32)
    x[0, : len(ids)] = ids
    return rt.run("forward", inputs={"tokens": x}, read=["logits"])["logits"][0, : len(ids)]


def runtime_backends():
    out = []
    for b in ("wasm", "webgpu"):
        marks = [pytest.mark.gpu] if b == "webgpu" else []
        if not _module_available(b):
            marks.append(pytest.mark.skip(reason=f"tgc.runtime.{b} is not in this build"))
        out.append(pytest.param(b, marks=marks))
    return out


def test_presets_param_counts():
    """models/llama.toml's `params` are what llama.tg declares, and the formula of the architecture."""
    for name in presets.preset_names(LLAMA):
        p = presets.get_preset(name, LLAMA)
        cfg = {**presets.model_config(p, LLAMA), "family": LLAMA}
        V, d, L, m = p["vocab"], p["d"], p["layers"], p["d_mlp"]
        kv = p["heads_kv"] * d // p["heads"]
        assert family.param_count(cfg) == p["params"] == 2 * V * d + L * (2 * d * d + 2 * kv * d + 3 * d * m + 2 * d) + d


def test_compiles_like_the_gpt():
    """The compiler decides for llama.tg as for gpt.tg: the verifier after every pass, kernels
    shared across layers, every loop nest equal to its flat kernel, and a memory plan within
    1.3x of the lower bound (tests/test_kernels.py, tests/test_ir.py hold the GPT to the same)."""
    import test_kernels

    from tgc.compiler import compile_model

    c = compile_model(presets.family_model_path(LLAMA), "tiny", targets=(), verify=True)
    test_kernels.test_layers_share_kernels(c)
    test_kernels.test_nests_compute_what_the_kernels_mean(c)
    r = c.plan.reports["train_step"]
    assert r.planned_bytes <= 1.3 * r.lower_bound, (r.planned_bytes, r.lower_bound)
    assert set(c.schedules) == {"train_step", "eval_loss", "forward", "prefill", "decode_step"}


def test_import_names_and_config(hf_llama, llama_ck):
    ck = load_checkpoint(llama_ck)
    _hf_dir, model = hf_llama
    assert set(ck.params) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert np.array_equal(ck.params[k], v.numpy()), k
    assert ck.compile_config == {"vocab": 256, "ctx": 64, "d": 48, "heads": 4, "heads_kv": 2, "layers": 2,
                                 "d_mlp": 128, "eps": 1e-5, "theta": 10000.0}
    assert ck.tgc["model_origin"] == "llama.tg" and "activation" not in ck.tgc


@pytest.mark.parametrize("backend", runtime_backends())
def test_imported_llama_logits_match_transformers(hf_llama, llama_ck, backend):
    _, model = hf_llama
    ids = list(PROMPT.encode()) + list(range(200, 240))  # 53 of the 64 positions: rotary angles up to 52 rad
    assert_close(tgc_logits(llama_ck, ids, backend), hf_logits(model, ids), rtol=0, atol=LOGITS_ATOL, name="logits")


@pytest.mark.parametrize("backend", runtime_backends())
@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_50_tokens_with_and_without_kv_cache(hf_llama, llama_ck, kv_cache, backend):
    from tgc.generate import generate

    _, model = hf_llama
    ids = list(PROMPT.encode())
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=50, do_sample=False)
    want = out[0, len(ids):].tolist()
    assert len(want) == 50 and len(set(want)) > 5  # a continuation that wanders
    g = generate(llama_ck, PROMPT, max_new_tokens=50, temperature=0, backend=backend, kv_cache=kv_cache)
    "".join(g)
    assert g.stats.token_ids == want


def test_import_with_a_bpe_tokenizer_and_bos(tmp_path):
    """A Llama saved with a fast tokenizer of its own (byte-level BPE whose post-processor puts
    <s> first, as Llama's do): tgc encodes the prompt as transformers does, BOS included, and
    continues it greedily as LlamaForCausalLM.generate does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tgc.generate import generate

    text = "".join(p.read_text() for p in sorted((Path(__file__).parents[1] / "docs").glob("*.md")))
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    V = tk.get_vocab_size()
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(hf_config(vocab_size=V, bos_token_id=0, eos_token_id=1, num_key_value_heads=4,
                                                    rope_theta=500.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "-o", str(tmp_path / "ck")]) == 0
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.compile_config["theta"] == 500.0 and ck.compile_config["heads_kv"] == 4
    prompt = "The compiler derives the backward pass"
    ids = fast(prompt)["input_ids"]
    assert ids[0] == 0 and ck.tokenizer.encode(prompt) == ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=20, do_sample=False)
    want = out[0, len(ids):].tolist()
    g = generate(tmp_path / "ck", prompt, max_new_tokens=20, temperature=0, backend="wasm")
    "".join(g)
    assert g.stats.token_ids == want and len(set(want)) > 3


@pytest.fixture(scope="module")
def trained_ck(tmp_path_factory) -> Path:
    from tgc.train import train

    out = tmp_path_factory.mktemp("llama-train") / "ck"
    r = train("tiny", "shakespeare", steps=8, out=out, backend="wasm", seed=0, progress=False, log=None,
              model_path=presets.family_model_path(LLAMA))
    assert r.step == 8 and r.history[-1][1] < r.history[0][1]
    return out


def test_trained_checkpoint_loads_in_transformers(trained_ck):
    model, info = transformers.LlamaForCausalLM.from_pretrained(trained_ck, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tok = transformers.AutoTokenizer.from_pretrained(trained_ck)
    text = "ROMEO: a rose by any other name"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode())  # tgc's byte tokenizer, as transformers loads it
    assert_close(tgc_logits(trained_ck, ids, "wasm"), hf_logits(model.eval(), ids), rtol=0, atol=LOGITS_ATOL,
                 name="logits")
    hf = json.loads((trained_ck / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["tie_word_embeddings"] is False and hf["tgc"]["preset"] == "tiny"


def test_trained_checkpoint_resumes_and_generates(trained_ck, tmp_path):
    shutil.copytree(trained_ck, tmp_path / "ck")
    rc, out, err = run_cli("train", "--steps", "10", "--out", str(tmp_path / "ck"), "--resume", "--backend", "wasm")
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "ck", resume=True).step == 10
    rc, out, err = run_cli("generate", str(tmp_path / "ck"), "--prompt", "ROMEO:", "--max-new-tokens", "10",
                           "--backend", "wasm")
    assert rc == 0 and out.startswith("ROMEO:"), err


@pytest.mark.gpu
def test_parity_tiny_20_steps(tmp_path):
    from tgc.parity import run_parity

    lines = []
    rows = run_parity("tiny", 20, seed=0, model_path=presets.family_model_path(LLAMA), out=lines.append,
                      artifact_dir=tmp_path / "art")
    text = "\n".join(lines)
    assert rows and all(r.ok for r in rows), text
    names = {r.name for r in rows}
    assert "webgpu vs wasm: loss@20" in names and "webgpu:decode_step.logits" in names
    assert any(n.startswith("wasm:grad/model.layers.0.self_attn.k_proj") for n in names)


@pytest.mark.parametrize("change,message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"head_dim": 16}, "head_dim"),
    ({"num_key_value_heads": 3}, "k_proj.weight has shape [24, 48], the config needs [36, 48]"),
    ({"hidden_size": "48"}, "hidden_size"),
])
def test_import_refuses_what_llama_tg_does_not_compute(hf_llama, tmp_path, change, message):
    src = tmp_path / "src"
    shutil.copytree(hf_llama[0], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(change)
    (src / "config.json").write_text(json.dumps(cfg))
    rc, _out, err = run_cli("import", str(src), "-o", str(tmp_path / "out"))
    assert rc == 2 and message in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "out").exists()


def test_unknown_model_type_names_the_supported_ones(hf_llama, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_llama[0], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(TgcError, match="'gpt2', 'llama'"):
        import_hf(src, tmp_path / "out")


def test_dropout_is_refused_for_a_model_without_it(tmp_path):
    rc, _out, err = run_cli("train", "--model", str(presets.family_model_path(LLAMA)), "--steps", "1", "--dropout", "0.1",
                            "--out", str(tmp_path / "x"), "--backend", "numpy")
    assert rc == 2 and "has no dropout rate" in err and not (tmp_path / "x" / "config.json").exists(), err


def test_train_presets_come_from_the_model_family(tmp_path):
    rc, _out, err = run_cli("train", "--model", str(presets.family_model_path(LLAMA)), "--preset", "huge", "--steps", "1",
                           "--out", str(tmp_path / "x"))
    assert rc == 2 and "for the Llama family" in err and "tiny, small, medium" in err, err
    assert math.isfinite(presets.get_preset("tiny", LLAMA)["d"])


H = "config M(vocab, ctx, d, heads, layers)\nparam wte [vocab, d] = normal(0.02)\n"  # lines 1-2
F = "loss(idx: i32[B, T], t: i32[B, T]) = cross_entropy(f(embed(wte, idx), idx) @ transpose(wte), t)\n"


@pytest.mark.parametrize("body,msg", [
    ("return concat(x, x[:, 0:4], 2)", "differ outside axis 2"),
    ("return concat(x, idx)", "second argument of concat must be f32"),
    ("return expand(x, [2, 3, 8])", "cannot broadcast [2, 8, 8] to [2, 3, 8]"),
    ("return x + arange(0)", "arange needs a positive length"),
    ("return x + float(x)", "argument of float must be i32"),
    ("return x * sin(idx)", "must be f32"),
])
def test_new_builtins_report_errors_at_the_call(body, msg):
    from tgc.frontend import load_model
    from tgc.ir import build

    src = H + "def f(x, idx) {\n  " + body + "\n}\n" + F
    model = load_model(src, {"vocab": 16, "ctx": 8, "d": 8, "heads": 2, "layers": 1}, filename="bad.tg")
    with pytest.raises(TgcError, match=msg.replace("[", r"\[").replace("]", r"\]")) as e:
        model.call("loss", build.input("idx", (2, 8), "i32"), build.input("targets", (2, 8), "i32"))
    assert e.value.loc is not None and e.value.loc.line == 4


def test_new_builtins_compute_what_they_say():
    """concat, expand, arange, float, sin and cos lowered and run by the interpreter, against numpy."""
    from tgc.frontend import load_model
    from tgc.ir import build
    from tgc.ir.interp import evaluate

    src = H + ("def f(x, idx) {\n  a = concat(sin(x[:, :, 0:3]), cos(x[:, :, 3:8]))\n"
               "  return a + expand(reshape(float(idx), [2, 8, 1]), [2, 8, 8]) * arange(8)\n}\n")
    model = load_model(src, {"vocab": 16, "ctx": 8, "d": 8, "heads": 2, "layers": 1}, filename="ok.tg")
    x, idx = build.input("x", (2, 8, 8)), build.input("idx", (2, 8), "i32")
    r = np.random.default_rng(0)
    xv, iv = r.standard_normal((2, 8, 8)).astype(np.float32), r.integers(0, 9, (2, 8)).astype(np.int32)
    (got,) = evaluate([model.call("f", x, idx)], {"x": xv, "idx": iv})
    want = np.concatenate([np.sin(xv[:, :, :3]), np.cos(xv[:, :, 3:])], -1) + iv[..., None] * np.arange(8)
    assert_close(got, want.astype(np.float32), rtol=0, atol=1e-6, name="f")
