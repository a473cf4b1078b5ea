"""`mode=sample` end to end on a tiny checkpoint trained here, and each error path."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gptjax.config import ConfigError, default_config, validate
from gptjax.data.tokenizer import Tokenizer, train_tokenizer
from gptjax.align.sample_job import sample_checkpoint
from gptjax.sample.strategies import SampleError
from gptjax.train.checkpoint import CheckpointError
from gptjax.train.loop import train

# Its module-scoped fixtures are built once: under pytest-xdist (--dist loadgroup) the module stays on one worker.
pytestmark = pytest.mark.xdist_group("test_sample_cli")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A text-source run of a few steps: checkpoints/ and tokenizer.json."""
    from test_data import write_corpus

    tmp = tmp_path_factory.mktemp("sampling")
    cfg = tiny_config(vocab_size=300)
    cfg.model.max_len = 64
    cfg.data.update(source=f"text:{write_corpus(tmp / 'corpus')}", val_fraction=0.3, cache_dir=str(tmp / "cache"))
    cfg.train.update(steps=20, checkpoint_every=20, eval_every=20)
    train(cfg, str(tmp / "run"))
    return str(tmp / "run")


def sample_config(**sample):
    cfg = default_config()
    cfg.mode = "sample"
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.sample.update(dict(dict(max_new_tokens=10), **sample))
    return cfg


