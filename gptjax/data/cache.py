"""Tokenize a corpus once into a memory-mapped token file per split, written atomically.

A cache entry is a directory CACHE_DIR/<key>/ with tokens.bin (uint16 when the vocabulary has at most
65536 ids, else uint32; each document is <|bos|> followed by its tokens) and meta.json (token, byte
and document counts). The key hashes the source, the document split and the tokenizer hash. Entries
are built in a temporary directory and renamed into place, so a crash mid-write never leaves an entry
that is later read as complete.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid

import numpy as np

from gptjax.data.sources import DataSourceError, Documents

FORMAT_VERSION = 1


@dataclasses.dataclass
class TokenCache:
    tokens: np.ndarray  # 1-D memmap of token ids
    n_bytes: int  # UTF-8 bytes of the documents' text
    n_docs: int
    path: str

    @property
    def tokens_per_byte(self) -> float:
        """Text tokens (BOS excluded) per UTF-8 byte: converts nats/token into bits/byte."""
        return (len(self.tokens) - self.n_docs) / max(self.n_bytes, 1)


def split_documents(n_docs: int, val_fraction: float, seed: int, name: str):
    """Deterministic train/validation split by document: (train indices, val indices), sorted. `seed` is
    `data.split_seed`, never the training seed: every seed of a sweep must hold out the same documents."""
    if n_docs < 2:
        raise DataSourceError(f"{name} has {n_docs} document(s); a train/validation split needs at least 2 "
                              "(add files, or use data.text_split='paragraph')")
    n_val = min(max(1, round(val_fraction * n_docs)), n_docs - 1)
    order = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "gptjax", "tokens")


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _load(path: str) -> TokenCache:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r")
    return TokenCache(tokens, meta["n_bytes"], meta["n_docs"], path)


def cached_tokens(docs: Documents, indices, tokenizer, cache_dir: str, split: str,
                  batch_docs: int = 64) -> TokenCache:
    """The tokens of docs[indices], from the cache or tokenized now (with a progress bar on a terminal)."""
    key_parts = [FORMAT_VERSION, docs.fingerprint, split, tokenizer.hash,
                 hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"{split}-{key}")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return _load(path)

    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    dtype = token_dtype(tokenizer.vocab_size)
    n_tokens = n_bytes = 0
    from tqdm import tqdm

    progress = tqdm(total=len(indices), desc=f"tokenizing {docs.name} ({split})", unit="doc",
                    disable=not sys.stderr.isatty())
    try:
        with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
            for start in range(0, len(indices), batch_docs):
                texts = [docs[int(i)] for i in indices[start:start + batch_docs]]
                for ids in tokenizer.encode_batch(texts):
                    np.asarray([tokenizer.bos_id, *ids], dtype).tofile(f)
                    n_tokens += len(ids) + 1
                n_bytes += sum(len(t.encode("utf-8")) for t in texts)
                progress.update(len(texts))
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(dict(source=docs.name, split=split, tokenizer_hash=tokenizer.hash, dtype=np.dtype(dtype).name,
                           n_tokens=n_tokens, n_bytes=n_bytes, n_docs=len(indices)), f)
        try:
            os.rename(tmp, path)  # atomic: the entry appears complete or not at all
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
    return _load(path)
