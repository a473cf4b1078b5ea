"""`mode=dpo`: Direct Preference Optimisation (Rafailov et al. 2023), and IPO (Azar et al. 2023).

The policy starts from align.init_from and is pulled toward the preferred response of each pair
relative to a frozen reference (align.reference, default init_from): with h = (logp_w - ref_w) -
(logp_l - ref_l), DPO minimises -log sigmoid(beta * h) (dpo.label_smoothing mixes in the flipped
label), IPO (h - 1/(2 beta))^2 on per-token-averaged log-probs. The data are the reward model's:
align.data's preference JSONL (pairs or M-way rankings, each ranking's pairs weighted 1/C(M,2)) or
the embedded task's pairs. The reference's log-probs of every response are computed once before
training and the reference is then dropped, so training holds one network. Metrics: loss, implicit
rewards beta * (logp - ref) of chosen and rejected, their margin and accuracy, and the chosen and
rejected log-probs themselves (chosen may fall while the margin grows; that is expected).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.align.losses import dpo_loss, token_logprobs
from gptjax.align.reward import (group_arrays, preference_batch, preference_file, preference_groups,
                                 preference_shardings, preference_texts)
from gptjax.align.stage import (bucket, check_same_vocabulary, full_batches, stage_identity, start_tokenizer,
                                starting_network, supervised_stage, with_adapters)
from gptjax.parallel.mesh import batch_sharding, to_device, to_host
from gptjax.model.build import model_graphdef
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import Network, load_network


def response_logprobs(params, graphdef, tokens_RxL, prompt_len_R, lengths_R):
    """(logp_R, count_R): the summed log-prob of each row's response tokens (columns prompt_len..length-1)
    given its prompt, and how many tokens that is."""
    model = nnx.merge(graphdef, params)
    logp_RxT = token_logprobs(model(tokens_RxL[:, :-1]), tokens_RxL[:, 1:])
    target_1xT = jnp.arange(1, tokens_RxL.shape[1])[None, :]  # the column each position predicts
    mask_RxT = (target_1xT >= prompt_len_R[:, None]) & (target_1xT < lengths_R[:, None])
    return jnp.sum(logp_RxT * mask_RxT, axis=1), jnp.sum(mask_RxT, axis=1).astype(jnp.float32)


def pair_logprobs(logp_R, batch):
    """(winner_P, loser_P) of the batch's pairs, P = B * pairs per group, from per-row values logp_R."""
    logp_BxM = logp_R.reshape(batch["weight_BxP"].shape[0], -1)
    winner = jnp.take_along_axis(logp_BxM, batch["pairs_BxPx2"][..., 0], axis=1)
    loser = jnp.take_along_axis(logp_BxM, batch["pairs_BxPx2"][..., 1], axis=1)
    return winner.ravel(), loser.ravel()


def dpo_batch_loss(params, batch, graphdef, *, beta: float, kind: str, label_smoothing: float):
    """The weighted DPO / IPO loss of a batch of preference groups: (loss, (metrics, total pair weight))."""
    logp_R, count_R = response_logprobs(params, graphdef, batch["tokens_RxL"], batch["prompt_len_R"],
                                        batch["lengths_R"])
    ref_R = batch["ref_logp_R"]
    if kind == "ipo":  # IPO's margin target 1/(2 beta) is per token: average the log-probs over the response
        logp_R, ref_R = logp_R / jnp.maximum(count_R, 1.0), ref_R / jnp.maximum(count_R, 1.0)
    policy_w, policy_l = pair_logprobs(logp_R, batch)
    ref_w, ref_l = pair_logprobs(ref_R, batch)
    weight_P = batch["weight_BxP"].ravel()
    loss, metrics = dpo_loss(policy_w, policy_l, ref_w, ref_l, beta, kind, label_smoothing, weight_P)
    total = jnp.sum(weight_P)
    denominator = jnp.maximum(total, 1e-12)
    metrics.update(chosen_logp=jnp.sum(policy_w * weight_P) / denominator,
                   rejected_logp=jnp.sum(policy_l * weight_P) / denominator)
    return loss, (metrics, total)


def reference_logprobs(cfg, policy: Network, group_sets, mesh, rules, *, M: int, P: int, length: int):
    """Per group set, per group, logp_M: the frozen reference's summed log-prob of each response. The
    reference (align.reference, default the starting policy) is only held while this runs."""
    reference = load_network(cfg.align.reference, mesh, rules, what="align.reference") if cfg.align.reference else policy
    check_same_vocabulary(policy, reference, "align.reference")
    logprobs = jax.jit(functools.partial(response_logprobs, graphdef=model_graphdef(reference.model_cfg, rules)))
    rows, rows1, B = batch_sharding(mesh, rules), batch_sharding(mesh, rules, 1), cfg.align.batch_size
    out = []
    for groups in group_sets:
        group_logps = []
        for chunk, n in full_batches(groups, B):
            arrays = group_arrays(chunk, M, P, length)
            logp_R, _ = logprobs(reference.params, tokens_RxL=to_device(arrays.tokens_RxL, rows),
                                 prompt_len_R=to_device(arrays.prompt_len_R, rows1),
                                 lengths_R=to_device(arrays.lengths_R, rows1))
            group_logps += list(to_host(logp_R).reshape(B, M)[:n])
        out.append(group_logps)
    return out


def dpo(cfg, workdir: str) -> dict:
    """Trains per cfg (mode=dpo), resuming from `workdir`; returns the final metrics."""
    return run_in_mesh(_dpo, cfg, workdir)


def _dpo(cfg, workdir: str, mesh) -> dict:
    rules, o = tuple(cfg.parallel.rules), cfg.dpo
    path = preference_file(cfg, workdir)
    tokenizer = start_tokenizer(cfg, workdir, lambda: preference_texts(path, cfg))
    start = starting_network(cfg, tokenizer, mesh, rules)
    model_cfg, init = with_adapters(cfg, start.model_cfg, start.params, mesh, rules)
    train_set, val_set = preference_groups(path, cfg, tokenizer, model_cfg.max_len)
    M = max(len(g.responses) for g in train_set + val_set)
    P = M * (M - 1) // 2
    length = bucket(max(len(g.prompt) + len(r) for g in train_set + val_set for r in g.responses), model_cfg.max_len)

    # The reference's log-probs of every response, once (pitfall: a second network held all run long).
    train_ref, val_ref = reference_logprobs(cfg, start, [train_set, val_set], mesh, rules, M=M, P=P, length=length)

    def to_batch(examples, n: int) -> dict:
        """Host arrays of (group, reference logp_M) examples; only the first n count."""
        batch = preference_batch([group for group, _ in examples], n, M=M, P=P, length=length)
        batch["ref_logp_R"] = np.concatenate([ref for _, ref in examples]).astype(np.float32)
        return batch

    batch_shardings = dict(preference_shardings(mesh, rules), ref_logp_R=batch_sharding(mesh, rules, 1))
    result = supervised_stage(
        cfg, workdir, mesh, "dpo", model_cfg, tokenizer, init,
        loss_fn=functools.partial(dpo_batch_loss, graphdef=model_graphdef(model_cfg, rules), beta=o.beta, kind=o.loss,
                                  label_smoothing=o.label_smoothing),
        to_batch=to_batch, batch_shardings=batch_shardings, train_set=list(zip(train_set, train_ref)),
        val_set=list(zip(val_set, val_ref)),
        identity=stage_identity(cfg, reference=cfg.align.reference, examples=len(train_set), beta=o.beta, loss=o.loss))
    return dict(result, train_groups=len(train_set), val_groups=len(val_set))
