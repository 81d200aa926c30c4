"""The reply store and reply-constrained decoding (unochat.model.replies): the rule in the reference, the
device's encoding, and the generated C on the host and on the virtual UNO, reply for reply."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unochat import cli
from unochat.codegen.hostc import HostModel
from unochat.data.dataset import Pair, build_charset
from unochat.model import reference
from unochat.model.intmodel import IntModel
from unochat.model.replies import (
    CHECKPOINT,
    MAX_CODE_BITS,
    ReplyStore,
    StoreError,
    code_lengths,
    encode,
    select_replies,
)

from conftest import chatty_model
from test_device import DEFAULT_PAIRS, on_device

EDGE_STORES = {
    "one reply": ["OK"],
    "a prefix of another": ["NO", "NO WAY", "NO WAY!", "NOPE", "YES"],
    "255 characters": ["A" * 255, "A" * 254 + "B", "HI"],
    "many, past checkpoints": [f"REPLY {i:03d} {'X' * (i % 7)}" for i in range(3 * CHECKPOINT + 5)],
    "one character": ["A", "B", "C"],
}


def decode(encoded, charset: str) -> list[str]:
    """The replies back from the device's arrays: a second reading of the layout, for the tests."""
    codes, code, first_symbol = {}, 0, 0
    for length in range(1, MAX_CODE_BITS + 1):
        for k in range(int(encoded.code_counts[length])):
            codes[(code + k, length)] = int(encoded.code_symbols[first_symbol + k])
        first_symbol += int(encoded.code_counts[length])
        code = (code + int(encoded.code_counts[length])) << 1
    bits = np.unpackbits(encoded.text)
    eos = len(charset) - 1
    replies, previous, at = [], "", 0
    for j, (shared, head) in enumerate(zip(encoded.lcp, encoded.head)):
        if j % CHECKPOINT == 0:
            at = int(encoded.checkpoints[j // CHECKPOINT]) * 8
        symbols = [int(head)]
        while symbols[-1] != eos:
            value, length = 0, 0
            while (value, length) not in codes:
                value, length, at = (value << 1) | int(bits[at]), length + 1, at + 1
            symbols.append(codes[(value, length)])
        previous = previous[:shared] + "".join(charset[s] for s in symbols[:-1])
        replies.append(previous)
    return replies


@pytest.mark.parametrize("name", list(EDGE_STORES))
def test_the_encoding_gives_the_replies_back(name: str) -> None:
    replies = EDGE_STORES[name]
    charset = build_charset([Pair("q", r, 0) for r in replies])
    store = ReplyStore(replies)
    encoded = encode(store, charset)
    assert decode(encoded, charset) == sorted(replies)
    assert encoded.nbytes == sum(a.nbytes for a in dataclasses.astuple(encoded))


def test_codes_stay_within_their_limit() -> None:
    counts = {s: int(1.7**s) + 1 for s in range(40)}  # frequencies that would make a 39-bit Huffman code
    lengths = code_lengths(counts)
    assert max(lengths.values()) == MAX_CODE_BITS and sum(2.0 ** -n for n in lengths.values()) <= 1.0
    assert lengths[39] <= lengths[0]  # the most frequent symbol has the shortest code


def test_the_rule_allows_what_continues_a_stored_reply() -> None:
    store = ReplyStore(EDGE_STORES["a prefix of another"])
    assert store.allowed("") == ("N", "Y")
    assert store.allowed("NO") == ("", " ", "P")  # EOS first: "NO" is a reply
    assert store.allowed("NO WAY") == ("", "!")
    assert store.allowed("YE") == ("S",)
    assert store.allowed("MAYBE") == ()
    assert "NOPE" in store and "NOP" not in store
    with pytest.raises(StoreError, match="at least one reply"):
        ReplyStore([])


def store_model(replies: list[str], seed: int = 1) -> IntModel:
    """A chatty model (conftest) over the replies' charset, keeping to those replies."""
    pairs = [Pair(p.query, replies[i % len(replies)], 0) for i, p in enumerate(DEFAULT_PAIRS[::40])]
    model = chatty_model(seed, ["1bit", "2bit", "1bit"], [32, 24], pairs)
    model = dataclasses.replace(model, replies=sorted(set(replies)), max_reply=max(map(len, replies)))
    model.validate()
    return model


@pytest.mark.parametrize("name", list(EDGE_STORES))
def test_constrained_replies_are_stored_and_the_network_runs_only_at_choices(name: str) -> None:
    model = store_model(EDGE_STORES[name])
    queries = [p.query for p in DEFAULT_PAIRS[::25]]
    seen: list[str] = []
    replies = reference.generate(model, queries, on_step=lambda prefixes, logits, chosen: seen.extend(prefixes))
    assert all(r in model.store for r in replies)
    assert all(len(model.store.allowed(prefix)) > 1 for prefix in seen)
    assert len(seen) == sum(reference.network_steps(model, r) for r in replies)


def test_ties_go_to_the_lowest_index() -> None:
    model = store_model(["AB", "AC", "A"])
    logits = np.zeros(len(model.charset), dtype=np.int64)
    assert reference.choose(model, logits, "A") == model.symbol_index["B"]  # B, C and EOS tie: B is first
    logits[model.eos] = 1
    assert reference.choose(model, logits, "A") == model.eos


@pytest.mark.parametrize("name", list(EDGE_STORES))
def test_host_c_decodes_as_the_reference(name: str) -> None:
    model = store_model(EDGE_STORES[name])
    queries = [p.query for p in DEFAULT_PAIRS[::7]]
    expected = reference.generate(model, queries)
    for kernels in ("fast", "c"):
        host = HostModel(model, kernels=kernels)
        assert [host.reply(q) for q in queries] == expected
        host.close()


def test_selection_keeps_the_replies_serving_most_pairs_per_byte() -> None:
    pairs = [Pair(f"q{i}", "YES" if i % 2 else f"A LONG REPLY NUMBER {i}", 0) for i in range(60)]
    charset = build_charset(pairs)
    everything = select_replies(pairs, charset)
    assert len(everything) == 31
    budget = encode(everything, charset).nbytes - 40
    kept = select_replies(pairs, charset, budget)
    assert "YES" in kept and len(kept) < 31 and encode(kept, charset).nbytes <= budget
    with pytest.raises(StoreError, match="not even one reply fits a store of 3 B"):
        select_replies(pairs, charset, 3)


def test_the_model_file_keeps_its_store(tmp_path) -> None:
    model = store_model(EDGE_STORES["a prefix of another"])
    model.save(tmp_path / "m.npz")
    loaded = IntModel.load(tmp_path / "m.npz")
    assert loaded.replies == model.replies and loaded.fingerprint() == model.fingerprint()
    assert loaded.fingerprint() != dataclasses.replace(model, replies=["NO", "YES"]).fingerprint()
    assert "5 stored replies" in loaded.describe()


def test_training_keeps_to_the_corpus_replies(tmp_path, capsys) -> None:
    data = tmp_path / "c.txt"
    data.write_text("".join(f"{p.query}|{p.response}\n" for p in DEFAULT_PAIRS[::9]))
    out = tmp_path / "m.pt"
    argv = ["train", "--data", str(data), "--hidden", "24", "--epochs", "3", "--decoding", "replies",
            "--store-bytes", "600", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    model = IntModel.load(out.with_suffix(".npz"))
    given_up = model.meta["dataset"]["given_up"]
    assert model.decoding == "replies" and given_up > 0 and f"({given_up:,} given up)" in printed
    assert model.max_reply == max(len(r) for r in model.replies)
    replies = reference.generate(model, [p.query for p in DEFAULT_PAIRS[::9]])
    assert all(r in model.store for r in replies)


@on_device
def test_constrained_decoding_on_the_virtual_uno(build) -> None:
    """The firmware's replies equal the reference's, with a store that crosses checkpoints."""
    from unochat.board.client import connect

    model = store_model(EDGE_STORES["many, past checkpoints"] + EDGE_STORES["a prefix of another"], seed=3)
    queries = [p.query for p in DEFAULT_PAIRS[::31]]
    expected = reference.generate(model, queries)
    elf, _ = build(model)
    with connect(sim=elf) as client:
        assert client.info()["replies"] == str(len(model.replies))
        assert [client.reply(q) for q in queries] == expected
        timed = client.timed_reply(queries[0])
    assert timed.reply == expected[0]


def test_the_store_gets_what_the_board_leaves(tmp_path, capsys) -> None:
    """`--store-bytes fit`: the budget is what the UNO leaves beside the model's smallest fast plan, the
    config records it, and the model built with the planner's own plan fits."""
    from unochat.codegen.plan import flash_bytes, plan_layers, store_room
    from unochat.data.features import FeatureSpec

    room = store_room(FeatureSpec(), [64, 32], ["1bit"] * 3, 41)
    assert 10_000 < room < 32_256
    data = tmp_path / "c.txt"
    data.write_text("".join(f"{p.query}|{p.response}\n" for p in DEFAULT_PAIRS[::9]))
    out = tmp_path / "m.pt"
    assert cli.main(["train", "--data", str(data), "--hidden", "64,32", "--epochs", "1", "--decoding", "replies",
                     "--store-bytes", "fit", "--out", str(out)]) == 0
    model = IntModel.load(out.with_suffix(".npz"))
    assert model.meta["config"]["store_bytes"] == store_room(FeatureSpec(), [64, 32], ["1bit"] * 3, len(model.charset))
    assert flash_bytes(model, plan_layers(model)) <= 32_256
    assert cli.main(["train", "--data", str(data), "--store-bytes", "fit", "--out", str(out)]) == 2
    assert "goes with --decoding replies" in capsys.readouterr().err


def test_the_bench_counts_every_pair_of_the_corpus(tmp_path) -> None:
    """em_corpus over every pair (refused ones count as misses), em_held over the pairs whose reply is stored."""
    from unochat.measure import bench

    model = store_model(EDGE_STORES["a prefix of another"])
    lines = [f"{p.query}|{r}\n" for p, r in zip(DEFAULT_PAIRS[::97], ["NO", "NOPE", "MAYBE", "YES"] * 10)]
    data = tmp_path / "c.txt"
    data.write_text("".join(lines) + "x|a refused line\n")
    model.meta = {"dataset": {"path": str(data)}, "config": {"case": "keep"}}
    model.save(tmp_path / "m.npz")
    (row,) = bench.bench([tmp_path / "m.npz"], build=False, log=lambda _: None)
    pairs = [line.rstrip("\n").split("|") for line in lines]
    replies = reference.generate(model, [q for q, _ in pairs])
    right = [r == want for r, (_, want) in zip(replies, pairs)]
    held = [want in model.store for _, want in pairs]
    assert (row.corpus_pairs, row.held_pairs, row.decoding, row.stored) == (len(pairs) + 1, sum(held), "replies", 5)
    assert row.em_corpus == pytest.approx(sum(right) / (len(pairs) + 1))
    assert row.em_held == pytest.approx(sum(r for r, h in zip(right, held) if h) / sum(held))
    assert 0.0 <= row.typed_same <= 1.0
