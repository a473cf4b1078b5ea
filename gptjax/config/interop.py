"""The `hf` section of the config: Hugging Face checkpoint import (mode=hf_import) and export (mode=hf_export)."""

import ml_collections

from gptjax.config.base import check_choice, fail

# What mode=hf_export may write: "auto" picks by the model's options (gptjax/interop/hf.py export_model_type).
EXPORT_MODEL_TYPES = ("auto", "gpt2", "llama", "mistral", "qwen2", "qwen3")
HF_DTYPES = ("float32", "bfloat16")


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            path="",  # hf_import: the directory to read (config.json, *.safetensors, tokenizer files); hf_export: to write
            dtype="float32",  # hf_import: the params' dtype in the workdir (the model's param_dtype)
            scan_layers=False,  # hf_import: stack the blocks for model.scan_layers (compile time independent of depth)
            model_type="auto",  # hf_export: the HF model_type to write; auto = the one the model's options need
        )
    )


def validate(cfg) -> None:
    if not cfg.hf.path:
        verb = "read (a save_pretrained directory)" if cfg.mode == "hf_import" else "write"
        fail("hf.path", cfg.hf.path, f"is required: the Hugging Face checkpoint directory to {verb}")
    check_choice(cfg, "hf.dtype", HF_DTYPES)
    check_choice(cfg, "hf.model_type", EXPORT_MODEL_TYPES)
