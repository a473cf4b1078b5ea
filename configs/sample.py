"""Sample from the latest checkpoint in --workdir, e.g. one written by configs/pretrain_shakespeare.py.

python -m gptjax.main --config=configs/sample.py --workdir=/tmp/gptjax/shakespeare --config.sample.prompt="ROMEO:"
The model comes from the checkpoint; WORKDIR/tokenizer.json must be the tokenizer it was trained with.
Completions go to WORKDIR/samples.jsonl (sample.output); see README "Sampling" for every key.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "sample"
    cfg.sample.update(max_new_tokens=100, temperature=0.8, top_p=0.95, stop_strings=("\n\n",))
    return cfg
