"""The `sweep` section of the config: its keys and defaults, and the rules they must meet without a plan
(plan.py checks budgets and models)."""

import ml_collections

from gptjax.config.base import fail

SWEEP_MODES = ("run", "plan", "fit")
SWEEP_FAMILIES = ("depth", "explicit")


def defaults() -> ml_collections.ConfigDict:
    """The scaling sweep (sweep.py): budgets, model family, learning rates, seeds, fits."""
    return ml_collections.ConfigDict(
        dict(
            mode="run",  # run: plan, train unfinished trials, fit, report; plan: write plan.json only; fit: refit
            budgets=(),  # training FLOPs per model (flops.py's with_attention accounting), one IsoFLOP profile each
            family="depth",  # depth: d_model = width_per_layer * n_layers; explicit: the (n_layers, d_model) in models
            depths=(1, 2, 3, 4, 5, 6, 8, 10, 12),  # depth family: the candidate depths
            width_per_layer=64,
            head_dim=16,
            ffn_ratio=4,
            models=(),  # explicit family: ((n_layers, d_model), ...)
            sizes_per_budget=4,  # models per IsoFLOP profile, spread around the expected optimum
            size_spread=16.0,  # ratio of largest to smallest model (params) in a profile
            tokens_per_param=20.0,  # the prior optimum (Chinchilla) the profile is centred on
            learning_rates=(),  # () = optim.lr; several = a per-scale learning-rate sweep
            batch_sizes=(),  # () = data.batch_size; several = a batch-size sweep
            # With batch_sizes=(): each budget's batch is the largest power of two <= data.batch_size that
            # gives every model of its profile >= min_steps steps (small budgets get small batches).
            batch_per_budget=False,
            seeds=(0,),
            # Measured seed noise: after the lr search, each profile's noise_models best models are trained
            # again at their best lr with each of these seeds (their losses averaged; the spread is the noise).
            noise_seeds=(),
            noise_models=3,
            # A model whose best lr is at an edge of the lrs it was trained at gets one more beyond that edge
            # (the grid's own ratio), in up to lr_widenings rounds, so every optimum ends inside its grid.
            lr_widenings=2,
            eval_windows=0,  # > 0: every trial evaluates these same validation windows (any batch size)
            warmup_fraction=0.05,  # of each trial's steps
            min_steps=20,  # a trial shorter than this cannot be trained meaningfully: its budget is refused
            max_epochs=4.0,  # warn when a trial reads the training text more often than this
            vectorize=True,  # train trials that share shapes (lr, seed) together under jax.vmap
            # 0 = trials in this process; N = N parallel subprocesses on a CPU backend (on an accelerator trials
            # always run in this process: each subprocess would claim most of the device's memory).
            n_workers=0,
            trial_index=-1,  # >= 0: run only trial K of plan.json (cluster array jobs), then stop
            # After fitting, train the recommended N*, D* at this budget (and sizes 2x smaller and larger) and
            # compare with the predicted loss. -1 = 10^0.5 x the largest budget; 0 = no validation.
            validate_flops=-1.0,
            target_flops=-1.0,  # the recommendation's budget; -1 = validate_flops (else 30x the largest budget)
            n_bootstrap=200,
            # JAX's persistent compilation cache for every trial ("" = off): a rerun, a resumed sweep or a second
            # seed compiles nothing it compiled before. XDG_CACHE_HOME is honoured.
            compilation_cache="~/.cache/gptjax/jax",
        )
    )


def validate(s) -> None:
    """The sweep keys that need no plan to check (gptjax/scaling/plan.py checks budgets and models)."""
    if s.mode not in SWEEP_MODES:
        fail("sweep.mode", s.mode, f"must be one of {', '.join(SWEEP_MODES)}")
    if s.family not in SWEEP_FAMILIES:
        fail("sweep.family", s.family, f"must be one of {', '.join(SWEEP_FAMILIES)}")
    for key in ("sizes_per_budget", "min_steps", "width_per_layer", "head_dim", "ffn_ratio"):
        if s[key] < 1:
            fail(f"sweep.{key}", s[key], "must be >= 1")
    if s.n_workers < 0:
        fail("sweep.n_workers", s.n_workers, "must be 0 (in this process) or the number of subprocesses")
    if s.trial_index < -1:
        fail("sweep.trial_index", s.trial_index, "must be -1 (all trials) or a trial's index in plan.json")
    if not 0 <= s.warmup_fraction < 1:
        fail("sweep.warmup_fraction", s.warmup_fraction, "must be in [0, 1)")
    for key in ("target_flops", "validate_flops"):
        if not (s[key] > 0 or s[key] == -1 or (key == "validate_flops" and s[key] == 0)):
            fail(f"sweep.{key}", s[key], "must be > 0 FLOPs or -1 (automatic)" + (" or 0 (off)" if key[0] == "v" else ""))
    if s.n_bootstrap < 0:
        fail("sweep.n_bootstrap", s.n_bootstrap, "must be >= 0")
    for key in ("lr_widenings", "eval_windows", "noise_models"):
        if s[key] < 0:
            fail(f"sweep.{key}", s[key], "must be >= 0")
