"""`mode=ppo | grpo | rloo`: policy-gradient RL from a trained policy, against a reward model or a
task's programmatic reward, with a KL penalty to a frozen reference.

One step = one rollout batch: align.batch_size prompts x rl.group_size completions sampled with the
KV-cache decoder (rollout.py) -> one scoring pass (old logprobs, reference logprobs, values, reward
model) -> advantages (PPO: GAE on per-token rewards, ppo.py; GRPO / RLOO: group baselines, grpo.py)
-> rl.epochs passes of rl.minibatches clipped-surrogate updates. Old logprobs are recomputed by the
training forward pass, not taken from the sampler, so at the first update ratio == 1 exactly.
The reference and reward model are arguments of the jitted functions, never updated (and the
reference is not loaded when rl.kl_coef is 0). Metrics per step: reward, gold reward (the task's
programmatic reward, always computed), KL (k1, k3), entropy, clip fraction, approx-KL, value loss,
explained variance, response length, tokens/s of rollout / score / train.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax.align import chat, grpo, ppo
from gptjax.align import data as align_data
from gptjax.align.losses import (adaptive_kl_coef, aggregate, frac_zero_std, kl_estimates, kl_penalty, masked_mean,
                                 ppo_policy_loss, ppo_value_loss)
from gptjax.align.reward import RewardModel
from gptjax.align.rollout import response_forward, sample_rollouts
from gptjax.align.sft import load_conversations, masked_lm_loss, to_arrays
from gptjax.align.stage import (StageSpec, bucket, check_same_vocabulary, epoch_batch, init_opt_state,
                                pad_rows, param_norm, params_shardings, run_stage, stage_identity, stage_optimizer,
                                start_tokenizer, starting_network, with_scalar_head)
from gptjax.align.tasks import get_task
from gptjax.data.tokenizer import PAD_ID
from gptjax.parallel.mesh import batch_sharding, replicated
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import generate
from gptjax.sample.strategies import Strategy
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import load_network
from gptjax.train.state import placed
from gptjax.train.xla_options import training_compiler_options

EVAL_PROMPTS = 64  # held-out prompts decoded greedily at each eval


def rl(cfg, workdir: str) -> dict:
    """Trains per cfg (mode=ppo, grpo or rloo), resuming from `workdir`; returns the final metrics."""
    return run_in_mesh(_rl, cfg, workdir)


@dataclasses.dataclass
class Prompts:
    texts: list[str]
    meta: list
    tokens: list[list[int]]


def task_prompts(cfg, task, tokenizer, max_len: int) -> tuple[Prompts, Prompts]:
    """(train, val) prompts of the task rendered by the chat template; too-long prompts are an error."""
    pairs = task.prompts(cfg.align.num_examples, cfg.seed)
    train, val = align_data.split_train_val(pairs, cfg.align.val_fraction, cfg.align.split_seed,
                                            lambda pair: chat.prompt_tokens(pair[0], tokenizer))

    def build(items):
        tokens = [chat.prompt_tokens(text, tokenizer) for text, _ in items]
        for (text, _), t in zip(items, tokens):
            if len(t) + cfg.rl.max_new_tokens > max_len:
                raise align_data.AlignDataError(
                    f"task {cfg.align.task} prompt {text!r} has {len(t)} tokens; with rl.max_new_tokens="
                    f"{cfg.rl.max_new_tokens} that exceeds model.max_len={max_len}; lower rl.max_new_tokens")
        return Prompts([t for t, _ in items], [m for _, m in items], tokens)

    return build(train), build(val)


def _rl(cfg, workdir: str, mesh) -> dict:
    r, mode, rules = cfg.rl, cfg.mode, tuple(cfg.parallel.rules)
    tokenizer = start_tokenizer(cfg, workdir, lambda: [])
    start = starting_network(cfg, tokenizer, mesh, rules)
    shared_value = mode == "ppo" and r.value_model == "shared"
    if shared_value:  # the value head sits on the policy's trunk
        policy_cfg, policy_init = with_scalar_head(start, jax.random.key(cfg.seed + 2), mesh, rules)
    else:
        policy_cfg, policy_init = start.model_cfg, start.params
    reference = None
    if r.kl_coef > 0 or r.track_kl:  # pitfall: a reference nobody reads costs a model's memory
        reference = load_network(cfg.align.reference, mesh, rules, what="align.reference") if cfg.align.reference else start
        if reference is start:  # its own buffers: the policy's are donated to (and overwritten by) each update
            reference = dataclasses.replace(start, params=jax.tree.map(jnp.copy, start.params))
        check_same_vocabulary(start, reference, "align.reference")
    rm = None
    if cfg.align.reward_model:
        rm = RewardModel(cfg.align.reward_model, mesh, rules)
        check_same_vocabulary(start, rm.network, "align.reward_model")
    task = get_task(cfg.align.task)
    train_prompts, val_prompts = task_prompts(cfg, task, tokenizer, policy_cfg.max_len)
    N, G, B = r.max_new_tokens, r.group_size, cfg.align.batch_size
    R = B * G
    length = bucket(max(map(len, train_prompts.tokens + val_prompts.tokens)) + N, policy_cfg.max_len)
    if rm is not None and length > rm.model_cfg.max_len:
        raise align_data.AlignDataError(f"rollouts of {length} tokens exceed the reward model's context "
                                        f"({rm.model_cfg.max_len}); lower rl.max_new_tokens")

    policy_graphdef = model_graphdef(policy_cfg)
    ref_graphdef = model_graphdef(reference.model_cfg) if reference is not None else None
    updates_per_step = r.epochs * r.minibatches
    opt = stage_optimizer(cfg, policy_cfg, mesh, rules, updates_per_step)
    separate_value = mode == "ppo" and not shared_value
    if separate_value:  # InstructGPT: the value model starts from the reward model when there is one
        value_cfg, value_init = with_scalar_head(rm.network if rm else start, jax.random.key(cfg.seed + 3), mesh, rules)
        value_init = jax.tree.map(jnp.copy, value_init)  # trained in place; the reward model / policy stay intact
        value_graphdef = model_graphdef(value_cfg)
        value_opt = stage_optimizer(cfg, value_cfg, mesh, rules, updates_per_step)
    rows, rows1 = batch_sharding(mesh, rules), batch_sharding(mesh, rules, 1)
    train_shardings = dict(opt_state=opt.shardings, opt_state_step=replicated(mesh), kl_coef=replicated(mesh))
    if separate_value:
        train_shardings.update(value_params=params_shardings(value_cfg, mesh, rules),
                               value_opt_state=value_opt.shardings)
    item_shardings = dict(params=params_shardings(policy_cfg, mesh, rules), train=train_shardings)

    ptx = None
    if mode == "ppo" and r.ptx_coef > 0:  # InstructGPT's pretraining mix: the LM loss on demonstrations
        ptx, _ = load_conversations(cfg, tokenizer, policy_cfg.max_len)
        ptx_length = bucket(max(len(c.tokens) for c in ptx), policy_cfg.max_len)

    def fresh():
        train = dict(opt_state=init_opt_state(opt, policy_init), opt_state_step=jnp.zeros((), jnp.int32),
                     kl_coef=jnp.asarray(r.kl_coef, jnp.float32))
        if separate_value:
            train.update(value_params=value_init, value_opt_state=init_opt_state(value_opt, value_init))
        return dict(params=policy_init, train=train)

    strategy = Strategy(temperature=r.temperature, top_p=r.top_p)

    # --- the scoring pass: one forward of each network over the rollout batch ------------------------------
    @jax.jit
    def score(params, value_params, ref_params, batch):
        out = response_forward(params, policy_graphdef, batch["tokens_RxL"], batch["positions_RxN"],
                               batch["response_RxN"], with_values=shared_value, temperature=r.temperature)
        scored = dict(old_logp=out["logp"], entropy=out["entropy"])
        scored["ref_logp"] = (out["logp"] if ref_params is None else response_forward(
            ref_params, ref_graphdef, batch["tokens_RxL"], batch["positions_RxN"], batch["response_RxN"],
            temperature=r.temperature)["logp"])
        if shared_value:
            scored["values"] = out["values"]
        elif separate_value:
            scored["values"] = response_forward(value_params, value_graphdef, batch["tokens_RxL"], batch["positions_RxN"],
                                                batch["response_RxN"], with_values=True)["values"]
        return jax.tree.map(jax.lax.stop_gradient, scored)

    # --- advantages ----------------------------------------------------------------------------------------
    @jax.jit
    def advantages(scored, scores_R, mask_RxN, kl_coef):
        kl_RxN = kl_penalty(scored["old_logp"], scored["ref_logp"], r.kl_estimator) * mask_RxN
        if mode == "ppo":
            return ppo.advantages(scored["values"], scores_R, kl_RxN, mask_RxN, kl_coef if r.kl_in_reward else 0.0,
                                  gamma=r.gamma, lam=r.lam, whiten=r.whiten_advantages)
        sequence_R = scores_R - (kl_coef * kl_RxN.sum(-1) if r.kl_in_reward else 0.0)
        kind = "rloo" if mode == "rloo" else r.advantage
        return grpo.advantages(sequence_R.reshape(-1, G), mask_RxN, kind)

    aggregation = "max_len" if mode == "grpo" and r.advantage == "dr_grpo" else r.loss_aggregation

    # --- one minibatch update ------------------------------------------------------------------------------
    def policy_loss(params, mb, kl_coef):
        out = response_forward(params, policy_graphdef, mb["tokens_RxL"], mb["positions_RxN"], mb["response_RxN"],
                               with_values=shared_value, temperature=r.temperature)
        mask = mb["mask_RxN"]
        loss, m = ppo_policy_loss(out["logp"], mb["old_logp"], mb["advantages"], mask, r.clip, mode=aggregation)
        m = dict(m, policy_loss=loss)
        if not r.kl_in_reward:  # KL as a loss term: its gradient flows through the policy's logprobs
            kl_loss = aggregate(kl_penalty(out["logp"], mb["ref_logp"], r.kl_estimator), mask, aggregation)
            loss, m["kl_loss"] = loss + kl_coef * kl_loss, kl_loss
        if r.entropy_coef:
            loss = loss - r.entropy_coef * masked_mean(out["entropy"], mask)
        if shared_value:
            value_loss, value_clipfrac = ppo_value_loss(out["values"], mb["old_values"], mb["returns"], mask,
                                                        r.value_clip)
            loss, m["value_loss"], m["value_clipfrac"] = loss + r.vf_coef * value_loss, value_loss, value_clipfrac
        if ptx is not None:
            lm_loss, _ = masked_lm_loss(params, policy_graphdef, mb["ptx_tokens"], mb["ptx_mask"])
            loss, m["ptx_loss"] = loss + r.ptx_coef * lm_loss, lm_loss
        return loss, m

    def value_loss_fn(value_params, mb):
        values = response_forward(value_params, value_graphdef, mb["tokens_RxL"], mb["positions_RxN"],
                                  mb["response_RxN"], with_values=True)["values"]
        return ppo_value_loss(values, mb["old_values"], mb["returns"], mb["mask_RxN"], r.value_clip)

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=training_compiler_options(mesh))
    def update(items, mb):
        params, train = items["params"], dict(items["train"])
        (loss, m), grads = jax.value_and_grad(policy_loss, has_aux=True)(params, mb, train["kl_coef"])
        updates, train["opt_state"] = opt.tx.update(grads, train["opt_state"], params)
        params = optax.apply_updates(params, updates)
        m = dict(m, loss=loss, grad_norm=optax.tree.norm(grads), lr=opt.schedule(train["opt_state_step"]))
        train["opt_state_step"] = train["opt_state_step"] + 1
        if separate_value:
            (value_loss, value_clipfrac), value_grads = jax.value_and_grad(value_loss_fn, has_aux=True)(
                train["value_params"], mb)
            value_updates, train["value_opt_state"] = value_opt.tx.update(value_grads, train["value_opt_state"],
                                                                          train["value_params"])
            train["value_params"] = optax.apply_updates(train["value_params"], value_updates)
            m.update(value_loss=value_loss, value_clipfrac=value_clipfrac)
        return dict(params=params, train=train), m

    def frozen_norms() -> dict:
        """Norms of the live reference and reward-model buffers: constant unless something writes to them."""
        norms = {}
        if reference is not None:
            norms["reference_param_norm"] = float(param_norm(reference.params))
        if rm is not None:
            norms["reward_model_param_norm"] = float(param_norm(rm.params))
        return norms

    def programmatic_rewards(prompt_ids, texts):
        return np.array([task.reward(train_prompts.meta[i], t) for i, t in zip(prompt_ids, texts)], np.float32)

    def step(items, s):
        key = jax.random.fold_in(jax.random.key(cfg.seed), s)
        rollout_key, shuffle_key = jax.random.split(key)
        prompt_ids = np.repeat(epoch_batch(len(train_prompts.tokens), B, cfg.seed, s), G)
        clock = time.perf_counter()
        ro = sample_rollouts(policy_cfg, items["params"], [train_prompts.tokens[i] for i in prompt_ids], rollout_key,
                             max_new_tokens=N, strategy=strategy, length=length, tokenizer=tokenizer)
        rollout_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        batch = jax.device_put(dict(tokens_RxL=ro.tokens_RxL, positions_RxN=ro.positions_RxN,
                                    response_RxN=ro.response_RxN, mask_RxN=ro.mask_RxN), rows)
        scored = score(items["params"], items["train"].get("value_params"),
                       reference.params if reference is not None else None, batch)
        gold_R = programmatic_rewards(prompt_ids, ro.texts)
        if rm is not None:
            scores_R = np.asarray(rm.score_device(jax.device_put(ro.tokens_RxL, rows),
                                                  jax.device_put(ro.last_index_R + 1, rows1)))
        else:
            scores_R = gold_R
        scores_R = scores_R - r.missing_eos_penalty * ~ro.stopped_R  # pitfall: no EOS, no full score
        adv = advantages(scored, jax.device_put(scores_R.astype(np.float32), rows1), batch["mask_RxN"],
                         items["train"]["kl_coef"])
        jax.block_until_ready(adv)
        score_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        data = dict(batch, old_logp=scored["old_logp"], ref_logp=scored["ref_logp"], advantages=adv["advantages"])
        if mode == "ppo":
            data.update(old_values=scored["values"], returns=adv["returns"])
        update_metrics = []
        for epoch in range(r.epochs):
            order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), R))
            for m_index, chunk in enumerate(np.split(order, r.minibatches)):
                mb = jax.device_put(jax.tree.map(lambda x: np.asarray(x)[chunk], data), rows)
                if ptx is not None:
                    demos = [ptx[i] for i in epoch_batch(len(ptx), len(chunk), cfg.seed + 1,
                                                         (s - 1) * r.epochs * r.minibatches + epoch * r.minibatches
                                                         + m_index + 1)]
                    mb["ptx_tokens"], mb["ptx_mask"] = jax.device_put(to_arrays(demos, ptx_length), rows)
                items, m = update(items, mb)
                update_metrics.append(m)
        update_metrics = jax.device_get(update_metrics)
        train_seconds = time.perf_counter() - clock

        mask = ro.mask_RxN
        old_logp, ref_logp = np.asarray(scored["old_logp"]), np.asarray(scored["ref_logp"])
        kls = jax.device_get(kl_estimates(old_logp, ref_logp))
        metrics = {k: float(np.mean([m[k] for m in update_metrics])) for k in update_metrics[0]}
        kl_sequence = float(np.mean((kls["k1"] * mask).sum(-1)))
        if reference is not None:  # without one (kl_coef 0, track_kl off) there is no KL to report
            metrics.update(kl_k1=kl_sequence, kl_k3=float(np.mean((kls["k3"] * mask).sum(-1))))
        metrics.update(
            reward_mean=float(scores_R.mean()), reward_std=float(scores_R.std()), gold_reward=float(gold_R.mean()),
            entropy=float(masked_mean(np.asarray(scored["entropy"]), mask)),
            response_length=float(ro.length_R.mean()), eos_fraction=float(ro.stopped_R.mean()),
            frac_reward_zero_std=float(frac_zero_std(scores_R.reshape(-1, G))) if G > 1 else 0.0,
            kl_coef=float(items["train"]["kl_coef"]), param_norm=float(param_norm(items["params"])),
            **frozen_norms(),
            rollout_tokens_per_sec=float(ro.length_R.sum() / max(rollout_seconds, 1e-9)),
            score_tokens_per_sec=float(R * length / max(score_seconds, 1e-9)),
            train_tokens_per_sec=float(r.epochs * R * length / max(train_seconds, 1e-9)),
            rollout_seconds=rollout_seconds, score_seconds=score_seconds, train_seconds=train_seconds)
        if mode == "ppo":
            metrics["explained_variance"] = ppo.explained_variance(np.asarray(scored["values"]),
                                                                   np.asarray(adv["returns"]), mask)
        if mode == "ppo" and r.adaptive_kl:
            new_coef = adaptive_kl_coef(metrics["kl_coef"], kl_sequence, r.kl_target, R, r.kl_horizon)
            items["train"]["kl_coef"] = jax.device_put(jnp.asarray(new_coef, jnp.float32), replicated(mesh))
        return items, metrics

    def evaluate(items):
        """Held-out prompts, completed greedily ("reward": the task's reward, arithmetic: accuracy;
        "proxy_reward": the reward model's score) and sampled as in training with a fixed key
        ("sampled_reward", "sampled_proxy_reward"); and greedily on training prompts ("train_reward")."""
        count = min(EVAL_PROMPTS, len(val_prompts.tokens))
        prompts, result = val_prompts.tokens[:count], {}
        for prefix, strategy_now in (("", Strategy(temperature=0.0)), ("sampled_", strategy)):
            completions = generate(policy_cfg, items["params"], prompts, max_new_tokens=N, strategy=strategy_now,
                                   seed=cfg.seed, tokenizer=tokenizer)
            result[f"{prefix}reward"] = float(np.mean([task.reward(val_prompts.meta[i], c.text)
                                                       for i, c in enumerate(completions)]))
            if rm is not None:
                result[f"{prefix}proxy_reward"] = float(np.mean(rm(*_rows(prompts, completions, length))))
        train_count = min(EVAL_PROMPTS, len(train_prompts.tokens))
        trained_on = generate(policy_cfg, items["params"], train_prompts.tokens[:train_count], max_new_tokens=N,
                              strategy=Strategy(temperature=0.0), tokenizer=tokenizer)
        result["train_reward"] = float(np.mean([task.reward(train_prompts.meta[i], c.text)
                                                for i, c in enumerate(trained_on)]))
        return result

    abstract = placed(jax.eval_shape(fresh), item_shardings)
    # epochs x minibatches updates per step set the LR schedule's length (stage_optimizer), like train.steps
    identity = stage_identity(cfg, reference=cfg.align.reference, reward_model=cfg.align.reward_model,
                              group_size=G, max_new_tokens=N, updates_per_step=updates_per_step)
    spec = StageSpec(mode, policy_cfg, tokenizer, fresh, abstract, step, evaluate, identity=identity)
    return run_stage(cfg, workdir, spec)


def _rows(prompts, completions, length):
    """(tokens_RxL, lengths_R): prompt + completion rows right-padded (a reward model's input)."""
    rows = [list(p) + c.tokens for p, c in zip(prompts, completions)]
    return pad_rows(rows, length, PAD_ID), np.array([len(x) for x in rows], np.int32)
