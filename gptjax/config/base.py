"""What every section's config module shares: the modes, ConfigError and the helpers that raise it."""

MODES = ("pretrain", "eval", "sweep", "sample", "sft", "reward", "ppo", "grpo", "rloo", "dpo", "label", "hf_import",
         "hf_export", "lm_eval")
HF_MODES = ("hf_import", "hf_export")  # gptjax/interop/job.py
ALIGN_MODES = ("sft", "reward", "ppo", "grpo", "rloo", "dpo", "label")  # gptjax/align/
RL_MODES = ("ppo", "grpo", "rloo")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def fail(key, value, rule):
    raise ConfigError(f"{key}={value!r}: {rule}")


def check_choice(cfg, key, choices):
    """Fails unless the value at dotted `key` of `cfg` is one of `choices`."""
    value = cfg
    for part in key.split("."):
        value = value[part]
    if value not in choices:
        fail(key, value, f"must be one of {', '.join(choices)}")
