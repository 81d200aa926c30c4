"""Datasets: every corpus format, the rules and their refusals with file and line, case and typography,
the charset and the split."""
from __future__ import annotations

import gzip
import json
import re

import pytest

from unochat import cli
from unochat.data.corpus import READERS
from unochat.data.dataset import (
    EOS,
    MAX_QUERY,
    MAX_REPLY,
    REFUSALS,
    DatasetError,
    Pair,
    build_charset,
    corpus_report,
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
        ("hello there", "Hi!", 3), ("Spaced", "ok then", 4), ("what", "a|b", 5)]
    assert data.problems == []
    upper = load_dataset(path, case="upper")
    assert [p.response for p in upper.pairs] == ["HI!", "OK THEN", "A|B"] and upper.digest == data.digest


def test_gzip_is_read(tmp_path):
    data = load_dataset(write(tmp_path, "d.txt.gz", b"hey|yo\n"))
    assert data.pairs[0].response == "yo"


# the same three pairs in every format (turns of one conversation for YAML: hi -> Hello. -> How are you?)
PAIRS = [("hi", "Hello."), ("Hello.", "How are you?"), ("How are you?", "Fine, thanks.")]
FORMATS = {
    "c.txt": "".join(f"{q}|{r}\n" for q, r in PAIRS).encode(),
    "c.yml": b"categories:\n- greetings\nconversations:\n- - hi\n  - Hello.\n  - How are you?\n  - Fine, thanks.\n",
    "c.csv": b"Query,Response\n" + "".join(f'{q},"{r}"\n' for q, r in PAIRS).encode(),
    "c.tsv": b"id\tquery\tresponse\n" + "".join(f"{i}\t{q}\t{r}\n" for i, (q, r) in enumerate(PAIRS)).encode(),
    "c.jsonl": "".join(json.dumps({"query": q, "response": r}) + "\n" for q, r in PAIRS).encode(),
}


@pytest.mark.parametrize("name", [*FORMATS, "c.yml.gz", "c.jsonl.gz"])
def test_every_format_gives_the_same_pairs(tmp_path, name):
    data = load_dataset(write(tmp_path, name, FORMATS[name.removesuffix(".gz")]))
    assert [(p.query, p.response) for p in data.pairs] == PAIRS and data.problems == []


def test_the_formats_are_the_readers():
    assert {name.split(".")[1] for name in FORMATS} | {"yaml"} == {s.lstrip(".") for s in READERS}


def test_a_directory_of_yaml_is_one_corpus(tmp_path):
    write(tmp_path, "b.yml", b"conversations:\n- - what is it\n  - A thing.\n")
    write(tmp_path, "a.yaml", FORMATS["c.yml"])
    write(tmp_path, "notes.txt", b"not|read\n")
    data = load_dataset(tmp_path)
    assert [p.query for p in data.pairs] == ["hi", "Hello.", "How are you?", "what is it"]
    assert data.pairs[-1].line == 2 and data.digest != load_dataset(tmp_path / "a.yaml").digest


def test_yaml_turns_that_are_not_text_are_refused_with_their_line(tmp_path):
    content = (b"conversations:\n- - one\n  - two\n- just a string, not a list\n- - a\n  - [nested, list]\n  - fine\n"
               b"- - 42\n  - yes\n- - a lone turn\n")
    data = load_dataset(write(tmp_path, "c.yml", content))
    assert [(p.query, p.response) for p in data.pairs] == [("one", "two"), ("42", "yes")]  # scalars as written
    # the list on line 6 refuses both pairs it is in, each named by the list's own line
    assert [(p.line, p.kind) for p in data.problems] == [(4, "not_text"), (6, "not_text"), (6, "not_text"),
                                                         (10, "no_separator")]
    assert str(data.problems[-1]).endswith("c.yml:10: a conversation of 1 turn: no pair")


def test_a_refused_yaml_turn_is_named_by_its_own_line(tmp_path):
    path = write(tmp_path, "c.yml", "conversations:\n- - hello there\n  - caf\u00e9 time\n  - x\n".encode())
    with pytest.raises(DatasetError) as refused:
        load_dataset(path)
    # (hello there, café time) is refused at the response's line 3, (café time, x) at the query's: line 3 too
    why = "has character '\u00e9' (U+00E9); only printable ASCII is allowed (--transliterate maps letters to ASCII)"
    assert str(refused.value).splitlines()[1:] == [f"  {path}:3: response {why}", f"  {path}:3: query {why}"]
    long = load_dataset(write(tmp_path, "d.yml", b"conversations:\n- - hi there\n  - ok\n- - long\n  - " + b"A" * 256 + b"\n"))
    assert [(p.line, p.kind) for p in long.problems] == [(5, "long_response")]


