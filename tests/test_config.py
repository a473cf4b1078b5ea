import os
import subprocess
import sys

import pytest

from conftest import tiny_config
from gptjax.config import ConfigError, load_config, validate
from gptjax.config.parallel import resolve_mesh_shape

# (override path, value, words the message must contain)
BAD_CONFIGS = [
    ("model.attention", "flash", ["model.attention='flash'", "auto, blocked, einsum, xla, cudnn"]),
    ("model.n_heads", 5, ["model.n_heads=5", "divide model.d_model=32"]),
    ("model.n_kv_heads", 3, ["model.n_kv_heads=3", "divide model.n_heads=4"]),
    ("parallel.mesh", (2, 2, 1), ["parallel.mesh", "device count 1"]),
    ("parallel.mesh", (-1, -1, 1), ["at most one size may be -1"]),
    ("optim.lr", -1e-3, ["optim.lr=-0.001", "> 0"]),
    ("optim.lr", 0.0, ["optim.lr=0.0"]),
    ("optim.warmup_steps", 50, ["optim.warmup_steps=50", "[0, 10]", "train.steps"]),
    ("model.positional", "alibi", ["model.positional='alibi'", "learned, sinusoidal, rope"]),
    ("model.norm", "batchnorm", ["model.norm='batchnorm'", "layernorm, rmsnorm"]),
    ("model.activation", "tanh", ["model.activation='tanh'", "gelu, relu, swiglu"]),
    ("model.norm_position", "sandwich", ["model.norm_position='sandwich'"]),
    ("model.compute_dtype", "float16", ["model.compute_dtype='float16'"]),
    ("data.seq_len", 64, ["data.seq_len=64", "model.max_len=32"]),
    ("model.vocab_size", 7, ["model.vocab_size=7", "special tokens"]),
    ("model.dropout", 1.0, ["model.dropout=1.0", "[0, 1)"]),
    ("optim.schedule", "cyclic", ["optim.schedule='cyclic'", "warmup_cosine, wsd, constant"]),
    ("optim.grad_accum", 3, ["optim.grad_accum=3", "divide data.batch_size=8"]),
    ("model.n_layers", 0, ["model.n_layers=0", "positive"]),
    ("train.steps", 0, ["train.steps=0", "positive"]),
    ("data.markov_concentration", 0.0, ["data.markov_concentration=0.0", "> 0"]),
    ("train.checkpoint_every", 0, ["train.checkpoint_every=0"]),
    ("data.source", "webdataset:shards", ["data.source='webdataset:shards'", "text:<glob>"]),
    ("data.source", "shakespeare", ["model.vocab_size=40", "at least 263 ids"]),
    ("data.val_fraction", 1.5, ["data.val_fraction=1.5"]),
    ("mode", "serve", ["mode='serve'", "pretrain, eval"]),
    ("parallel.num_devices", 16, ["parallel.num_devices=16", "[1, 8]"]),
    ("data.markov_alphabet", 1000, ["data.markov_alphabet=1000"]),
]


def _set(cfg, path, value):
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize("path,value,words", BAD_CONFIGS, ids=[f"{p}={v}" for p, v, _ in BAD_CONFIGS])
def test_bad_config_raises_config_error_naming_key(path, value, words):
    cfg = tiny_config()
    _set(cfg, path, value)
    if path == "data.val_fraction":
        cfg.data.source = "shakespeare"
        cfg.model.vocab_size = 512
    with pytest.raises(ConfigError) as err:
        validate(cfg, device_count=8)
    for word in words:
        assert word in str(err.value)


def test_batch_must_divide_by_data_parallel_size():
    cfg = tiny_config()
    cfg.parallel.update(num_devices=8, mesh=(-1, 1, 1))
    cfg.data.batch_size = 12
    with pytest.raises(ConfigError, match=r"data.batch_size=12.*data\*fsdp=8"):
        validate(cfg, device_count=8)


def test_rope_needs_even_head_dim():
    cfg = tiny_config(d_model=36, n_heads=4, n_kv_heads=4, positional="rope")  # head dim 9
    with pytest.raises(ConfigError, match="even head dim"):
        validate(cfg, device_count=8)


