"""Tokenizers: byte-level (the default) and BPE trained on the corpus, both in the `tokenizers` format.

    tok = make_tokenizer("byte")                 # 256 tokens, id == byte value, reversible for any text
    tok = make_tokenizer("bpe:4096", text)       # byte-level BPE trained on `text`
    tok.save(path); tok = load_tokenizer(path)   # tokenizer.json; also loads in transformers'
                                                 # PreTrainedTokenizerFast(tokenizer_file=path)

Both map text to bytes first (GPT-2's byte-to-unicode alphabet), so every UTF-8
string encodes and decodes back to itself. The byte tokenizer is a BPE model with
the 256 byte symbols and no merges, ordered so that a token's id is its byte
value. Neither has special tokens: generation stops on a token count, not an EOS.
The model's vocab must equal `tok.vocab_size` (checked when a checkpoint loads).
"""

from __future__ import annotations

from pathlib import Path

from tgc.errors import TgcError

BYTE_VOCAB = 256


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
