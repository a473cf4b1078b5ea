"""Builds the train stream and the fixed validation batches a job reads, from `config.data`.

Text sources: documents -> train/validation split by document (from `data.split_seed`) -> BPE tokenizer
(trained on a sample of the train split of at most data.tokenizer_sample_bytes, or loaded) -> token
cache (cache.py: tokenized in chunks, split across processes) -> `grain` pipeline of fixed windows of T+1 tokens
(documents packed, each starting with <|bos|>), shuffled by `seed` with a fresh order every epoch, batched,
and sharded by `jax.process_index()`: each process reads a disjoint slice of the windows. The iterator's
state is a small dict stored in every checkpoint, so a resumed run continues the exact order.
Synthetic sources generate token batches directly (synthetic.py): the chain and its validation batches
from `data.split_seed`, the training batches from `seed`.

`data.split_seed` is apart from `seed` so that runs differing only in `seed` (the seeds of a sweep) read
one corpus and are evaluated on one validation set; their losses can be averaged.
"""

import dataclasses
import hashlib
import os

import grain
import jax
import numpy as np

from gptjax.data.cache import (DocumentSplit, cached_tokens, check_shared, default_cache_dir, split_documents,
                               tokenizer_sample)
from gptjax.data.sources import DataSourceError, Documents, open_source, parse_source
from gptjax.data.synthetic import MarkovChain, SyntheticBatches
from gptjax.data.tokenizer import NUM_SPECIAL_TOKENS, Tokenizer, train_tokenizer


@dataclasses.dataclass
class DataStreams:
    train: object  # iterator of (B_local, T+1) int32 batches with get_state()/set_state()
    val_batches: list  # fixed list of (B_local, T+1) int32 arrays
    entropy_rate: float | None = None  # nats/token when the source knows it (synthetic), else None
    tokenizer_hash: str | None = None  # None for synthetic token sources
    tokens_per_byte: float | None = None  # of the validation text: nats/token -> bits/byte
    batches_per_epoch: float | None = None  # train batches in one pass over this process's windows
    fingerprint: str | None = None  # of the corpus (text sources); checkpoints refuse another corpus


class WindowBatches:
    """Shuffled, batched windows of T+1 tokens from a token array, as a checkpointable iterator."""

    def __init__(self, tokens, seq_len: int, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        n_windows = (len(tokens) - 1) // seq_len
        self.windows = grain.MapDataset.range(n_windows)[process_index::process_count]
        if len(self.windows) < batch_size:
            raise DataSourceError(
                f"the training text holds {n_windows} windows of {seq_len + 1} tokens, fewer than one batch "
                f"of {batch_size} per process; use a larger corpus or lower data.seq_len / data.batch_size"
            )
        self.batches_per_epoch = len(self.windows) / batch_size

        def window(i):
            return np.asarray(tokens[i * seq_len: i * seq_len + seq_len + 1], np.int32)

        dataset = self.windows.shuffle(seed=seed).repeat(None).map(window).batch(batch_size, drop_remainder=True)
        self._iterator = iter(dataset.to_iter_dataset())

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iterator)

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)


