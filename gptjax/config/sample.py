"""The `sample` section of the config: its keys and defaults, and the rules they must meet."""

import os

import ml_collections

from gptjax.config.base import check_choice, fail

QUANTIZE = ("none", "int8")  # gptjax/sample/quantize.py


def defaults() -> ml_collections.ConfigDict:
    """mode=sample (job.py): prompts, decoding strategy, beams, constraints, best-of-N."""
    return ml_collections.ConfigDict(
        dict(
            prompt="",  # mode=sample: one prompt, or
            prompts_file="",  # a UTF-8 file with one prompt per line (blank lines skipped)
            output="",  # JSONL of the samples; "" = WORKDIR/samples.jsonl
            num_samples=1,  # completions per prompt (with beam search: the best num_samples beams)
            max_new_tokens=64,
            temperature=1.0,  # 0 = greedy
            top_k=0,  # 0 = off
            top_p=1.0,  # 1 = off
            min_p=0.0,  # 0 = off
            stop_strings=(),  # besides <|eos|>, which always stops
            seed=0,
            batch_size=16,  # rows (prompts x num_samples) decoded together
            beam_width=0,  # > 0: beam search (deterministic) instead of sampling
            length_penalty=1.0,  # beam score = sum(logprobs) / length**length_penalty
            regex="",  # constrained decoding: completions match this regular expression, or
            json_schema="",  # are JSON documents valid under this JSON schema (a JSON string)
            scorer="",  # best-of-N: a reward-model workdir (mode=reward) that ranks num_samples completions
            quantize="none",  # "int8": sample from weight-only int8 kernels (gptjax/sample/quantize.py)
            chat=False,  # wrap each prompt in the chat template (a user turn + <|assistant|>), for SFT'd models
        )
    )


def validate(cfg):
    s = cfg.sample
    for key in ("num_samples", "max_new_tokens", "batch_size"):
        if s[key] < 1:
            fail(f"sample.{key}", s[key], "must be >= 1")
    if not s.temperature >= 0:
        fail("sample.temperature", s.temperature, "must be >= 0 (0 = greedy)")
    if s.top_k < 0:
        fail("sample.top_k", s.top_k, "must be >= 0 (0 = off)")
    if not 0 < s.top_p <= 1:
        fail("sample.top_p", s.top_p, "must be in (0, 1] (1 = off)")
    if not 0 <= s.min_p <= 1:
        fail("sample.min_p", s.min_p, "must be in [0, 1] (0 = off)")
    if any(not isinstance(x, str) or not x for x in s.stop_strings):
        fail("sample.stop_strings", s.stop_strings, "must be a tuple of non-empty strings")
    if s.beam_width < 0:
        fail("sample.beam_width", s.beam_width, "must be >= 0 (0 = sample instead of beam search)")
    if s.beam_width and s.num_samples > s.beam_width:
        fail("sample.num_samples", s.num_samples, f"must not exceed sample.beam_width={s.beam_width}")
    if s.regex and s.json_schema:
        fail("sample.regex", s.regex, "set sample.regex or sample.json_schema, not both")
    if s.beam_width and (s.regex or s.json_schema or s.stop_strings):
        fail("sample.beam_width", s.beam_width, "beam search supports neither constraints nor stop strings; "
              "set sample.beam_width=0 to sample")
    check_choice(cfg, "sample.quantize", QUANTIZE)
    if s.scorer and s.beam_width:
        fail("sample.scorer", s.scorer, "best-of-N samples num_samples completions; set sample.beam_width=0")
    if s.scorer and not os.path.isdir(s.scorer):
        fail("sample.scorer", s.scorer, "is not a directory; give the workdir of a mode=reward run")
    if cfg.mode == "sample":
        if bool(s.prompt) == bool(s.prompts_file):
            fail("sample.prompt", s.prompt, "mode=sample needs exactly one of sample.prompt and sample.prompts_file")
        if s.prompts_file and not os.path.isfile(s.prompts_file):
            fail("sample.prompts_file", s.prompts_file, "does not exist; give a file with one prompt per line")
