"""Corpus: building on a small file set, the tokenizer cache, the deterministic split, `.bin` token files, and
the one-line errors for unusable data."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from subprof.train.corpus import EOT, MIN_TOKENS, load_corpus, stdlib_files
from subprof.errors import SubprofError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLE = ("textwrap.py", "string.py", "bisect.py", "colorsys.py", "fnmatch.py", "glob.py")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SUBPROF_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def text_dir(tmp_path):
    """A few real source files (~60 KB), copied so their mtimes are ours to change."""
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(SAMPLE):
        target = folder / ("sub" if i % 2 else "") / name.replace(".py", ".txt")
        target.write_text((STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / ".hidden.txt").write_text("never read")
    return folder


def test_text_folder_builds_a_split_corpus_with_its_token_count(cache, text_dir):
    c = load_corpus(text_dir, vocab_size=400)
    assert c.vocab_size == 400
    assert c.tokens == c.train.size + c.val.size > MIN_TOKENS
    assert c.val.size == round(c.tokens * 0.05)
    assert int(max(c.train.max(), c.val.max())) < c.vocab_size
    assert "6 text files" in c.description and not c.cache_hit


def test_documents_are_separated_by_the_end_of_text_token(cache, text_dir):
    from tokenizers import Tokenizer

    c = load_corpus(text_dir, vocab_size=400)
    eot = Tokenizer.from_file(str(c.tokenizer_path)).token_to_id(EOT)
    stream = np.concatenate([c.train, c.val])
    assert int((stream == eot).sum()) == len(SAMPLE)
    assert stream[-1] == eot


def test_second_build_is_a_cache_hit_with_identical_tokens(cache, text_dir):
    first = load_corpus(text_dir, vocab_size=400)
    second = load_corpus(text_dir, vocab_size=400)
    assert second.cache_hit and second.key == first.key
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)
    assert len(list(cache.iterdir())) == 1


def test_cache_key_follows_vocab_size_and_file_changes(cache, text_dir):
    base = load_corpus(text_dir, vocab_size=400)
    assert load_corpus(text_dir, vocab_size=420).key != base.key
    f = text_dir / "textwrap.txt"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    changed = load_corpus(text_dir, vocab_size=400)
    assert changed.key != base.key and not changed.cache_hit


def test_split_is_deterministic_across_fresh_caches(tmp_path, monkeypatch, text_dir):
    builds = []
    for i in range(2):
        monkeypatch.setenv("SUBPROF_CACHE_DIR", str(tmp_path / f"c{i}"))
        builds.append(load_corpus(text_dir, vocab_size=400))
    assert not builds[1].cache_hit
    np.testing.assert_array_equal(builds[0].train, builds[1].train)
    np.testing.assert_array_equal(builds[0].val, builds[1].val)


@pytest.mark.parametrize("elsewhere", ["a/b/c/moved", "zz", "other name"])
def test_the_same_files_in_another_folder_give_the_same_tokens_and_split(tmp_path, monkeypatch, text_dir,
                                                                        elsewhere):
    import shutil

    copy = tmp_path / elsewhere
    shutil.copytree(text_dir, copy)
    monkeypatch.setenv("SUBPROF_CACHE_DIR", str(tmp_path / "cache-a"))
    here = load_corpus(text_dir, vocab_size=400)
    monkeypatch.setenv("SUBPROF_CACHE_DIR", str(tmp_path / "cache-b"))  # no cache hit: tokenized again
    there = load_corpus(copy, vocab_size=400)
    assert not there.cache_hit
    np.testing.assert_array_equal(here.train, there.train)
    np.testing.assert_array_equal(here.val, there.val)


def test_default_corpus_is_the_stdlib_without_test_suites():
    root, files = stdlib_files()
    rel = [f.relative_to(root).parts for f in files]
    assert len(files) > 100
    assert ("textwrap.py",) in rel
    assert not any(set(p[:-1]) & {"test", "tests", "site-packages"} for p in rel)


def test_bin_tokens_uint16_are_split_at_the_end(cache, tmp_path):
    ids = (np.arange(10_000) % 1000).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    ids.tofile(path)
    c = load_corpus(path)
    np.testing.assert_array_equal(np.concatenate([c.train, c.val]), ids)
    assert c.val.size == 500 and c.vocab_size == 1024
    assert "uint16" in c.description


def test_bin_uint32_read_as_uint16_is_refused_with_a_hint(cache, tmp_path):
    path = tmp_path / "tokens.bin"
    (np.arange(1, 5001) % 3000).astype(np.uint32).tofile(path)
    with pytest.raises(SubprofError, match="uint32"):
        load_corpus(path)
    assert load_corpus(path, token_dtype="uint32").tokens == 5000


def test_nanogpt_train_and_val_files_are_used_as_given(cache, tmp_path):
    np.arange(4000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(600, dtype=np.uint16).tofile(tmp_path / "val.bin")
    c = load_corpus(tmp_path)
    assert (c.train.size, c.val.size) == (4000, 600)


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "does not exist"),
    ("empty.txt", b"", "every file is empty"),
    ("small.txt", b"def f():\n    return 1\n", "only"),
    ("latin1.txt", "caf\u00e9 ".encode("latin-1") * 100, "not UTF-8"),
    ("odd.bin", b"\x01\x02\x03", "whole number"),
    ("zero.bin", b"", "is empty"),
    ("folder", "dir", "no text or .bin files"),
])
def test_unusable_data_is_one_clear_error(cache, tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SubprofError, match=message):
        load_corpus(path, vocab_size=400)


def test_mixing_text_and_token_files_is_refused(cache, tmp_path, text_dir):
    np.arange(4000, dtype=np.uint16).tofile(text_dir / "tokens.bin")
    with pytest.raises(SubprofError, match="mixes"):
        load_corpus(text_dir)


def test_sequence_longer_than_the_validation_split_is_refused(cache, tmp_path):
    np.arange(4000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    c = load_corpus(tmp_path / "t.bin")
    c.require(128)
    with pytest.raises(SubprofError, match="validation split"):
        c.require(512)
