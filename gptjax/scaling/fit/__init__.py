"""Scaling-law fits over a sweep's trials, each with bootstrap intervals: numpy and scipy only (no jax),
so a notebook can import this package on its own.

  frontier     (frontier.py) the best loss per budget, L(C) = E + (C0/C)^gamma
  approach2    (isoflop.py) Chinchilla's IsoFLOP profiles: per budget a parabola of loss in log N, its
               vertex N_opt; then N*(C) and D*(C) as power laws
  approach3    (parametric.py) Chinchilla's parametric surface L(N, D) = E + A/N^alpha + B/D^beta and its
               compute-optimal allocation under C = 6 N D
  hyperparameters  (hyper.py) DeepSeek LLM's laws: the best learning rate and batch size per budget, as
               power laws of compute
  backtest     (combine.py) refit without the largest budget and predict its best loss

Input rows (rows.py) are the dicts the sweep writes to WORKDIR/results.jsonl (`load_results`) or rows
from a CSV (`load_csv`). N is a row's "compute parameters" (with-attention FLOPs per token / 6) and D its
tokens, so C = 6 N D holds exactly; "budget" (the planned FLOPs) groups IsoFLOP profiles and the
realised "C" is used wherever a continuous compute value is needed. `fit_all` (combine.py) runs
everything and returns one JSON-serialisable dict, the one the sweep writes to fits.json, whose layout
its docstring gives.

Uncertainty (bootstrap.py, noise.py, identify.py): every fit is repeated on bootstrap resamples (seeded)
and reported as an `Estimate`: a point estimate with a 95% percentile interval, stored in fits.json as
{"value", "low", "high"}. Where the rows measured their noise (`measure_noise`: the spread between seeds
of one setting, each run's eval_loss_se) the bootstrap is parametric: every point is redrawn about the
fitted law with its measured noise or the fit's own residual scatter, whichever is larger. Otherwise
(old results, a CSV) Approaches 2 and 3 resample models with replacement within each budget (budgets with
a single model are resampled together) and the frontier resamples its residuals; fits.json says which
("bootstrap"). A resample that fails is counted, half at -inf and half at +inf, so more than 5% failures
leave an interval unbounded (null). Every fit says whether it is identified ("identified", "reason"), and
only identified fits are quoted and feed the recommendation. `predict_with_interval` predicts the loss of
any (N, D) or C with its interval, from the bootstrap draws `fit_all` keeps in memory (`Fits.draws`).
Only rows with status "ok" and a finite eval_loss are fitted; the loss fits use each model's best learning
rate / batch size, its loss averaged over seeds.

References: Hoffmann et al. 2022, "Training compute-optimal large language models" (Approaches 2 and 3,
Appendix D.2); Besiroglu et al. 2024, "Chinchilla scaling: a replication attempt" (the same fit run to
convergence, bootstrap intervals); DeepSeek-AI 2024, "DeepSeek LLM" Sec. 3.1 (hyperparameter laws).
"""

from gptjax.scaling.fit.bootstrap import Draws, Estimate
from gptjax.scaling.fit.combine import Fits, backtest, fit_all, known_truth
from gptjax.scaling.fit.frontier import fit_frontier
from gptjax.scaling.fit.hyper import fit_hyperparameter_law
from gptjax.scaling.fit.isoflop import fit_approach2
from gptjax.scaling.fit.noise import loss_sd, measure_noise
from gptjax.scaling.fit.parametric import (HUBER_DELTA, compute_optimal, fit_approach3, fit_loss_surface,
                                           predict_loss)
from gptjax.scaling.fit.predict import predict_with_interval
from gptjax.scaling.fit.rows import FitError, best_per_model, load_csv, load_results, usable_rows

__all__ = [
    "Draws", "Estimate", "FitError", "Fits", "HUBER_DELTA", "backtest", "best_per_model", "compute_optimal",
    "fit_all", "fit_approach2", "fit_approach3", "fit_frontier", "fit_hyperparameter_law", "fit_loss_surface",
    "known_truth", "load_csv", "load_results", "loss_sd", "measure_noise", "predict_loss", "predict_with_interval",
    "usable_rows",
]