def test_a_file_that_cannot_be_read_is_named_with_its_line(tmp_path):
    write(tmp_path, "a.yml", FORMATS["c.yml"])
    write(tmp_path, "b.yml", b"conversations:\n- - ok\n  - : bad\n")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(tmp_path / 'b.yml'))}:3: not ChatterBot YAML: .* \(column 5\)$"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"c\.yml:3: not valid UTF-8 \(byte 0xFF at column 6\)$"):
        load_dataset(write(tmp_path, "c.yml", b"conversations:\n- - hi\n  - y\xffo\n"))
    with pytest.raises(DatasetError, match=r"d\.yml: not ChatterBot YAML: no `conversations:` list$"):
        load_dataset(write(tmp_path, "d.yml", b"categories: [x]\n"))


BAD = [  # (line, kind, reason)
    (b"no separator here", "no_separator", "no '|' between query and response"),
    (b"|empty query", "empty", "empty query"),
    (b"empty response|", "empty", "empty response"),
    (b"caf\xc3\xa9|ok", "non_ascii", "query has character '\u00e9' (U+00E9); only printable ASCII is allowed"),
    (b"hello|ol\xc3\xa9", "non_ascii", "response has character"),
    (b"bad \xff byte|ok", "bad_utf8", "not valid UTF-8 (byte 0xFF at column 5)"),
    (b"x|short query", "short_query", "query shorter than 2 characters"),
    (b"!info|reserved", "command_prefix", "reserved for the device's machine commands"),
    (b"long|" + b"A" * 256, "long_response", "response of 256 characters, longer than 255"),
]


@pytest.mark.parametrize("line,kind,reason", BAD, ids=[k + ":" + r[:20] for _, k, r in BAD])
def test_refusals_are_counted_by_kind_with_file_and_line(tmp_path, line, kind, reason):
    path = write(tmp_path, "d.txt", b"good one|fine\n# comment\n" + line + b"\nanother|fine\n")
    data = load_dataset(path)
    assert len(data.pairs) == 2 and len(data.problems) == 1
    assert str(data.problems[0]).startswith(f"{path}:3: ") and reason in str(data.problems[0])
    assert data.refusals() == {kind: 1} and kind in REFUSALS and f"1 {kind}" in data.summary()
    with pytest.raises(DatasetError, match=f"{path}:3: "):
        load_dataset(path, strict=True)


def test_bad_rows_of_the_other_formats(tmp_path):
    jsonl = load_dataset(write(tmp_path, "c.jsonl", b'{"query": "hi", "response": "yo"}\nnot json\n{"query": "q"}\n'
                                                    b'{"query": "what", "response": 42}\n'))
    assert [(p.line, p.kind) for p in jsonl.problems] == [(2, "no_separator"), (3, "no_separator"), (4, "not_text")]
    assert jsonl.problems[-1].reason == "the response is 42, not a string"
    csv = load_dataset(write(tmp_path, "c.csv", b'query,response\nhi,"a\nlong one"\nonly one column\nok,fine\n'
                                                b'bad,"two\nli\xffnes"\nlast,one\n'))
    assert [(p.query, p.response, p.line) for p in csv.pairs] == [("hi", "a long one", 2), ("ok", "fine", 5),
                                                                  ("last", "one", 8)]
    assert [(p.line, p.kind) for p in csv.problems] == [(4, "no_separator"), (7, "bad_utf8")]  # the bad byte's line
    assert csv.problems[-1].reason == "not valid UTF-8 (byte 0xFF at column 3)"
    with pytest.raises(DatasetError, match=r"d\.csv:1: the header row must name `query` and `response` columns, "
                                           r"found \['q', 'r'\]"):
        load_dataset(write(tmp_path, "d.csv", b"q,r\na,b\n"))
    with pytest.raises(DatasetError, match=r"unknown corpus format '.xml'"):
        load_dataset(write(tmp_path, "d.xml", b"<a/>"))


def test_typography_becomes_ascii_and_whitespace_one_space(tmp_path):
    data = load_dataset(write(tmp_path, "c.jsonl", json.dumps({"query": "what\u2019s up\u2026",
                                                                 "response": "It\u2019s \u201cfine\u201d \u2013 "
                                                                             "really\u00a0so.\n\t tab"}).encode()))
    assert [(p.query, p.response) for p in data.pairs] == [("what's up...", 'It\'s "fine" - really so. tab')]


def test_transliteration_is_asked_for(tmp_path):
    path = write(tmp_path, "d.txt", "caf\u00e9|Cr\u00e8me br\u00fbl\u00e9e\nsnow|\u2603\nhi|ok\n".encode())
    assert load_dataset(path).refusals() == {"non_ascii": 2}
    data = load_dataset(path, transliterate=True)
    assert [(p.query, p.response) for p in data.pairs] == [("cafe", "Creme brulee"), ("hi", "ok")]
    assert data.refusals() == {"empty": 1}  # the snowman has no ASCII form: nothing is left
    assert data.problems[0].reason == "empty response: nothing in '\u2603' has an ASCII form"


