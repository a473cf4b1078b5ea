import jax
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.config import validate
from gptjax.model.build import abstract_model
from gptjax.train.flops import device_peak_flops, flops_per_token, mfu, param_counts


def gpt2_small():
    m = tiny_config().model
    m.update(vocab_size=50257, max_len=1024, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=3072)
    return m


def test_gpt2_small_counts_match_a_hand_count():
    # Per block: qkv 768*2304 + 2304, proj 768*768 + 768, fc 768*3072 + 3072, proj 3072*768 + 768, 2 LNs 4*768.
    block = 768 * 2304 + 2304 + 768 * 768 + 768 + 768 * 3072 + 3072 + 3072 * 768 + 768 + 4 * 768
    assert block == 7_087_872
    embedding = 50257 * 768 + 1024 * 768
    non_embedding = 12 * block + 2 * 768  # + final LayerNorm
    counts = param_counts(gpt2_small())
    assert counts == dict(total=124_439_808, embedding=embedding, head=0, non_embedding=non_embedding)
    assert non_embedding + embedding == 124_439_808  # the published GPT-2 small size

    f = flops_per_token(gpt2_small(), seq_len=1024)
    assert f["total_6n"] == 6 * 124_439_808
    assert f["nonembed_6n"] == 6 * 85_056_000
    # + LM head (6 D V) + attention (12 L T D): PaLM's MFU formula.
    assert f["with_attention"] == 6 * 85_056_000 + 6 * 768 * 50257 + 12 * 12 * 1024 * 768


def test_untied_head_and_gqa_counts_match_the_built_model():
    for overrides in (dict(tie_embeddings=False), dict(n_kv_heads=1, activation="swiglu", norm="rmsnorm", qk_norm=True)):
        m = tiny_config(**overrides).model
        _, params = nnx.split(abstract_model(m), nnx.Param)
        assert sum(x.size for x in jax.tree.leaves(params)) == param_counts(m)["total"]


def test_gpt2_124m_config_validates_and_has_gpt2_shapes():
    from configs.gpt2_124m import get_config

    cfg = get_config()
    cfg.parallel.update(num_devices=-1, mesh=(-1, 1, 1))
    assert validate(cfg, device_count=8) == (8, 1, 1)
    _, params = nnx.split(abstract_model(cfg.model), nnx.Param)
    assert params["token_embed"]["embedding"].shape == (50304, 768)  # GPT-2 vocab padded to a multiple of 64
    assert params["blocks"][11]["mlp"]["up"]["kernel"].shape == (768, 3072)
    assert sum(x.size for x in jax.tree.leaves(params)) == 124_439_808 + (50304 - 50257) * 768
    assert {x.dtype for x in jax.tree.leaves(params)} == {jax.numpy.dtype("float32")}
    assert cfg.model.compute_dtype == "bfloat16"


def test_peak_table_and_mfu():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("TPU v5 lite") == 197e12
    assert device_peak_flops("cpu") is None
    assert mfu(1000.0, 6e9, 1.2e13) == pytest.approx(0.5)


@pytest.mark.slow
def test_gpu_mfu_bench_runs_end_to_end_on_cpu():
    """bench/gpu_mfu.py's path (config, sharded step, timing, MFU accounting) on a tiny model."""
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(repo, "bench", "gpu_mfu.py"), "--smoke", "--steps", "2",
                          "--batch_per_device", "1"], capture_output=True, text=True, check=True, timeout=600)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["name"] == "gpu_mfu_gpt2_124m_smoke" and row["tokens_per_sec"] > 0 and row["step_seconds"] > 0
    assert row["devices"] == jax.device_count() and row["batch"] == jax.device_count()
    assert row["device"] == jax.devices()[0].device_kind  # CPU: no peak in the table, so MFU is NaN
