"""Metrics on hand-made integer models whose answers are known without running them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unochat.data.dataset import Pair
from unochat.data.features import FeatureSpec, context_features
from unochat.model import metrics
from unochat.model.intmodel import IntLayer, IntModel

CHARSET = " AB\x00"  # space, A, B, EOS
SPEC = FeatureSpec()
SPACE, A, B, EOS = range(4)


def one_layer_model(weight: np.ndarray, mult: list[int], bias: list[int], logit_scale: float | None = 1.0) -> IntModel:
    layer = IntLayer("2bit", weight.astype(np.int8), np.array(mult, dtype=np.int64), np.array(bias, dtype=np.int64), 0, None)
    model = IntModel([layer], CHARSET, SPEC, max_reply=50, logit_scale=logit_scale)
    model.validate()
    return model


def constant_model(winner: int, logit_scale: float | None = 1.0) -> IntModel:
    """Ignores its input: logit 5 for `winner`, 0 for the others."""
    bias = [0] * len(CHARSET)
    bias[winner] = 5
    return one_layer_model(np.zeros((len(CHARSET), SPEC.n_inputs)), [0] * len(CHARSET), bias, logit_scale)


def a_bucket() -> int:
    """A context bucket that counts 'A' as the last character and is empty for an empty context."""
    fresh = np.flatnonzero((context_features("A", SPEC) > 0) & (context_features("", SPEC) == 0))
    assert len(fresh), "the context hash gives 'A' no bucket of its own; pick another test letter"
    return int(fresh[0])


def say_a_then_stop() -> IntModel:
    """Predicts 'A' after an empty context and EOS once the last character is 'A': it always replies 'A'."""
    weight = np.zeros((len(CHARSET), SPEC.n_inputs))
    weight[EOS, SPEC.query_buckets + a_bucket()] = 1
    return one_layer_model(weight, mult=[0, 0, 0, 2], bias=[0, 1, 0, 0])


PAIRS = [Pair("hello there", "AB", 1), Pair("yo yo", "A", 2), Pair("hey you", "BBB", 3)]


def test_always_eos_has_no_exact_match_and_tf_equal_to_the_eos_share():
    model = constant_model(EOS)
    targets = sum(len(p.response) + 1 for p in PAIRS)
    assert metrics.exact_match(model, PAIRS) == 0.0
    assert metrics.teacher_forced_accuracy(model, PAIRS) == pytest.approx(len(PAIRS) / targets)


def test_cross_entropy_is_the_softmax_loss_of_scaled_logits():
    scale = 0.5
    model = constant_model(EOS, logit_scale=scale)
    log_norm = math.log(3 + math.exp(5 * scale))
    n_eos = len(PAIRS)
    n_chars = sum(len(p.response) for p in PAIRS)
    expected = (n_eos * (log_norm - 5 * scale) + n_chars * log_norm) / (n_eos + n_chars)
    assert metrics.cross_entropy(model, PAIRS) == pytest.approx(expected, rel=1e-12)


def test_no_logit_scale_means_no_loss():
    model = constant_model(EOS, logit_scale=None)
    assert metrics.cross_entropy(model, PAIRS) is None
    assert metrics.evaluate(model, PAIRS)["loss"] is None


def test_exact_match_needs_the_whole_reply_and_strips_nothing():
    model = say_a_then_stop()
    pairs = [Pair("hello", "A", 1), Pair("good day", "A", 2), Pair("what now", "A ", 3), Pair("and then", "AB", 4)]
    assert metrics.exact_match(model, pairs) == 0.5


def test_teacher_forcing_feeds_the_true_context_and_counts_eos():
    model = say_a_then_stop()
    assert context_features("AB", SPEC)[a_bucket()] == 0, "precondition: 'AB' must not look like 'A'"
    # "A": A ok, EOS ok.  "AB": A ok, B wrong (EOS predicted), EOS wrong ('A' predicted after "AB")
    pairs = [Pair("hello there", "A", 1), Pair("what now", "AB", 2)]
    assert metrics.teacher_forced_accuracy(model, pairs) == pytest.approx(3 / 5)


def test_generation_stops_at_max_reply():
    model = constant_model(A)
    model.max_reply = 3
    assert metrics.exact_match(model, [Pair("xx", "AAA", 1), Pair("yy", "AA", 2)]) == 0.5


def test_evaluate_agrees_with_the_single_metrics():
    model = say_a_then_stop()
    result = metrics.evaluate(model, PAIRS)
    assert set(result) == {"tf", "em", "loss"}
    assert result["tf"] == metrics.teacher_forced_accuracy(model, PAIRS)
    assert result["em"] == metrics.exact_match(model, PAIRS)
    assert result["loss"] == metrics.cross_entropy(model, PAIRS)


def test_no_pairs_is_an_error_not_a_number():
    with pytest.raises(ValueError, match="no pairs"):
        metrics.evaluate(constant_model(EOS), [])
