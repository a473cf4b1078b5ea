"""Builds the train stream and the fixed validation batches a job reads, from `config.data`."""

import dataclasses

import jax
import numpy as np

from gptjax.config import NUM_SPECIAL_TOKENS
from gptjax.data.synthetic import MarkovChain, SyntheticBatches


@dataclasses.dataclass
class DataStreams:
    train: SyntheticBatches  # iterator of (B_local, T+1) int32 with get_state()/set_state()
    val_batches: list  # fixed list of (B_local, T+1) int32 arrays
    entropy_rate: float | None  # nats/token when the source knows it (synthetic), else None


def make_streams(cfg) -> DataStreams:
    """Train/validation streams for `cfg.data.source` (only synthetic:markov in this version)."""
    d = cfg.data
    alphabet = d.markov_alphabet or cfg.model.vocab_size - NUM_SPECIAL_TOKENS
    chain = MarkovChain(alphabet, d.markov_order, d.markov_concentration, cfg.seed)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train = SyntheticBatches(chain, d.batch_size, d.seq_len, cfg.seed, "train", **shard)
    val = SyntheticBatches(chain, d.batch_size, d.seq_len, cfg.seed, "val", **shard)
    val_batches = [np.asarray(val.batch(i)) for i in range(d.eval_batches)]
    return DataStreams(train=train, val_batches=val_batches, entropy_rate=chain.entropy_rate())
