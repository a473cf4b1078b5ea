"""The `align`, `rl` and `dpo` sections of the config: keys, defaults and the rules they must meet.

Post-training (gptjax/align/): every mode reads `align`; ppo/grpo/rloo read `rl`, dpo reads `dpo`.
The network is the one in the init_from checkpoint (config.model is used only when init_from is "").
"""

import os

import ml_collections

from gptjax.config.base import fail
from gptjax.config.model import LORA_TARGETS

KL_ESTIMATORS = ("k1", "k2", "k3")  # align/losses.py kl_penalty
LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "max_len")  # align/losses.py aggregate
GRPO_ADVANTAGES = ("grpo", "dr_grpo")  # align/losses.py group_advantages (mode=rloo adds "rloo")
DPO_LOSSES = ("sigmoid", "ipo")  # align/losses.py dpo_loss
JUDGES = ("gold", "reward_model", "self")


def align_defaults() -> ml_collections.ConfigDict:
    """What every post-training mode reads: its start, data, split and batch."""
    return ml_collections.ConfigDict(
        dict(
            init_from="",  # workdir whose latest checkpoint starts the model; "" = fresh from config.model
            task="arithmetic",  # embedded task (align/tasks.py) used when align.data is "": arithmetic | shakespeare | shakespeare_concise
            data="",  # JSONL; sft: {"messages"}; reward/dpo: pairs or rankings (README, Post-training); "" = align.task
            num_examples=400,  # rows an embedded task generates (arithmetic has 400 distinct problems)
            val_fraction=0.05,  # held out for eval (reward accuracy, DPO margins, SFT loss)
            # Seeds which prompts are held out (align/data.py split_train_val): the split is by prompt, so
            # every stage and every `seed` of a pipeline keep the same held-out prompts.
            split_seed=0,
            batch_size=16,  # sft/reward/dpo: rows per step; rl: prompts per step
            reward_model="",  # ppo/grpo/rloo/label: a mode=reward workdir; "" = the task's programmatic reward
            reference="",  # ppo/grpo/rloo/dpo: frozen reference workdir; "" = align.init_from
            normalize_reward=True,  # reward: shift the score so its mean on the SFT (chosen) responses is 0
            output="",  # label: the preference JSONL written; "" = WORKDIR/preferences.jsonl
            # LoRA (sft, reward, dpo): train rank-r adapters on these projections of the init_from network, which stays
            # frozen and is not checkpointed again (gptjax/align/lora.py); 0 = train every weight
            lora_rank=0,
            lora_alpha=16.0,
            lora_targets="query,key,value,out,gate,up,down",
            quantize_base="none",  # "int8": the frozen base's kernels int8 under the adapters (QLoRA-style)
            judge="gold",  # label: gold (the task's programmatic reward) | reward_model | self (constitution prompt)
            constitution="Is the reply kind and varied? Answer yes or no.",  # label, judge=self: the question asked
            samples_per_prompt=2,  # label: completions sampled per prompt and compared
        )
    )


def rl_defaults() -> ml_collections.ConfigDict:
    """mode=ppo | grpo | rloo (rl.py)."""
    return ml_collections.ConfigDict(
        dict(
            group_size=4,  # completions sampled per prompt (grpo/rloo groups; ppo samples this many too)
            max_new_tokens=8,
            temperature=1.0,
            top_p=1.0,
            kl_coef=0.05,  # beta of the KL(policy || reference) penalty
            track_kl=True,  # with kl_coef 0, still hold the reference to log KL; False skips loading it (no KL metrics)
            kl_estimator="k1",  # k1 | k2 | k3 (Schulman, "Approximating KL")
            kl_in_reward=True,  # True: -beta*KL per token in the reward; False: beta*KL as a loss term
            adaptive_kl=False,  # ppo: Ziegler's controller moves kl_coef toward kl_target
            kl_target=6.0,  # nats per sequence
            kl_horizon=10000,
            gamma=1.0,
            lam=0.95,
            whiten_advantages=True,
            clip=0.2,  # policy ratio clip
            value_clip=0.2,  # ppo value clip (0 = off)
            vf_coef=0.1,
            entropy_coef=0.0,
            epochs=2,  # optimisation passes over each rollout batch
            minibatches=2,  # per pass
            ptx_coef=0.0,  # ppo: weight of a pretraining LM loss on the SFT data mixed in (InstructGPT's ptx)
            value_model="separate",  # ppo: separate (own trunk, from the reward model or init) | shared (policy trunk)
            advantage="grpo",  # grpo: grpo (mean/std) | dr_grpo (no std, loss summed / (B*L_max))
            loss_aggregation="token_mean",  # token_mean | seq_mean | max_len (dr_grpo forces max_len)
            missing_eos_penalty=1.0,  # subtracted from the score of a completion that never emitted <|eos|>
        )
    )


