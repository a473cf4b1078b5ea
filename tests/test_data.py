"""Sources, document split, token cache and the grain pipeline, all offline on data the tests build."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from gptjax.data import cache as cache_lib
from gptjax.data.pipeline import WindowBatches, make_streams, validation_batches
from gptjax.data.sources import DataSourceError, open_source, shakespeare, strip_markdown, text_files, tfds_documents
from gptjax.data.tokenizer import Tokenizer, train_tokenizer

# Its module-scoped fixtures are built once: under pytest-xdist (--dist loadgroup) the module stays on one worker.
pytestmark = pytest.mark.xdist_group("test_data")


class GptjaxTestCorpus(tfds.core.GeneratorBasedBuilder):
    """A tiny TFDS text dataset built offline from strings in this file."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            yield i, {"body": f"document {i}: 안녕 world"}


def write_corpus(directory, n_files=6, words=400):
    rng = np.random.default_rng(0)
    vocab = ["the", "king", "queen", "speaks", "to", "his", "her", "court", "and", "night", "falls", "안녕", "😀"]
    os.makedirs(directory, exist_ok=True)
    for i in range(n_files):
        with open(os.path.join(directory, f"doc{i}.txt"), "w", encoding="utf-8") as f:
            f.write(" ".join(rng.choice(vocab, words)) + "\n\nsecond block of file %d\n" % i)
    return os.path.join(directory, "*.txt")


def test_shakespeare_is_embedded_and_markup_can_be_stripped():
    plays = shakespeare(keep_markup=True)
    assert len(plays) >= 30
    hamlet = next(plays[i] for i in range(len(plays)) if plays[i].startswith("# Hamlet"))
    assert "**HAMLET**" in hamlet and "To be, or not to be" in hamlet
    stripped = strip_markdown(hamlet)
    assert "**" not in stripped and not stripped.startswith("#") and "To be, or not to be" in stripped


def test_text_files_per_file_and_per_paragraph(tmp_path):
    pattern = write_corpus(tmp_path / "corpus", n_files=3)
    assert len(text_files(pattern, "file")) == 3
    blocks = text_files(pattern, "paragraph")
    assert len(blocks) == 6 and blocks[1] == "second block of file 0"