def validation_batches(tokens, seq_len: int, batch_size: int, max_batches: int, process_index: int = 0,
                       process_count: int = 1) -> list:
    """Up to `max_batches` batches of `batch_size` (per process) validation windows, in order; each
    process takes every process_count-th window, so together they evaluate distinct windows."""
    n_windows = (len(tokens) - 1) // seq_len
    n_batches = min(max_batches, n_windows // (batch_size * process_count))
    if n_batches == 0:
        raise DataSourceError(f"the validation text holds {n_windows} windows of {seq_len + 1} tokens, fewer than "
                              f"one batch of {batch_size * process_count}; raise data.val_fraction or lower "
                              "data.batch_size")
    starts = np.arange(n_batches * batch_size * process_count)[process_index::process_count] * seq_len
    windows = np.stack([np.asarray(tokens[s: s + seq_len + 1], np.int32) for s in starts])
    return list(windows.reshape(n_batches, batch_size, seq_len + 1))


def load_or_train_tokenizer(cfg, workdir: str, docs: Documents, split: DocumentSplit, cache_dir: str) -> Tokenizer:
    """data.tokenizer if set; else one trained on a sample of the train documents (cached), saved as
    WORKDIR/tokenizer.json."""
    d = cfg.data
    saved = os.path.join(workdir, "tokenizer.json")
    if d.tokenizer:
        tokenizer = Tokenizer.load(d.tokenizer)
    elif os.path.isfile(saved):  # a resumed run keeps the tokenizer it started with
        tokenizer = Tokenizer.load(saved)
    else:
        key_parts = (docs.fingerprint, cfg.model.vocab_size, split.key(), d.tokenizer_sample_bytes)
        cached = os.path.join(cache_dir, f"tokenizer-{hashlib.sha256(repr(key_parts).encode()).hexdigest()[:20]}.json")
        if os.path.isfile(cached):
            tokenizer = Tokenizer.load(cached)
        else:  # deterministic: every process of a multi-host job trains the same one
            tokenizer = train_tokenizer(tokenizer_sample(docs, split, d.tokenizer_sample_bytes), cfg.model.vocab_size)
            if jax.process_index() == 0:  # a shared cache: one writer
                os.makedirs(cache_dir, exist_ok=True)
                tokenizer.save(cached)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataSourceError(f"the tokenizer has {tokenizer.vocab_size} ids but model.vocab_size="
                              f"{cfg.model.vocab_size}; raise model.vocab_size to at least {tokenizer.vocab_size}")
    if not os.path.isfile(saved) and jax.process_index() == 0:
        tokenizer.save(saved)  # the workdir keeps the tokenizer the run started with
    return tokenizer


def make_streams(cfg, workdir: str) -> DataStreams:
    """Train/validation streams for `cfg.data.source`."""
    if parse_source(cfg.data.source).kind == "synthetic":
        return synthetic_streams(cfg)
    return text_streams(cfg, workdir, open_source(cfg.data))


def _process_shard() -> dict:
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def markov_chain(cfg) -> MarkovChain:
    """The chain of a synthetic:markov config: its transition table is drawn from data.split_seed."""
    d = cfg.data
    alphabet = d.markov_alphabet or cfg.model.vocab_size - NUM_SPECIAL_TOKENS
    return MarkovChain(alphabet, d.markov_order, d.markov_concentration, d.split_seed)


def synthetic_streams(cfg) -> DataStreams:
    """Markov-chain token batches: the chain and validation batches from split_seed, training from seed."""
    d, shard = cfg.data, _process_shard()
    chain = markov_chain(cfg)
    train = SyntheticBatches(chain, d.batch_size, d.seq_len, cfg.seed, "train", **shard)
    val = SyntheticBatches(chain, d.batch_size, d.seq_len, d.split_seed, "val", **shard)
    val_batches = [np.asarray(val.batch(i)) for i in range(d.eval_batches)]
    return DataStreams(train=train, val_batches=val_batches, entropy_rate=chain.entropy_rate())


def text_streams(cfg, workdir: str, docs: Documents) -> DataStreams:
    """Packed windows of the tokenized `docs`: the train stream shuffled by seed, fixed validation batches."""
    d, shard = cfg.data, _process_shard()
    local_batch = d.batch_size // jax.process_count()
    cache_dir = d.cache_dir or default_cache_dir()
    check_shared(cache_dir)
    # The tokenizer and token caches are keyed by the split (split_seed, val_fraction), not by seed.
    split = split_documents(len(docs), d.val_fraction, d.split_seed, docs.name)
    tokenizer = load_or_train_tokenizer(cfg, workdir, docs, split, cache_dir)
    train_cache = cached_tokens(docs, split, "train", tokenizer, cache_dir, **shard)
    val_cache = cached_tokens(docs, split, "val", tokenizer, cache_dir, **shard)
    train = WindowBatches(train_cache.tokens, d.seq_len, local_batch, cfg.seed, **shard)
    val_batches = validation_batches(val_cache.tokens, d.seq_len, local_batch, d.eval_batches, **shard)
    return DataStreams(train=train, val_batches=val_batches, tokenizer_hash=tokenizer.hash,
                       tokens_per_byte=val_cache.tokens_per_byte, batches_per_epoch=train.batches_per_epoch,
                       fingerprint=docs.fingerprint)
