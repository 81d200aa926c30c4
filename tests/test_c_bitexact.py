"""The generated C, compiled with host gcc, computes exactly what the Python reference computes."""
from __future__ import annotations

import numpy as np
import pytest

from unochat.codegen import kernels as codegen_kernels
from unochat.codegen.hostc import HostModel
from unochat.data.dataset import MAX_QUERY, load_dataset, normalize_query
from unochat.data.features import FeatureSpec, context_features, query_features, teacher_forced_examples
from unochat.model import formats, reference
from unochat.model.z80ai import load_z80ai

from conftest import CHARSET, TINYCHAT_DATA, TINYCHAT_MODEL, need_shared, random_inputs, random_model

# one all-u8 case per format of the registry (a new format is tested as soon as it is registered), then mixes
FORMAT_CASES = [([name] * 4, "u8") for name in formats.FORMATS] + [
    (["1bit", "2bit", "int8", "1bit"], "u8"),
    (["int8", "1bit", "2bit", "2bit"], "i16"),
    (["2bit"] * 4, "i16"),
    (["1bit"] * 4, "i16"),
]
HIDDEN = [64, 24, 13]  # 13: rows that do not fill whole bytes


@pytest.fixture(scope="module")
def feature_model():
    model = random_model(1, ["1bit", "1bit"], [16])
    host = HostModel(model)
    yield host
    host.close()


@pytest.mark.parametrize("formats,act", FORMAT_CASES, ids=lambda v: ",".join(v) if isinstance(v, list) else v)
def test_random_models_logits(formats, act):
    for seed in range(3):
        model = random_model(seed, formats, HIDDEN, act)
        host = HostModel(model)
        x = random_inputs(seed, 200, model.shape[0])
        np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
        host.close()


@pytest.mark.parametrize("formats,act", FORMAT_CASES, ids=lambda v: ",".join(v) if isinstance(v, list) else v)
def test_c_path_logits(formats, act):
    """HostModel renders the default (fast) kernels, whose assembly has C stand-ins on the host; the
    plain C path (kernels="c") is checked here."""
    model = random_model(0, formats, HIDDEN, act)
    host = HostModel(model, kernels="c")
    assert "Kernels: c:" in (host.dir / "unochat_model.c").read_text()
    x = random_inputs(0, 200, model.shape[0])
    np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
    host.close()


@pytest.mark.parametrize("fmt", ["1bit", "2bit", "int8"])
@pytest.mark.parametrize("extreme", ["max", "min"])
@pytest.mark.parametrize("act", ["u8", "i16"])
def test_extreme_models_reach_the_int32_bound(fmt, extreme, act):
    model = random_model(7, [fmt] * 3, [256, 40], act, extreme=extreme)
    host = HostModel(model)
    x = random_inputs(7, 50, model.shape[0])
    first = model.layers[0]
    full = np.full((1, model.shape[0]), 255, dtype=np.int64)
    pre = (full @ first.weight.T.astype(np.int64)) * first.mult + first.bias
    # the all-255 input drives layer 0 beyond 2^30, next to the int32 edge the export allows
    assert 2**30 < np.abs(pre).max() <= 2**31 - 1
    np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
    host.close()


QUERIES = [
    "", "a", "hi", "HELLO", "hello", "Hello, World!", "what's up?", "  spaced  out  ",
    "x" * 60, "0123456789", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "MiXeD CaSe 42",
    "".join(chr(c) for c in range(32, 92)), "".join(chr(c) for c in range(92, 127)),
]


def test_query_features_match(feature_model):
    rng = np.random.default_rng(0)
    randoms = ["".join(chr(c) for c in rng.integers(32, 127, size=rng.integers(0, 61))) for _ in range(500)]
    for q in QUERIES + randoms:
        np.testing.assert_array_equal(feature_model.query_features(q), query_features(q, FeatureSpec()), err_msg=q)


def test_query_feature_counts_saturate():
    """Counts clamp at 255 (the first layer's uint8 inputs). The reference reaches the clamp on a long
    query: 400 'a' make 398 trigrams 'aaa' in one bucket. The C takes at most 255 characters (its length
    is a uint8; the device passes at most MAX_QUERY), so it is compared up to there: 253 counts."""
    spec = FeatureSpec(query_buckets=16)
    counts = query_features("a" * 400, spec)
    bucket = int(np.argmax(counts))
    assert counts[bucket] == 255
    model = random_model(2, ["1bit", "1bit"], [8], features=spec)
    host = HostModel(model)
    for n in (MAX_QUERY, 255):
        q = "a" * n
        np.testing.assert_array_equal(host.query_features(q), query_features(q, spec))
    assert query_features("a" * 255, spec)[bucket] == 253
    host.close()


