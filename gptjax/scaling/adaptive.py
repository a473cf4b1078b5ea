"""The trials a sweep adds after its planned grid, decided from the results so far, and the check of its own
extrapolation.

  lr widening   a model whose best learning rate is at an edge of the lrs it was trained at gets one more
                beyond that edge, at the grid's own ratio, in each of sweep.lr_widenings rounds at most, so
                that every optimum ends inside its grid and the lr law is fitted to interior optima. One lr a
                round, not two: in the main job's 2026-12-06 runs (two seeds, 30 widened models) the second lr
                beyond an edge was never the best and the first was the best twice, so a second lr at once
                was mostly wasted compute.
  noise seeds   each profile's sweep.noise_models best models are trained again at their best lr with each
                seed of sweep.noise_seeds: the spread between seeds is the noise the fits' parametric
                bootstrap draws (fit/noise.py), measured where it matters, near each optimum.
  validation    after the fit, the recommended N*, D* at sweep.validate_flops with the recommended lr, and
                sizes 2x smaller and 2x larger: `validation_summary` compares the recommended run with the
                loss the fits predicted for it (fits.json "validation").

Every decision is a function of the finished results, so a rerun of the same command derives the same trials
and finds them finished (trial ids name budget, shape, batch, seed and lrs).
"""

import math

from gptjax.scaling.plan import (Trial, budget_batch, family_shapes, job_seed, make_trial, model_config,
                                 resolved_flops)
from gptjax.train import flops

VALIDATION_ROLES = ("half", "recommended", "double")  # N*/2, N*, 2 N*


def _model_key(row_or_trial) -> tuple:
    if isinstance(row_or_trial, Trial):
        t = row_or_trial
        return t.budget, t.shape.n_layers, t.shape.d_model, t.batch_size, t.seed
    r = row_or_trial
    return r["budget"], r["n_layers"], r["d_model"], r["batch_size"], r["seed"]


def grid_ratio(learning_rates) -> float | None:
    """The geometric step of the swept lrs (None with fewer than 2)."""
    lrs = sorted(learning_rates)
    return (lrs[-1] / lrs[0]) ** (1 / (len(lrs) - 1)) if len(lrs) > 1 else None


def lr_widening_trials(cfg, trials: list[Trial], rows: list[dict], train_tokens=None) -> list[Trial]:
    """New trials for the models (of the grid's seeds) whose best lr, over every lr they were trained at, is
    the smallest or largest of them: one lr beyond that edge at the grid's ratio, unless that side was
    widened sweep.lr_widenings times already or the model has no finished result yet."""
    s = cfg.sweep
    ratio = grid_ratio(s.learning_rates)
    if not s.lr_widenings or ratio is None:
        return []
    by_model: dict[tuple, list[Trial]] = {}
    for t in trials:
        if t.kind in ("grid", "lr_widen"):
            by_model.setdefault(_model_key(t), []).append(t)
    rows_by_model: dict[tuple, list[dict]] = {}
    for r in rows:
        rows_by_model.setdefault(_model_key(r), []).append(r)
    new = []
    for key, model_trials in by_model.items():
        done = {r["trial"] for r in rows_by_model.get(key, [])}
        if any(t.id not in done for t in model_trials):
            continue  # not all its lrs are in yet
        ok = [r for r in rows_by_model[key] if r["status"] == "ok" and math.isfinite(r["eval_loss"])]
        if not ok:
            continue
        tried = sorted({lr for t in model_trials for lr in t.learning_rates})
        best = min(ok, key=lambda r: r["eval_loss"])["lr"]
        if best == tried[0]:
            lrs, side = (tried[0] / ratio,), "low"
        elif best == tried[-1]:
            lrs, side = (tried[-1] * ratio,), "high"
        else:
            continue
        grid = [lr for t in model_trials if t.kind == "grid" for lr in t.learning_rates]
        widened = [t for t in model_trials if t.kind == "lr_widen"
                   and (max(t.learning_rates) < min(grid) if side == "low" else min(t.learning_rates) > max(grid))]
        if len(widened) >= s.lr_widenings:
            continue
        t = model_trials[0]
        new.append(make_trial(cfg, len(trials) + len(new), t.budget, t.shape, t.batch_size, t.seed,
                              tuple(float(f"{lr:.6g}") for lr in lrs), kind="lr_widen", train_tokens=train_tokens))
    return new


