import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptjax.data.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, train_tokenizer

CORPUS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
          "안녕하세요 세계", "emoji 😀🎭 and tabs\tand\x00control", "<|eos|> is only text here"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
       | st.text(alphabet="안녕하세요세계😀🎭\x00\x1b\n\t <|eos>", max_size=40))
def test_decode_encode_roundtrips_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_reserved_and_only_parsed_when_allowed(tokenizer):
    assert [tokenizer.special_ids[t] for t in SPECIAL_TOKENS] == list(range(7))
    text = "end <|eos|>"
    plain, special = tokenizer.encode(text), tokenizer.encode(text, allow_special=True)
    assert tokenizer.eos_id not in plain and tokenizer.eos_id in special
    assert tokenizer.decode(plain) == tokenizer.decode(special) == text
    assert tokenizer.encode_batch([text, text]) == [plain, plain]


def test_save_load_keeps_vocab_merges_and_ids(tokenizer, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.hash == tokenizer.hash and loaded.vocab_size == tokenizer.vocab_size <= 400
    assert loaded.special_ids == tokenizer.special_ids
    assert json.load(open(path))["model"]["merges"]  # BPE merges were learned and saved
    assert loaded.encode(CORPUS[0]) == tokenizer.encode(CORPUS[0])
    assert train_tokenizer(CORPUS[:3], vocab_size=300).hash != tokenizer.hash


def test_bad_tokenizer_inputs_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="vocab size 100 is below 263"):
        train_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.load(str(bad))
    # Every reserved token present, but in another order: refused, since ids 0..6 are used by number.
    saved = tmp_path / "good.json"
    train_tokenizer(CORPUS, vocab_size=300).save(str(saved))
    spec = json.load(open(saved))
    order = list(reversed(SPECIAL_TOKENS))
    for added in spec["added_tokens"]:
        added["id"] = order.index(added["content"])
    for token in SPECIAL_TOKENS:
        spec["model"]["vocab"][token] = order.index(token)
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"reserved tokens at other ids \(<\|bos\|> at 6, .*ids 0..6 in that order"):
        Tokenizer.load(str(reordered))