def test_context_features_match(feature_model):
    rng = np.random.default_rng(1)
    contexts = ["", "A", "OK", "HELLO THERE", "R U?", "12345678", "ABCDEFGHIJKLMNOP"]
    contexts += ["".join(rng.choice(list(CHARSET[:-1]), size=rng.integers(0, 20))) for _ in range(300)]
    for c in contexts:
        np.testing.assert_array_equal(feature_model.context_features(c), context_features(c, FeatureSpec()), err_msg=c)


def test_line_editor_matches_normalize(feature_model):
    rng = np.random.default_rng(2)
    cases = [b"", b"hello", b"  hi  ", b"abc\x08d", b"\x08\x08x", b"a\x7fb", b"\x00\xff\x1bz", b"q" * 100,
             b" " * 70 + b"x", bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"")]
    for _ in range(500):
        raw = bytes(rng.integers(0, 256, size=rng.integers(0, 120), dtype=np.uint8))
        cases.append(raw.replace(b"\n", b"").replace(b"\r", b""))
    for raw in cases:
        assert feature_model.normalize(raw) == normalize_query(raw), raw


def test_z80ai_tinychat_c_matches_reference_everywhere():
    need_shared()
    model = load_z80ai(TINYCHAT_MODEL)
    data = load_dataset(TINYCHAT_DATA, case="upper")  # z80ai's model spells upper-case replies
    host = HostModel(model)
    x, _ = teacher_forced_examples(data.pairs, model.charset, model.features)
    np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
    queries = [p.query for p in data.pairs]
    assert [host.reply(q) for q in queries] == reference.generate(model, queries)
    host.close()


@pytest.mark.parametrize("fmt", ["1bit", "2bit"])
def test_wide_layers_past_16_bit_sums(fmt):
    """384 hidden activations all at 255: the 1-bit kernel's sum S reaches 97,920, past 16 bits."""
    model = random_model(3, ["1bit", fmt, "1bit"], [384, 64])
    first = model.layers[0]
    first.weight[:] = 1  # every input counts, so any input vector of some weight saturates layer 0
    first.mult[:], first.bias[:], first.shift = 1, 0, 0
    model.layers[1].weight[:, :300] = 1  # S = 300 * 255 and more
    model.layers[1].mult //= 2  # the bound grew with the weights
    model.validate()
    host = HostModel(model)
    x = random_inputs(3, 50, model.shape[0])
    x = x[x.sum(axis=1, dtype=np.int64) >= 255]  # the dense and extreme ones
    assert len(x) > 40 and (reference.forward(model, x)[0] == 255).all()
    np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
    host.close()


def test_int8_16bit_sums_into_i16_outputs():
    """A first layer whose int8 bound allows the wrapping 16-bit kernel sums while its i16 outputs take the
    C requantization: the sum must be rebuilt in 16 bits there too (a 32-bit rebuild of a wrapped sum was
    off by multiples of 2^16)."""
    model = random_model(0, ["int8", "int8"], [16], act="i16")
    first = model.layers[0]
    rng = np.random.default_rng(1)
    first.weight[:] = 0
    for row in first.weight:
        row[rng.choice(model.shape[0], 100, replace=False)] = rng.choice([-1, 1], 100)
    model.validate()
    assert codegen_kernels.int8_acc_bits(model, 0) == 16
    x = np.vstack([random_inputs(0, 100, model.shape[0]), np.full((1, model.shape[0]), 200, dtype=np.uint8)])
    host = HostModel(model)
    np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
    host.close()


@pytest.mark.parametrize("act", ["u8", "i16"])
def test_sparse_layers_logits(act):
    """The sparse C layout (model/formats.py pack_sparse) on every layer: 2-bit -2 weights as exceptions,
    ternary rows, rows of 13 inputs (a mask byte not full), zero inputs skipped."""
    from unochat.codegen.kernels import LayerKernel
    from unochat.codegen.layout import Plan

    layer_formats = ["2bit", "ternary", "2bit", "ternary"]
    for seed in range(2):
        model = random_model(seed, layer_formats, HIDDEN, act)
        plan = Plan([LayerKernel(f, "sparse") for f in layer_formats], False, [])
        host = HostModel(model, plan=plan)
        minus2 = int((model.layers[0].weight == -2).sum())
        assert minus2 and f"the outputs of its -2 weights ({minus2} in all)" in (host.dir / "unochat_model.c").read_text()
        x = random_inputs(seed, 200, model.shape[0])
        np.testing.assert_array_equal(host.logits(x), reference.logits(model, x))
        host.close()
