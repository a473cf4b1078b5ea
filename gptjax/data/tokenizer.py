"""Byte-level BPE tokenizer trained with HF `tokenizers`; the only module that imports it.

Every vocabulary reserves SPECIAL_TOKENS (ids 0..6, in that order). Byte-level BPE covers all of
Unicode with 256 base symbols, so `decode(encode(s)) == s` for any string. Text that happens to
contain "<|eos|>" encodes as ordinary bytes unless the caller passes `allow_special=True`.
"""

import hashlib
import os
from typing import Iterable

import numpy as np

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptjax.atomic import atomic_path

# Reserved ids 0..6 of every vocabulary, in this order: the document / stream marks, then the chat
# template's (gptjax/align/chat.py). Code refers to them by these names, never by number.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
BOS_ID, EOS_ID, PAD_ID, USER_ID, ASSISTANT_ID, SYSTEM_ID, END_ID = range(NUM_SPECIAL_TOKENS)
MIN_VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS  # every byte, plus the reserved tokens


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of the ByteLevel pre-tokenizer (GPT-2's table): printable Latin-1 bytes stand for
    themselves, the other 68 bytes, in increasing order, for chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


BYTE_OF_CHAR = _byte_level_alphabet()


class TokenizerError(ValueError):
    """A tokenizer file or setting that cannot be used; the message names it and the fix."""


class Tokenizer:
    """Encode/decode text <-> token ids; `hash` identifies the vocabulary and merges exactly."""

    def __init__(self, hf_tokenizer: HFTokenizer):
        self._tok = hf_tokenizer
        self.special_ids = {t: hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        if None in self.special_ids.values():
            missing = [t for t, i in self.special_ids.items() if i is None]
            raise TokenizerError(f"tokenizer lacks the reserved tokens {missing}; retrain it with gptjax")
        # The chat template, generate and RL use the ids BOS_ID..END_ID: a tokenizer holding the tokens at
        # other ids would silently stop on, and template with, the wrong tokens.
        moved = [f"{t} at {i}" for n, (t, i) in enumerate(self.special_ids.items()) if i != n]
        if moved:
            raise TokenizerError(f"tokenizer holds reserved tokens at other ids ({', '.join(moved)}); gptjax needs "
                                 f"{', '.join(SPECIAL_TOKENS)} at ids 0..{NUM_SPECIAL_TOKENS - 1} in that order; "
                                 "retrain it with gptjax")
        self.hash = hashlib.sha256(hf_tokenizer.to_str().encode("utf-8")).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def bos_id(self) -> int:
        return self.special_ids["<|bos|>"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["<|eos|>"]

    @property
    def pad_id(self) -> int:
        return self.special_ids["<|pad|>"]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings become their ids only if `allow_special`."""
        self._tok.encode_special_tokens = not allow_special  # "encode" = split into ordinary bytes
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        self._tok.encode_special_tokens = not allow_special
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self) -> list[bytes | None]:
        """The bytes each id stands for (index = id), None for the special tokens. Unlike decoding one
        id, this keeps tokens that hold part of a multi-byte UTF-8 character exact (constrained decoding
        needs them)."""
        specials = set(self.special_ids.values())
        return [None if i in specials else bytes(BYTE_OF_CHAR[c] for c in self._tok.id_to_token(i))
                for i in range(self.vocab_size)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str) -> None:
        """Writes tokenizer.json atomically (a crash never leaves a half-written file)."""
        with atomic_path(path) as tmp:
            self._tok.save(tmp)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file {path} does not exist; train one (leave data.tokenizer empty) "
                                 "or point data.tokenizer at a tokenizer.json")
        try:
            hf_tokenizer = HFTokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise TokenizerError(f"{path} is not a valid tokenizer.json ({e})") from e
        try:
            return cls(hf_tokenizer)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Trains byte-level BPE on `texts` up to `vocab_size` ids (fewer if the corpus runs out of merges)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab size {vocab_size} is below {MIN_VOCAB_SIZE} "
                             f"(256 bytes + {NUM_SPECIAL_TOKENS} special tokens); raise model.vocab_size")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def pad_rows(rows, length: int, pad_id: int = PAD_ID, dtype=np.int32) -> np.ndarray:
    """rows (token lists, masks) right-padded with `pad_id` to `length` columns: the one right-pad helper."""
    out = np.full((len(rows), length), pad_id, dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out
