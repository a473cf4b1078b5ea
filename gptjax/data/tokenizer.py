"""Byte-level BPE tokenizer trained with HF `tokenizers`; the only module that imports it.

Every vocabulary gptjax trains reserves SPECIAL_TOKENS (ids 0..6, in that order). Byte-level BPE covers
all of Unicode with 256 base symbols, so `decode(encode(s)) == s` for any string. Text that happens to
contain "<|eos|>" encodes as ordinary bytes unless the caller passes `allow_special=True`.

A Hugging Face tokenizer (an imported model's) is used as it is: its `tokenizer_config.json`, kept beside
tokenizer.json, names its bos / eos / pad tokens and its Jinja chat template, and `generation_config.json`
any further ids that end a turn. Code reads the ids from the Tokenizer (`bos_id`, `eos_id`, `stop_ids`),
never the reserved numbers, wherever an imported tokenizer can reach.
"""

import hashlib
import json
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


HF_CONFIG, HF_GENERATION_CONFIG = "tokenizer_config.json", "generation_config.json"


def token_text(token) -> str | None:
    """A tokenizer_config.json special token: a string, or {"content": string, ...}."""
    return token.get("content") if isinstance(token, dict) else token


class Tokenizer:
    """Encode/decode text <-> token ids; `hash` identifies the vocabulary, merges and special tokens exactly.

    `hf_config`: the tokenizer_config.json of a Hugging Face tokenizer (None: one gptjax trained, with the
    reserved tokens); `stop_ids`: extra ids that end a turn (generation_config.json's eos_token_id)."""

    def __init__(self, hf_tokenizer: HFTokenizer, hf_config: dict | None = None, stop_ids: tuple = ()):
        self._tok, self.hf_config = hf_tokenizer, hf_config
        if hf_config is not None:
            self._init_hf(hf_config, stop_ids)
            return
        self.special_ids = {t: hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID
        self.stop_ids, self.chat_template = (EOS_ID,), None
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

    def _init_hf(self, config: dict, stop_ids: tuple) -> None:
        def token_id(key):
            text = token_text(config.get(key))
            if text is None:
                return None
            found = self._tok.token_to_id(text)
            if found is None:
                raise TokenizerError(f"{HF_CONFIG}: {key}={text!r} is not in the tokenizer's vocabulary")
            return found

        self.eos_id = token_id("eos_token")
        if self.eos_id is None:
            raise TokenizerError(f"{HF_CONFIG} names no eos_token; gptjax needs one to end samples")
        bos = token_id("bos_token")
        # no BOS (Qwen): a sequence starts with its first token; the eos id pads (masked wherever it pads)
        self.bos_id = bos
        pad = token_id("pad_token")
        self.pad_id = pad if pad is not None else self.eos_id
        self.stop_ids = tuple(sorted({self.eos_id, *stop_ids}))
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates (older tokenizer configs): the "default" one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self.special_ids = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        identity = self._tok.to_str() + json.dumps([config, list(self.stop_ids)], sort_keys=True)
        self.hash = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]

    def as_hf(self, chat_template: str) -> "Tokenizer":
        """This tokenizer with a Hugging Face tokenizer_config.json (an export's): itself if it has one, else
        gptjax's reserved tokens as bos / eos / pad and `chat_template` (gptjax's, in Jinja)."""
        if self.hf_config is not None:
            return self
        config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|bos|>", eos_token="<|eos|>",
                      pad_token="<|pad|>", chat_template=chat_template, add_bos_token=False, add_eos_token=False)
        return Tokenizer(self._tok, config)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings become their ids only if `allow_special`."""
        self._tok.encode_special_tokens = not allow_special  # "encode" = split into ordinary bytes
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text`, special-token strings included as their ids, and each token's (start, end)
        character span in `text` (a chat template's rendering: which tokens fall in which turn)."""
        self._tok.encode_special_tokens = False
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        self._tok.encode_special_tokens = not allow_special
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self) -> list[bytes | None]:
        """The bytes each id stands for (index = id), None for the special tokens. Unlike decoding one
        id, this keeps tokens that hold part of a multi-byte UTF-8 character exact (constrained decoding
        needs them)."""
        specials = set(self.special_ids.values())
        byte_level = json.loads(self._tok.to_str()).get("decoder", {}).get("type") == "ByteLevel"
        pieces = [self._tok.id_to_token(i) for i in range(self.vocab_size)]
        return [None if i in specials or piece is None else _piece_bytes(piece, byte_level)
                for i, piece in enumerate(pieces)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str) -> None:
        """Writes tokenizer.json atomically (a crash never leaves a half-written file), and for a Hugging Face
        tokenizer its tokenizer_config.json (chat template included) and stop ids beside it."""
        with atomic_path(path) as tmp:
            self._tok.save(tmp)
        if self.hf_config is None:
            return
        directory = os.path.dirname(path)
        extra = {HF_CONFIG: self.hf_config, HF_GENERATION_CONFIG: {"eos_token_id": list(self.stop_ids)}}
        for name, obj in extra.items():
            with atomic_path(os.path.join(directory, name)) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """tokenizer.json at `path`; a Hugging Face one when tokenizer_config.json is beside it."""
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file {path} does not exist; train one (leave data.tokenizer empty) "
                                 "or point data.tokenizer at a tokenizer.json")
        try:
            hf_tokenizer = HFTokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise TokenizerError(f"{path} is not a valid tokenizer.json ({e})") from e
        directory = os.path.dirname(path)
        try:
            config, stop_ids = _read_hf_configs(directory)
            return cls(hf_tokenizer, config, stop_ids)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e


def _read_hf_configs(directory: str) -> tuple[dict | None, tuple]:
    """(tokenizer_config.json with its chat template, generation_config.json's eos ids) of a Hugging Face
    tokenizer directory; (None, ()) where there is no tokenizer_config.json (a gptjax tokenizer)."""
    def read(name):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except ValueError as e:
            raise TokenizerError(f"{path} is not valid JSON ({e})") from e

    config, generation = read(HF_CONFIG), read(HF_GENERATION_CONFIG) or {}
    if config is None:
        return None, ()
    if not isinstance(config, dict) or not isinstance(generation, dict):
        raise TokenizerError(f"{directory}: {HF_CONFIG} and {HF_GENERATION_CONFIG} must be JSON objects")
    template_file = os.path.join(directory, "chat_template.jinja")  # where newer transformers save it
    if not config.get("chat_template") and os.path.isfile(template_file):
        with open(template_file, encoding="utf-8") as f:
            config = {**config, "chat_template": f.read()}
    eos = generation.get("eos_token_id")
    stop_ids = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
    return config, stop_ids


def _piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The bytes a vocabulary entry stands for: byte-level BPE's byte alphabet (GPT-2, Llama 3, Qwen), or
    SentencePiece's "▁" for a space and "<0xNN>" byte-fallback pieces (Llama 2, Mistral)."""
    if byte_level:
        return bytes(BYTE_OF_CHAR[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


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
