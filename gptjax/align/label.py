"""`mode=label`: RLAIF — preference pairs labelled by a judge instead of a person.

For each of the align.task's prompts the align.init_from policy samples align.samples_per_prompt
completions (rl.temperature, rl.top_p, rl.max_new_tokens); a judge scores each, and the best
distinct completion is chosen over the worst (all K ranked, when K > 2 and no two scores tie).
Prompts whose completions are all the same text, or all tie, carry no preference and are skipped;
a completion whose stored row (prompt + reply text + <|eos|>) outgrows the context is left out.
Judges (align.judge):
  gold          the task's programmatic reward (a rubric; arithmetic: exact answer)
  reward_model  a trained reward model's score (align.reward_model)
  self          the policy itself, asked align.constitution about the reply in a user turn; the
                score is log p("yes") - log p("no") as its answer
The rows go to align.output (default WORKDIR/preferences.jsonl), written atomically, in the pair /
ranking format mode=reward and mode=dpo read, so AI feedback feeds them unchanged. When the judge is
not the gold one the summary reports how often it agrees with the task's gold reward.
"""

import functools
import os

import jax
import numpy as np

from gptjax.align import chat
from gptjax.align import data as align_data
from gptjax.align.dpo import response_logprobs
from gptjax.align.reward import RewardModel
from gptjax.align.rl import task_prompts
from gptjax.align.stage import bucket, check_same_vocabulary, full_batches
from gptjax.align.tasks import get_task
from gptjax.data.tokenizer import PAD_ID, pad_rows
from gptjax.parallel.mesh import batch_sharding, to_device, to_host
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import generate
from gptjax.sample.strategies import Strategy
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import load_network


def label(cfg, workdir: str) -> dict:
    """Writes judge-labelled preferences per cfg (mode=label); returns a summary."""
    return run_in_mesh(_label, cfg, workdir)


def self_judge(policy, mesh, rules, constitution: str, batch_size: int):
    """A judge that asks the policy `constitution` about each reply: scores = log p(yes) - log p(no)."""
    tokenizer, max_len = policy.tokenizer, policy.model_cfg.max_len
    answers = [chat.response_tokens(a, tokenizer) for a in ("yes", "no")]
    logprobs = jax.jit(functools.partial(response_logprobs, graphdef=model_graphdef(policy.model_cfg, rules)))
    rows = batch_sharding(mesh, rules)
    rows1 = batch_sharding(mesh, rules, 1)

    def judge(prompt_texts, reply_texts) -> np.ndarray:
        questions = [chat.prompt_tokens(f"{constitution}\n\nPrompt: {p}\nReply: {r}", tokenizer)
                     for p, r in zip(prompt_texts, reply_texts)]
        longest = max(len(q) for q in questions) + max(map(len, answers))
        if longest > max_len:
            raise align_data.AlignDataError(
                f"align.constitution: the judge's question about a reply has {longest} tokens, more than the "
                f"policy's max_len={max_len}; shorten align.constitution or rl.max_new_tokens")
        jobs = [(q, a) for q in questions for a in answers]  # yes, no for each reply
        scores = []
        for chunk, n in full_batches(jobs, batch_size):
            tokens = pad_rows([q + a for q, a in chunk], bucket(longest, max_len), PAD_ID)
            logp, _ = logprobs(policy.params, tokens_RxL=to_device(tokens, rows),
                               prompt_len_R=to_device(np.array([len(q) for q, _ in chunk], np.int32), rows1),
                               lengths_R=to_device(np.array([len(q) + len(a) for q, a in chunk], np.int32), rows1))
            scores += to_host(logp)[:n].tolist()
        yes_no = np.array(scores).reshape(-1, 2)
        return yes_no[:, 0] - yes_no[:, 1]

    return judge


def preference_row(prompt: str, texts: list[str], scores: np.ndarray) -> dict | None:
    """The row a prompt's scored completions give: a ranking of all (K > 2, distinct texts, no ties),
    else best-vs-worst; None when nothing is preferred."""
    best_score = {}
    for text, score in zip(texts, scores):
        best_score[text] = max(score, best_score.get(text, -np.inf))
    distinct = list(best_score)
    if len(distinct) < 2:
        return None
    values = np.array([best_score[t] for t in distinct])
    order = np.argsort(-values, kind="stable").tolist()
    if values[order[0]] == values[order[-1]]:
        return None
    if len(distinct) > 2 and len(set(values.tolist())) == len(distinct):
        return dict(prompt=prompt, responses=distinct, ranking=order)
    return dict(prompt=prompt, chosen=distinct[order[0]], rejected=distinct[order[-1]])


