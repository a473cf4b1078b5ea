"""The config: every key with its default, assembled from one module per section (model.py, data.py,
train.py for `optim` and `train`, parallel.py, sweep.py, sample.py, align.py for `align`, `rl` and `dpo`,
interop.py for `hf`, evaluate.py for `evaluate`),
each with its keys, defaults, the choices its code accepts and its rules; and `validate(cfg)`, which runs
every section's rules. The sections sit in this package, at the bottom of the import order, because the
training loop and the sweep validate whole configs: inside their subsystems' packages they would make
imports run back up.

Job files in `configs/` start from `default_config()` and override what they need, so every job has
every key and `--config.a.b=v` overrides are checked by ml_collections against this schema.
`validate` runs before anything is built or compiled; each rule raises `ConfigError` with one
sentence naming the key, the bad value and the rule.
"""

import importlib.util
import os

import ml_collections

from gptjax.config import align as align_config
from gptjax.config import data as data_config
from gptjax.config import evaluate as evaluate_config
from gptjax.config import interop as interop_config
from gptjax.config import model as model_config
from gptjax.config import parallel as parallel_config
from gptjax.config import sample as sample_config
from gptjax.config import sweep as sweep_config
from gptjax.config import train as train_config
from gptjax.config.base import ALIGN_MODES, HF_MODES, MODES, ConfigError, check_choice, fail

__all__ = ["ConfigError", "create_workdir", "default_config", "load_config", "validate"]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config a job file gives, as `--config=PATH[:ARG]` would: `load_config("configs/sft.py:shakespeare")`
    calls that file's `get_config("shakespeare")`. For notebooks and scripts; the CLI parses its own flag."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; pass a configs/*.py path (relative to {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location(f"gptjax_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config(); a job file defines get_config() -> ConfigDict")
    return module.get_config(arg) if arg else module.get_config()


def default_config() -> ml_collections.ConfigDict:
    """Every key gptjax reads, with defaults for a tiny CPU run."""
    cfg = ml_collections.ConfigDict()
    cfg.mode = "pretrain"
    cfg.seed = 0
    cfg.model = model_config.defaults()
    cfg.data = data_config.defaults()
    cfg.optim = train_config.optim_defaults()
    cfg.train = train_config.train_defaults()
    cfg.parallel = parallel_config.defaults()
    cfg.sweep = sweep_config.defaults()
    cfg.sample = sample_config.defaults()
    cfg.align = align_config.align_defaults()
    cfg.rl = align_config.rl_defaults()
    cfg.dpo = align_config.dpo_defaults()
    cfg.hf = interop_config.defaults()
    cfg.evaluate = evaluate_config.defaults()
    return cfg


def validate(cfg: ml_collections.ConfigDict, workdir: str | None = None, device_count: int | None = None,
             process_count: int | None = None):
    """Raises ConfigError on the first rule `cfg` breaks. Returns the resolved mesh shape."""
    check_choice(cfg, "mode", MODES)
    model_config.validate(cfg)
    data_config.validate(cfg)
    train_config.validate_train(cfg.train)
    train_config.validate_optim(cfg)
    sample_config.validate(cfg)
    mesh = parallel_config.validate(cfg, device_count, process_count)
    if cfg.mode in ("pretrain", "eval"):
        # Only here is cfg.model the network that runs (sampling and post-training read theirs from a
        # checkpoint; a sweep validates each trial's model as a pretraining run).
        parallel_config.validate_heads_fit_mesh(cfg.model, cfg.parallel, mesh)
    if cfg.mode == "sweep":
        sweep_config.validate(cfg.sweep)
    if cfg.mode in ALIGN_MODES:
        align_config.validate(cfg, mesh[0] * mesh[1])
    if cfg.mode in HF_MODES:
        interop_config.validate(cfg)
    evaluate_config.validate(cfg, required=cfg.mode == "lm_eval")
    if cfg.train.eval_tasks and cfg.data.source.startswith("synthetic"):
        fail("train.eval_tasks", cfg.train.eval_tasks, "scores text tasks; a synthetic-token source has no tokenizer")
    if workdir is not None:
        _validate_workdir(workdir)
    return mesh


def _validate_workdir(workdir: str) -> None:
    """The workdir and its missing parents are created by the run (os.makedirs); refuse only what cannot be:
    a path through a file, or under a directory this user cannot write."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        fail("--workdir", workdir, "is a file; give a directory (it is created if missing)")
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        fail("--workdir", workdir, f"{ancestor} is a file, so the directory cannot be created under it; "
              "choose another path")
    if ancestor != path and not os.access(ancestor, os.W_OK | os.X_OK):
        fail("--workdir", workdir, f"cannot create it: {ancestor} is not writable; choose a path you can write")


def create_workdir(workdir: str) -> None:
    """Creates the workdir and its missing parents. What `_validate_workdir` cannot see (a read-only or
    virtual file system, such as /proc, a full disk) is a ConfigError naming the path, not a traceback."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        fail("--workdir", workdir, f"cannot be created ({e.strerror}); choose a path you can write")
