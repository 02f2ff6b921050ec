"""Token corpora for training bursts: the default one every machine with Python has, or the user's `--data`.

Default corpus: the text of the Python standard library's own source files (`*.py` under
`sysconfig.get_paths()["stdlib"]`, without `site-packages` and without the test suites `test/`, `tests/`,
`idle_test/`, which are large and repetitive) — about 12 MB and 3 M tokens on CPython 3.11. It is tokenized by a
byte-level BPE (GPT-2 style, `tokenizers`) trained on that same text, vocabulary 8192 by default.

Text `--data` (files, or folders searched recursively for UTF-8 text files) gets the same treatment: a BPE trained on
it. Pre-tokenized `--data` are nanoGPT-style `.bin` files, a raw array of token ids with no header. Their dtype:
`uint16` as nanoGPT's `prepare.py` writes it, unless `token_dtype="uint32"` is given; a uint32 file read as uint16
is detected (every odd uint16 is 0) and refused with that hint. A folder holding `train.bin` and `val.bin` is used
as that split; otherwise the split below applies. Their vocabulary is the largest id + 1, rounded up to 64.

Split (deterministic): documents are ordered by the SHA-1 of their path relative to the data root (the standard
library's folder, or the folder the user named; a file given directly by its name) — a fixed pseudo-random mix of
modules, so validation is not just the alphabetically last package, and the same files give the same tokens and split
wherever they sit, concatenated with `<|endoftext|>` between
them, and the last `val_fraction` of the token stream is held out for validation.

Cache: the tokenizer and both token arrays are stored in `$SUBPROF_CACHE_DIR`, else `$XDG_CACHE_HOME/subprof`,
else `~/.cache/subprof`, under `corpus-<hash>` where the hash covers the file list (path, size, mtime), the
vocabulary size, the validation fraction, the `tokenizers` version and this module's format version. A second
build with the same inputs is a cache hit (`Corpus.cache_hit`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subprof.errors import SubprofError

FORMAT_VERSION = 1
EOT = "<|endoftext|>"
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".csv", ".tex", ".html", ".xml", ".c", ".h", ".js",
                 ".toml", ".yaml", ".yml", ".ini", ".cfg", ".sh"}
MIN_TOKENS = 2048  # below this nothing useful can be trained or validated
MAX_VOCAB = 2**20  # largest plausible vocabulary of a .bin token file (real ones: 32k–256k)


@dataclass(kw_only=True, slots=True)
class Corpus:
    """Train and validation token streams (numpy int arrays) and where they came from."""

    name: str
    description: str
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    key: str
    tokenizer_path: Path | None = None
    cache_hit: bool = False

    @property
    def tokens(self) -> int:
        return int(self.train.size + self.val.size)

    def require(self, seq: int) -> None:
        """Both splits must hold at least one (seq + 1)-token window (inputs and shifted targets)."""
        need = seq + 1
        for split, arr in (("training", self.train), ("validation", self.val)):
            if arr.size < need:
                raise SubprofError(f"corpus {self.name}: the {split} split has {arr.size:,} tokens, fewer than one "
                                   f"sequence of --seq {seq} + 1; give more data or a shorter --seq")

    def summary(self) -> dict:
        return {"corpus": self.name, "corpus_key": self.key, "corpus_tokens": self.tokens,
                "train_tokens": int(self.train.size), "val_tokens": int(self.val.size), "vocab_size": self.vocab_size}


# ------------------------------------------------------------------------------------------------------ sources


def cache_root() -> Path:
    if os.environ.get("SUBPROF_CACHE_DIR"):
        return Path(os.environ["SUBPROF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "subprof"


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's own `*.py` files (root, sorted list), without site-packages and test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py")
                   if f.is_file() and not STDLIB_SKIP.intersection(f.relative_to(root).parts[:-1]))
    if not files:
        raise SubprofError(f"no Python standard library sources found under {root}; pass --data PATH")
    return root, files


def _expand(paths: list[Path]) -> tuple[dict[Path, str], list[Path]]:
    """Split user paths into text files and `.bin` token files; folders are searched recursively (hidden files and
    unknown suffixes skipped). Text files come with a name relative to the path the user gave (a folder's files
    relative to it, a file by its own name), so where the data sits on disk changes nothing downstream."""
    texts: dict[Path, str] = {}
    bins: list[Path] = []
    for path in paths:
        if not path.exists():
            raise SubprofError(f"--data {str(path)!r} does not exist")
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if not f.is_file() or any(p.startswith(".") for p in f.relative_to(path).parts):
                    continue
                if f.suffix == ".bin":
                    bins.append(f)
                elif f.suffix.lower() in TEXT_SUFFIXES:
                    texts[f] = f.relative_to(path).as_posix()
        elif path.suffix == ".bin":
            bins.append(path)
        else:
            texts[path] = path.name
    if texts and bins:
        raise SubprofError("--data mixes text files and .bin token files; pass one kind")
    if not texts and not bins:
        raise SubprofError(f"--data {', '.join(map(str, paths))}: no text or .bin files found")
    return texts, bins


def _inputs_hash(files: dict[Path, str], extra: dict) -> str:
    """The cache key: every file's relative name (as `_expand` gives it), size and modification time, and
    `extra`."""
    h = hashlib.sha256()
    for f, rel in files.items():
        st = f.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _doc_order(files: dict[Path, str]) -> list[Path]:
    """Documents in the order of the SHA-1 of their relative names: a fixed pseudo-random mix of the folders,
    independent of where the data sits."""
    return sorted(files, key=lambda f: (hashlib.sha1(files[f].encode()).hexdigest(), files[f]))


def _read_texts(files: list[Path], *, strict: bool) -> list[str]:
    """UTF-8 text of each file. Strict (user data): an unreadable or non-UTF-8 file is an error naming it."""
    out = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise SubprofError(f"cannot read {str(f)!r}: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise SubprofError(f"{str(f)!r} is not UTF-8 text (pre-tokenized data must end in .bin)") from None
            text = data.decode("utf-8", errors="replace")
        if text.strip():
            out.append(text)
    return out


# ------------------------------------------------------------------------------------------------- tokenization


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 pre-tokenization, no prefix space) with one special token, `<|endoftext|>` = id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _split(stream: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(round(stream.size * val_fraction))
    return stream[: stream.size - n_val], stream[stream.size - n_val:]


def _check_size(name: str, n: int) -> None:
    if n < MIN_TOKENS:
        raise SubprofError(f"corpus {name} has only {n:,} tokens; at least {MIN_TOKENS:,} are needed for a burst")


def _build_text(name: str, description: str, files: dict[Path, str], *, vocab_size: int, val_fraction: float,
                strict: bool) -> Corpus:
    import tokenizers

    key = _inputs_hash(files, {"vocab": vocab_size, "val_fraction": val_fraction, "format": FORMAT_VERSION,
                                     "tokenizers": tokenizers.__version__})
    folder = cache_root() / f"corpus-{key}"
    if (folder / "meta.json").exists():
        try:
            meta = json.loads((folder / "meta.json").read_text())
            dtype = np.dtype(meta["dtype"])
            return Corpus(name=name, description=description, key=key, vocab_size=meta["vocab_size"],
                          train=np.fromfile(folder / "train.bin", dtype=dtype),
                          val=np.fromfile(folder / "val.bin", dtype=dtype),
                          tokenizer_path=folder / "tokenizer.json", cache_hit=True)
        except (OSError, KeyError, ValueError, TypeError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry is rebuilt
    texts = _read_texts(_doc_order(files), strict=strict)
    if not texts:
        raise SubprofError(f"corpus {name}: every file is empty")
    tok = train_tokenizer(texts, vocab_size)
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    vocab = tok.get_vocab_size()
    stream = np.asarray(ids, dtype=_token_dtype(vocab))
    _check_size(name, stream.size)
    train, val = _split(stream, val_fraction)
    _store(folder, tok, train, val, {"vocab_size": vocab, "dtype": stream.dtype.name, "name": name,
                                     "files": len(files), "tokens": int(stream.size)})
    return Corpus(name=name, description=description, key=key, vocab_size=vocab, train=train, val=val,
                  tokenizer_path=folder / "tokenizer.json", cache_hit=False)


def _store(folder: Path, tok, train: np.ndarray, val: np.ndarray, meta: dict) -> None:
    """Write the cache entry into a temporary folder and rename it into place (atomic for concurrent builds)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        tok.save(str(tmp / "tokenizer.json"))
        train.tofile(tmp / "train.bin")
        val.tofile(tmp / "val.bin")
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(folder)
        except OSError:  # another process stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise SubprofError(f"cannot write the corpus cache under {folder.parent}: {exc.strerror}; "
                           f"set SUBPROF_CACHE_DIR to a writable folder") from None