def test_bad_text_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataSourceError, match="matches no files"):
        text_files(str(tmp_path / "nothing" / "*.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataSourceError, match="latin1.txt is not UTF-8"):
        text_files(str(tmp_path / "latin1.txt"))[0]
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    cfg = tiny_config().data
    cfg.update(source=f"text:{tmp_path / 'blank.txt'}", text_split="paragraph")
    with pytest.raises(DataSourceError, match="holds no documents"):
        open_source(cfg)
    with pytest.raises(DataSourceError, match="at least 2"):
        cache_lib.split_documents(1, 0.1, 0, "text:one.txt")


def test_tfds_source_reads_a_locally_built_dataset(tmp_path):
    data_dir = str(tmp_path / "tfds")
    GptjaxTestCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare()
    docs = tfds_documents("gptjax_test_corpus:train", "body", data_dir)
    assert len(docs) == 6 and sorted(docs[i] for i in range(6))[0] == "document 0: 안녕 world"
    with pytest.raises(DataSourceError, match="no feature 'text'"):
        tfds_documents("gptjax_test_corpus:train", "text", data_dir)[0]
    with pytest.raises(DataSourceError, match="tfds:no_such_dataset:train could not be opened"):
        tfds_documents("no_such_dataset:train", "text", data_dir)


def split_lists(split, chunk):
    """(train, val) corpus indices of `split`, enumerated `chunk` ranks at a time as the cache does."""
    return [np.concatenate([split.indices(which, s, s + chunk) for s in range(0, split.size(which), chunk)])
            for which in ("train", "val")]


def test_split_is_by_document_exact_and_deterministic():
    split = cache_lib.split_documents(40, 0.1, seed=3, name="x")
    train, val = split_lists(split, chunk=7)
    assert len(val) == 4 and not set(train) & set(val) and sorted([*train, *val]) == list(range(40))
    np.testing.assert_array_equal(train, np.sort(train))
    np.testing.assert_array_equal(val, cache_lib.split_documents(40, 0.1, seed=3, name="x").val_indices)
    assert not np.array_equal(val, cache_lib.split_documents(40, 0.1, seed=4, name="x").val_indices)
    # The held-out documents are the ones with the smallest hashes, wherever the chunk boundaries fall.
    hashes = cache_lib.document_hashes(3, 0, 40)
    np.testing.assert_array_equal(val, np.sort(np.argsort(hashes)[:4]))
    monkey_chunk = cache_lib.SPLIT_CHUNK
    try:
        cache_lib.SPLIT_CHUNK = 3
        np.testing.assert_array_equal(cache_lib.split_documents(40, 0.1, seed=3, name="x").val_indices, val)
    finally:
        cache_lib.SPLIT_CHUNK = monkey_chunk


def test_split_of_a_large_corpus_enumerates_train_documents_by_rank():
    split = cache_lib.split_documents(3_000_000, 0.001, seed=0, name="big")
    assert split.size("val") == 3000 and split.size("train") == 2_997_000
    ranks = np.array([0, 1, 123_456, 2_996_999])
    train = split.train_indices_of(ranks)
    assert not np.isin(train, split.val_indices).any()
    # rank r is the r-th corpus index that is not held out
    for r, index in zip(ranks, train):
        assert index - np.searchsorted(split.val_indices, index) == r


def _streams(tmp_path, source, seed, split_seed, name):
    cfg = tiny_config(vocab_size=300, max_len=16) if source != "synthetic:markov" else tiny_config()
    cfg.seed = seed
    cfg.data.update(source=source, val_fraction=0.3, seq_len=16, cache_dir=str(tmp_path / "cache"),
                    split_seed=split_seed)
    workdir = tmp_path / name
    workdir.mkdir()
    return make_streams(cfg, str(workdir))


@pytest.mark.parametrize("kind", ["text", "synthetic"])
def test_the_split_follows_split_seed_and_not_the_training_seed(tmp_path, kind):
    # The seeds of one sweep model must be evaluated on one validation set (and, for text, share the
    # tokenizer trained on one train split); only their init and shuffle order may differ.
    source = f"text:{write_corpus(tmp_path / 'corpus', n_files=10)}" if kind == "text" else "synthetic:markov"
    base = _streams(tmp_path, source, seed=0, split_seed=0, name="base")
    other_seed = _streams(tmp_path, source, seed=1, split_seed=0, name="other_seed")
    other_split = _streams(tmp_path, source, seed=0, split_seed=1, name="other_split")
    np.testing.assert_array_equal(np.stack(base.val_batches), np.stack(other_seed.val_batches))
    assert (base.tokenizer_hash, base.entropy_rate) == (other_seed.tokenizer_hash, other_seed.entropy_rate)
    assert not np.array_equal(next(base.train), next(other_seed.train))  # the training order follows `seed`
    assert not np.array_equal(np.stack(base.val_batches), np.stack(other_split.val_batches))


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    pattern = write_corpus(tmp_path_factory.mktemp("corpus"))
    docs = text_files(pattern)
    return docs, train_tokenizer((docs[i] for i in range(len(docs))), 300)


def test_the_tokenizer_sample_is_capped_spread_over_the_corpus_and_train_only():
    from gptjax.data.sources import Documents

    docs = Documents("numbers", lambda i: f"{i:07d}", 100_000, "numbers")  # 7 bytes each
    split = cache_lib.split_documents(len(docs), 0.1, 0, docs.name)
    sample = [int(t) for t in cache_lib.tokenizer_sample(docs, split, max_bytes=7_000)]
    assert len(sample) == 1000 and len(set(sample)) == 1000
    assert not np.isin(sample, split.val_indices).any()
    counts, _ = np.histogram(sample, bins=10, range=(0, 100_000))
    assert counts.min() >= 80  # every tenth of the corpus is represented, not only its first files
    small = cache_lib.split_documents(6, 0.34, 0, "six")  # below the cap: every train document once
    assert sorted(cache_lib.tokenizer_sample(Documents("six", str, 6, "six"), small, 10**9)) == \
        sorted(str(i) for i in small.indices("train", 0, 6))


def expected_tokens(docs, indices, tokenizer):
    """<|bos|> + tokens of each document of `indices`, concatenated: what a cache entry must hold."""
    return np.concatenate([[tokenizer.bos_id, *tokenizer.encode(docs[int(i)])] for i in indices])


def test_token_cache_holds_the_split_documents_tokens_and_is_reused(corpus_and_tokenizer, tmp_path):
    docs, tokenizer = corpus_and_tokenizer
    split = cache_lib.split_documents(len(docs), 0.34, 0, docs.name)  # 2 of the 6 held out
    for which in ("train", "val"):
        entry = cache_lib.cached_tokens(docs, split, which, tokenizer, str(tmp_path))
        indices = split.indices(which, 0, len(docs))
        assert entry.tokens.dtype == np.uint16 and entry.n_docs == len(indices)
        np.testing.assert_array_equal(entry.tokens, expected_tokens(docs, indices, tokenizer))
        assert entry.n_bytes == sum(len(docs[int(i)].encode("utf-8")) for i in indices)
    original_encode = tokenizer.encode_batch
    tokenizer.encode_batch = None  # a cache hit must not tokenize again
    try:
        again = cache_lib.cached_tokens(docs, split, "val", tokenizer, str(tmp_path))
    finally:
        tokenizer.encode_batch = original_encode
    np.testing.assert_array_equal(again.tokens, entry.tokens)
    assert cache_lib.token_dtype(70_000) == np.uint32


def test_an_entry_of_many_parts_reads_as_one_array(corpus_and_tokenizer, tmp_path):
    docs, tokenizer = corpus_and_tokenizer
    split = cache_lib.split_documents(len(docs), 0.2, 0, docs.name)
    whole = cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path / "one"))
    parts = cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path / "many"), chunk_docs=2)
    assert isinstance(parts.tokens, cache_lib.ConcatenatedTokens) and len(parts.tokens.parts) == 3
    np.testing.assert_array_equal(np.asarray(parts.tokens), np.asarray(whole.tokens))
    n = len(whole.tokens)
    for start, stop in [(0, n), (1, n - 1), (n // 3 - 2, n // 3 + 2), (n - 5, n), (7, 7)]:
        np.testing.assert_array_equal(parts.tokens[start:stop], whole.tokens[start:stop])
    assert parts.tokens[-1] == whole.tokens[-1] and parts.tokens[n // 2] == whole.tokens[n // 2]
    assert (parts.n_bytes, parts.n_docs) == (whole.n_bytes, whole.n_docs)


def test_processes_tokenize_disjoint_parts_of_one_shared_entry(corpus_and_tokenizer, tmp_path, monkeypatch):
    docs, tokenizer = corpus_and_tokenizer
    split = cache_lib.split_documents(len(docs), 0.2, 0, docs.name)
    encoded = []
    original = type(tokenizer).encode_batch
    monkeypatch.setattr(tokenizer, "encode_batch", lambda texts, allow_special=False:
                        encoded.append(len(texts)) or original(tokenizer, texts, allow_special))
    common = dict(chunk_docs=2, process_count=2)
    with pytest.raises(DataSourceError, match="shares"):  # process 1 alone: process 0's parts never come
        cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path), process_index=1, wait_seconds=0, **common)
    assert encoded == [2]  # part 1 of parts 0, 1, 2
    first = cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path), process_index=0, **common)
    assert encoded == [2, 2, 1]  # parts 0 and 2; part 1 was process 1's
    np.testing.assert_array_equal(np.asarray(first.tokens),
                                  expected_tokens(docs, split.indices("train", 0, 5), tokenizer))
    second = cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path), process_index=1, **common)
    assert encoded == [2, 2, 1] and second.path == first.path