def test_a_missing_workdir_parent_is_fine_a_file_in_the_path_is_not(tmp_path):
    validate(tiny_config(), workdir=str(tmp_path / "no" / "such" / "run"), device_count=8)  # created by the run
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a directory"):
        validate(tiny_config(), workdir=str(tmp_path / "f"), device_count=8)
    with pytest.raises(ConfigError, match="is a file, so the directory cannot be created"):
        validate(tiny_config(), workdir=str(tmp_path / "f" / "run"), device_count=8)
    # A directory whose file system refuses it (even for root): one ConfigError, not an OSError traceback.
    from gptjax.train.loop import train

    with pytest.raises(ConfigError, match=r"--workdir='/proc/gptjax_test': cannot be created \(No such file"):
        train(tiny_config(), "/proc/gptjax_test")


def test_multi_process_jobs_need_every_device_and_divisible_batches():
    cfg = tiny_config()
    with pytest.raises(ConfigError, match="parallel.num_devices=1: must be -1 in a multi-process job"):
        validate(cfg, device_count=8, process_count=2)
    cfg.parallel.update(num_devices=-1, mesh=(1, 1, -1))  # batch not split: hosts would feed "replicated" rows
    with pytest.raises(ConfigError, match="divide by the 2 processes"):
        validate(cfg, device_count=8, process_count=2)
    cfg.parallel.mesh = (2, -1, 1)
    assert validate(cfg, device_count=8, process_count=2) == (2, 4, 1)


def test_valid_config_resolves_mesh():
    cfg = tiny_config()
    cfg.parallel.update(num_devices=-1, mesh=(2, -1, 1))
    assert validate(cfg, device_count=8) == (2, 4, 1)
    assert resolve_mesh_shape((1, 1, -1), 8) == (1, 1, 8)


def test_heads_must_divide_by_the_mesh_axes_that_shard_them():
    cfg = tiny_config(d_model=48, n_heads=6, n_kv_heads=3)
    cfg.parallel.update(num_devices=-1, mesh=(4, 1, 2))  # tensor = 2: 6 query heads fit, 3 KV heads do not
    with pytest.raises(ConfigError, match=r"model.n_kv_heads=3: must divide by 2, the size of the mesh axes \('tensor',\)"):
        validate(cfg, device_count=8)
    cfg.model.update(d_model=32, n_heads=4, n_kv_heads=1)  # one KV head for both tensor shards: GQA's usual case
    assert validate(cfg, device_count=8) == (4, 1, 2)
    cfg.parallel.mesh = (1, 1, 8)  # 8 tensor shards for 4 query heads
    with pytest.raises(ConfigError, match="model.n_heads=4: must divide by 8"):
        validate(cfg, device_count=8)
    cfg.mode, cfg.sample.prompt = "sample", "the king"  # the network that runs comes from the checkpoint, not cfg.model
    validate(cfg, device_count=8)
    cfg.mode, cfg.parallel.mesh = "pretrain", (4, 1, 2)
    cfg.parallel.rules = tuple((name, ("fsdp", "tensor") if name == "heads" else axes) for name, axes in cfg.parallel.rules)
    cfg.parallel.mesh = (1, 4, 2)  # heads over fsdp x tensor = 8 > n_heads
    with pytest.raises(ConfigError, match="model.n_heads=4: must divide by 8"):
        validate(cfg, device_count=8)


def test_cli_reports_bad_override_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gptjax.main", "--config=configs/pretrain_synthetic.py",
         f"--workdir={tmp_path / 'w'}", "--config.model.n_heads=5"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120,
    )
    assert result.returncode == 2
    assert "error: model.n_heads=5: must divide model.d_model=64" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_missing_config_file_and_a_file_as_workdir_in_one_line(tmp_path):
    root = os.path.dirname(os.path.dirname(__file__))
    (tmp_path / "a_file").write_text("")
    for args, message in (
            (["--config=configs/nope.py", f"--workdir={tmp_path / 'w'}"], "error: --config=configs/nope.py: no such file"),
            (["--config", "configs/nope.py:variant", f"--workdir={tmp_path / 'w'}"],
             "error: --config=configs/nope.py: no such file"),
            (["--config=configs/pretrain_synthetic.py", f"--workdir={tmp_path / 'a_file'}"],
             f"error: --workdir='{tmp_path / 'a_file'}': is a file; give a directory")):
        result = subprocess.run([sys.executable, "-m", "gptjax.main", *args], capture_output=True, text=True,
                                cwd=root, timeout=120)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(message), line


