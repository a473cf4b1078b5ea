"""LoRA post-training (align.lora_*): zero-B adapters leave the network unchanged, only adapters (and a reward
model's head) train and are checkpointed, and the merged network is the adapted one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from conftest import tiny_config
from gptjax.align import lora as align_lora
from gptjax.align.dpo import dpo
from gptjax.align.reward import RewardModel, reward
from gptjax.align.sft import sft
from gptjax.config import ConfigError, validate
from gptjax.model import lora
from gptjax.model.build import abstract_model
from gptjax.model.quantize import quantize_params
from gptjax.parallel.mesh import make_mesh
from gptjax.train.checkpoint import CheckpointError, Checkpointer
from gptjax.train.network import load_network
from gptjax.train.state import abstract_params

pytestmark = pytest.mark.xdist_group("test_lora")
MESH = make_mesh(tiny_config().parallel)
RULES = tuple(tiny_config().parallel.rules)


def align_config(mode: str, **align):
    cfg = tiny_config()
    cfg.model.update(vocab_size=300, max_len=32, positional="rope", norm="rmsnorm", activation="swiglu")
    cfg.mode = mode
    cfg.align.update(task="arithmetic", num_examples=120, val_fraction=0.1, batch_size=8)
    cfg.align.update(align)
    cfg.optim.update(lr=1e-2)
    cfg.train.update(steps=20, eval_every=20, checkpoint_every=20, log_every=5)
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny SFT'd arithmetic model: the network the LoRA stages adapt."""
    workdir = str(tmp_path_factory.mktemp("lora") / "base")
    cfg = align_config("sft")
    cfg.optim.update(lr=3e-3)
    sft(cfg, workdir)
    return workdir


@pytest.fixture(scope="module")
def lora_sft(base):
    workdir = os.path.join(os.path.dirname(base), "lora_sft")
    result = sft(align_config("sft", init_from=base, lora_rank=4, lora_targets="query,value,up"), workdir)
    return workdir, result


def logits(model_cfg, params, tokens):
    return np.asarray(nnx.merge(nnx.graphdef(abstract_model(model_cfg)), params)(jnp.asarray(tokens)))


TOKENS = np.random.default_rng(0).integers(0, 300, (2, 16))


def test_zero_initialised_adapters_leave_the_network_unchanged(base):
    network = load_network(base, MESH, RULES)
    cfg = align_config("sft", init_from=base, lora_rank=4)
    lora_cfg = align_lora.lora_model_cfg(cfg.align, network.model_cfg)
    adapters = align_lora.fresh_adapters(lora_cfg, jax.random.key(0), MESH, RULES)
    names = {p[-1] for p in traverse_util.flatten_dict(adapters)}
    layers = {p[-2] for p in traverse_util.flatten_dict(adapters)}
    assert names == {"lora_a", "lora_b"} and layers == {"query", "key", "value", "out", "gate", "up", "down"}
    assert all(not np.any(np.asarray(x)) for p, x in traverse_util.flatten_dict(adapters).items() if p[-1] == "lora_b")
    adapted = logits(lora_cfg, lora.combine(network.params, adapters), TOKENS)
    np.testing.assert_array_equal(adapted, logits(network.model_cfg, network.params, TOKENS))


