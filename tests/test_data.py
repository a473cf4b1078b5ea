"""Sources, document split, token cache and the grain pipeline, all offline on data the tests build."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from gptjax.data import cache as cache_lib
from gptjax.data.pipeline import WindowBatches, make_streams, validation_batches
from gptjax.data.sources import DataSourceError, open_source, shakespeare, strip_markdown, text_files, tfds_documents
from gptjax.data.tokenizer import train_tokenizer


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


def test_split_is_by_document_and_deterministic():
    train, val = cache_lib.split_documents(40, 0.1, seed=3, name="x")
    again_train, again_val = cache_lib.split_documents(40, 0.1, seed=3, name="x")
    assert len(val) == 4 and not set(train) & set(val) and len(train) + len(val) == 40
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(val, cache_lib.split_documents(40, 0.1, seed=4, name="x")[1])


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


def test_token_cache_counts_bytes_marks_documents_and_is_reused(corpus_and_tokenizer, tmp_path):
    docs, tokenizer = corpus_and_tokenizer
    entry = cache_lib.cached_tokens(docs, np.arange(3), tokenizer, str(tmp_path), "train")
    assert entry.tokens.dtype == np.uint16
    assert entry.n_bytes == sum(len(docs[i].encode("utf-8")) for i in range(3))
    assert int((np.asarray(entry.tokens) == tokenizer.bos_id).sum()) == 3 and entry.tokens[0] == tokenizer.bos_id
    assert tokenizer.decode(entry.tokens[1:]).startswith(docs[0][:20])
    original_encode = tokenizer.encode_batch
    tokenizer.encode_batch = None  # a cache hit must not tokenize again
    try:
        again = cache_lib.cached_tokens(docs, np.arange(3), tokenizer, str(tmp_path), "train")
    finally:
        tokenizer.encode_batch = original_encode
    np.testing.assert_array_equal(again.tokens, entry.tokens)
    assert cache_lib.token_dtype(70_000) == np.uint32


def test_editing_a_file_invalidates_the_cache(tmp_path):
    pattern = write_corpus(tmp_path / "corpus", n_files=2)
    before = text_files(pattern)
    tokenizer = train_tokenizer([before[0]], 270)
    first = cache_lib.cached_tokens(before, np.arange(2), tokenizer, str(tmp_path / "cache"), "train")
    with open(tmp_path / "corpus" / "doc1.txt", "a", encoding="utf-8") as f:
        f.write("an added line\n")
    second = cache_lib.cached_tokens(text_files(pattern), np.arange(2), tokenizer, str(tmp_path / "cache"), "train")
    assert second.path != first.path and len(second.tokens) > len(first.tokens)


def test_a_crash_mid_write_leaves_no_cache_entry(corpus_and_tokenizer, tmp_path, monkeypatch):
    docs, tokenizer = corpus_and_tokenizer
    calls = []

    def crash_on_second_batch(texts, allow_special=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return type(tokenizer).encode_batch(tokenizer, texts, allow_special)

    monkeypatch.setattr(tokenizer, "encode_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        cache_lib.cached_tokens(docs, np.arange(6), tokenizer, str(tmp_path), "train", batch_docs=2)
    assert os.listdir(tmp_path) == []  # nothing that could later read as complete
    monkeypatch.undo()
    (tmp_path / "train-leftover.tmp-dead").mkdir()  # what a SIGKILL mid-write leaves: ignored
    entry = cache_lib.cached_tokens(docs, np.arange(6), tokenizer, str(tmp_path), "train", batch_docs=2)
    assert int((np.asarray(entry.tokens) == tokenizer.bos_id).sum()) == 6


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
    assert next(streams.train).shape == (8, 17) and streams.val_batches[0].shape == (8, 17)
    assert 0 < streams.tokens_per_byte < 1
    assert make_streams(cfg, str(workdir)).tokenizer_hash == streams.tokenizer_hash
    cfg.model.vocab_size = 280
    cfg.data.tokenizer = str(workdir / "tokenizer.json")
    with pytest.raises(DataSourceError, match="raise model.vocab_size"):
        make_streams(cfg, str(tmp_path / "other"))
