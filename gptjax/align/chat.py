"""The chat template, one function shared by SFT, reward models, RL and sampling.

A conversation is a list of {"role", "content"} turns, role in system | user | assistant. It renders as

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|eos|> <|user|> ...

System and user turns end with <|end|>; assistant turns end with <|eos|>, so a model sampling its turn
stops at the default stop token. The assistant mask marks what an assistant turn generates: its text
and its <|eos|> (not the <|assistant|> marker, which the template supplies).
"""

import dataclasses

from gptjax.data.tokenizer import ASSISTANT_ID, BOS_ID, END_ID, EOS_ID, SYSTEM_ID, USER_ID

ROLES = ("system", "user", "assistant")
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
    tokens, mask = [BOS_ID], [False]
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) - {"role", "content"} or "role" not in turn or "content" not in turn:
            raise ChatError(f"{where}: turn {i} must be an object with exactly 'role' and 'content', got {turn!r}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ChatError(f"{where}: turn {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatError(f"{where}: turn {i} content must be a string, got {type(content).__name__}")
        body = tokenizer.encode(content) + [EOS_ID if role == "assistant" else END_ID]
        tokens += [ROLE_IDS[role]] + body
        mask += [False] + [role == "assistant"] * len(body)
    if add_generation_prompt:
        tokens.append(ROLE_IDS["assistant"])
        mask.append(False)
    return Rendered(tokens, mask)


def prompt_tokens(prompt: str, tokenizer, system: str | None = None) -> list[int]:
    """The tokens a model continues to answer a single user `prompt` (with an optional system turn)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render(messages, tokenizer, add_generation_prompt=True).tokens


def response_tokens(response: str, tokenizer) -> list[int]:
    """The tokens of an assistant reply as the template ends it (text + <|eos|>)."""
    return tokenizer.encode(response) + [EOS_ID]