def test_lora_sft_trains_and_checkpoints_only_the_adapters(base, lora_sft):
    workdir, result = lora_sft
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [row["loss"] for row in map(json.loads, f) if row["split"] == "eval"]
    assert evals[-1] < evals[0]  # the adapters learn
    base_net, merged = load_network(base, MESH, RULES), load_network(workdir, MESH, RULES)
    assert merged.model_cfg.lora_rank == 0 and merged.meta["lora_base"] == os.path.abspath(base)
    before, after = traverse_util.flatten_dict(base_net.params), traverse_util.flatten_dict(merged.params)
    assert before.keys() == after.keys()
    changed = {p for p in before if not np.array_equal(np.asarray(before[p]), np.asarray(after[p]))}
    # only the adapted kernels moved (their adapters merged in); embeddings, norms and other kernels are the base's
    assert changed == {p for p in before if p[-1] == "kernel" and p[-2] in ("query", "value", "up")}
    # the checkpoint holds the adapters alone: a restore expecting the whole network finds no base there
    meta = Checkpointer.reader(os.path.join(workdir, "checkpoints")).restore_meta(20)
    lora_cfg = load_network(base, MESH, RULES).model_cfg.copy_and_resolve_references()
    lora_cfg.update(lora_rank=4, lora_alpha=16.0, lora_targets="query,value,up")
    assert meta["model"]["lora_rank"] == 4
    reader = Checkpointer.reader(os.path.join(workdir, "checkpoints"))
    stored = reader.restore_items(20, {"params": lora.split(abstract_params(lora_cfg, MESH, RULES))[0]})["params"]
    assert {p[-1] for p in traverse_util.flatten_dict(stored)} == {"lora_a", "lora_b"}
    with pytest.raises(CheckpointError):
        reader.restore_items(20, {"params": abstract_params(lora_cfg, MESH, RULES)})
    # merged == adapted: the network everything downstream reads is the one the stage trained
    adapted = logits(lora_cfg, lora.combine(base_net.params, stored), TOKENS)
    np.testing.assert_allclose(logits(merged.model_cfg, merged.params, TOKENS), adapted, atol=1e-5)


def test_lora_reward_model_and_dpo_start_from_the_base(base, lora_sft, tmp_path):
    rm_dir = str(tmp_path / "rm")
    reward(align_config("reward", init_from=base, lora_rank=2), rm_dir)
    scorer = RewardModel(rm_dir, MESH, RULES)  # the merged network with its trained head
    assert scorer.model_cfg.scalar_head and scorer.model_cfg.lora_rank == 0
    assert np.all(np.isfinite(np.asarray(scorer(np.asarray(TOKENS[:, :8] % 300, np.int32), [8, 8]))))
    dpo_dir = str(tmp_path / "dpo")
    dpo(align_config("dpo", init_from=lora_sft[0], lora_rank=2, num_examples=40), dpo_dir)
    network = load_network(dpo_dir, MESH, RULES)  # LoRA on top of a LoRA-SFT'd base: both merged
    assert network.model_cfg.lora_rank == 0 and np.all(np.isfinite(logits(network.model_cfg, network.params, TOKENS)))


def test_qlora_trains_adapters_over_an_int8_base_and_merges_to_what_it_trained(base, tmp_path):
    workdir = str(tmp_path / "qlora")
    sft(align_config("sft", init_from=base, lora_rank=4, quantize_base="int8"), workdir)
    meta = Checkpointer.reader(os.path.join(workdir, "checkpoints")).restore_meta(20)
    lora_cfg = load_network(base, MESH, RULES).model_cfg.copy_and_resolve_references()
    lora_cfg.update(meta["model"])
    assert lora_cfg.kernel_quant == "int8" and lora_cfg.lora_rank == 4
    stored = Checkpointer.reader(os.path.join(workdir, "checkpoints")).restore_items(
        20, {"params": lora.split(abstract_params(lora_cfg, MESH, RULES))[0]})["params"]
    int8_base = quantize_params(load_network(base, MESH, RULES).params)
    assert {x.dtype for p, x in traverse_util.flatten_dict(int8_base).items() if p[-1] == "kernel"} == {jnp.dtype(jnp.int8)}
    adapted = logits(lora_cfg, lora.combine(int8_base, stored), TOKENS)  # the network the stage trained
    merged = load_network(workdir, MESH, RULES)  # float: the base's rounded kernels plus the adapters
    assert merged.model_cfg.kernel_quant == "none" and merged.model_cfg.lora_rank == 0
    np.testing.assert_allclose(logits(merged.model_cfg, merged.params, TOKENS), adapted, atol=1e-4)


@pytest.mark.parametrize("mode, align, match", [
    ("sft", dict(init_from=".", quantize_base="int8", lora_rank=0), "set align.lora_rank"),
    ("grpo", dict(init_from="."), "LoRA is supported for sft, reward and dpo"),
    ("sft", dict(), "adapts a trained network: set align.init_from"),
    ("sft", dict(init_from=".", lora_targets="query,embedding"), "align.lora_targets"),
])
def test_lora_settings_that_cannot_work_are_refused(mode, align, match):
    with pytest.raises(ConfigError, match=match):
        align_config(mode, **{"lora_rank": 4, **align})
