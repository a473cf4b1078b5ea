"""Downstream few-shot evaluation of a workdir's network through lm-evaluation-harness (mode=lm_eval).

python -m gptjax.main --config=configs/evaluate.py --workdir=W --config.evaluate.tasks=shakespeare_cloze,arithmetic_em
W: any workdir with a trained or imported network and its tokenizer. Results: W/eval_tasks.json and a table in the
log. Offline tasks ship in gptjax/evaluate/tasks/; hub tasks (hellaswag, arc_easy, mmlu, gsm8k) run where the
Hugging Face hub is reachable. Needs the extra: pip install -e '.[eval]'.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "lm_eval"
    cfg.evaluate.tasks = "shakespeare_cloze"
    return cfg