def dpo_defaults() -> ml_collections.ConfigDict:
    """mode=dpo (dpo.py)."""
    return ml_collections.ConfigDict(
        dict(
            beta=0.1,
            loss="sigmoid",  # sigmoid (DPO) | ipo
            label_smoothing=0.0,  # conservative DPO: the share of preferences assumed flipped
        )
    )


def validate(cfg, batch_shards: int) -> None:
    """Post-training keys. Whether init_from / reward_model / data exist is checked when they are opened."""
    a, r, o = cfg.align, cfg.rl, cfg.dpo
    if not a.data and a.task not in ("arithmetic", "shakespeare", "shakespeare_concise"):
        fail("align.task", a.task, "must be arithmetic, shakespeare or shakespeare_concise (or set align.data to a "
             "JSONL file)")
    if a.data and not os.path.isfile(a.data):
        fail("align.data", a.data, "does not exist; give a JSONL file (see README, Post-training) or leave it empty "
              "to use align.task")
    if a.lora_rank < 0:
        fail("align.lora_rank", a.lora_rank, "must be >= 0 (0 = train every weight)")
    if a.quantize_base != "none" and not a.lora_rank:
        fail("align.quantize_base", a.quantize_base, "quantizes the frozen base under LoRA adapters; set align.lora_rank")
    if a.lora_rank:
        if cfg.mode not in ("sft", "reward", "dpo"):
            fail("align.lora_rank", a.lora_rank, f"LoRA is supported for sft, reward and dpo; mode={cfg.mode} trains "
                 "every weight (set align.lora_rank=0)")
        if not a.init_from:
            fail("align.lora_rank", a.lora_rank, "adapts a trained network: set align.init_from")
        targets = [t.strip() for t in a.lora_targets.split(",") if t.strip()]
        if not targets or set(targets) - set(LORA_TARGETS):
            fail("align.lora_targets", a.lora_targets, f"must name some of {', '.join(LORA_TARGETS)}")
        if a.quantize_base not in ("none", "int8"):
            fail("align.quantize_base", a.quantize_base, "must be none or int8")
        if not a.lora_alpha > 0:
            fail("align.lora_alpha", a.lora_alpha, "must be > 0 (the adapter's output is scaled by alpha / rank)")
    for key in ("init_from", "reward_model", "reference"):
        if a[key] and not os.path.isdir(a[key]):
            fail(f"align.{key}", a[key], "is not a directory; give the workdir of an earlier run")
    if a.num_examples < 2 or a.batch_size < 1:
        fail("align.num_examples/batch_size", (a.num_examples, a.batch_size), "must be >= 2 and >= 1")
    if not 0.0 < a.val_fraction < 1.0:
        fail("align.val_fraction", a.val_fraction, "must be in (0, 1)")
    if a.split_seed < 0:
        fail("align.split_seed", a.split_seed, "must be a non-negative integer")
    for key in ("group_size", "max_new_tokens", "epochs", "minibatches", "kl_horizon"):
        if r[key] < 1:
            fail(f"rl.{key}", r[key], "must be >= 1")
    if cfg.mode in ("ppo", "grpo", "rloo"):
        rows = a.batch_size * r.group_size
        if rows % batch_shards or (rows // r.minibatches) % batch_shards or rows % r.minibatches:
            fail("align.batch_size", a.batch_size, f"times rl.group_size={r.group_size} ({rows} rollouts) must "
                  f"divide into rl.minibatches={r.minibatches} minibatches, each divisible by data*fsdp={batch_shards}")
    elif cfg.mode == "label" and (a.batch_size * a.samples_per_prompt) % batch_shards:
        fail("align.batch_size", a.batch_size, f"times align.samples_per_prompt={a.samples_per_prompt} (the rows "
              f"judged together) must divide by data*fsdp={batch_shards}")
    elif cfg.mode != "label" and a.batch_size % batch_shards:
        fail("align.batch_size", a.batch_size, f"must divide by data*fsdp={batch_shards}")
    if cfg.mode == "rloo" and r.group_size < 2:
        fail("rl.group_size", r.group_size, "RLOO's leave-one-out baseline needs at least 2 samples per prompt")
    if cfg.mode == "grpo" and r.group_size < 2:
        fail("rl.group_size", r.group_size, "GRPO's group baseline needs at least 2 samples per prompt")
    for key in ("kl_coef", "vf_coef", "entropy_coef", "ptx_coef", "value_clip", "missing_eos_penalty"):
        if not r[key] >= 0:
            fail(f"rl.{key}", r[key], "must be >= 0")
    if not r.temperature > 0 or not 0 < r.top_p <= 1 or not 0 < r.clip < 1 or not r.kl_target > 0:
        fail("rl.temperature/top_p/clip/kl_target", (r.temperature, r.top_p, r.clip, r.kl_target),
              "need temperature > 0, top_p in (0, 1], clip in (0, 1), kl_target > 0")
    if not (0 <= r.gamma <= 1 and 0 <= r.lam <= 1):
        fail("rl.gamma/lam", (r.gamma, r.lam), "must be in [0, 1]")
    if r.kl_estimator not in KL_ESTIMATORS:
        fail("rl.kl_estimator", r.kl_estimator, f"must be one of {', '.join(KL_ESTIMATORS)}")
    if cfg.mode in ("ppo", "grpo", "rloo") and not r.kl_in_reward and r.kl_estimator == "k1" and r.kl_coef > 0:
        fail("rl.kl_estimator", r.kl_estimator, "k1 as a loss term (rl.kl_in_reward=False) has zero expected "
              "gradient and regularises nothing; use k3 (or k2), or put the KL in the reward")
    if r.value_model not in ("separate", "shared"):
        fail("rl.value_model", r.value_model, "must be separate or shared")
    if r.advantage not in GRPO_ADVANTAGES:
        fail("rl.advantage", r.advantage, f"must be one of {', '.join(GRPO_ADVANTAGES)}")
    if r.loss_aggregation not in LOSS_AGGREGATIONS:
        fail("rl.loss_aggregation", r.loss_aggregation, f"must be one of {', '.join(LOSS_AGGREGATIONS)}")
    if not o.beta > 0 or o.loss not in DPO_LOSSES or not 0 <= o.label_smoothing < 0.5:
        fail("dpo.beta/loss/label_smoothing", (o.beta, o.loss, o.label_smoothing),
              "need beta > 0, loss sigmoid or ipo, label_smoothing in [0, 0.5)")
    if a.judge not in JUDGES:
        fail("align.judge", a.judge, f"must be one of {', '.join(JUDGES)}")
    if cfg.mode == "label" and a.judge == "reward_model" and not a.reward_model:
        fail("align.reward_model", a.reward_model, "align.judge=reward_model needs the workdir of a mode=reward run")
    if cfg.mode == "label" and a.samples_per_prompt < 2:
        fail("align.samples_per_prompt", a.samples_per_prompt, "must be >= 2 to form a preference pair")
    if cfg.mode in ("ppo", "grpo", "rloo", "dpo", "label") and not a.init_from:
        fail("align.init_from", a.init_from, f"mode={cfg.mode} starts from a trained policy; give the workdir of a "
              "mode=sft (or pretrain) run")
