"""Dataset loading: z80ai's format, the documented problems with file and line, the charset and split."""
from __future__ import annotations

import gzip

import pytest

from unochat.data.dataset import (
    EOS,
    MAX_QUERY,
    DatasetError,
    build_charset,
    load_dataset,
    normalize_query,
    split_heldout,
)

from conftest import TINYCHAT_DATA, need_shared


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)
    return path


def test_pairs_comments_and_case(tmp_path):
    path = write(tmp_path, "d.txt", b"# a comment\n\nhello there|Hi!\n  Spaced  |  ok then  \nwhat|a|b\n")
    data = load_dataset(path)
    assert [(p.query, p.response, p.line) for p in data.pairs] == [
        ("hello there", "HI!", 3), ("Spaced", "OK THEN", 4), ("what", "A|B", 5)]
    assert data.problems == []


def test_gzip_is_read(tmp_path):
    data = load_dataset(write(tmp_path, "d.txt.gz", b"hey|yo\n"))
    assert data.pairs[0].response == "YO"


BAD_LINES = [
    (b"no separator here", "no '|' between query and response"),
    (b"|empty query", "empty query"),
    (b"empty response|", "empty response"),
    (b"caf\xc3\xa9|ok", "query has character '\u00e9' (U+00E9); only printable ASCII is allowed"),
    (b"hello|ol\xc3\xa9", "response has character"),
    (b"tab\there|ok", "query has character '\\t'"),
    (b"bad \xff byte|ok", "not valid UTF-8 (byte 0xFF at column 5)"),
    (b"x|short query", "query shorter than 2 characters"),
    (b"!info|reserved", "reserved for the device's machine commands"),
    (b"long|" + b"A" * 51, "response longer than 50 characters"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_lines_are_counted_with_file_and_line(tmp_path, line, reason):
    path = write(tmp_path, "d.txt", b"good one|fine\n# comment\n" + line + b"\nanother|fine\n")
    data = load_dataset(path)
    assert len(data.pairs) == 2
    assert len(data.problems) == 1
    message = str(data.problems[0])
    assert message.startswith(f"{path}:3: ")
    assert reason in message
    with pytest.raises(DatasetError, match=f"{path}:3: "):
        load_dataset(path, strict=True)


def test_charset_restriction_names_the_line(tmp_path):
    path = write(tmp_path, "d.txt", b"hello|HI\nwhat|HUH?\n")
    data = load_dataset(path, charset=" HIU")
    assert [p.query for p in data.pairs] == ["hello"]
    assert "d.txt:2: response has characters outside the model's charset: '?'" in str(data.problems[0])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_dataset(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match=r"no usable `query\|response` pairs \(1 bad lines\)"):
        load_dataset(write(tmp_path, "d.txt", b"# only a comment\nno pipe\n"))
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(broken)


def test_long_query_is_cut_like_the_device():
    assert normalize_query("a" * 100) == "a" * MAX_QUERY
    assert normalize_query(b"ab\x08c\x7f\x00d\xff  ") == "ad"
    assert normalize_query("   hi   ") == "hi"


def test_charset_order_and_eos():
    from unochat.data.dataset import Pair

    pairs = [Pair("q1", "B A1!", 1), Pair("q2", "Z?9", 2)]
    assert build_charset(pairs) == " ABZ19!?" + EOS


def test_split_is_seeded_and_disjoint():
    from unochat.data.dataset import Pair

    pairs = [Pair(f"q{i}", "R", i) for i in range(1000)]
    train, held = split_heldout(pairs, 0.1, seed=0)
    assert len(held) == 100 and len(train) == 900
    assert {p.query for p in train}.isdisjoint({p.query for p in held})
    assert split_heldout(pairs, 0.1, seed=0) == (train, held)
    assert split_heldout(pairs, 0.1, seed=1)[1] != held


def test_tinychat_matches_z80ai_counts():
    need_shared()
    data = load_dataset(TINYCHAT_DATA)
    assert len(data.pairs) == 2990  # z80ai keeps the same 2,990 pairs
    assert len(data.problems) == 12 and all("shorter than 2" in p.reason for p in data.problems)
    assert build_charset(data.pairs) == " ABCDEFGHIJKLMNOPQRSTUVWXYZ012345678!/?" + EOS
    train, held = split_heldout(data.pairs, 0.1, seed=0)
    assert len(held) == 299
