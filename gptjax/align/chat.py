"""The chat template, one function shared by SFT, reward models, RL and sampling.

A conversation is a list of {"role", "content"} turns, role in system | user | assistant. With a tokenizer
gptjax trained, it renders as

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|eos|> <|user|> ...

System and user turns end with <|end|>; assistant turns end with <|eos|>, so a model sampling its turn
stops at the default stop token. The assistant mask marks what an assistant turn generates: its text
and its <|eos|> (not the <|assistant|> marker, which the template supplies).

An imported Hugging Face tokenizer brings its own Jinja template (tokenizer_config.json), rendered as
transformers' `apply_chat_template` renders it. Its assistant mask comes from the text: assistant turn i
is what rendering turns 0..i adds to rendering turns 0..i-1 with the generation prompt, so it covers the
reply and the template's end-of-turn tokens, not the header the generation prompt supplies.
"""

import dataclasses
import datetime
import functools
import json

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gptjax.data.tokenizer import ASSISTANT_ID, BOS_ID, END_ID, EOS_ID, SYSTEM_ID, USER_ID, token_text

ROLES = ("system", "user", "assistant")
# gptjax's template in Jinja, for the tokenizer_config.json of an export (transformers' apply_chat_template
# renders with it what `render` renders; tests/test_hf_jobs.py checks that they agree).
JINJA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + "
                  "(eos_token if m['role'] == 'assistant' else '<|end|>') }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
ROLE_IDS = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}


class ChatError(ValueError):
    """A conversation that cannot be rendered; the message names the turn and the fix."""


@dataclasses.dataclass(frozen=True)
class Rendered:
    tokens: list[int]
    assistant_mask: list[bool]  # per token: True where an assistant turn generated it


def render(messages, tokenizer, *, add_generation_prompt: bool = False, where: str = "conversation") -> Rendered:
    """Token ids and assistant mask of `messages`. `add_generation_prompt` appends <|assistant|> so a
    model continues with the assistant's reply. `where` names the input in errors (e.g. "data.jsonl:12")."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatError(f"{where}: messages must be a non-empty list of {{'role', 'content'}} turns")
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) - {"role", "content"} or "role" not in turn or "content" not in turn:
            raise ChatError(f"{where}: turn {i} must be an object with exactly 'role' and 'content', got {turn!r}")
        if turn["role"] not in ROLES:
            raise ChatError(f"{where}: turn {i} has unknown role {turn['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(turn["content"], str):
            raise ChatError(f"{where}: turn {i} content must be a string, got {type(turn['content']).__name__}")
    if tokenizer.hf_config is not None:
        return _render_hf(list(messages), tokenizer, add_generation_prompt, where)
    tokens, mask = [BOS_ID], [False]
    for turn in messages:
        role, content = turn["role"], turn["content"]
        body = tokenizer.encode(content) + [EOS_ID if role == "assistant" else END_ID]
        tokens += [ROLE_IDS[role]] + body
        mask += [False] + [role == "assistant"] * len(body)
    if add_generation_prompt:
        tokens.append(ROLE_IDS["assistant"])
        mask.append(False)
    return Rendered(tokens, mask)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    """A Jinja chat template compiled as transformers compiles it (sandboxed, trimmed blocks)."""
    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    # transformers' tojson: not HTML-escaped, non-ASCII kept
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    return env.from_string(template)


def render_text(messages, tokenizer, add_generation_prompt: bool = False, where: str = "conversation") -> str:
    """The text an imported tokenizer's Jinja chat template renders for `messages` (transformers'
    `apply_chat_template(..., tokenize=False)`)."""
    config = tokenizer.hf_config
    if not tokenizer.chat_template:
        raise ChatError(f"{where}: the tokenizer has no chat template (tokenizer_config.json's chat_template); import "
                        "an instruct model's tokenizer, or add a template to its tokenizer_config.json")
    special = {k: token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    try:
        return _compiled(tokenizer.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                         **special)
    except jinja2.TemplateError as e:
        raise ChatError(f"{where}: the tokenizer's chat template refused the conversation: {e}") from e


def _render_hf(messages, tokenizer, add_generation_prompt: bool, where: str) -> Rendered:
    text = render_text(messages, tokenizer, add_generation_prompt, where)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = render_text(messages[:i], tokenizer, True, where) if i else ""
        through = render_text(messages[:i + 1], tokenizer, False, where)
        if not (through.startswith(before) and text.startswith(through)):
            raise ChatError(f"{where}: the chat template does not render assistant turn {i} as an extension of the "
                            "turns before it, so gptjax cannot tell which tokens the assistant wrote")
        spans.append((len(before), len(through)))
    tokens, offsets = tokenizer.encode_with_offsets(text)
    mask = [any(b <= start < e for b, e in spans) for start, _ in offsets]
    return Rendered(tokens, mask)


def prompt_tokens(prompt: str, tokenizer, system: str | None = None) -> list[int]:
    """The tokens a model continues to answer a single user `prompt` (with an optional system turn)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render(messages, tokenizer, add_generation_prompt=True).tokens


def response_tokens(response: str, tokenizer) -> list[int]:
    """The tokens of an assistant reply as the template ends it (text + <|eos|>; an imported template's reply
    and end-of-turn tokens, as it renders them after a user turn)."""
    if tokenizer.hf_config is None:
        return tokenizer.encode(response) + [EOS_ID]
    rendered = render([{"role": "user", "content": "?"}, {"role": "assistant", "content": response}], tokenizer)
    return [t for t, m in zip(rendered.tokens, rendered.assistant_mask) if m]
