"""The member axis: the K models of one shape that one training run trains (`gptjax.train.loop`).

Members read the same batches (data order from `cfg.seed`) and differ in peak learning rate and init seed.
  Members.solo(cfg)       plain pretraining: K = 1, its state stored without the member axis (the layout
                          every reader of a pretraining checkpoint expects); divergence is an error
  Members.group(members)  a sweep group: every state leaf has a leading (K,) axis, replicated over the mesh;
                          the step is `jax.vmap`-ped over it; each member's rate lives in its optimizer state;
                          a diverged member is marked and the others go on
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gptjax.train.checkpoint import optimizer_identity
from gptjax.train.optim import make_optimizer
from gptjax.train.state import StateSpec, initial_state, placed, state_spec


class MemberLR(NamedTuple):
    lr: jax.Array  # this member's peak learning rate; a (K,) vector once stacked


def scale_by_member_lr(initial_lr) -> optax.GradientTransformation:
    """Multiplies updates by the learning rate kept in the optimizer state. `initial_lr` only seeds
    `init`; `update` reads the state, so a vmapped state carries one learning rate per member."""

    def init(params):
        del params
        return MemberLR(jnp.asarray(initial_lr, jnp.float32))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.lr.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def unit_optim(cfg):
    """`cfg.optim` with a unit peak learning rate: the members' own rates scale it (optim.lr is unused)."""
    unit = cfg.optim.copy_and_resolve_references()
    unit.lr = 1.0
    return unit


def member_optimizer(cfg, lr):
    """AdamW as configured but with a unit peak learning rate, then scaled by `lr` from the state.
    AdamW's update (Adam direction + decoupled decay) is linear in the learning rate, so this equals
    `make_optimizer` with `optim.lr = lr`. Returns (optimizer, unit schedule)."""
    tx, unit_schedule = make_optimizer(unit_optim(cfg), cfg.train.steps, cfg.model)
    return optax.chain(tx, scale_by_member_lr(lr)), unit_schedule


def with_member_axis(sharding: NamedSharding) -> NamedSharding:
    """One member's sharding with a leading, replicated member axis."""
    return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


@dataclasses.dataclass(frozen=True)
class Members:
    """The models one run trains: member k has peak rate lrs[k] and init seed seeds[k]."""

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    stacked: bool  # the state has the member axis (a group); False: one model stored without it

    @classmethod
    def solo(cls, cfg) -> "Members":
        return cls((float(cfg.optim.lr),), (int(cfg.seed),), stacked=False)

    @classmethod
    def group(cls, members: list[dict]) -> "Members":
        """Members {"lr": float, "seed": int}, trained together with the member axis (even one)."""
        if not members:
            raise ValueError("train_group needs at least one member {'lr': ..., 'seed': ...}")
        for m in members:
            if not float(m["lr"]) > 0:
                raise ValueError(f"member {m}: lr must be > 0")
        return cls(tuple(float(m["lr"]) for m in members), tuple(int(m["seed"]) for m in members), stacked=True)

    @property
    def size(self) -> int:
        return len(self.lrs)

    def optimizer(self, cfg):
        """(optimizer, schedule) of one member's step; a group's schedule is the unit one."""
        if not self.stacked:
            return make_optimizer(cfg.optim, cfg.train.steps, cfg.model)
        return member_optimizer(cfg, 1.0)  # the lr in each member's state is what counts

    def identities(self, cfg, data_identity: dict) -> tuple[dict, dict]:
        """(data identity, optimizer identity) a checkpoint of these members belongs to: a group's
        member list is part of its data identity, and its rates are in that list, not in `optim.lr`."""
        if not self.stacked:
            return data_identity, optimizer_identity(cfg.optim, cfg.train.steps)
        members = [[lr, seed] for lr, seed in zip(self.lrs, self.seeds)]
        return dict(data_identity, members=members), optimizer_identity(unit_optim(cfg), cfg.train.steps)

    def state_spec(self, cfg, optimizer, mesh, rules) -> StateSpec:
        """How to build or restore the members' state; `optimizer` is `self.optimizer(cfg)[0]`."""
        if not self.stacked:
            return state_spec(cfg.model, optimizer, mesh, rules, cfg.seed)
        one = state_spec(cfg.model, optimizer, mesh, rules, self.seeds[0])  # one member's layout

        def init():
            return jax.vmap(lambda seed, lr: initial_state(cfg.model, member_optimizer(cfg, lr)[0], seed))(
                jnp.asarray(self.seeds, jnp.uint32), jnp.asarray(self.lrs, jnp.float32))

        shardings = jax.tree.map(with_member_axis, one.shardings)
        return StateSpec(one.graphdef, init, shardings, placed(jax.eval_shape(init), shardings))

    def train_step(self, step_fn):
        """One model's `step_fn(state, batch)` applied to every member on the same batch: metrics gain
        the member axis in a group, and "lr" is each member's own rate."""
        if not self.stacked:
            return step_fn

        def member_step(state, batch_BxT1):
            new_state, metrics = step_fn(state, batch_BxT1)
            return new_state, dict(metrics, lr=metrics["lr"] * state["opt_state"][-1].lr)  # unit schedule x rate

        return jax.vmap(member_step, in_axes=(0, None))

    def eval_step(self, eval_fn):
        """`eval_fn(params, batch) -> loss` for every member: a (K,) loss in a group."""
        return jax.vmap(eval_fn, in_axes=(0, None)) if self.stacked else eval_fn

    def split(self, k: int) -> str:
        """The metrics split of member k's train rows."""
        return f"train/m{k}" if self.stacked else "train"

    def eval_row(self, results: list[dict]) -> dict:
        """One eval metrics row from every member's result: a group's keys get the suffix _m<k>."""
        if not self.stacked:
            return results[0]
        return {f"{name}_m{k}": result[name] for name in results[0] for k, result in enumerate(results)}
