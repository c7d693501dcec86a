"""Tokenizers: byte-level (the default) and BPE trained on the corpus, both in the `tokenizers` format.

    tok = make_tokenizer("byte")                 # 256 tokens, id == byte value, reversible for any text
    tok = make_tokenizer("bpe:4096", text)       # byte-level BPE trained on `text`
    tok.save(path); tok = load_tokenizer(path)   # tokenizer.json; also loads in transformers'
                                                 # PreTrainedTokenizerFast(tokenizer_file=path)

    tok = hf_tokenizer(src_dir)                  # a Hugging Face model directory's tokenizer (tgc import)

Both map text to bytes first (GPT-2's byte-to-unicode alphabet), so every UTF-8
string encodes and decodes back to itself. The byte tokenizer is a BPE model with
the 256 byte symbols and no merges, ordered so that a token's id is its byte
value. Neither has special tokens: generation stops on a token count, not an EOS.
An imported GPT-2 tokenizer keeps its added tokens (<|endoftext|> is 50256 in GPT-2's
own), built from vocab.json + merges.txt with `tokenizers` alone the way transformers'
GPT2TokenizerFast builds it, so the ids are the same. The model's vocab must equal
`tok.vocab_size` (checked when a checkpoint loads).
"""

from __future__ import annotations

import json
from pathlib import Path

from tgc.errors import TgcError

BYTE_VOCAB = 256
GPT2_SPECIAL = "<|endoftext|>"  # GPT2Tokenizer's default unk, bos and eos token
SPECIAL_ROLES = ("unk_token", "bos_token", "eos_token", "pad_token")


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (the ByteLevel pre-tokenizer's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


class Tokenizer:
    """A `tokenizers.Tokenizer` with the few operations tgc needs; `kind` is "byte" or "bpe:N"."""

    def __init__(self, tk, kind: str):
        self.tk = tk
        self.kind = kind

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tk.to_str()

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), decoders.ByteLevel()


def byte_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as Tk
    from tokenizers.models import BPE

    tk = Tk(BPE(vocab={s: i for i, s in enumerate(_byte_symbols())}, merges=[]))
    tk.pre_tokenizer, tk.decoder = _byte_level_parts()
    return Tokenizer(tk, "byte")


