"""`mode=ppo | grpo | rloo`: policy-gradient RL from a trained policy, against a reward model or a
task's programmatic reward, with a KL penalty to a frozen reference.

One step = one rollout batch: align.batch_size prompts x rl.group_size completions sampled with the
KV-cache decoder (rollout.py) -> one scoring pass (old logprobs, reference logprobs, values, reward
model) -> advantages (PPO: GAE on per-token rewards, ppo.py; GRPO / RLOO: group baselines, grpo.py)
-> rl.epochs passes of rl.minibatches clipped-surrogate updates, shuffled and sliced on device in one
jitted call (`update_on_rollouts`); step metrics are computed in the jitted functions. Old logprobs are recomputed by the
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
import ml_collections
import numpy as np
import optax
from flax import nnx

from gptjax.align import chat, grpo, ppo
from gptjax.align import data as align_data
from gptjax.align.losses import (adaptive_kl_coef, aggregate, frac_zero_std, kl_estimates, kl_penalty, masked_mean,
                                 ppo_policy_loss, ppo_value_loss)
from gptjax.align.reward import RewardModel
from gptjax.align.rollout import response_forward, sample_rollouts
from gptjax.align.sft import load_conversations, masked_lm_loss, to_arrays
from gptjax.align.stage import (bucket, check_same_vocabulary, epoch_batch, init_opt_state,
                                param_norm, params_shardings, run_stage, stage_identity, stage_optimizer,
                                start_tokenizer, starting_network, with_scalar_head)
from gptjax.align.tasks import get_task
from gptjax.parallel.mesh import batch_sharding, replicated, to_device, to_host
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import generate
from gptjax.sample.search import token_batch
from gptjax.sample.strategies import Strategy
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import Network, load_network
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
                                            lambda pair: align_data.prompt_key(pair[0]))

    def build(items):
        tokens = [chat.prompt_tokens(text, tokenizer) for text, _ in items]
        for (text, _), t in zip(items, tokens):
            if len(t) + cfg.rl.max_new_tokens > max_len:
                raise align_data.AlignDataError(
                    f"task {cfg.align.task} prompt {text!r} has {len(t)} tokens; with rl.max_new_tokens="
                    f"{cfg.rl.max_new_tokens} that exceeds model.max_len={max_len}; lower rl.max_new_tokens")
        return Prompts([t for t, _ in items], [m for _, m in items], tokens)

    return build(train), build(val)


@dataclasses.dataclass
class Networks:
    """The networks an RL run holds: the policy it trains, the frozen reference and reward model, and
    PPO's value model (a head on the policy's trunk, or a separate network trained beside it)."""

    policy_cfg: ml_collections.ConfigDict
    policy_init: dict
    policy: nnx.GraphDef
    shared_value: bool  # PPO's value head sits on the policy's trunk
    reference: Network | None  # None when no KL is computed (kl_coef 0, track_kl off)
    reward_model: RewardModel | None  # None: the task's programmatic reward is the reward
    rules: tuple = ()  # the logical-axis rules every network's activations are constrained by
    value_cfg: ml_collections.ConfigDict | None = None  # PPO's separate value model
    value_init: dict | None = None

    @property
    def reference_graphdef(self):
        return model_graphdef(self.reference.model_cfg, self.rules) if self.reference is not None else None

    @property
    def value_graphdef(self):
        return model_graphdef(self.value_cfg, self.rules) if self.value_cfg is not None else None


def load_networks(cfg, tokenizer, mesh, rules) -> Networks:
    r, mode = cfg.rl, cfg.mode
    start = starting_network(cfg, tokenizer, mesh, rules)
    shared_value = mode == "ppo" and r.value_model == "shared"
    if shared_value:
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
    nets = Networks(policy_cfg, policy_init, model_graphdef(policy_cfg, rules), shared_value, reference, rm, rules)
    if mode == "ppo" and not shared_value:  # InstructGPT: the value model starts from the reward model if any
        nets.value_cfg, value_init = with_scalar_head(rm.network if rm else start, jax.random.key(cfg.seed + 3),
                                                      mesh, rules)
        nets.value_init = jax.tree.map(jnp.copy, value_init)  # trained in place; the reward model stays intact
    return nets


def score_rollouts(params, value_params, ref_params, batch, scores_R, kl_coef, *, nets: Networks, r, mode: str):
    """The scoring pass (one forward of each network over the rollout batch) and the advantages:
    (the update's data: batch + old/ref logp, advantages (PPO: old values, returns); device metrics)."""
    forward = functools.partial(response_forward, tokens_RxL=batch["tokens_RxL"], positions_RxE=batch["positions_RxE"],
                                response_RxE=batch["response_RxE"], temperature=r.temperature)
    mask_RxE = batch["mask_RxE"]
    out = forward(params, nets.policy, with_values=nets.shared_value)
    ref_logp = out["logp"] if ref_params is None else forward(ref_params, nets.reference_graphdef)["logp"]
    old_logp = out["logp"]
    data = dict(batch, old_logp=old_logp, ref_logp=ref_logp)
    kl_RxE = kl_penalty(old_logp, ref_logp, r.kl_estimator) * mask_RxE
    metrics = dict(entropy=masked_mean(out["entropy"], mask_RxE), reward_mean=jnp.mean(scores_R),
                   reward_std=jnp.std(scores_R))
    G = r.group_size
    metrics["frac_reward_zero_std"] = frac_zero_std(scores_R.reshape(-1, G)) if G > 1 else jnp.zeros(())
    if ref_params is not None:  # without a reference there is no KL to report
        kls = kl_estimates(old_logp, ref_logp)
        metrics.update(kl_k1=jnp.mean(jnp.sum(kls["k1"] * mask_RxE, -1)), kl_k3=jnp.mean(jnp.sum(kls["k3"] * mask_RxE, -1)))
    if mode == "ppo":
        values = out["values"] if nets.shared_value else forward(value_params, nets.value_graphdef,
                                                                 with_values=True)["values"]
        adv = ppo.advantages(values, scores_R, kl_RxE, mask_RxE, kl_coef if r.kl_in_reward else 0.0,
                             gamma=r.gamma, lam=r.lam, whiten=r.whiten_advantages)
        data.update(old_values=values, returns=adv["returns"])
        metrics["explained_variance"] = ppo.explained_variance(values, adv["returns"], mask_RxE)
    else:
        sequence_R = scores_R - (kl_coef * kl_RxE.sum(-1) if r.kl_in_reward else 0.0)
        adv = grpo.advantages(sequence_R.reshape(-1, G), mask_RxE, "rloo" if mode == "rloo" else r.advantage)
    data["advantages"] = adv["advantages"]
    return jax.tree.map(jax.lax.stop_gradient, data), metrics


def policy_loss(params, mb, kl_coef, *, nets: Networks, r, aggregation: str, ptx: bool):
    """The clipped surrogate of one minibatch, plus the KL loss (when not in the reward), the entropy
    bonus, the shared value head's loss and the pretraining mix: (loss, metrics)."""
    out = response_forward(params, nets.policy, mb["tokens_RxL"], mb["positions_RxE"], mb["response_RxE"],
                           with_values=nets.shared_value, temperature=r.temperature)
    mask = mb["mask_RxE"]
    loss, m = ppo_policy_loss(out["logp"], mb["old_logp"], mb["advantages"], mask, r.clip, mode=aggregation)
    m = dict(m, policy_loss=loss)
    if not r.kl_in_reward:  # KL as a loss term: its gradient flows through the policy's logprobs
        kl_loss = aggregate(kl_penalty(out["logp"], mb["ref_logp"], r.kl_estimator), mask, aggregation)
        loss, m["kl_loss"] = loss + kl_coef * kl_loss, kl_loss
    if r.entropy_coef:
        loss = loss - r.entropy_coef * masked_mean(out["entropy"], mask)
    if nets.shared_value:
        value_loss, value_clipfrac = ppo_value_loss(out["values"], mb["old_values"], mb["returns"], mask, r.value_clip)
        loss, m["value_loss"], m["value_clipfrac"] = loss + r.vf_coef * value_loss, value_loss, value_clipfrac
    if ptx:
        lm_loss, _ = masked_lm_loss(params, nets.policy, mb["ptx_tokens"], mb["ptx_mask"])
        loss, m["ptx_loss"] = loss + r.ptx_coef * lm_loss, lm_loss
    return loss, m


def value_model_loss(value_params, mb, *, nets: Networks, r):
    """PPO's separate value model's clipped loss on one minibatch: (loss, clip fraction)."""
    values = response_forward(value_params, nets.value_graphdef, mb["tokens_RxL"], mb["positions_RxE"],
                              mb["response_RxE"], with_values=True)["values"]
    return ppo_value_loss(values, mb["old_values"], mb["returns"], mb["mask_RxE"], r.value_clip)


def update_on_rollouts(items, data, key, ptx_batches, *, nets: Networks, r, opt, value_opt, aggregation: str):
    """rl.epochs passes of rl.minibatches updates over the scored rollouts `data`, shuffled and sliced on
    device (each epoch a permutation keyed by fold_in(key, epoch)); `ptx_batches` stacks each update's
    demonstrations (or is None). Returns (items, the metrics averaged over the updates)."""
    R = data["tokens_RxL"].shape[0]
    order_UxR = jnp.stack([jax.random.permutation(jax.random.fold_in(key, epoch), R)
                           for epoch in range(r.epochs)]).reshape(r.epochs * r.minibatches, R // r.minibatches)
    loss_fn = functools.partial(policy_loss, nets=nets, r=r, aggregation=aggregation, ptx=ptx_batches is not None)

    def one_update(items, inputs):
        rows_R, ptx = inputs
        mb = dict(jax.tree.map(lambda x: x[rows_R], data), **(ptx or {}))
        params, train = items["params"], dict(items["train"])
        (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, train["kl_coef"])
        updates, train["opt_state"] = opt.tx.update(grads, train["opt_state"], params)
        params = optax.apply_updates(params, updates)
        m = dict(m, loss=loss, grad_norm=optax.tree.norm(grads), lr=opt.schedule(train["opt_state_step"]))
        train["opt_state_step"] = train["opt_state_step"] + 1
        if value_opt is not None:
            (value_loss, value_clipfrac), value_grads = jax.value_and_grad(
                functools.partial(value_model_loss, nets=nets, r=r), has_aux=True)(train["value_params"], mb)
            value_updates, train["value_opt_state"] = value_opt.tx.update(value_grads, train["value_opt_state"],
                                                                          train["value_params"])
            train["value_params"] = optax.apply_updates(train["value_params"], value_updates)
            m.update(value_loss=value_loss, value_clipfrac=value_clipfrac)
        return dict(params=params, train=train), m

    items, metrics_U = jax.lax.scan(one_update, items, (order_UxR, ptx_batches))
    return items, jax.tree.map(jnp.mean, metrics_U)


def _rl(cfg, workdir: str, mesh) -> dict:
    r, mode, rules = cfg.rl, cfg.mode, tuple(cfg.parallel.rules)
    tokenizer = start_tokenizer(cfg, workdir, lambda: [])
    nets = load_networks(cfg, tokenizer, mesh, rules)
    reference, rm, policy_cfg = nets.reference, nets.reward_model, nets.policy_cfg
    task = get_task(cfg.align.task)
    train_prompts, val_prompts = task_prompts(cfg, task, tokenizer, policy_cfg.max_len)
    E, G, B = r.max_new_tokens, r.group_size, cfg.align.batch_size
    R = B * G
    length = bucket(max(map(len, train_prompts.tokens + val_prompts.tokens)) + E, policy_cfg.max_len)
    if rm is not None and length > rm.model_cfg.max_len:
        raise align_data.AlignDataError(f"rollouts of {length} tokens exceed the reward model's context "
                                        f"({rm.model_cfg.max_len}); lower rl.max_new_tokens")

    updates_per_step = r.epochs * r.minibatches
    opt = stage_optimizer(cfg, policy_cfg, mesh, rules, updates_per_step)
    value_opt = stage_optimizer(cfg, nets.value_cfg, mesh, rules, updates_per_step) if nets.value_cfg else None
    rows, rows1 = batch_sharding(mesh, rules), batch_sharding(mesh, rules, 1)
    train_shardings = dict(opt_state=opt.shardings, opt_state_step=replicated(mesh), kl_coef=replicated(mesh))
    if value_opt is not None:
        train_shardings.update(value_params=params_shardings(nets.value_cfg, mesh, rules),
                               value_opt_state=value_opt.shardings)
    item_shardings = dict(params=params_shardings(policy_cfg, mesh, rules), train=train_shardings)

    ptx = None
    if mode == "ppo" and r.ptx_coef > 0:  # InstructGPT's pretraining mix: the LM loss on demonstrations
        ptx, _ = load_conversations(cfg, tokenizer, policy_cfg.max_len)
        ptx_length = bucket(max(len(c.tokens) for c in ptx), policy_cfg.max_len)

    def ptx_batches(s: int):
        """Each of step s's updates' demonstrations, stacked: {ptx_tokens, ptx_mask} (U, R/M, L), or None."""
        if ptx is None:
            return None
        first = (s - 1) * updates_per_step
        arrays = [to_arrays([ptx[i] for i in epoch_batch(len(ptx), R // r.minibatches, cfg.seed + 1, first + u + 1)],
                            ptx_length) for u in range(updates_per_step)]
        return dict(ptx_tokens=np.stack([a[0] for a in arrays]), ptx_mask=np.stack([a[1] for a in arrays]))

    def fresh():
        train = dict(opt_state=init_opt_state(opt, nets.policy_init), opt_state_step=jnp.zeros((), jnp.int32),
                     kl_coef=jnp.asarray(r.kl_coef, jnp.float32))
        if value_opt is not None:
            train.update(value_params=nets.value_init, value_opt_state=init_opt_state(value_opt, nets.value_init))
        return dict(params=nets.policy_init, train=train)

    strategy = Strategy(temperature=r.temperature, top_p=r.top_p)
    aggregation = "max_len" if mode == "grpo" and r.advantage == "dr_grpo" else r.loss_aggregation
    score = jax.jit(functools.partial(score_rollouts, nets=nets, r=r, mode=mode))
    update = jax.jit(functools.partial(update_on_rollouts, nets=nets, r=r, opt=opt, value_opt=value_opt,
                                       aggregation=aggregation),
                     in_shardings=(item_shardings, rows, None, None), out_shardings=(item_shardings, replicated(mesh)),
                     donate_argnums=0, compiler_options=training_compiler_options(mesh))
    frozen = {name: network.params for name, network in (("reference", reference), ("reward_model", rm))
              if network is not None}

    def step(items, s):
        """One rollout batch: sample (host prompts -> device completions), score it, then update on it."""
        rollout_key, shuffle_key = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), s))
        prompt_ids = np.repeat(epoch_batch(len(train_prompts.tokens), B, cfg.seed, s), G)
        clock = time.perf_counter()
        ro = sample_rollouts(policy_cfg, items["params"], [train_prompts.tokens[i] for i in prompt_ids], rollout_key,
                             max_new_tokens=E, strategy=strategy, length=length, tokenizer=tokenizer, rules=rules)
        rollout_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        batch = to_device(dict(tokens_RxL=ro.tokens_RxL, positions_RxE=ro.positions_RxE,
                                    response_RxE=ro.response_RxE, mask_RxE=ro.mask_RxE), rows)
        gold_R = np.array([task.reward(train_prompts.meta[i], t) for i, t in zip(prompt_ids, ro.texts)], np.float32)
        if rm is not None:
            scores_R = rm.score_device(batch["tokens_RxL"], to_device(ro.last_index_R + 1, rows1))
        else:
            scores_R = to_device(gold_R, rows1)
        scores_R = scores_R - r.missing_eos_penalty * to_device(~ro.stopped_R, rows1)  # no EOS, no full score
        data, metrics = score(items["params"], items["train"].get("value_params"),
                              reference.params if reference is not None else None, batch, scores_R,
                              items["train"]["kl_coef"])
        jax.block_until_ready(data)
        kl_coef = float(to_host(items["train"]["kl_coef"]))  # a host copy: the update donates the device one
        score_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        items, update_metrics = update(items, data, shuffle_key, ptx_batches(s))
        jax.block_until_ready(update_metrics)
        train_seconds = time.perf_counter() - clock
        metrics.update(update_metrics, kl_coef=kl_coef, gold_reward=float(gold_R.mean()), param_norm=param_norm(items["params"]),
                       response_length=float(ro.length_R.mean()), eos_fraction=float(ro.stopped_R.mean()),
                       **{f"{name}_param_norm": param_norm(p) for name, p in frozen.items()},  # constant unless written
                       rollout_tokens_per_sec=float(ro.length_R.sum() / max(rollout_seconds, 1e-9)),
                       score_tokens_per_sec=float(R * length / max(score_seconds, 1e-9)),
                       train_tokens_per_sec=float(r.epochs * R * length / max(train_seconds, 1e-9)),
                       rollout_seconds=rollout_seconds, score_seconds=score_seconds, train_seconds=train_seconds)
        if mode == "ppo" and r.adaptive_kl:
            new_coef = adaptive_kl_coef(kl_coef, float(metrics["kl_k1"]), r.kl_target, R, r.kl_horizon)
            items["train"]["kl_coef"] = to_device(np.float32(new_coef), replicated(mesh))
        return items, metrics

    def evaluate(items):
        return evaluate_policy(items["params"], policy_cfg, tokenizer, task, train_prompts, val_prompts, rm,
                               max_new_tokens=E, strategy=strategy, seed=cfg.seed, rules=rules)

    # epochs x minibatches updates per step set the LR schedule's length (stage_optimizer), like train.steps
    identity = stage_identity(cfg, reference=cfg.align.reference, reward_model=cfg.align.reward_model,
                              group_size=G, max_new_tokens=E, updates_per_step=updates_per_step)
    return run_stage(cfg, workdir, mode, policy_cfg, tokenizer, fresh=fresh,
                     abstract=placed(jax.eval_shape(fresh), item_shardings), step=step, evaluate=evaluate,
                     identity=identity)


def evaluate_policy(params, policy_cfg, tokenizer, task, train_prompts: Prompts, val_prompts: Prompts, rm, *,
                    max_new_tokens: int, strategy: Strategy, seed: int, rules: tuple) -> dict:
    """Held-out prompts, completed greedily ("reward": the task's reward, arithmetic: accuracy;
    "proxy_reward": the reward model's score) and sampled as in training with a fixed key
    ("sampled_reward", "sampled_proxy_reward"); and greedily on training prompts ("train_reward")."""
    count = min(EVAL_PROMPTS, len(val_prompts.tokens))
    prompts, result = val_prompts.tokens[:count], {}
    for prefix, strategy_now in (("", Strategy(temperature=0.0)), ("sampled_", strategy)):
        completions = generate(policy_cfg, params, prompts, max_new_tokens=max_new_tokens, strategy=strategy_now,
                               seed=seed, tokenizer=tokenizer, rules=rules)
        result[f"{prefix}reward"] = float(np.mean([task.reward(val_prompts.meta[i], c.text)
                                                   for i, c in enumerate(completions)]))
        if rm is not None:
            result[f"{prefix}proxy_reward"] = float(np.mean(rm(*token_batch(prompts, completions))))
    train_count = min(EVAL_PROMPTS, len(train_prompts.tokens))
    trained_on = generate(policy_cfg, params, train_prompts.tokens[:train_count], max_new_tokens=max_new_tokens,
                          strategy=Strategy(temperature=0.0), tokenizer=tokenizer, rules=rules)
    result["train_reward"] = float(np.mean([task.reward(train_prompts.meta[i], c.text)
                                            for i, c in enumerate(trained_on)]))
    return result
