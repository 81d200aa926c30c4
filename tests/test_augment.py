"""augment.py: seeded query variants that keep the response, never touch echo pairs, and learn
substitutions from the training pairs only."""
from __future__ import annotations

import numpy as np
import pytest

from unochat.data.augment import (
    KEYBOARD_NEIGHBOURS,
    AugmentConfig,
    augment_pairs,
    augment_query,
    is_echo,
    learn_substitutions,
)
from unochat.data.dataset import MIN_QUERY, Pair, normalize_query

from conftest import TINYCHAT_DATA

PAIRS = [
    Pair("are you a bot", "YES", 1), Pair("are you a machine", "YES", 2), Pair("are you a program", "YES", 3),
    Pair("you are a bot", "YES", 4), Pair("you are a machine", "YES", 5), Pair("is it a bot", "YES", 6),
    Pair("is it a machine", "YES", 7), Pair("dope", "DOPE", 8), Pair("kinda", "KINDA?", 9),
    Pair("good morning to you", "HI", 10), Pair("hi", "HI", 11), Pair("what is that?", "WHAT?", 12),
]


def test_learn_substitutions_from_same_response_queries():
    subs = learn_substitutions(PAIRS, min_count=2)
    assert subs == {"bot": ["machine"], "machine": ["bot"]}  # program is seen once only
    assert "program" in learn_substitutions(PAIRS, min_count=1)["bot"]
    # different responses never make a substitution
    assert learn_substitutions([Pair("i am ok", "A", 1), Pair("i am sad", "B", 2)], min_count=1) == {}


def test_echo_pairs():
    assert is_echo(Pair("dope", "DOPE", 1)) and is_echo(Pair("kinda", "KINDA?", 1)) and is_echo(Pair("yes!", "YES", 1))
    assert not is_echo(Pair("hi", "HI YA", 1)) and not is_echo(Pair("hey", "HI", 1))


def test_each_op():
    rng = np.random.default_rng(0)
    q = "are you a bot"
    for _ in range(50):
        assert len(augment_query(q, "drop", rng).split()) == 3
        swapped = augment_query(q, "swap", rng).split()
        assert sorted(swapped) == sorted(q.split()) and swapped != q.split()
        assert augment_query(q, "sub", rng, {"bot": ["machine"]}) == "are you a machine"
        assert augment_query(q + "?", "punct", rng).rstrip("?!.") == q
        typo = augment_query(q, "typo", rng).split()
        assert typo[2] == "a" and sum(a != b for a, b in zip(typo, q.split())) == 1  # one word of 3+ letters
    assert augment_query("hello", "drop", rng) == "hello" and augment_query("hello", "swap", rng) == "hello"
    assert augment_query("hello", "sub", rng, {}) == "hello"
    with pytest.raises(ValueError):
        augment_query(q, "shout", rng)


def test_typos_are_single_edits():
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(200):
        t = augment_query("hello", "typo", rng)
        if len(t) == 4:
            kinds.add("delete")
            assert any(t == "hello"[:i] + "hello"[i + 1:] for i in range(5))
        elif len(t) == 6:
            kinds.add("double")
            assert any(t == "hello"[:i + 1] + "hello"[i:] for i in range(5))
        else:
            assert len(t) == 5 and sum(a != b for a, b in zip(t, "hello")) <= 2
            kinds.add("transpose" if sorted(t) == sorted("hello") else "replace")
    assert kinds == {"delete", "double", "transpose", "replace"}
    assert KEYBOARD_NEIGHBOURS["a"] == "qswz" and KEYBOARD_NEIGHBOURS["h"] == "bgjnuy"
    assert KEYBOARD_NEIGHBOURS["p"] == "lo" and KEYBOARD_NEIGHBOURS["m"] == "jkn"


def test_augment_pairs_rules():
    config = AugmentConfig(copies=4, seed=3)
    out = augment_pairs(PAIRS, config)
    assert out and out == augment_pairs(PAIRS, config)  # seeded: the same call gives the same pairs
    assert out != augment_pairs(PAIRS, AugmentConfig(copies=4, seed=4))
    responses = {p.line: p.response for p in PAIRS}
    originals = {p.line: p.query for p in PAIRS}
    per_pair: dict[int, set[str]] = {}
    for p in out:
        assert p.response == responses[p.line]
        assert p.line not in (8, 9)  # echo pairs are never augmented
        assert p.query == normalize_query(p.query) and len(p.query) >= MIN_QUERY
        assert p.query.lower() != originals[p.line].lower()
        assert p.query.lower() not in per_pair.setdefault(p.line, set())  # no duplicate variants
        per_pair[p.line].add(p.query.lower())
    assert all(len(v) <= 4 for v in per_pair.values())
    assert augment_pairs(PAIRS, AugmentConfig(copies=0)) == []


def test_only_the_chosen_ops():
    out = augment_pairs(PAIRS, AugmentConfig(copies=3, ops=("punct",), seed=0))
    originals = {p.line: p.query for p in PAIRS}
    assert out and all(p.query.rstrip("?!.") == originals[p.line].rstrip("?!.") for p in out)


def test_config_checks():
    for bad in (("shout",), ()):
        with pytest.raises(ValueError):
            AugmentConfig(copies=1, ops=bad)
    with pytest.raises(ValueError):
        AugmentConfig(copies=-1)
    with pytest.raises(ValueError):
        AugmentConfig(copies=1, min_count=0)
    assert AugmentConfig(ops=["drop"]).ops == ("drop",)  # lists become tuples (hashable, comparable)


def test_tinychat_substitutions_look_sensible():
    if not TINYCHAT_DATA.exists():
        pytest.skip("z80ai tinychat data not found")
    from unochat.data.dataset import load_dataset, split_heldout

    train, held = split_heldout(load_dataset(TINYCHAT_DATA).pairs, 0.1, seed=0)
    subs = learn_substitutions(train)
    assert "machine" in subs["bot"] and "that" in subs["it"]
    out = augment_pairs(train, AugmentConfig(copies=2, seed=0))
    # most pairs get both variants; those equal to an existing training query are dropped (3,888 of 5,382)
    assert 1.4 * len(train) < len(out) <= 2 * len(train)


def test_training_uses_variants_of_the_training_pairs_only(tmp_path):
    from unochat.train.config import TrainConfig
    from unochat.train.trainset import load_training_data, training_pairs

    data_file = tmp_path / "d.txt"
    data_file.write_text("".join(f"{p.query}|{p.response}\n" for p in PAIRS))
    data = load_training_data(data_file, TrainConfig(hidden=[8], heldout=0.25))
    plain = training_pairs(data, TrainConfig(hidden=[8]))
    augmented = training_pairs(data, TrainConfig(hidden=[8], augment=2))
    assert plain == data.train_pairs and augmented[:len(plain)] == plain and len(augmented) > len(plain)
    held = {p.query.lower() for p in data.held_pairs}
    trained_responses = {p.response for p in data.train_pairs}
    assert all(v.response in trained_responses and v.query.lower() not in held for v in augmented[len(plain):])
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(hidden=[8], augment=-1)


def test_variants_never_repeat_a_training_query():
    pairs = [Pair("ok then", "FINE", 1), Pair("ok", "OK?", 2), Pair("then ok", "FINE", 3)]
    variants = augment_pairs(pairs, AugmentConfig(copies=20, ops=("drop", "swap"), seed=0))
    assert variants and not {v.query for v in variants} & {p.query for p in pairs}
