"""The document split, and a corpus tokenized once into memory-mapped token files, in bounded memory.

Split. The validation documents are the round(val_fraction * n) documents whose hash of (split_seed,
index) is smallest: an exact count, chosen in one chunked pass that keeps only the current smallest
hashes. A split is stored as its sorted validation indices (O(n_val) memory); the train documents are
their complement, enumerated chunk by chunk, so a corpus of 10^8 documents (C4) never holds an index
list of all of them.

Token cache. An entry is a directory CACHE_DIR/<split>-<key>/ of parts, part-<c>.bin holding the tokens
of the split's documents c*chunk_docs .. (c+1)*chunk_docs-1 (uint16 when the vocabulary has at most
65536 ids, else uint32; each document is <|bos|> then its tokens) with part-<c>.json (its token, byte
and document counts), and meta.json, written last. The key is (source fingerprint, split, split seed,
val_fraction, tokenizer hash), never a hash of index lists. Every file is written under a temporary
name and renamed into place, so a crash leaves finished parts (reused by the rerun) and no meta.json:
an entry is complete exactly when meta.json exists. Process p of P tokenizes the parts c with
c % P == p, then waits for the others' parts (CACHE_DIR must then be on a filesystem all hosts share).
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from gptjax.atomic import atomic_path
from gptjax.data.sources import DataSourceError, Documents

FORMAT_VERSION = 2  # 2: hash split, entries of parts, keyed by split parameters
SPLIT_RULE = "smallest-hash-v1"  # in data identities: a checkpoint's train stream depends on it
CHUNK_DOCS = 16384  # documents per part: tokenized together, one file each
SPLIT_CHUNK = 1 << 20  # documents hashed at a time while choosing the split
WAIT_SECONDS = 6 * 3600  # how long a process waits for the other processes' parts


def _mix64(x_M: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): a fast, well-spread hash of integers."""
    x_M = (x_M ^ (x_M >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x_M = (x_M ^ (x_M >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x_M ^ (x_M >> np.uint64(31))


def document_hashes(seed: int, start: int, stop: int) -> np.ndarray:
    """uint64 hashes of document indices start..stop-1 under `seed` (data.split_seed)."""
    index_M = np.arange(start, stop, dtype=np.uint64)
    return _mix64(index_M + _mix64(np.asarray([seed], np.uint64))[0])


@dataclasses.dataclass(frozen=True)
class DocumentSplit:
    """A train/validation split of `n_docs` documents, kept as the sorted validation indices."""

    n_docs: int
    val_fraction: float
    seed: int
    val_indices: np.ndarray  # sorted int64

    def size(self, split: str) -> int:
        n_val = len(self.val_indices)
        return n_val if split == "val" else self.n_docs - n_val

    def indices(self, split: str, start: int, stop: int) -> np.ndarray:
        """Corpus indices (ascending) of the split's documents of rank start..stop-1."""
        if split == "val":
            return self.val_indices[start:stop]
        return self.train_indices_of(np.arange(start, min(stop, self.size("train")), dtype=np.int64))

    def train_indices_of(self, rank_R: np.ndarray) -> np.ndarray:
        """Corpus indices of the train documents of ranks rank_R: rank r is corpus index r + (validation
        documents before it), a searchsorted on val_j - j (the train documents before val_j)."""
        return rank_R + np.searchsorted(self._train_before_val, rank_R, side="right")

    @functools.cached_property
    def _train_before_val(self) -> np.ndarray:
        return self.val_indices - np.arange(len(self.val_indices))

    def key(self) -> list:
        return [SPLIT_RULE, self.n_docs, self.val_fraction, self.seed]


def split_documents(n_docs: int, val_fraction: float, seed: int, name: str) -> DocumentSplit:
    """The deterministic split by document (see the module docstring). `seed` is `data.split_seed`, never
    the training seed: every seed of a sweep must hold out the same documents."""
    if n_docs < 2:
        raise DataSourceError(f"{name} has {n_docs} document(s); a train/validation split needs at least 2 "
                              "(add files, or use data.text_split='paragraph')")
    n_val = min(max(1, round(val_fraction * n_docs)), n_docs - 1)
    best_hash, best_index = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    for start in range(0, n_docs, SPLIT_CHUNK):
        stop = min(start + SPLIT_CHUNK, n_docs)
        hash_M = np.concatenate([best_hash, document_hashes(seed, start, stop)])
        index_M = np.concatenate([best_index, np.arange(start, stop, dtype=np.int64)])
        keep = np.argpartition(hash_M, n_val - 1)[:n_val] if len(hash_M) > n_val else slice(None)
        best_hash, best_index = hash_M[keep], index_M[keep]
    return DocumentSplit(n_docs, val_fraction, seed, np.sort(best_index))


def tokenizer_sample(docs: Documents, split: DocumentSplit, max_bytes: int):
    """Train documents for the tokenizer, about `max_bytes` of UTF-8 text (all of them if the split is
    smaller), spread over the whole corpus: ranks visited with a golden-ratio stride coprime to the
    count, so the sample is not just the first files and needs no permutation of every index."""
    n_train = split.size("train")
    stride = max(1, round(n_train * 0.6180339887))
    while math.gcd(stride, n_train) != 1:
        stride += 1
    total = 0
    for start in range(0, n_train, 1024):
        k_R = np.arange(start, min(start + 1024, n_train), dtype=np.int64)
        for index in split.train_indices_of(k_R * stride % n_train):
            text = docs[int(index)]
            yield text
            total += len(text.encode("utf-8"))
            if total >= max_bytes:
                return


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "gptjax", "tokens")


def check_shared(cache_dir: str) -> None:
    """In a multi-process job, fails at start on every process unless `cache_dir` is one directory they all
    see (each process writes only its part of the token cache and waits for the others'): process 0 leaves
    a token file there, every process looks for it, and they compare answers."""
    import jax  # deferred: the cache itself needs no backend
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(2**31))))
    marker = os.path.join(cache_dir, f".shared-check-{token}")
    if jax.process_index() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        with open(marker, "w"):
            pass
    multihost_utils.sync_global_devices("gptjax token cache: marker written")
    seen = multihost_utils.process_allgather(np.array([os.path.isfile(marker)]))
    multihost_utils.sync_global_devices("gptjax token cache: marker read")
    if jax.process_index() == 0:
        os.remove(marker)
    missing = np.flatnonzero(~np.ravel(seen)).tolist()
    if missing:
        raise DataSourceError(f"data.cache_dir={cache_dir} is not shared: process(es) {missing} do not see what "
                              "process 0 writes there; set data.cache_dir to a directory every host mounts")


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ConcatenatedTokens:
    """Several 1-D token memmaps read as one array: `len`, integer and contiguous-slice indexing."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("ConcatenatedTokens supports contiguous slices only")
            first = int(np.searchsorted(self.offsets, start, side="right")) - 1
            pieces = []
            while start < stop:
                part, base = self.parts[first], self.offsets[first]
                end = min(stop, int(self.offsets[first + 1]))
                pieces.append(part[start - base:end - base])
                start, first = end, first + 1
            return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
        index = int(index) + (len(self) if index < 0 else 0)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - self.offsets[part]]

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(p) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)


@dataclasses.dataclass
class TokenCache:
    tokens: object  # 1-D token ids: a memmap, or ConcatenatedTokens of several
    n_bytes: int  # UTF-8 bytes of the documents' text
    n_docs: int
    path: str

    @property
    def tokens_per_byte(self) -> float:
        """Text tokens (BOS excluded) per UTF-8 byte: converts nats/token into bits/byte."""
        return (len(self.tokens) - self.n_docs) / max(self.n_bytes, 1)


def _part_path(path: str, c: int, ext: str) -> str:
    return os.path.join(path, f"part-{c:05d}.{ext}")


def _load(path: str) -> TokenCache:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    parts = [np.memmap(_part_path(path, c, "bin"), dtype=meta["dtype"], mode="r") for c in range(meta["n_parts"])]
    tokens = parts[0] if len(parts) == 1 else ConcatenatedTokens(parts)
    return TokenCache(tokens, meta["n_bytes"], meta["n_docs"], path)


def _write_part(docs: Documents, indices, tokenizer, path: str, c: int, dtype) -> None:
    """Tokenizes docs[indices] into part c: the .bin, then the .json that marks it finished."""
    texts = [docs[int(i)] for i in indices]
    with atomic_path(_part_path(path, c, "bin")) as tmp:
        ids = tokenizer.encode_batch(texts)
        np.concatenate([np.asarray([tokenizer.bos_id, *doc], dtype) for doc in ids]).tofile(tmp)
    counts = dict(n_tokens=sum(len(doc) + 1 for doc in ids), n_docs=len(texts),
                  n_bytes=sum(len(t.encode("utf-8")) for t in texts))
    with atomic_path(_part_path(path, c, "json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(counts, f)


def _wait_for_parts(path: str, n_parts: int, wait_seconds: float) -> list[dict]:
    """The counts of every part, once all exist (other processes write theirs)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        missing = [c for c in range(n_parts) if not os.path.isfile(_part_path(path, c, "json"))]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise DataSourceError(
                f"waited {wait_seconds:.0f} s for {len(missing)} token-cache part(s) of {path} (e.g. part {missing[0]}) "
                "that other processes were to write; data.cache_dir must be on a filesystem every host shares, "
                "or build the cache first with one process")
        time.sleep(1.0)
    counts = []
    for c in range(n_parts):
        with open(_part_path(path, c, "json"), encoding="utf-8") as f:
            counts.append(json.load(f))
    return counts


