"""Plans a scaling sweep: for each compute budget, an IsoFLOP profile of model sizes around the
expected optimum, each trained on D = C / (FLOPs per token) tokens.

Compute is counted with flops.py's `with_attention` accounting (non-embedding matmuls, the LM head and
attention over the sequence), and a model's "compute parameters" are N = that / 6, so C = 6 N D holds
exactly; the other two accountings are stored with every trial. The profile is centred on the
Chinchilla prior D/N = sweep.tokens_per_param, i.e. N_opt = sqrt(C / (6 r)), and spans
sweep.size_spread in N. A trial is the unit of work: one model shape, budget, batch size and seed,
trained at every learning rate of the sweep together (vectorized) or at one learning rate.
"""

import dataclasses
import math

import ml_collections

from gptjax.config.base import ConfigError
from gptjax.config.sweep import SWEEP_FAMILIES
from gptjax.train import flops


class SweepPlanError(ConfigError):
    """A sweep that cannot be planned as configured; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int


@dataclasses.dataclass(frozen=True)
class Trial:
    index: int
    id: str
    budget: float  # planned training FLOPs (with_attention accounting)
    shape: ModelShape
    batch_size: int
    seed: int
    learning_rates: tuple  # trained together (vectorized) when more than one
    steps: int
    tokens: int  # D
    N: float  # compute parameters: flops_per_token["with_attention"] / 6
    C: float  # realised FLOPs, 6 N D (steps are whole, so C is near the budget)
    params: dict  # flops.param_counts
    flops_per_token: dict  # all three accountings
    epochs: float | None  # passes over the training text; None for endless synthetic streams
    kind: str = "grid"  # grid (the planned design) | lr_widen | noise_seed (sweep.py adds them) | validation

    def to_json(self) -> dict:
        row = dataclasses.asdict(self)
        row["learning_rates"] = list(self.learning_rates)
        return row


def family_shapes(sweep) -> list[ModelShape]:
    """The candidate model shapes of `config.sweep`'s family."""
    if sweep.family == "explicit":
        pairs = [tuple(p) for p in sweep.models]
    else:  # depth: one knob sets width, heads and FFN (constant aspect ratio d_model / n_layers)
        pairs = [(depth, depth * sweep.width_per_layer) for depth in sweep.depths]
    return [ModelShape(L, D, D // sweep.head_dim, D * sweep.ffn_ratio) for L, D in pairs]


def model_config(base, shape: ModelShape) -> ml_collections.ConfigDict:
    """`config.model` with the shape's sizes (multi-head attention: n_kv_heads = n_heads). Every shape
    has the head dim sweep.head_dim (n_heads grows with width), so under μP that is the base model's
    head dim too: mup_base_width / n_heads would shrink the attention logits as the width grows."""
    model = base.copy_and_resolve_references()
    model.update(n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                 n_kv_heads=shape.n_heads, d_ff=shape.d_ff)
    if model.parametrization == "mup":  # SP ignores it: leave the default, as older sweeps recorded
        model.mup_base_head_dim = shape.d_model // shape.n_heads
    return model


def _check(cfg) -> None:
    s = cfg.sweep
    budgets = list(s.budgets)
    if not budgets:
        raise SweepPlanError("sweep.budgets=(): give the training FLOPs of each IsoFLOP profile, e.g. (1e12, 3e12, 1e13)")
    if any(not b > 0 for b in budgets) or budgets != sorted(set(budgets)):
        raise SweepPlanError(f"sweep.budgets={tuple(budgets)!r}: must be positive, distinct and ascending")
    if s.family not in SWEEP_FAMILIES:  # also checked by config.validate; plan_sweep is public
        raise SweepPlanError(f"sweep.family={s.family!r}: must be one of {', '.join(SWEEP_FAMILIES)}")
    if s.family == "explicit" and not all(len(tuple(p)) == 2 for p in s.models):
        raise SweepPlanError(f"sweep.models={s.models!r}: must be ((n_layers, d_model), ...) for family=explicit")
    for shape in family_shapes(s):
        if shape.n_layers < 1 or shape.d_model < s.head_dim or shape.d_model % s.head_dim:
            raise SweepPlanError(f"sweep model {shape}: d_model must be a positive multiple of "
                                 f"sweep.head_dim={s.head_dim} and n_layers >= 1")
    if s.sizes_per_budget < 3:
        raise SweepPlanError(f"sweep.sizes_per_budget={s.sizes_per_budget}: an IsoFLOP parabola needs >= 3 sizes")
    if not s.size_spread > 1:
        raise SweepPlanError(f"sweep.size_spread={s.size_spread}: must be > 1 (largest / smallest model)")
    if any(not lr > 0 for lr in s.learning_rates):
        raise SweepPlanError(f"sweep.learning_rates={s.learning_rates!r}: must all be > 0")
    if any(b <= 0 for b in s.batch_sizes) or not s.seeds:
        raise SweepPlanError(f"sweep.batch_sizes={s.batch_sizes!r} / seeds={s.seeds!r}: batch sizes must be "
                             "positive and there must be at least one seed")


def resolved_flops(sweep) -> tuple[float, float]:
    """(validate_flops, target_flops) with -1 resolved: validation at 10^0.5 x the largest budget, the
    recommendation at the validated budget (else 30x the largest budget); validate_flops 0 = none."""
    largest = max(sweep.budgets)
    validate = 10**0.5 * largest if sweep.validate_flops == -1 else float(sweep.validate_flops)
    target = float(sweep.target_flops) if sweep.target_flops != -1 else (validate or 30 * largest)
    return validate, target


def budget_batch(cfg, budget: float, n_max: float) -> int:
    """The batch of a budget whose largest model has n_max compute parameters: data.batch_size, or with
    sweep.batch_per_budget the largest power of two <= it that gives that model >= sweep.min_steps steps."""
    if not cfg.sweep.batch_per_budget:
        return cfg.data.batch_size
    windows = budget / (6 * n_max) / cfg.data.seq_len / cfg.sweep.min_steps
    batch = 1
    while batch * 2 <= min(windows, cfg.data.batch_size):
        batch *= 2
    return batch


def job_seed(cfg, seed: int) -> int:
    """A trial's init and shuffle seed: a seed of sweep.seeds (or noise_seeds) shifted by the job's `seed`,
    so that `--config.seed=1` reruns the whole sweep with fresh initialisations and data orders."""
    return int(seed) + 1000 * int(cfg.seed)


def make_trial(cfg, index: int, budget: float, shape: ModelShape, batch_size: int, seed: int, learning_rates,
               kind: str = "grid", train_tokens: int | None = None, cost: dict | None = None) -> Trial:
    """One trial: `shape` trained on budget / (FLOPs per token) tokens in whole steps of batch_size windows."""
    cost = cost or flops.flops_per_token(model_config(cfg.model, shape), cfg.data.seq_len)
    tokens_per_step = batch_size * cfg.data.seq_len
    steps = max(1, round(budget / cost["with_attention"] / tokens_per_step))
    tokens = steps * tokens_per_step
    N = cost["with_attention"] / 6
    trial_id = f"c{budget:.6g}-L{shape.n_layers}-d{shape.d_model}-b{batch_size}-s{seed}"
    if not cfg.sweep.vectorize or kind != "grid":
        trial_id += "-lr" + "_".join(f"{lr:.6g}" for lr in learning_rates)
    if kind == "validation":
        trial_id = "validate-" + trial_id
    return Trial(index=index, id=trial_id, budget=float(budget), shape=shape, batch_size=batch_size, seed=int(seed),
                 learning_rates=tuple(float(x) for x in learning_rates), steps=steps, tokens=tokens, N=N,
                 C=6 * N * tokens, params=flops.param_counts(model_config(cfg.model, shape)), flops_per_token=cost,
                 epochs=tokens / train_tokens if train_tokens else None, kind=kind)


def plan_sweep(cfg, train_tokens: int | None = None) -> tuple[list[Trial], list[str]]:
    """The sweep's planned (grid) trials and warnings. `train_tokens` is the size of the training text
    (None for an endless synthetic stream), used for the epochs check. Raises SweepPlanError for a budget
    that cannot be met: fewer than sweep.sizes_per_budget family models get >= sweep.min_steps steps."""
    _check(cfg)
    s, seq_len = cfg.sweep, cfg.data.seq_len
    shapes = family_shapes(s)
    costs = {shape: flops.flops_per_token(model_config(cfg.model, shape), seq_len) for shape in shapes}
    learning_rates = tuple(s.learning_rates) or (cfg.optim.lr,)
    lr_groups = [learning_rates] if s.vectorize else [(lr,) for lr in learning_rates]
    trials, warnings = [], []
    for budget in s.budgets:
        # With batch_per_budget the smallest batch (1) decides which models can get min_steps steps.
        for batch_size in tuple(s.batch_sizes) or ((1,) if s.batch_per_budget else (cfg.data.batch_size,)):
            tokens_per_step = batch_size * seq_len
            feasible = [sh for sh in shapes
                        if round(budget / costs[sh]["with_attention"] / tokens_per_step) >= s.min_steps]
            if len(feasible) < s.sizes_per_budget:
                raise SweepPlanError(
                    f"sweep.budgets: {budget:.3g} FLOPs train only {len(feasible)} of the family's models for "
                    f">= sweep.min_steps={s.min_steps} steps of {batch_size}x{seq_len} tokens, fewer than "
                    f"sweep.sizes_per_budget={s.sizes_per_budget}; raise the budget, lower data.batch_size, "
                    "or add smaller models to the family")
            profile = _profile(feasible, costs, budget, s)
            if s.batch_per_budget and not s.batch_sizes:
                batch_size = budget_batch(cfg, budget, costs[profile[-1]]["with_attention"] / 6)
            for shape in profile:
                for seed in s.seeds:
                    for lrs in lr_groups:
                        trial = make_trial(cfg, len(trials), budget, shape, batch_size, job_seed(cfg, seed), lrs,
                                           train_tokens=train_tokens, cost=costs[shape])
                        trials.append(trial)
                if trial.epochs is not None and trial.epochs > s.max_epochs:
                    warnings.append(f"trial {trial.id} reads the training text {trial.epochs:.1f} times (> "
                                    f"sweep.max_epochs={s.max_epochs}); repeated data bends the scaling law — use a "
                                    "larger corpus or smaller budgets")
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise SweepPlanError(f"sweep: two trials would share the id {duplicate} (repeated budgets, seeds or "
                             "learning rates); make sweep.budgets, seeds and learning_rates distinct")
    return trials, warnings


def _profile(feasible, costs, budget, s) -> list[ModelShape]:
    """sizes_per_budget distinct shapes nearest (in log N) to a log-spaced grid spanning size_spread
    around the prior optimum N_opt = sqrt(C / (6 tokens_per_param)), filled from the centre outwards."""
    n_opt = math.sqrt(budget / (6 * s.tokens_per_param))
    k = s.sizes_per_budget
    offsets = [(i - (k - 1) / 2) / (k - 1) * math.log(s.size_spread) for i in range(k)]
    log_n = {sh: math.log(costs[sh]["with_attention"] / 6) for sh in feasible}
    chosen = []
    for offset in sorted(offsets, key=abs):
        target = math.log(n_opt) + offset
        free = [sh for sh in feasible if sh not in chosen]
        chosen.append(min(free, key=lambda sh: abs(log_n[sh] - target)))
    return sorted(chosen, key=lambda sh: log_n[sh])


def trial_config(cfg, trial: Trial, tokenizer_path: str | None):
    """The pretraining config of one trial (one learning rate: the first; members carry the rest)."""
    t = cfg.copy_and_resolve_references()
    t.mode = "pretrain"
    t.seed = trial.seed
    t.model = model_config(cfg.model, trial.shape)
    t.data.batch_size = trial.batch_size
    if tokenizer_path:
        t.data.tokenizer = tokenizer_path
    t.optim.lr = trial.learning_rates[0]
    t.optim.warmup_steps = max(1, round(cfg.sweep.warmup_fraction * trial.steps))
    t.train.steps = trial.steps
    if cfg.sweep.eval_windows:  # the same validation windows whatever the trial's batch size
        t.data.eval_batches = max(1, cfg.sweep.eval_windows // trial.batch_size)
        t.train.eval_every = trial.steps  # the final model's loss is what the fits use
    else:
        t.train.eval_every = max(1, trial.steps // 4)
    t.train.log_every = max(1, trial.steps // 20)
    t.train.checkpoint_every = max(1, trial.steps // 2)
    t.train.max_to_keep = 1
    return t