def noise_seed_trials(cfg, trials: list[Trial], rows: list[dict], train_tokens=None) -> list[Trial]:
    """Each profile's sweep.noise_models best models (by their best loss at the grid's first seed), again at
    their best lr with every seed of sweep.noise_seeds."""
    s = cfg.sweep
    if not s.noise_seeds or not rows:
        return []
    first_seed = job_seed(cfg, s.seeds[0])
    by_trial = {t.id: t for t in trials}
    best: dict[tuple, dict] = {}  # model key -> its best ok row
    for r in rows:
        if (r["status"] != "ok" or not math.isfinite(r["eval_loss"]) or r["seed"] != first_seed
                or by_trial.get(r["trial"]) is None or by_trial[r["trial"]].kind not in ("grid", "lr_widen")):
            continue
        key = _model_key(r)
        if key not in best or r["eval_loss"] < best[key]["eval_loss"]:
            best[key] = r
    new = []
    for budget in s.budgets:
        profile = sorted((r for key, r in best.items() if key[0] == budget), key=lambda r: r["eval_loss"])
        for r in profile[: s.noise_models]:
            t = by_trial[r["trial"]]
            for seed in s.noise_seeds:
                new.append(make_trial(cfg, len(trials) + len(new), t.budget, t.shape, t.batch_size,
                                      job_seed(cfg, seed), (r["lr"],),
                                      kind="noise_seed", train_tokens=train_tokens))
    return new


def validation_plan(cfg, fits: dict, rows: list[dict], start_index: int, train_tokens=None):
    """(trials, info): the validation trials at sweep.validate_flops for the fits' recommendation — the
    family shapes nearest in log N to N*/2, N* and 2 N* (distinct), each trained on C / (6 N) tokens at the
    recommended lr — and {"target_flops", "lr", "lr_source", "N_star"}; or ([], {"skipped": why}) when
    validation is off or the fits give no N*."""
    validate_flops, _ = resolved_flops(cfg.sweep)
    if not validate_flops:
        return [], {"skipped": "sweep.validate_flops=0: no validation"}
    rec = fits.get("recommendation") or {}
    if not rec.get("N") or rec["N"].get("value") is None:
        return [], {"target_flops": validate_flops,
                    "skipped": "no identified fit gives N* at the validation budget (see the notes)"}
    n_star = rec["N"]["value"]
    if rec.get("lr") and rec["lr"].get("value") is not None:
        lr, lr_source = float(f"{rec['lr']['value']:.4g}"), rec["lr"]["source"]
    else:  # no identified lr law: the best lr of the largest budget's best model
        top = max(r["budget"] for r in rows)
        best = min((r for r in rows if r["budget"] == top and r["status"] == "ok"), key=lambda r: r["eval_loss"])
        lr, lr_source = best["lr"], "the best lr at the largest swept budget (no identified lr law)"
    shapes = family_shapes(cfg.sweep)
    costs = {sh: flops.flops_per_token(model_config(cfg.model, sh), cfg.data.seq_len) for sh in shapes}
    log_n = {sh: math.log(costs[sh]["with_attention"] / 6) for sh in shapes}
    chosen = {}
    for role, factor in (("recommended", 1.0), ("half", 0.5), ("double", 2.0)):
        free = [sh for sh in shapes if sh not in chosen.values()]
        chosen[role] = min(free, key=lambda sh: abs(log_n[sh] - math.log(factor * n_star)))
    batch = budget_batch(cfg, validate_flops, max(costs[sh]["with_attention"] / 6 for sh in chosen.values()))
    seed = job_seed(cfg, cfg.sweep.seeds[0])
    trials = [make_trial(cfg, start_index + i, validate_flops, chosen[role], batch, seed, (lr,),
                         kind="validation", train_tokens=train_tokens, cost=costs[chosen[role]])
              for i, role in enumerate(VALIDATION_ROLES)]
    return trials, {"target_flops": validate_flops, "lr": lr, "lr_source": lr_source, "N_star": n_star}