def test_editing_a_file_invalidates_the_cache(tmp_path):
    pattern = write_corpus(tmp_path / "corpus", n_files=2)
    before = text_files(pattern)
    tokenizer = train_tokenizer([before[0]], 270)
    split = cache_lib.split_documents(2, 0.5, 0, before.name)
    first = cache_lib.cached_tokens(before, split, "train", tokenizer, str(tmp_path / "cache"))
    with open(tmp_path / "corpus" / f"doc{split.indices('train', 0, 1)[0]}.txt", "a", encoding="utf-8") as f:
        f.write("an added line\n")
    second = cache_lib.cached_tokens(text_files(pattern), split, "train", tokenizer, str(tmp_path / "cache"))
    assert second.path != first.path and len(second.tokens) > len(first.tokens)


def test_a_crash_mid_write_leaves_no_entry_and_the_rerun_keeps_finished_parts(corpus_and_tokenizer, tmp_path,
                                                                               monkeypatch):
    docs, tokenizer = corpus_and_tokenizer
    split = cache_lib.split_documents(len(docs), 0.2, 0, docs.name)  # 5 train documents: parts of 2, 2, 1
    calls, crashed = [], []

    def crash_on_second_part(texts, allow_special=False):
        calls.append(len(texts))
        if len(calls) == 2 and not crashed:
            crashed.append(True)
            raise KeyboardInterrupt("simulated crash")
        return type(tokenizer).encode_batch(tokenizer, texts, allow_special)

    monkeypatch.setattr(tokenizer, "encode_batch", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path), chunk_docs=2)
    (entry_dir,) = os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path / entry_dir)) == ["part-00000.bin", "part-00000.json"]  # no meta.json
    calls.clear()
    entry = cache_lib.cached_tokens(docs, split, "train", tokenizer, str(tmp_path), chunk_docs=2)
    assert calls == [2, 1]  # part 0 was reused
    np.testing.assert_array_equal(np.asarray(entry.tokens), expected_tokens(docs, split.indices("train", 0, 5),
                                                                            tokenizer))


