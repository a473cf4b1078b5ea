"""Multi-process jobs through `gptjax.launch` on this machine (2 processes x 2 CPU devices, gloo collectives)
against one process with the same 4 devices: the same numbers, every process finishing."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group("test_multihost")


def run(args: list[str], processes: int) -> dict:
    """The final JSON line of `gptjax.main args`: launched as `processes` x (4 / processes) CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    if processes == 1:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        command = [sys.executable, "-m", "gptjax.main", *args]
    else:
        command = [sys.executable, "-m", "gptjax.launch", f"--processes={processes}",
                   f"--devices_per_process={4 // processes}", "--", *args]
    result = subprocess.run(command + ["--config.train.progress_bar=False"], env=env, capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pretraining_on_two_processes_equals_one_process(tmp_path):
    args = ["--config=configs/pretrain_synthetic.py", "--config.train.steps=20", "--config.train.eval_every=20",
            "--config.optim.warmup_steps=5"]
    one = run(args + [f"--workdir={tmp_path / 'one'}"], 1)
    two = run(args + [f"--workdir={tmp_path / 'two'}"], 2)
    # gloo's all-reduces sum the gradients in another order than one process's: equal to float32 rounding
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


@pytest.mark.slow
def test_sft_then_grpo_on_two_processes_equal_one_process(tmp_path):
    """SFT, then GRPO from it: rollouts sampled with the KV cache, scored and updated across processes."""
    sft = ["--config=configs/sft.py", "--config.train.steps=6", "--config.train.eval_every=6",
           "--config.optim.warmup_steps=2"]
    sft_one = run(sft + [f"--workdir={tmp_path / 'sft1'}"], 1)
    sft_two = run(sft + [f"--workdir={tmp_path / 'sft2'}"], 2)
    assert sft_two["loss"] == pytest.approx(sft_one["loss"], rel=1e-6) and sft_two["eval_loss"] == pytest.approx(sft_one["eval_loss"], rel=1e-6)
    grpo = ["--config=configs/grpo.py", f"--config.align.init_from={tmp_path / 'sft1'}", "--config.train.steps=2",
            "--config.train.eval_every=2", "--config.align.num_examples=80", "--config.optim.warmup_steps=1"]
    one = run(grpo + [f"--workdir={tmp_path / 'grpo1'}"], 1)
    two = run(grpo + [f"--workdir={tmp_path / 'grpo2'}"], 2)
    for key in ("reward_mean", "gold_reward", "response_length", "eval_reward", "eval_train_reward"):
        assert two[key] == one[key], key  # the same sampled tokens
    for key in ("loss", "kl_k1", "grad_norm", "param_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key  # reductions over gloo: another order


def test_a_failing_process_fails_the_launch_with_its_line(tmp_path):
    command = [sys.executable, "-m", "gptjax.launch", "--processes=2", "--devices_per_process=1", "--",
               "--config=configs/pretrain_synthetic.py", f"--workdir={tmp_path / 'run'}", "--config.train.steps=0"]
    result = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: train.steps=0: must be positive" and "Traceback" not in result.stderr, lines
    assert lines[-1].startswith("error: gptjax.launch: process ") and "exited with code 2" in lines[-1]


def test_a_coordinator_without_process_ids_is_a_config_error():
    from gptjax.config import ConfigError, default_config, validate

    cfg = default_config()
    cfg.parallel.update(multi_host=True, coordinator="localhost:1234")
    with pytest.raises(ConfigError, match="parallel.coordinator.*num_processes"):
        validate(cfg)
