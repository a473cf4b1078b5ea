"""Export the newest network of a gptjax workdir as a Hugging Face checkpoint that transformers loads.

python -m gptjax.main --config=configs/hf_export.py --config.hf.path=OUT --workdir=W
W: any workdir (pretraining, post-training or an import) whose model options map onto GPT-2 or the Llama family;
--config.hf.model_type picks the family (default auto: by the options). OUT gets config.json, safetensors and
the tokenizer with its chat template. Options that have no HF equivalent are refused by name.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "hf_export"
    return cfg