def _read_bin(path: Path, dtype: str) -> np.ndarray:
    """A nanoGPT token file: raw ids, no header."""
    np_dtype = np.dtype(dtype)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SubprofError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if size % np_dtype.itemsize:
        raise SubprofError(f"{str(path)!r} has {size} bytes, not a whole number of {dtype} tokens; "
                           f"pass the right --data-dtype")
    if size == 0:
        raise SubprofError(f"{str(path)!r} is empty")
    arr = np.fromfile(path, dtype=np_dtype)
    if np_dtype == np.uint16 and arr.size >= 1024 and not arr[1::2].any() and arr[0::2].any():
        raise SubprofError(f"{str(path)!r} looks like uint32 tokens read as uint16 (every second value is 0); "
                           f"pass --data-dtype uint32")
    return arr


def _build_bin(name: str, files: list[Path], *, token_dtype: str, val_fraction: float) -> Corpus:
    if token_dtype not in ("uint16", "uint32"):
        raise SubprofError(f"--data-dtype {token_dtype!r} unknown: use uint16 or uint32")
    by_name = {f.name: f for f in files}
    if len(files) == 2 and set(by_name) == {"train.bin", "val.bin"}:
        train, val = _read_bin(by_name["train.bin"], token_dtype), _read_bin(by_name["val.bin"], token_dtype)
        how = "train.bin / val.bin as given"
    else:
        train, val = _split(np.concatenate([_read_bin(f, token_dtype) for f in files]), val_fraction)
        how = f"last {val_fraction:.0%} held out"
    _check_size(name, train.size + val.size)
    top = int(max(train.max(initial=0), val.max(initial=0)))
    if top >= MAX_VOCAB:
        hint = (" — uint16 tokens read as uint32 pair up two ids; try --data-dtype uint16" if token_dtype == "uint32"
                else "")
        raise SubprofError(f"--data {name}: token id {top:,} is larger than any vocabulary (≤ {MAX_VOCAB:,}), so "
                           f"the file is not {token_dtype} token ids{hint}")
    vocab = -(-(top + 1) // 64) * 64
    h = hashlib.sha256(json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
                                  + [token_dtype, val_fraction]).encode()).hexdigest()[:16]
    return Corpus(name=name, description=f"pre-tokenized {token_dtype} ids ({how}); vocabulary {vocab} = largest "
                                         f"id + 1 rounded up to 64", key=h, vocab_size=vocab, train=train, val=val)