def test_window_batches_resume_exactly_and_reshuffle_each_epoch():
    tokens = np.arange(8 * 40 + 1, dtype=np.uint16)  # 40 windows of 8+1 tokens
    stream = WindowBatches(tokens, seq_len=8, batch_size=4, seed=0)
    first = [next(stream) for _ in range(3)]
    assert first[0].shape == (4, 9) and first[0].dtype == np.int32
    np.testing.assert_array_equal(first[0][:, 1:], first[0][:, :-1] + 1)  # contiguous windows
    state = stream.get_state()
    expected = [next(stream) for _ in range(20)]
    resumed = WindowBatches(tokens, seq_len=8, batch_size=4, seed=0)
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(20)]):
        np.testing.assert_array_equal(a, b)
    epoch1 = np.concatenate(first + expected[:7])[:, 0]  # 10 batches = one epoch
    epoch2 = np.concatenate(expected[7:17])[:, 0]
    assert sorted(epoch1) == sorted(epoch2) == list(range(0, 320, 8)) and list(epoch1) != list(epoch2)


def test_processes_read_disjoint_windows_that_cover_the_epoch():
    tokens = np.arange(8 * 32 + 1, dtype=np.uint16)
    starts = []
    for process in range(2):
        stream = WindowBatches(tokens, seq_len=8, batch_size=4, seed=0, process_index=process, process_count=2)
        assert stream.batches_per_epoch == 4
        starts.append({int(w[0]) for _ in range(4) for w in next(stream)})
    assert not starts[0] & starts[1]
    assert starts[0] | starts[1] == set(range(0, 256, 8))


def test_validation_windows_are_distinct_across_processes():
    tokens = np.arange(8 * 20 + 1, dtype=np.uint16)
    per_process = [validation_batches(tokens, 8, batch_size=2, max_batches=2, process_index=p, process_count=2)
                   for p in range(2)]
    starts = [{int(w[0]) for b in batches for w in b} for batches in per_process]
    assert len(per_process[0]) == 2 and not starts[0] & starts[1]
    assert starts[0] | starts[1] == set(range(0, 64, 8))


def test_corpus_shorter_than_a_batch_is_a_clear_error():
    with pytest.raises(DataSourceError, match="fewer than one batch"):
        WindowBatches(np.arange(20, dtype=np.uint16), seq_len=8, batch_size=4, seed=0)
    with pytest.raises(DataSourceError, match="validation text holds 2 windows"):
        validation_batches(np.arange(20, dtype=np.uint16), seq_len=8, batch_size=4, max_batches=2)


