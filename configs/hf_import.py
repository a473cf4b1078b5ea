"""Import a Hugging Face checkpoint (GPT-2, Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3) into a gptjax workdir.

python -m gptjax.main --config=configs/hf_import.py --config.hf.path=DIR --workdir=W
DIR is a save_pretrained directory: config.json, model.safetensors (or shards + model.safetensors.index.json),
tokenizer.json and tokenizer_config.json. W then works with mode=sample, every post-training stage
(--config.align.init_from=W) and configs/hf_export.py. Nothing is downloaded. Keys: README "Bring your own model".
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "hf_import"
    return cfg