def test_upper_case_comes_after_the_ascii_check(tmp_path):
    # upper-casing would turn the German sharp s into "SS", ASCII that the corpus never wrote
    data = load_dataset(write(tmp_path, "d.txt", "street|Stra\u00dfe\nhi|ok\n".encode()), case="upper")
    assert [p.response for p in data.pairs] == ["OK"]
    assert "response has character '\u00df' (U+00DF)" in data.problems[0].reason


def test_replies_up_to_the_device_limit(tmp_path):
    path = write(tmp_path, "d.txt", b"long|" + b"A" * MAX_REPLY + b"\n")
    assert MAX_REPLY == 255 and len(load_dataset(path).pairs[0].response) == 255


def test_charset_restriction_names_the_line(tmp_path):
    path = write(tmp_path, "d.txt", b"hello|HI\nwhat|HUH?\n")
    data = load_dataset(path, charset=" HIU")
    assert [p.query for p in data.pairs] == ["hello"]
    assert "d.txt:2: response has characters outside the model's charset: '?'" in str(data.problems[0])


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DatasetError, match="no such corpus file or directory"):
        load_dataset(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match=r"no usable query/response pairs \(1 refused\)"):
        load_dataset(write(tmp_path, "d.txt", b"# only a comment\nno pipe\n"))
    with pytest.raises(DatasetError, match=r"no usable query/response pairs \(2 refused\)") as refused:
        load_dataset(write(tmp_path, "e.txt", b"x|refused: a short query\n!cmd|refused: a command\n"))
    assert "e.txt:1: query shorter than 2 characters" in str(refused.value)  # the error says why, kind by kind
    assert "e.txt:2: queries starting with '!' are reserved" in str(refused.value)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(broken)


def test_the_report_counts_the_ceiling(tmp_path, capsys):
    # "hi" has two replies (2x HEY, 1x YO): at best 2 of its 3 pairs; the others are one reply each
    path = write(tmp_path, "d.txt", b"hi|HEY\nhi|YO\nHI|HEY\nbye|BYE\nthanks|YOU ARE WELCOME\nx|refused\n")
    report = corpus_report(load_dataset(path))
    assert (report.pairs, report.refused, report.queries, report.replies) == (5, {"short_query": 1}, 3, 4)
    assert report.reply_bytes == len("HEY" + "YO" + "BYE" + "YOU ARE WELCOME")
    assert report.longest == 15 and report.ceiling == pytest.approx(4 / 6)  # refused lines count as pairs
    assert cli.main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 pairs, 1 refused (1 short_query)" in out and "66.67%" in out


def test_long_query_is_cut_like_the_device():
    assert normalize_query("a" * 100) == "a" * MAX_QUERY
    assert normalize_query(b"ab\x08c\x7f\x00d\xff  ") == "ad"
    assert normalize_query("   hi   ") == "hi" and normalize_query("how  are   you") == "how are you"


def test_charset_order_and_eos():
    pairs = [Pair("q1", "B A1!", 1), Pair("q2", "Z?9", 2)]
    assert build_charset(pairs) == " ABZ19!?" + EOS


def test_split_is_seeded_and_disjoint():
    pairs = [Pair(f"q{i}", "R", i) for i in range(1000)]
    train, held = split_heldout(pairs, 0.1, seed=0)
    assert len(held) == 100 and len(train) == 900
    assert {p.query for p in train}.isdisjoint({p.query for p in held})
    assert split_heldout(pairs, 0.1, seed=0) == (train, held)
    assert split_heldout(pairs, 0.1, seed=1)[1] != held


def test_tinychat_matches_z80ai_counts():
    need_shared()
    data = load_dataset(TINYCHAT_DATA, case="upper")
    assert len(data.pairs) == 2990  # z80ai keeps the same 2,990 pairs
    assert data.refusals() == {"short_query": 12}
    assert build_charset(data.pairs) == " ABCDEFGHIJKLMNOPQRSTUVWXYZ012345678!/?" + EOS
    train, held = split_heldout(data.pairs, 0.1, seed=0)
    assert len(held) == 299


def test_chatterbot_english_as_the_package_lays_it_out():
    """The PyPI package chatterbot-corpus (installed by `make bench`, not by the tests)."""
    corpus = pytest.importorskip("chatterbot_corpus", reason="chatterbot-corpus is not installed (make bench does)")
    from pathlib import Path

    data = load_dataset(Path(corpus.__file__).parent / "data" / "english")
    # 2,306 turn pairs and one conversation YAML reads as a string (trivia.yml line 35: a "- " missing)
    assert len(data.pairs) + len(data.problems) == 2307
    assert data.refusals() == {"long_response": 52, "non_ascii": 1, "not_text": 1}
    assert all(p.query == normalize_query(p.query) for p in data.pairs)