def _roles(trials: list[Trial]) -> dict[str, Trial]:
    """The validation trials by role: smallest N = half, middle = recommended, largest = double."""
    return dict(zip(VALIDATION_ROLES, sorted(trials, key=lambda t: t.N)))


def validation_summary(fits, trials: list[Trial], rows: list[dict], info: dict) -> dict:
    """fits.json's "validation": the loss the fits predict for the recommended run (`predict_with_interval`
    at its N and D) against the loss it reached, and the three runs; plus the recommendation extrapolated a
    further 100x (point values and the predicted loss's interval), marked unchecked."""
    from gptjax.scaling.fit import FitError, compute_optimal, predict_with_interval

    if "skipped" in info:
        return dict(info)
    by_trial = {r["trial"]: r for r in rows}
    roles = _roles(trials)
    table = []
    for role, t in roles.items():
        r = by_trial.get(t.id, {})
        ok = r.get("status") == "ok" and math.isfinite(r.get("eval_loss", math.nan))
        table.append({"role": role, "trial": t.id, "N": t.N, "D": t.tokens, "C": t.C, "n_layers": t.shape.n_layers,
                      "d_model": t.shape.d_model, "batch_size": t.batch_size, "steps": t.steps,
                      "lr": t.learning_rates[0], "eval_loss": r.get("eval_loss") if ok else None,
                      "eval_loss_se": r.get("eval_loss_se") if ok else None, "status": r.get("status", "not run")})
    rec = roles["recommended"]
    out = dict(info, trials=table)
    try:
        predicted = predict_with_interval(fits, N=rec.N, D=rec.tokens)
    except FitError as e:
        return dict(out, skipped=f"no prediction to check: {e}")
    observed = table[1]["eval_loss"]
    out["predicted_loss"] = predicted
    out["observed_loss"] = observed
    if observed is not None:
        low = -math.inf if predicted["low"] is None else predicted["low"]
        high = math.inf if predicted["high"] is None else predicted["high"]
        out["error_fraction"] = (observed - predicted["value"]) / observed
        out["observed_in_interval"] = bool(low <= observed <= high)
        losses = [row["eval_loss"] for row in table if row["eval_loss"] is not None]
        out["recommended_is_best"] = bool(observed == min(losses))
    out["extrapolated"] = _extrapolated(fits, 100 * info["target_flops"], compute_optimal, predict_with_interval)
    return out


def _extrapolated(fits, target, compute_optimal, predict_with_interval) -> dict | None:
    """N*, D* (point values, from the recommendation's source fit) and the loss with its interval at `target`."""
    from gptjax.scaling.fit import FitError

    source = ((fits.get("recommendation") or {}).get("N") or {}).get("source")
    if source == "approach3":
        n, d = (float(x) for x in compute_optimal(fits["approach3"], target))
    elif source == "approach2":
        n_law, d_law = fits["approach2"]["N_law"], fits["approach2"]["D_law"]
        n = n_law["coef"]["value"] * target ** n_law["exponent"]["value"]
        d = d_law["coef"]["value"] * target ** d_law["exponent"]["value"]
    else:
        return None
    try:
        loss = predict_with_interval(fits, N=n, D=d)
    except FitError:
        loss = None
    return {"target_flops": target, "N": {"value": n, "low": None, "high": None},
            "D": {"value": d, "low": None, "high": None}, "loss": loss, "source": source, "checked": False}

