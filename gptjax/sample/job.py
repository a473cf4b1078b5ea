"""The sample layer's part of `mode=sample` (the job itself is align/sample_job.py, since a reward-model
scorer and the chat template come from align/): the prompts and the constrained-decoding automaton.
"""

from gptjax.sample.strategies import SampleError


def read_prompts(sample_cfg) -> list[str]:
    if sample_cfg.prompt:
        return [sample_cfg.prompt]
    with open(sample_cfg.prompts_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\r\n") for line in f if line.strip()]
    if not prompts:
        raise SampleError(f"sample.prompts_file={sample_cfg.prompts_file!r} holds no prompts; write one per line")
    return prompts


def constraint_automaton(sample_cfg, tokenizer):
    """The automaton for sample.regex / sample.json_schema, or None."""
    if not (sample_cfg.regex or sample_cfg.json_schema):
        return None
    from gptjax.sample import constrained  # lazy: only constrained runs build automata

    key, value = ("sample.regex", sample_cfg.regex) if sample_cfg.regex else ("sample.json_schema", sample_cfg.json_schema)
    try:
        if sample_cfg.regex:
            return constrained.regex_automaton(sample_cfg.regex, tokenizer)
        return constrained.json_schema_automaton(sample_cfg.json_schema, tokenizer)
    except constrained.ConstraintError as e:
        raise SampleError(f"{key}={value!r}: {e}") from e
