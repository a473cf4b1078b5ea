"""Command-line entry: `python -m gptjax.main --config=configs/X.py --workdir=DIR [--config.a.b=v]`.

Parses flags, validates the config, and dispatches on `config.mode`. Library code never parses flags.
"""

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gptjax.align.chat import ChatError
from gptjax.align.data import AlignDataError
from gptjax.align.dpo import dpo
from gptjax.align.label import label
from gptjax.align.reward import reward
from gptjax.align.rl import rl
from gptjax.align.sample_job import sample_checkpoint
from gptjax.align.sft import sft
from gptjax.align.stage import AlignError
from gptjax.config import ConfigError
from gptjax.data.sources import DataSourceError
from gptjax.data.tokenizer import TokenizerError
from gptjax.evaluate.job import lm_eval_job, pretrain
from gptjax.interop.errors import InteropError
from gptjax.interop.job import hf_export, hf_import
from gptjax.parallel.mesh import maybe_initialize_distributed
from gptjax.sample.strategies import SampleError
from gptjax.scaling.sweep import TrialFailedError, run_sweep
from gptjax.train.checkpoint import CheckpointError
from gptjax.train.loop import TrainingDivergedError, evaluate_checkpoint
from gptjax.train.preemption import Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")

MODES = {"pretrain": pretrain, "eval": evaluate_checkpoint, "sweep": run_sweep, "sample": sample_checkpoint,
         "sft": sft, "reward": reward, "ppo": rl, "grpo": rl, "rloo": rl, "dpo": dpo, "label": label,
         "hf_import": hf_import, "hf_export": hf_export, "lm_eval": lm_eval_job}


def _quiet_orbax_info(record) -> bool:
    """Orbax logs several INFO lines per checkpoint; keep its warnings and errors only."""
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_quiet_orbax_info)
    if not flags.FLAGS["verbosity"].present:  # quiet by default: progress and results only; --verbosity=0 for INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; set options with --config.KEY=VALUE")
    cfg = _CONFIG.value
    try:
        if cfg is None:
            raise ConfigError("--config is required, e.g. --config=configs/pretrain_synthetic.py")
        if not _WORKDIR.value:
            raise ConfigError("--workdir is required: the directory for checkpoints and metrics")
        maybe_initialize_distributed(cfg.parallel)
        if cfg.mode not in MODES:
            raise ConfigError(f"mode={cfg.mode!r}: must be one of {', '.join(MODES)}")
        result = MODES[cfg.mode](cfg, _WORKDIR.value)  # each mode validates cfg first (as from a notebook)
    except Preempted as e:  # SIGTERM: checkpointed; a rerun resumes
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(0)
    except (ConfigError, DataSourceError, TokenizerError, CheckpointError, TrainingDivergedError, SampleError,
            TrialFailedError, AlignError, AlignDataError, ChatError, InteropError) as e:
        print(f"error: {e}", file=sys.stderr)  # one line: not also an absl log line saying the same
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    print(json.dumps(result))


def _parse_flags(argv):
    """absl's flag parsing, but a bad flag is one line: a config file that does not exist (ml_collections
    loads it lazily and would raise at first use, with two tracebacks), or one that raises (an unknown
    variant, a typo: ml_collections returns its whole traceback, whose last line is the error itself)."""
    for arg, following in zip(argv[1:], argv[2:] + [""]):
        if arg.startswith("--config=") or arg == "--config":
            path = (arg.split("=", 1)[1] if "=" in arg else following).split(":", 1)[0]
            if not os.path.isfile(path):
                print(f"error: --config={path}: no such file (from {os.getcwd()}); give a config file, e.g. "
                      "--config=configs/pretrain_synthetic.py from the repository root", file=sys.stderr)
                sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        print(f"error: {lines[-1] if lines else e}", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config does not have
        text = str(e.args[0]).replace("\\n", "\n").replace("\\", "")  # nested reprs of "'key'\nDid you mean ..."
        name = re.search(r"\w+", text).group()
        hint = " ".join(line.strip(" '\"") for line in text.splitlines()[1:]) or "its keys are in gptjax/config/"
        flag = next((a.split("=", 1)[0] for a in argv[1:]
                     if a.startswith("--config.") and a.split("=", 1)[0].endswith("." + name)), "--config")
        print(f"error: {flag}: the config has no key {name!r}; {hint}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