def test_make_streams_trains_saves_and_reuses_the_tokenizer(tmp_path):
    cfg = tiny_config(vocab_size=300, max_len=16)
    cfg.data.update(source=f"text:{write_corpus(tmp_path / 'corpus')}", val_fraction=0.3, seq_len=16,
                    cache_dir=str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    streams = make_streams(cfg, str(workdir))
    assert (workdir / "tokenizer.json").is_file() and streams.tokenizer_hash
    # Validation batches are the held-out documents' tokens in order; training windows are windows of the
    # other documents' tokens, at multiples of seq_len.
    docs = open_source(cfg.data)
    split = cache_lib.split_documents(len(docs), 0.3, cfg.data.split_seed, docs.name)
    tokenizer = Tokenizer.load(str(workdir / "tokenizer.json"))
    val_tokens = expected_tokens(docs, split.indices("val", 0, len(docs)), tokenizer)
    train_tokens = expected_tokens(docs, split.indices("train", 0, len(docs)), tokenizer)
    windows = np.stack(streams.val_batches).reshape(-1, 17)
    np.testing.assert_array_equal(windows, [val_tokens[16 * i: 16 * i + 17] for i in range(len(windows))])
    train_windows = {tuple(train_tokens[s: s + 17]) for s in range(0, len(train_tokens) - 16, 16)}
    batch = next(streams.train)
    assert batch.shape == (8, 17) and all(tuple(row) in train_windows for row in batch)
    assert streams.tokens_per_byte == pytest.approx((len(val_tokens) - split.size("val")) / sum(
        len(docs[int(i)].encode("utf-8")) for i in split.val_indices))
    assert make_streams(cfg, str(workdir)).tokenizer_hash == streams.tokenizer_hash
    cfg.model.vocab_size = 280
    cfg.data.tokenizer = str(workdir / "tokenizer.json")
    with pytest.raises(DataSourceError, match="raise model.vocab_size"):
        make_streams(cfg, str(tmp_path / "other"))


LARGE_CORPUS_SCRIPT = """
import json, os, resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from gptjax.data.pipeline import text_streams
from gptjax.data.sources import Documents
WORDS = ["the", "king", "queen", "speaks", "to", "his", "her", "court", "and", "night", "falls", "anon"]
docs = Documents("generated", lambda i: f"doc {{i}}: " + " ".join(WORDS[(i * k + k * k) % 12] for k in range(1, 7)),
                 {n_docs}, "generated-{n_docs}")
cfg = tiny_config(vocab_size=300, max_len=16)
cfg.data.update(source="text:generated", val_fraction=0.001, seq_len=16, cache_dir={workdir!r} + "/cache",
                tokenizer_sample_bytes=2_000_000)
os.makedirs({workdir!r} + "/run")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
streams = text_streams(cfg, {workdir!r} + "/run", docs)
batch = next(streams.train)
growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(dict(growth_mb=growth_mb, windows=streams.batches_per_epoch * 8, val=streams.val_batches[0].tolist(),
                      entries=sorted(os.listdir({workdir!r} + "/cache")))))
"""


@pytest.mark.slow
def test_a_million_documents_go_through_the_text_path_in_bounded_memory(tmp_path):
    """10^6 short documents: split, tokenizer on a 2 MB sample, chunked cache, windows, in < 200 MB more
    than the interpreter held (training the tokenizer on every document alone took ~500 MB more)."""
    import json
    import subprocess
    import sys

    workdir = str(tmp_path)
    script = LARGE_CORPUS_SCRIPT.format(tests=os.path.dirname(__file__), n_docs=10**6, workdir=workdir)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["growth_mb"] < 200, result["growth_mb"]
    train_dir = next(e for e in result["entries"] if e.startswith("train-"))
    assert len([f for f in os.listdir(tmp_path / "cache" / train_dir) if f.endswith(".bin")]) == -(-999_000 // 16384)
    # The first validation window starts with the first held-out document.
    split = cache_lib.split_documents(10**6, 0.001, 0, "generated")
    tokenizer = Tokenizer.load(str(tmp_path / "run" / "tokenizer.json"))
    first = split.val_indices[0]
    words = ["the", "king", "queen", "speaks", "to", "his", "her", "court", "and", "night", "falls", "anon"]
    text = f"doc {first}: " + " ".join(words[(first * k + k * k) % 12] for k in range(1, 7))
    expected = [tokenizer.bos_id, *tokenizer.encode(text)]
    assert result["val"][0][:len(expected)] == expected
    assert result["windows"] > 10**6  # ~15 tokens per document, windows of 16