def cached_tokens(docs: Documents, split: DocumentSplit, which: str, tokenizer, cache_dir: str, *,
                  chunk_docs: int = CHUNK_DOCS, process_index: int = 0, process_count: int = 1,
                  wait_seconds: float = WAIT_SECONDS) -> TokenCache:
    """The tokens of the `which` ("train" | "val") documents of `split`, from the cache or tokenized now
    (this process's share of the parts; see the module docstring), with a progress bar on a terminal."""
    key_parts = [FORMAT_VERSION, docs.fingerprint, which, tokenizer.hash, split.key(), chunk_docs]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"{which}-{key}")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return _load(path)

    os.makedirs(path, exist_ok=True)
    n_docs = split.size(which)
    n_parts = -(-n_docs // chunk_docs)
    mine = [c for c in range(process_index, n_parts, process_count)
            if not os.path.isfile(_part_path(path, c, "json"))]  # finished parts of a crashed run are kept
    dtype = token_dtype(tokenizer.vocab_size)
    from tqdm import tqdm

    with tqdm(total=len(mine), desc=f"tokenizing {docs.name} ({which})", unit="part",
              disable=not sys.stderr.isatty()) as progress:
        for c in mine:
            _write_part(docs, split.indices(which, c * chunk_docs, (c + 1) * chunk_docs), tokenizer, path, c, dtype)
            progress.update(1)
    counts = _wait_for_parts(path, n_parts, wait_seconds)
    meta = dict(source=docs.name, split=which, tokenizer_hash=tokenizer.hash, dtype=np.dtype(dtype).name,
                n_parts=n_parts, n_tokens=sum(c["n_tokens"] for c in counts),
                n_bytes=sum(c["n_bytes"] for c in counts), n_docs=sum(c["n_docs"] for c in counts))
    with atomic_path(os.path.join(path, "meta.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f)  # last: the entry is complete from here on (every process writes the same)
    return _load(path)