def test_cli_reports_a_config_file_that_raises_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gptjax.main", "--config=configs/sweep.py:bogus", f"--workdir={tmp_path / 'w'}"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: ValueError: configs/sweep.py:bogus: unknown variant; use configs/sweep.py or configs/sweep.py:synthetic"]
    typo = subprocess.run(
        [sys.executable, "-m", "gptjax.main", "--config=configs/pretrain_synthetic.py", f"--workdir={tmp_path / 'w'}",
         "--config.train.stepz=5"], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=120)
    assert typo.returncode == 2
    [line] = typo.stderr.strip().splitlines()  # ml_collections adds its "Did you mean" hint where it has one
    assert line.startswith("error: --config.train.stepz: the config has no key 'stepz';")


BAD_ALIGN_CONFIGS = [  # (mode, {path: value}, words the error must contain)
    ("ppo", {}, ["align.init_from=''", "mode=ppo starts from a trained policy"]),
    ("grpo", {"align.init_from": "/nonexistent/run"}, ["align.init_from='/nonexistent/run'", "not a directory"]),
    ("rloo", {"rl.group_size": 1}, ["rl.group_size=1", "at least 2 samples"]),
    ("sft", {"align.task": "poetry"}, ["align.task='poetry'", "arithmetic, shakespeare or shakespeare_concise"]),
    ("sft", {"align.data": "/nonexistent.jsonl"}, ["align.data='/nonexistent.jsonl'", "does not exist"]),
    ("reward", {"align.batch_size": 6, "parallel.num_devices": 8, "parallel.mesh": (8, 1, 1)},
     ["align.batch_size=6", "divide by data*fsdp=8"]),
    ("ppo", {"rl.kl_estimator": "k4"}, ["rl.kl_estimator='k4'", "k1, k2, k3"]),
    ("ppo", {"rl.value_model": "tied"}, ["rl.value_model='tied'", "separate or shared"]),
    ("grpo", {"rl.minibatches": 0}, ["rl.minibatches=0", ">= 1"]),
    ("grpo", {"rl.kl_in_reward": False, "rl.kl_estimator": "k1"}, ["rl.kl_estimator='k1'", "regularises nothing"]),
    ("label", {"align.batch_size": 3, "parallel.num_devices": 8, "parallel.mesh": (8, 1, 1)},
     ["align.batch_size=3", "samples_per_prompt=2"]),
    ("grpo", {"rl.minibatches": 3}, ["align.batch_size=16", "rl.minibatches=3"]),
    # RL's schedule counts updates: 10 steps x 2 epochs x 2 minibatches = 40, so warmup 41 is too long
    ("ppo", {"rl.epochs": 2, "rl.minibatches": 2, "optim.warmup_steps": 41}, ["optim.warmup_steps=41", "[0, 40]"]),
    ("dpo", {"dpo.loss": "hinge"}, ["dpo.beta/loss/label_smoothing", "sigmoid or ipo"]),
    ("label", {"align.judge": "crowd"}, ["align.judge='crowd'", "gold, reward_model, self"]),
    ("label", {"align.judge": "reward_model"}, ["align.reward_model=''", "mode=reward run"]),
    ("sample", {"sample.scorer": "/tmp", "sample.beam_width": 2, "sample.num_samples": 2},
     ["sample.scorer='/tmp'", "beam_width=0"]),
]


@pytest.mark.parametrize("mode,values,words", BAD_ALIGN_CONFIGS, ids=[f"{m}:{v}" for m, v, _ in BAD_ALIGN_CONFIGS])
def test_bad_post_training_config_names_the_key(mode, values, words, tmp_path):
    cfg = tiny_config()
    cfg.mode = mode
    cfg.sample.prompt = "x"
    if mode in ("grpo", "rloo", "dpo", "label") and "align.init_from" not in values:
        cfg.align.init_from = str(tmp_path)  # an existing directory: the check under test comes later
    for path, value in values.items():
        _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg, device_count=8)
    for word in words:
        assert word in str(err.value)


def test_load_config_passes_the_argument_and_names_a_missing_file(tmp_path):
    assert load_config("configs/sft.py:shakespeare").align.task == "shakespeare"
    assert load_config("configs/sft.py").align.task == "arithmetic"
    with pytest.raises(ConfigError, match="nope.py does not exist"):
        load_config(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no get_config"):
        load_config(str(tmp_path / "empty.py"))


def test_wandb_logging_without_wandb_installed_is_a_config_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    cfg = tiny_config()
    validate(cfg)  # off by default: wandb is not needed
    cfg.train.wandb_project = "mine"
    with pytest.raises(ConfigError, match=r"train.wandb_project='mine': needs the wandb package: pip install wandb"):
        validate(cfg)
