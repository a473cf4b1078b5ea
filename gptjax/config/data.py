"""The `data` section of the config: its keys and defaults, and the rules they must meet."""

import ml_collections

from gptjax.config.base import ALIGN_MODES, ConfigError, fail
from gptjax.data.sources import DataSourceError, parse_source
from gptjax.data.tokenizer import NUM_SPECIAL_TOKENS

MAX_MARKOV_TABLE = 2**26  # float64 entries of a synthetic chain's transition table (512 MiB)


def defaults() -> ml_collections.ConfigDict:
    """Pretraining data: the source, its split, tokenizer and batches (pipeline.py)."""
    return ml_collections.ConfigDict(
        dict(
            source="synthetic:markov",  # or shakespeare, text:<glob>, tfds:<name>[/<config>]:<split>
            tokenizer="",  # path to a tokenizer.json; "" = train BPE on the train split (model.vocab_size ids)
            # The tokenizer is trained on a sample of this many bytes of train text, spread over the corpus
            # (all of it when smaller): BPE training memory grows with its input, and C4 is 800 GB.
            tokenizer_sample_bytes=100_000_000,
            cache_dir="",  # token cache; "" = $XDG_CACHE_HOME/gptjax/tokens (~/.cache/gptjax/tokens)
            val_fraction=0.05,  # documents held out for validation
            # Seeds the train/validation split (text: which documents are held out; synthetic:markov: the
            # chain and its validation batches), apart from `seed` (init and shuffle order), so the seeds of a
            # sweep (sweep.seeds) are trained on one corpus and evaluated on one validation set.
            split_seed=0,
            keep_markup=True,  # shakespeare: keep the Markdown headings / speaker marks
            text_split="file",  # text:<glob>: one document per "file" or per blank-line "paragraph"
            tfds_text_key="text",
            tfds_data_dir="",  # "" = TFDS's default data directory
            seq_len=64,
            batch_size=16,  # global batch, in sequences
            markov_order=1,  # synthetic:markov only
            markov_alphabet=0,  # symbols used; 0 = model.vocab_size - 7 (as many as a BPE vocab's ordinary ids)
            markov_concentration=0.1,  # Dirichlet alpha of each transition row; lower = lower entropy
            eval_batches=4,
        )
    )


def validate(cfg) -> None:
    m, d = cfg.model, cfg.data
    if d.seq_len <= 0 or d.batch_size <= 0:
        fail("data.seq_len/batch_size", (d.seq_len, d.batch_size), "must be positive")
    if d.split_seed < 0:  # the split hashes non-negative seeds only
        fail("data.split_seed", d.split_seed, "must be a non-negative integer")
    if d.seq_len > m.max_len and cfg.mode not in ALIGN_MODES:  # post-training reads align.*, not data.*
        fail("data.seq_len", d.seq_len, f"must not exceed model.max_len={m.max_len}")
    try:
        source = parse_source(d.source)
    except DataSourceError as e:
        raise ConfigError(str(e)) from None
    if source.is_text:
        if m.vocab_size < 256 + NUM_SPECIAL_TOKENS:
            fail("model.vocab_size", m.vocab_size,
                  f"a byte-level BPE vocabulary needs at least {256 + NUM_SPECIAL_TOKENS} ids (256 bytes + specials)")
        if not 0.0 < d.val_fraction < 1.0:
            fail("data.val_fraction", d.val_fraction, "must be in (0, 1)")
        if d.text_split not in ("file", "paragraph"):
            fail("data.text_split", d.text_split, "must be one of file, paragraph")
        if d.tokenizer_sample_bytes <= 0:
            fail("data.tokenizer_sample_bytes", d.tokenizer_sample_bytes, "must be a positive number of bytes")
    else:
        if d.markov_order < 1:
            fail("data.markov_order", d.markov_order, "must be >= 1")
        if not d.markov_concentration > 0:
            fail("data.markov_concentration", d.markov_concentration, "must be > 0")
        if not 2 <= (d.markov_alphabet or 2) <= m.vocab_size - NUM_SPECIAL_TOKENS:
            fail("data.markov_alphabet", d.markov_alphabet,
                  f"must be 0 (= model.vocab_size - {NUM_SPECIAL_TOKENS}) or in [2, model.vocab_size - "
                  f"{NUM_SPECIAL_TOKENS}={m.vocab_size - NUM_SPECIAL_TOKENS}]")
        alphabet = d.markov_alphabet or m.vocab_size - NUM_SPECIAL_TOKENS
        if alphabet ** (d.markov_order + 1) > MAX_MARKOV_TABLE:
            fail("data.markov_alphabet", alphabet,
                  f"alphabet**(order+1) = {alphabet ** (d.markov_order + 1):.3g} transition entries exceed "
                  f"{MAX_MARKOV_TABLE:.3g}; set a smaller data.markov_alphabet or markov_order")
    if d.eval_batches <= 0:
        fail("data.eval_batches", d.eval_batches, "must be >= 1")