def rows_of(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_cli_samples_the_latest_checkpoint_and_writes_jsonl(workdir, tmp_path):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "gptjax.main", "--config=configs/sample.py", f"--workdir={workdir}",
            "--config.parallel.num_devices=1", "--config.parallel.mesh=(1,1,1)", "--config.sample.prompt=the king",
            "--config.sample.max_new_tokens=12", "--config.sample.seed=3", f"--config.sample.output={tmp_path}/s.jsonl"]
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 20 and summary["samples"] == 1
    [row] = rows_of(tmp_path / "s.jsonl")
    assert row["prompt"] == "the king" and summary["completions"] == [row["completion"]]
    assert 1 <= len(row["tokens"]) <= 12
    assert row["logprob"] == pytest.approx(sum(row["token_logprobs"]))
    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.json"))
    reason, tokens = row["finish_reason"], row["tokens"]
    text = tokenizer.decode(tokens[:-1] if reason == "stop_token" else tokens)
    # the reason is the one the tokens show: <|eos|> last, else the config's stop string, else 12 tokens
    shown = "stop_token" if tokens[-1] == tokenizer.eos_id else "stop_string" if "\n\n" in text else "length"
    assert reason == shown
    assert reason != "length" or len(tokens) == 12
    assert row["completion"] == text.split("\n\n")[0]
    # the same config in-process (the library entry point) gives the same sample: seeded, deterministic
    again = sample_checkpoint(sample_config(prompt="the king", max_new_tokens=12, seed=3, temperature=0.8,
                                            top_p=0.95, stop_strings=("\n\n",), output=str(tmp_path / "again.jsonl")),
                              workdir)
    assert again["completions"] == summary["completions"]

    bad = subprocess.run(args[:4] + [f"--workdir={tmp_path}/empty", "--config.sample.prompt=x"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "no checkpoint in" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_prompts_file_samples_and_batching_do_not_change_the_output(workdir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the queen\n\nnight falls on\nto his court\n", encoding="utf-8")
    common = dict(prompts_file=str(prompts), num_samples=2, temperature=1.0, top_k=20, seed=1)
    summary = sample_checkpoint(sample_config(batch_size=4, output=str(tmp_path / "a.jsonl"), **common), workdir)
    assert summary["samples"] == 6 and summary["prompts"] == 3 and "completions" not in summary
    rows = rows_of(tmp_path / "a.jsonl")
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(i, j) for i in range(3) for j in range(2)]
    assert rows[2]["prompt"] == "night falls on"
    one_by_one = sample_checkpoint(sample_config(batch_size=1, output=str(tmp_path / "b.jsonl"), **common), workdir)
    assert one_by_one["samples"] == 6
    assert [r["tokens"] for r in rows_of(tmp_path / "b.jsonl")] == [r["tokens"] for r in rows]
    assert not os.path.exists(os.path.join(workdir, "samples.jsonl"))  # the output key was honoured


def test_beam_search_and_stop_strings_from_the_config(workdir, tmp_path):
    sample_checkpoint(sample_config(prompt="the king", beam_width=4, num_samples=3, output=str(tmp_path / "beam.jsonl")),
                      workdir)
    beams = rows_of(tmp_path / "beam.jsonl")
    assert [r["sample_index"] for r in beams] == [0, 1, 2]
    assert [r["score"] for r in beams] == sorted((r["score"] for r in beams), reverse=True)
    assert len({tuple(r["tokens"]) for r in beams}) == 3
    summary = sample_checkpoint(sample_config(prompt="the king", max_new_tokens=20, stop_strings=(" ",), num_samples=4,
                                              output=str(tmp_path / "stop.jsonl")), workdir)
    assert all(" " not in c for c in summary["completions"])
    assert any(r["finish_reason"] == "stop_string" for r in rows_of(tmp_path / "stop.jsonl"))


def test_finish_reasons_follow_from_how_each_row_ended(workdir, tmp_path, monkeypatch):
    """Rows of one seed continue one text, cut short by max_new_tokens ("length"), at a stop string
    ("stop_string", the text cut where the string starts) or at an <|eos|> a constraint forces ("stop_token")."""
    import gptjax.sample

    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.json"))

    def sample(name, **overrides):
        sample_checkpoint(sample_config(prompt="the king", temperature=1.0, seed=3,
                                        output=str(tmp_path / f"{name}.jsonl"), **overrides), workdir)
        [row] = rows_of(tmp_path / f"{name}.jsonl")
        return row

    free = sample("free", max_new_tokens=16)
    assert tokenizer.eos_id not in free["tokens"][:4]  # (what the checks below rely on)
    short = sample("short", max_new_tokens=4)
    assert short["finish_reason"] == "length"
    assert short["tokens"] == free["tokens"][:4] and short["completion"] == tokenizer.decode(free["tokens"][:4])

    # A stop string first completed by a later token: the piece that token decodes to, new in the text.
    pieces = [tokenizer.decode([t]) for t in free["tokens"]]
    stop = next(piece for k, piece in enumerate(pieces) if k and piece.strip() and "\ufffd" not in piece
                and piece not in tokenizer.decode(free["tokens"][:k]))
    cut = sample("cut", max_new_tokens=16, stop_strings=(stop,))
    assert cut["finish_reason"] == "stop_string"
    assert cut["completion"] == free["completion"][:free["completion"].index(stop)] != ""
    n = len(cut["tokens"])  # the tokens end with the one completing the stop string
    assert cut["tokens"] == free["tokens"][:n] and n < 16
    assert stop in tokenizer.decode(cut["tokens"]) and stop not in tokenizer.decode(cut["tokens"][:-1])

    # A constraint allowing one token, then none: <|eos|>, the only way on, must end the row there.
    forced = tokenizer.encode(" queen")[0]
    table = np.full((2, tokenizer.vocab_size), -1, np.int32)
    table[0, forced] = 1
    automaton = Automaton(jnp.asarray(table), jnp.asarray([False, True]), 0)
    fake = types.SimpleNamespace(ConstraintError=ValueError, regex_automaton=lambda regex, tok: automaton)
    monkeypatch.setitem(sys.modules, "gptjax.sample.constrained", fake)
    monkeypatch.setattr(gptjax.sample, "constrained", fake, raising=False)
    eos = sample("eos", max_new_tokens=16, regex="queen")
    assert eos["finish_reason"] == "stop_token" and eos["tokens"] == [forced, tokenizer.eos_id]
    assert eos["completion"] == tokenizer.decode([forced])


def test_sampling_errors_are_clear(workdir, tmp_path):
    with pytest.raises(SampleError, match="exceeds the model's context of 64 tokens"):
        sample_checkpoint(sample_config(prompt="the king " * 40), workdir)
    empty = tmp_path / "empty"
    with pytest.raises(CheckpointError, match="no checkpoint in .*train first"):
        sample_checkpoint(sample_config(prompt="x"), str(empty))
    assert not (empty / "checkpoints").exists()  # another run's directory is only read
    shutil.copytree(os.path.join(workdir, "checkpoints"), empty / "checkpoints")
    with pytest.raises(CheckpointError, match="tokenizer.json does not exist"):
        sample_checkpoint(sample_config(prompt="x"), str(empty))
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    train_tokenizer(["a completely different corpus"] * 10, 270).save(str(other / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="is not the tokenizer checkpoint 20 was trained with"):
        sample_checkpoint(sample_config(prompt="x"), str(other))


@pytest.mark.parametrize("overrides,match", [
    (dict(), "exactly one of sample.prompt and sample.prompts_file"),
    (dict(prompt="a", prompts_file="b"), "exactly one of"),
    (dict(prompts_file="/nonexistent/prompts.txt"), "sample.prompts_file.*does not exist"),
    (dict(prompt="a", top_p=0.0), "sample.top_p"),
    (dict(prompt="a", temperature=-0.5), "sample.temperature"),
    (dict(prompt="a", beam_width=2, num_samples=3), "sample.num_samples=3: must not exceed sample.beam_width=2"),
    (dict(prompt="a", regex="a+", json_schema="{}"), "not both"),
    (dict(prompt="a", beam_width=2, regex="a+"), "beam search supports neither"),
    (dict(prompt="a", stop_strings=("",)), "sample.stop_strings"),
    (dict(prompt="a", max_new_tokens=0), "sample.max_new_tokens=0"),
])
def test_bad_sample_configs_are_config_errors(overrides, match):
    cfg = sample_config(**overrides)
    with pytest.raises(ConfigError, match=match):
        validate(cfg, device_count=1, process_count=1)


@dataclasses.dataclass
class Automaton:
    next_state_ZxV: jnp.ndarray
    is_final_Z: jnp.ndarray
    start_state: int


def fake_constrained_module(allowed_ids):
    """Stands in for gptjax.sample.constrained: a regex of "(" is invalid, any other regex gives an
    automaton allowing only `allowed_ids` (then EOS, from its one final state)."""

    class ConstraintError(ValueError):
        pass

    def regex_automaton(regex, tokenizer):
        if regex == "(":
            raise ConstraintError("missing ) at position 1")
        table = np.full((1, tokenizer.vocab_size), -1, np.int32)
        table[0, allowed_ids] = 0
        return Automaton(jnp.asarray(table), jnp.asarray([True]), 0)

    return types.SimpleNamespace(ConstraintError=ConstraintError, regex_automaton=regex_automaton,
                                 json_schema_automaton=regex_automaton)


def test_constraints_from_the_config_reach_generation(workdir, tmp_path, monkeypatch):
    import gptjax.sample

    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.json"))
    allowed = sorted({tokenizer.encode(w)[0] for w in ("king", " queen", " night")})
    fake = fake_constrained_module(allowed)
    monkeypatch.setitem(sys.modules, "gptjax.sample.constrained", fake)
    monkeypatch.setattr(gptjax.sample, "constrained", fake, raising=False)
    summary = sample_checkpoint(sample_config(prompt="the", regex="(king| queen| night)+", num_samples=3,
                                              output=str(tmp_path / "c.jsonl")), workdir)
    rows = rows_of(tmp_path / "c.jsonl")
    assert summary["samples"] == 3
    for r in rows:
        body = r["tokens"][:-1] if r["finish_reason"] == "stop_token" else r["tokens"]
        assert body and set(body) <= set(allowed)
    with pytest.raises(SampleError, match=r"sample.regex='\(': missing \)"):
        sample_checkpoint(sample_config(prompt="the", regex="("), workdir)
    with pytest.raises(SampleError, match="sample.json_schema="):
        sample_checkpoint(sample_config(prompt="the", json_schema="("), workdir)


def test_invalid_regex_with_the_real_constrained_module(workdir):
    pytest.importorskip("gptjax.sample.constrained")
    with pytest.raises(SampleError, match="sample.regex="):
        sample_checkpoint(sample_config(prompt="the", regex="(unclosed"), workdir)


def test_sampling_on_a_sharded_mesh_matches_one_device(workdir, tmp_path):
    common = dict(prompt="the queen", num_samples=3, temperature=1.0, seed=5)
    sample_checkpoint(sample_config(output=str(tmp_path / "one.jsonl"), **common), workdir)
    cfg = sample_config(output=str(tmp_path / "mesh.jsonl"), **common)
    cfg.parallel.update(num_devices=4, mesh=(2, 1, 2))  # 3 rows over 2 batch shards; heads and vocab split in 2
    sample_checkpoint(cfg, workdir)
    assert [r["tokens"] for r in rows_of(tmp_path / "mesh.jsonl")] == [r["tokens"] for r in rows_of(tmp_path / "one.jsonl")]


def test_sampling_restores_the_params_only_without_rebuilding_the_optimizer(workdir, tmp_path):
    # The checkpoint's meta now says the run used another optimizer structure (clipping toggled): the
    # saved Adam state no longer matches the optimizer the config describes. Sampling reads the params
    # alone, so it neither rebuilds that optimizer nor reads its state.
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (step,) = [name for name in os.listdir(run / "checkpoints") if name.isdigit()]
    meta_path = run / "checkpoints" / step / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["config"]["optim"]["clip_norm"] = 0.0 if meta["config"]["optim"]["clip_norm"] else 1.0
    meta_path.write_text(json.dumps(meta))
    cfg = sample_config(prompt="the king", max_new_tokens=6, temperature=0.0, output=str(tmp_path / "s.jsonl"))
    assert sample_checkpoint(cfg, str(run))["completions"] == sample_checkpoint(cfg, workdir)["completions"]
