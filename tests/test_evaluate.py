"""Downstream evaluation through lm-evaluation-harness: log-likelihoods equal a direct computation, batching and
padding change nothing, the few-shot prompt is lm-eval's, acc and acc_norm differ where they should, and
mode=lm_eval writes its results."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.config import ConfigError, load_config
from gptjax.data.tokenizer import train_tokenizer
from gptjax.model.build import abstract_model, init_params
from gptjax.parallel.mesh import make_mesh
from gptjax.train.network import Network

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gptjax.evaluate.job import TASKS_DIR, downstream_scorer, lm_eval_job, pretrain, score_names, summary  # noqa: E402
from gptjax.scaling.vectorized import train_group  # noqa: E402
from gptjax.evaluate.lm import GptjaxLM  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_evaluate")

TEXT = ["the quick brown fox jumps over the lazy dog. abcdefgh abcdefgh", "what is 3+4? it is 7.",
        "to be or not to be, that is the question"] * 30
MESH = make_mesh(tiny_config().parallel)
RULES = tuple(tiny_config().parallel.rules)


@pytest.fixture(scope="module")
def network():
    tokenizer = train_tokenizer(TEXT, 300)
    model_cfg = tiny_config(vocab_size=320, max_len=24).model
    return Network(model_cfg, init_params(model_cfg, jax.random.key(0)), tokenizer, 0, {}, "test")


def requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def direct_logprob(network, tokens, n_continuation):
    """Sum of log p over the last n tokens of `tokens` (left-truncated to max_len + 1), one unpadded pass."""
    tokens = tokens[-(network.model_cfg.max_len + 1):]
    model = nnx.merge(nnx.graphdef(abstract_model(network.model_cfg)), network.params)
    logp_TxV = jax.nn.log_softmax(model(jnp.asarray([tokens[:-1]]))[0], axis=-1)
    picked = [float(logp_TxV[t, tokens[t + 1]]) for t in range(len(tokens) - 1)]
    return sum(picked[-n_continuation:])


PAIRS = [("what is 3+4?", " it is 7."), ("the quick brown ", "fox"), ("", "to be or not"),
         ("to be or not to be, that is the question " * 3, " the lazy dog")]  # the last one is truncated


def test_loglikelihoods_equal_a_direct_computation(network):
    lm = GptjaxLM(network, MESH, RULES, batch_size=4)
    tok = network.tokenizer
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (logp, _) in zip(PAIRS, got):
        if not context:
            ctx, cont = [tok.bos_id], tok.encode(continuation)
        else:  # trailing spaces of the context move to the continuation, as lm-eval's HF model does
            stripped = context.rstrip()
            cont_text = context[len(stripped):] + continuation
            ctx = [tok.bos_id] + tok.encode(stripped)
            cont = tok.encode(stripped + cont_text)[len(ctx) - 1:]
        assert logp == pytest.approx(direct_logprob(network, ctx + cont, len(cont)), abs=1e-4)
    assert len([tok.bos_id] + tok.encode(PAIRS[3][0] + PAIRS[3][1])) > network.model_cfg.max_len + 1


def test_batching_and_padding_do_not_change_scores(network):
    one, eight = GptjaxLM(network, MESH, RULES, batch_size=1), GptjaxLM(network, MESH, RULES, batch_size=8)
    reqs = requests("loglikelihood", PAIRS * 2)
    np.testing.assert_allclose(np.array(one.loglikelihood(reqs)), np.array(eight.loglikelihood(reqs)), atol=1e-5)
    docs = requests("loglikelihood_rolling", [(t,) for t in TEXT[:3]] + [(" ".join(TEXT[:4]),)])
    np.testing.assert_allclose(one.loglikelihood_rolling(docs), eight.loglikelihood_rolling(docs), atol=1e-4)


def test_rolling_loglikelihood_scores_each_token_once(network):
    lm = GptjaxLM(network, MESH, RULES, batch_size=4)
    tok, short = network.tokenizer, TEXT[2]
    tokens = tok.encode(short)
    [total] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(short,)]))
    assert total == pytest.approx(direct_logprob(network, [tok.bos_id] + tokens, len(tokens)), abs=1e-4)
    scored = []
    lm.score_pairs = lambda pairs: scored.extend(pairs) or [(0.0, True)] * len(pairs)
    long = " ".join(TEXT[:6])
    lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(long,)]))
    assert sum(len(cont) for _, cont in scored) == len(tok.encode(long)) > 2 * network.model_cfg.max_len


def test_generate_until_stops_at_the_stop_string(network):
    lm = GptjaxLM(network, MESH, RULES, batch_size=4)
    free, = lm.generate_until(requests("generate_until", [("what is", {"until": [], "max_gen_toks": 12})]))
    stop = free[2:4]  # a string the free continuation holds past its start
    cut, = lm.generate_until(requests("generate_until", [("what is", {"until": [stop], "max_gen_toks": 12})]))
    assert cut == free[:free.index(stop)]


class Recorder(GptjaxLM):
    """GptjaxLM that keeps the requests lm-eval sends it."""

    def generate_until(self, reqs):
        self.seen = [r.args for r in reqs]
        return super().generate_until(reqs)


def test_fewshot_prompt_is_what_lm_eval_builds(network):
    lm = Recorder(network, MESH, RULES, batch_size=4)
    lm_eval.simple_evaluate(model=lm, tasks=["arithmetic_em_fewshot"], limit=2,
                            task_manager=TaskManager(include_path=[TASKS_DIR], include_defaults=False), log_samples=False, bootstrap_iters=0)
    with open(os.path.join(TASKS_DIR, "arithmetic.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train, test = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "test"]
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train[:3])
    contexts = sorted(context for context, _ in lm.seen)
    assert contexts == sorted(shots + f"Question: {r['question']}\nAnswer:" for r in test[:2])
    assert lm.seen[0][1]["until"] == ["\n", "Question:"]


def test_acc_and_acc_norm_differ_on_a_planted_example(network, tmp_path):
    # A model with zero weights gives every token the same probability, so acc prefers the choice with fewer
    # tokens (here: a tie of one token each, broken towards the first) and acc_norm, per byte, the longer one.
    zero = Network(network.model_cfg, jax.tree.map(jnp.zeros_like, network.params), network.tokenizer, 0, {}, "zero")
    tok = network.tokenizer
    assert len(tok.encode(" the")) == len(tok.encode(" abcdefgh")) == 1
    (tmp_path / "planted.jsonl").write_text(json.dumps(dict(context="x", choices=[" the", " abcdefgh"], label=1)) + "\n")
    (tmp_path / "planted.yaml").write_text(
        "task: planted\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{tmp_path / 'planted.jsonl'}\noutput_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{{{context}}}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\ntarget_delimiter: ''\nmetric_list:\n"
        "  - metric: acc\n  - metric: acc_norm\n")
    results = lm_eval.simple_evaluate(model=GptjaxLM(zero, MESH, RULES), tasks=["planted"], log_samples=False,
                                      task_manager=TaskManager(include_path=[str(tmp_path)], include_defaults=False),
                                      bootstrap_iters=0)
    assert summary(results)["planted"]["acc"] == 0.0 and summary(results)["planted"]["acc_norm"] == 1.0


def shakespeare_config(**train):
    cfg = tiny_config(vocab_size=300, max_len=64)
    cfg.data.update(source="shakespeare", tokenizer_sample_bytes=100_000, seq_len=32)
    cfg.train.update(dict(steps=2, eval_every=1, checkpoint_every=2) | train)
    cfg.evaluate.update(limit=8)
    return cfg


def test_pretraining_scores_eval_tasks_as_mode_lm_eval_does(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = shakespeare_config(eval_tasks="shakespeare_cloze,arithmetic_em_fewshot")
    final = pretrain(cfg, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [row for row in map(json.loads, f) if row["split"] == "eval"]
    assert [row["step"] for row in evals] == [1, 2]
    assert all(0 <= row["task_shakespeare_cloze_acc"] <= 1 for row in evals)
    cfg = load_config("configs/evaluate.py")
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.evaluate.update(limit=8, tasks="shakespeare_cloze,arithmetic_em_fewshot")
    out = lm_eval_job(cfg, workdir)
    results = json.loads((tmp_path / "run" / "eval_tasks.json").read_text())
    assert out["tasks"] == results["tasks"] and results["step"] == 2
    assert set(results["tasks"]["shakespeare_cloze"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert results["n_samples"] == {"shakespeare_cloze": 8, "arithmetic_em_fewshot": 8}
    # the in-loop scores of the final step are those of the standalone evaluation of its checkpoint
    assert {f"eval_{k}": v for k, v in score_names(results["tasks"]).items()} == {
        k: v for k, v in final.items() if k.startswith("eval_task_")}
    cfg.evaluate.tasks = "shakespeare_cloze,hellaswag_typo"
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['hellaswag_typo'\]"):
        lm_eval_job(cfg, workdir)


def test_each_member_of_a_sweep_group_gets_its_scores(tmp_path):
    cfg = shakespeare_config(eval_tasks="shakespeare_cloze", eval_every=2)
    scorer, seen = downstream_scorer(cfg, str(tmp_path)), []

    def downstream(params, model_cfg, mesh):  # the real scorer, and what it was given
        seen.append(np.asarray(params["token_embed"]["embedding"]))
        return scorer(params, model_cfg, mesh)

    rows = train_group(cfg, [{"lr": 1e-3, "seed": 0}, {"lr": 3e-2, "seed": 0}], str(tmp_path), downstream)
    for row in rows:  # what a sweep's results.jsonl rows carry for each trained model
        assert 0 <= row["eval_task_shakespeare_cloze_acc"] <= 1 and 0 <= row["eval_task_shakespeare_cloze_acc_norm"] <= 1
    # each member's own params, without the member axis: two different models at the final evaluation
    assert [x.shape for x in seen] == [(300, 32)] * 2 and not np.array_equal(seen[0], seen[1])