def bpe_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on `text`; all 256 bytes are in the vocabulary, so nothing is unknown."""
    from tokenizers import Tokenizer as Tk
    from tokenizers import pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if vocab_size < BYTE_VOCAB:
        raise TgcError(f"bpe vocabulary must be at least {BYTE_VOCAB} (one token per byte), got {vocab_size}")
    tk = Tk(BPE())
    # GPT-2's regex splits words before merging; the byte alphabet keeps it lossless.
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    _, tk.decoder = _byte_level_parts()
    trainer = BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=[], show_progress=False)
    # train on lines in chunks: the trainer's input is an iterator of strings
    lines = text.splitlines(keepends=True)
    tk.train_from_iterator(("".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer=trainer)
    return Tokenizer(tk, f"bpe:{vocab_size}")


def parse_spec(spec: str) -> tuple[str, int]:
    """'byte' -> ('byte', 256); 'bpe:4096' -> ('bpe', 4096); anything else is a TgcError."""
    if spec == "byte":
        return "byte", BYTE_VOCAB
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = 0
        if n >= BYTE_VOCAB:
            return "bpe", n
    raise TgcError(f"unknown tokenizer {spec!r}: use 'byte' or 'bpe:N' with N >= {BYTE_VOCAB} (e.g. bpe:4096)")


def make_tokenizer(spec: str = "byte", text: str | None = None) -> Tokenizer:
    kind, n = parse_spec(spec)
    if kind == "byte":
        return byte_tokenizer()
    if not text:
        raise TgcError("a BPE tokenizer needs training text")
    return bpe_tokenizer(text, n)


def tokenizer_from_json(text: str, kind: str | None = None, where: str = "tokenizer.json") -> Tokenizer:
    from tokenizers import Tokenizer as Tk

    try:
        tk = Tk.from_str(text)
    except Exception as e:  # noqa: BLE001 -- tokenizers raises plain Exception on malformed JSON
        raise TgcError(f"{where}: not a valid tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if kind is None:
        kind = "byte" if tk.get_vocab_size() == BYTE_VOCAB and tk.get_vocab().get("!") == ord("!") else f"bpe:{tk.get_vocab_size()}"
    return Tokenizer(tk, kind)


def load_tokenizer(path, kind: str | None = None) -> Tokenizer:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TgcError(f"cannot read tokenizer {p}: {e}") from None
    return tokenizer_from_json(text, kind, str(p))


# ---- a Hugging Face model directory's tokenizer

def _read_json_file(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgcError(f"{p}: unreadable or corrupt ({str(e).splitlines()[0]})") from None


def _token_content(t) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(t, dict):
        t = t.get("content")
    return t if isinstance(t, str) and t else None


def hf_tokenizer(src) -> Tokenizer | None:
    """The tokenizer of a save_pretrained directory, or None when it has none:
    tokenizer.json as it is, else vocab.json + merges.txt built as GPT2TokenizerFast builds
    them (byte-level BPE, GPT-2's pre-tokenizer regex, the byte-level decoder) with the
    added tokens of tokenizer_config.json's added_tokens_decoder, added_tokens.json and the
    special tokens it or special_tokens_map.json names (GPT-2's default: <|endoftext|> as
    unk, bos and eos), each at the id transformers gives it."""
    src = Path(src)
    if (src / "tokenizer.json").exists():
        return load_tokenizer(src / "tokenizer.json")
    vocab, merges = src / "vocab.json", src / "merges.txt"
    if not (vocab.exists() and merges.exists()):
        return None
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from tokenizers import Tokenizer as Tk
    from tokenizers.models import BPE

    try:
        model = BPE.from_file(str(vocab), str(merges), dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False)
    except Exception as e:  # noqa: BLE001 -- tokenizers raises plain Exception for bad files
        raise TgcError(f"{src}: vocab.json / merges.txt are not a BPE vocabulary ({str(e).splitlines()[0]})") from None
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as in transformers
        if (src / name).exists():
            obj = _read_json_file(src / name)
            config.update(obj if isinstance(obj, dict) else {})
    tk = Tk(model)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    tk.decoder = decoders.ByteLevel()

    # added tokens with a fixed id first (in id order), then the named special tokens
    fixed: dict[int, AddedToken] = {}
    for i, t in (config.get("added_tokens_decoder") or {}).items():
        if _token_content(t):
            opts = {k: bool(t[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in t}
            fixed[int(i)] = AddedToken(_token_content(t), **opts)
    if (src / "added_tokens.json").exists():
        for content, i in _read_json_file(src / "added_tokens.json").items():
            fixed.setdefault(int(i), AddedToken(content, special=False))
    for i, t in sorted(fixed.items()):
        (tk.add_special_tokens if t.special else tk.add_tokens)([t])
        if tk.token_to_id(t.content) != i:
            raise TgcError(f"{src}: added token {t.content!r} should have id {i}, but the vocabulary gives it "
                           f"{tk.token_to_id(t.content)}")
    named = {role: _token_content(config[role]) if role in config else (GPT2_SPECIAL if role != "pad_token" else None)
             for role in SPECIAL_ROLES}
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    added = {t.content for t in tk.get_added_tokens_decoder().values()}
    for content in [*named.values(), *(_token_content(t) for t in extra)]:
        if content and content not in added:  # in the vocabulary: keeps its id; else the next one
            tk.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            added.add(content)
    bos = named["bos_token"]
    if config.get("add_bos_token") and bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    return Tokenizer(tk, f"bpe:{tk.get_vocab_size()}")


class StreamDecoder:
    """Turns token ids into text pieces as they come, holding back a piece while it ends in
    an incomplete UTF-8 sequence (a byte token can be half a character)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(ids) already returned

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece
