"""Tests for models.precision: choosing the training precision and converting networks."""
from __future__ import annotations

import numpy as np
import pytest

from models.cnn import OUTPUT_LAYERS, build_model, compile_network
from models.precision import check_precision, cpu_has_bfloat16, set_precision

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
           "flags\t\t: fpu sse2 avx2 avx512f avx512bw{extra}\nbogomips\t: 4800.00\n")


@pytest.mark.parametrize("extra,expected", [
    (" avx512_bf16 avx512_vnni", True), (" amx_bf16 amx_tile", True),
    (" avx512_vnni", False), (" avx512_bf16x", False)])
def test_cpu_bfloat16_is_read_from_the_flags_line(extra, expected):
    assert cpu_has_bfloat16(CPUINFO.format(extra=extra)) is expected


def test_cpuinfo_without_flags_has_no_bfloat16():
    assert cpu_has_bfloat16("processor\t: 0\nmodel name\t: ARMv8\n") is False


@pytest.mark.parametrize("n_gpus,extra,onednn,warned", [
    (0, " avx512_bf16", None, False), (0, "", None, True), (1, "", None, False),
    (0, " avx512_bf16", "0", True)])
def test_emulated_bfloat16_is_warned_about(n_gpus, extra, onednn, warned, monkeypatch, caplog):
    if onednn is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    cpuinfo = CPUINFO.format(extra=extra)
    assert check_precision("mixed_bfloat16", n_gpus=n_gpus, cpuinfo=cpuinfo) == "mixed_bfloat16"
    assert ("emulated" in caplog.text) is warned
    assert check_precision("float32", n_gpus=0, cpuinfo=cpuinfo) == "float32"


def test_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="unknown precision 'float16'.*mixed_bfloat16"):
        check_precision("float16")
    with pytest.raises(ValueError, match="must be one of"):
        set_precision(build_model("default", (32, 32, 1)), "auto")


def test_network_round_trips_through_bfloat16_unchanged():
    network = build_model("default", (32, 32, 1), seed=0)
    faces = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype(np.float32)
    mixed = set_precision(network, "mixed_bfloat16", OUTPUT_LAYERS)
    policies = {layer.name: layer.dtype_policy.name for layer in mixed.layers[1:]}
    assert {name for name, policy in policies.items() if policy == "float32"} \
        == set(OUTPUT_LAYERS) & set(policies) == set(OUTPUT_LAYERS) - {"age_distribution"}
    assert set(policies.values()) == {"float32", "mixed_bfloat16"}
    back = set_precision(mixed, "float32")
    assert {layer.dtype_policy.name for layer in back.layers} == {"float32"}
    assert back.name == network.name and [w.shape for w in back.get_weights()] \
        == [w.shape for w in network.get_weights()]
    expected = network.predict(faces, verbose=0)
    approximate, exact = mixed.predict(faces, verbose=0), back.predict(faces, verbose=0)
    for task in expected:
        assert approximate[task].dtype == np.float32
        np.testing.assert_array_equal(exact[task], expected[task])
        # bfloat16 keeps 8 significant bits: outputs near, not equal
        np.testing.assert_allclose(approximate[task], expected[task], rtol=0.05, atol=0.02)
    assert set_precision(back, "float32") is back


def test_a_compiled_network_converts_without_its_losses():
    # the project's smoothed losses are plain functions Keras cannot deserialise
    network = build_model("default", (32, 32, 1), seed=0)
    compile_network(network, total_steps=10)
    mixed = set_precision(network, "mixed_bfloat16", OUTPUT_LAYERS)
    assert not mixed.compiled
    assert mixed.get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