def load_corpus(data: list[str | Path] | str | Path | None = None, *, vocab_size: int = 8192,
                val_fraction: float = 0.05, token_dtype: str = "uint16") -> Corpus:
    """The default corpus (data=None) or the user's text / `.bin` files, tokenized, cached and split."""
    if not 0 < val_fraction < 0.5:
        raise SubprofError(f"validation fraction {val_fraction} must be in (0, 0.5)")
    if vocab_size < 300:
        raise SubprofError(f"vocabulary size {vocab_size} is too small for a byte-level BPE (256 bytes + merges)")
    if data is None:
        root, files = stdlib_files()
        ver = sysconfig.get_python_version()
        return _build_text(f"python{ver}-stdlib", f"Python {ver} standard library sources ({len(files)} files "
                           f"under {root}), byte-level BPE {vocab_size}",
                           {f: f.relative_to(root).as_posix() for f in files}, vocab_size=vocab_size,
                           val_fraction=val_fraction, strict=False)
    paths = [Path(p) for p in (data if isinstance(data, (list, tuple)) else [data])]
    texts, bins = _expand(paths)
    name = ",".join(p.name or str(p) for p in paths)
    if bins:
        return _build_bin(name, bins, token_dtype=token_dtype, val_fraction=val_fraction)
    return _build_text(name, f"{len(texts)} text files from {', '.join(map(str, paths))}, byte-level BPE "
                       f"{vocab_size}", texts, vocab_size=vocab_size, val_fraction=val_fraction, strict=True)
