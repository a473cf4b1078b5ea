"""mode=hf_import / hf_export and Hugging Face tokenizers: an imported workdir samples like transformers, trains
with SFT, exports back; chat templates render as transformers renders them, with the assistant's tokens masked."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from conftest import tiny_config
from gptjax.align.chat import JINJA_TEMPLATE, render, response_tokens
from gptjax.config import validate
from gptjax.data.tokenizer import Tokenizer, train_tokenizer
from gptjax.parallel.mesh import make_mesh
from gptjax.train.network import load_network

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptjax.align.sample_job import sample_checkpoint  # noqa: E402
from gptjax.align.sft import sft  # noqa: E402
from gptjax.interop.hf import load_hf  # noqa: E402
from gptjax.interop.job import hf_export, hf_import  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_hf_jobs")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXT = ["what is 3 plus 4? it is 7.", "the quick brown fox jumps over the lazy dog", "hello there, how are you?"] * 20
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 3 plus 4?"},
            {"role": "assistant", "content": "it is 7."}, {"role": "user", "content": "and 2 plus 2?"},
            {"role": "assistant", "content": "4"}]
MODEL_VOCAB = 320  # more embeddings than tokens, as Qwen's padded vocabularies


def hf_tokenizer():
    """A ChatML byte-level BPE tokenizer as transformers saves one (no gptjax reserved tokens)."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def chat_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Qwen2 with its ChatML tokenizer, saved as save_pretrained saves them."""
    directory = tmp_path_factory.mktemp("hf") / "qwen2"
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=MODEL_VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=True)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    hf_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def imported(hf_dir):
    workdir = str(hf_dir.parent / "imported")
    cfg = tiny_config()
    cfg.mode, cfg.hf.path = "hf_import", str(hf_dir)
    result = hf_import(cfg, workdir)
    assert result["model_type"] == "qwen2" and result["chat_template"]
    return workdir


def test_chat_template_renders_as_transformers_and_masks_the_replies(hf_dir):
    tok = Tokenizer.load(str(hf_dir / "tokenizer.json"))
    # the tokenizer object that was saved (AutoTokenizer beside a qwen2 config.json would rebuild it as
    # Qwen2Tokenizer, whose pre-tokenizer differs from this synthetic one's)
    reference = hf_tokenizer()
    rendered = render(MESSAGES, tok)
    assert rendered.tokens == chat_ids(reference, MESSAGES)
    assert render(MESSAGES[:2], tok, add_generation_prompt=True).tokens == chat_ids(
        reference, MESSAGES[:2], add_generation_prompt=True)
    # the mask holds each reply and its end-of-turn, not the "<|im_start|>assistant\n" header
    masked = tok.decode([t for t, m in zip(rendered.tokens, rendered.assistant_mask) if m])
    assert masked == "it is 7.<|im_end|>\n4<|im_end|>\n"
    assert tok.decode(response_tokens("it is 7.", tok)) == "it is 7.<|im_end|>\n"
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (None, reference.eos_token_id, (reference.eos_token_id,))


def test_gptjax_tokenizer_exports_a_template_transformers_renders_alike(tmp_path):
    ours = train_tokenizer(TEXT, 300)
    ours.as_hf(JINJA_TEMPLATE).save(str(tmp_path / "tokenizer.json"))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert chat_ids(reference, MESSAGES) == render(MESSAGES, ours).tokens
    back = Tokenizer.load(str(tmp_path / "tokenizer.json"))  # the export, read as an imported tokenizer
    assert back.hf_config is not None and (back.bos_id, back.eos_id) == (ours.bos_id, ours.eos_id)
    assert render(MESSAGES, back) == render(MESSAGES, ours)  # tokens and assistant masks


def test_imported_workdir_samples_like_transformers_and_exports_back(hf_dir, imported, tmp_path):
    mesh, rules = make_mesh(tiny_config().parallel), tuple(tiny_config().parallel.rules)
    network = load_network(imported, mesh, rules)
    assert network.stage == "import" and network.model_cfg.qkv_bias
    jax.tree.map(np.testing.assert_array_equal, network.params, load_hf(hf_dir)[1])
    # greedy chat sampling == transformers' greedy generate on its own chat template, stopping at <|im_end|>
    cfg = tiny_config()
    cfg.mode = "sample"
    cfg.sample.update(prompt="what is 3 plus 4?", chat=True, temperature=0.0, max_new_tokens=10, num_samples=1)
    row = sample_checkpoint(cfg, imported)
    with open(row["output"]) as f:
        ours = json.loads(f.readline())["tokens"]
    reference = hf_tokenizer()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    prompt = chat_ids(reference, [{"role": "user", "content": "what is 3 plus 4?"}], add_generation_prompt=True)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=10, do_sample=False, eos_token_id=reference.eos_token_id,
                                pad_token_id=reference.pad_token_id)[0, len(prompt):].tolist()
    assert ours == theirs[:len(ours)] and len(ours) == len(theirs)
    cfg.sample.quantize = "int8"  # weight-only int8 kernels: the same command, a smaller model
    quantized = sample_checkpoint(cfg, imported)
    assert quantized["params_bytes_int8"] < quantized["params_bytes_float"] and quantized["samples"] == 1
    # export: transformers reloads the same model and tokenizer
    cfg = tiny_config()
    cfg.mode, cfg.hf.path = "hf_export", str(tmp_path / "out")
    assert hf_export(cfg, imported)["model_type"] == "qwen2"
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        np.testing.assert_array_equal(again(tokens).logits.numpy(), model(tokens).logits.numpy())
    assert chat_ids(transformers.AutoTokenizer.from_pretrained(tmp_path / "out"), MESSAGES) == chat_ids(
        transformers.AutoTokenizer.from_pretrained(hf_dir), MESSAGES)


def test_sft_trains_an_imported_model_through_its_chat_template(imported, tmp_path):
    cfg = tiny_config()
    cfg.mode = "sft"
    cfg.align.update(task="arithmetic", num_examples=64, val_fraction=0.25, batch_size=8, init_from=imported)
    cfg.optim.update(lr=3e-3)
    cfg.train.update(steps=6, eval_every=6, checkpoint_every=6, log_every=1)
    validate(cfg)
    sft(cfg, str(tmp_path / "sft"))
    with open(tmp_path / "sft" / "metrics.jsonl") as f:
        held_out = [row for row in map(json.loads, f) if row["split"] == "eval"]
    assert [row["step"] for row in held_out] == [0, 6] and held_out[1]["loss"] < held_out[0]["loss"] - 0.5
    # the SFT run keeps the imported tokenizer
    assert Tokenizer.load(str(tmp_path / "sft" / "tokenizer.json")).hash == Tokenizer.load(
        os.path.join(imported, "tokenizer.json")).hash


def test_import_errors_are_one_line(tmp_path, hf_dir, imported):
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "gptjax.main", "--config=configs/hf_import.py", *flags],
                              capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))

    out = run(f"--config.hf.path={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "config.json does not exist" in out.stderr
    out = run(f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 2 and "hf.path" in out.stderr
    out = run(f"--config.hf.path={hf_dir}", f"--workdir={imported}")
    assert out.returncode == 1 and "already holds checkpoints" in out.stderr