def _label(cfg, workdir: str, mesh) -> dict:
    a, r, rules = cfg.align, cfg.rl, tuple(cfg.parallel.rules)
    policy = load_network(a.init_from, mesh, rules, what="align.init_from")
    tokenizer, task, K = policy.tokenizer, get_task(a.task), a.samples_per_prompt
    train, val = task_prompts(cfg, task, tokenizer, policy.model_cfg.max_len)
    prompts = train.texts + val.texts  # the labels are data for a later stage, which holds out its own split
    metas, tokens = train.meta + val.meta, train.tokens + val.tokens
    batch = a.batch_size * K
    if a.judge == "reward_model":
        rm = RewardModel(a.reward_model, mesh, rules)
        check_same_vocabulary(policy, rm.network, "align.reward_model")
    elif a.judge == "self":
        ask = self_judge(policy, mesh, rules, a.constitution, batch)

    limit = min(policy.model_cfg.max_len, rm.model_cfg.max_len) if a.judge == "reward_model" else policy.model_cfg.max_len
    jobs = [(i, j) for i in range(len(prompts)) for j in range(K)]
    root, strategy = jax.random.key(cfg.seed), Strategy(temperature=r.temperature, top_p=r.top_p)
    texts, scores, gold, fits = [], [], [], []
    for chunk, n in full_batches(jobs, batch):
        keys = jax.numpy.stack([jax.random.fold_in(jax.random.fold_in(root, i), j) for i, j in chunk])
        completions = generate(policy.model_cfg, policy.params, [tokens[i] for i, _ in chunk],
                               max_new_tokens=r.max_new_tokens, strategy=strategy, seed=keys, tokenizer=tokenizer,
                               rules=rules)[:n]
        chunk = chunk[:n]
        texts += [c.text for c in completions]
        gold += [task.reward(metas[i], c.text) for (i, _), c in zip(chunk, completions)]
        # Each row as the reward model / DPO will read it from the JSONL: the reply's text ended by
        # <|eos|>. That can outgrow the context the sampled tokens fit in (bytes that are not UTF-8
        # come back as U+FFFD, 3 bytes; a reply cut at max_new_tokens gains the <|eos|>): such
        # completions are scored cut to the context but left out of the pairs (counted).
        rows = [tokens[i] + chat.response_tokens(c.text, tokenizer) for (i, _), c in zip(chunk, completions)]
        fits += [len(x) <= limit for x in rows]
        if a.judge == "gold":
            scores += gold[-n:]
        elif a.judge == "reward_model":
            rows = [x[:limit] for x in rows]
            scores += rm(pad_rows(rows, max(map(len, rows)), PAD_ID), [len(x) for x in rows]).tolist()
        else:
            scores += ask([prompts[i] for i, _ in chunk], [c.text for c in completions]).tolist()

    rows, agree, compared = [], 0, 0
    for p, prompt in enumerate(prompts):
        kept = [k for k in range(p * K, (p + 1) * K) if fits[k]]
        row = preference_row(prompt, [texts[k] for k in kept], np.array([scores[k] for k in kept]))
        if row is None:
            continue
        rows.append(row)
        gold_of = {texts[k]: gold[k] for k in kept}
        chosen, rejected = (row["chosen"], row["rejected"]) if "chosen" in row else (
            row["responses"][row["ranking"][0]], row["responses"][row["ranking"][-1]])
        if gold_of[chosen] != gold_of[rejected]:
            compared += 1
            agree += gold_of[chosen] > gold_of[rejected]
    if not rows:
        raise align_data.AlignDataError(f"align.judge={a.judge}: no prompt of {len(prompts)} got two completions the "
                                        "judge tells apart; raise align.samples_per_prompt or rl.temperature")
    output = a.output or os.path.join(workdir, "preferences.jsonl")
    if jax.process_index() == 0:
        align_data.write_preferences(output, rows)
    return dict(output=os.path.abspath(output), judge=a.judge, prompts=len(prompts), rows=len(rows),
                skipped=len(prompts) - len(rows), too_long=fits.count(False), mean_gold_reward=float(np.mean(gold)),
                gold_agreement=agree / compared if compared else None, gold_compared=compared)
