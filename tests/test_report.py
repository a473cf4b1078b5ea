"""The sweep report (gptjax/scaling/report.py): report.md, its numbers and its plots."""

import math
import os
import re

import numpy as np
import pytest

from gptjax.scaling import fit as F
from gptjax.scaling.report import format_value, write_report

# Its module-scoped fixtures are built once: under pytest-xdist (--dist loadgroup) the module stays on one worker.
pytestmark = pytest.mark.xdist_group("test_report")

LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sweep_rows(budgets=(1e17, 1e18, 1e19, 1e20), sizes=(0.25, 0.5, 1.0, 2.0, 4.0), lrs=(3e-4, 1e-3, 3e-3)):
    """Rows as the sweep writes them: per budget five depths around the optimum, each at three learning
    rates (loss = Chinchilla's law + a penalty away from lr* = 0.3 C^-0.125), plus one failed trial."""
    rows = []
    for c in budgets:
        n_opt, _ = F.compute_optimal(LAW, c)
        for layers, ratio in enumerate(sizes, start=2):
            n = float(n_opt * ratio)
            for lr in lrs:
                loss = F.predict_loss(LAW, n, c / (6 * n)) + 0.03 * math.log(lr / (0.3 * c**-0.125)) ** 2
                rows.append(dict(trial=f"c{c:.0e}-L{layers}-lr{lr:.0e}", budget=c, n_layers=layers, d_model=64 * layers,
                                 n_heads=4, d_ff=256 * layers, N=n, D=c / (6 * n), C=c, lr=lr, batch_size=16,
                                 eval_loss=float(loss), status="ok", reason="", tokens_per_sec=1e5, wall_seconds=12.5))
    rows.append(dict(trial="c1e+20-L9-oom", budget=1e20, n_layers=9, d_model=576, N=1e9, D=1e10, C=6e19, lr=1e-3,
                     batch_size=16, eval_loss=float("nan"), status="failed", reason="out of memory"))
    return rows


def linked_images(workdir, text):
    """The images report.md links, as paths; each must be a relative link to an existing, valid PNG."""
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for link in links:
        assert not os.path.isabs(link), link
        path = os.path.join(workdir, link)
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, link
        from matplotlib import image

        assert image.imread(path).shape[0] > 100, link
    return links


@pytest.fixture(scope="module")
def sweep():
    rows = sweep_rows()
    return rows, F.fit_all(rows, target_flops=1e22, n_bootstrap=20, n_starts=10)


def test_report_names_the_recommendation_and_links_valid_plots(tmp_path, sweep):
    rows, fits = sweep
    path = write_report(str(tmp_path), rows, fits, 1e22)
    assert path == os.path.join(str(tmp_path), "report.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    rec = fits["recommendation"]
    for key in ("N", "D", "tokens_per_param", "loss", "lr"):
        assert rec[key] is not None, key
        assert format_value(rec[key]["value"]) in text, key
        assert f"[{format_value(rec[key]['low'])}, {format_value(rec[key]['high'])}]" in text, key
    assert format_value(fits["backtest"]["observed"]) in text
    assert len(linked_images(str(tmp_path), text)) == 4
    # Every trial is in the table, the failed one with its reason.
    for row in rows:
        assert f"| {row['trial']} |" in text
    assert "failed (out of memory)" in text


def test_report_with_missing_fits_says_so_and_still_links_valid_plots(tmp_path, sweep):
    rows, fits = sweep
    missing = {**fits, "frontier": None, "approach2": None, "approach3": None, "backtest": None,
               "hyperparameters": {"lr": None, "batch_size": None},
               "recommendation": {key: None for key in fits["recommendation"]}}
    with open(write_report(str(tmp_path), rows, missing, 1e22), encoding="utf-8") as f:
        text = f.read()
    assert "The frontier could not be fitted" in text
    assert "Skipped: neither Approach 2 nor Approach 3 could be fitted" in text
    assert "Skipped: no hyperparameter law was fitted" in text
    assert "No backtest" in text
    assert len(linked_images(str(tmp_path), text)) == 2  # the trials alone: loss vs compute, IsoFLOP points

    # Too few trials for any fit: fit_all's notes and a report without a single plot that needs a fit.
    few = sweep_rows(budgets=(1e17,), sizes=(1.0,), lrs=(1e-3,))
    few_fits = F.fit_all(few, target_flops=1e22, n_bootstrap=5, n_starts=5)
    with open(write_report(str(tmp_path / "few"), few, few_fits, 1e22), encoding="utf-8") as f:
        text = f.read()
    for note in few_fits["notes"]:
        assert note in text
    linked_images(str(tmp_path / "few"), text)


def test_format_value():
    assert format_value(None) == "—" and format_value(float("nan")) == "—"
    assert float(format_value(123456.789)) == pytest.approx(123500)
    assert np.isclose(float(format_value(2.5e-4)), 2.5e-4)


def test_report_draws_an_estimate_outside_its_own_interval(tmp_path, sweep):
    """A percentile interval need not contain the point fit (a sweep's frontier put E at its bound 0 and
    every resample a hair above it); the report must still draw it, not crash in matplotlib's errorbar."""
    rows, fits = sweep
    frontier = fits["frontier"]
    at = frontier["at_target"]["loss"]
    shifted = {**fits, "frontier": {**frontier, "at_target": {"loss": {**at, "low": at["value"] + 1e-9}}},
               "recommendation": {**fits["recommendation"], "N": {**fits["recommendation"]["N"],
                                                                  "high": fits["recommendation"]["N"]["value"] / 2}}}
    with open(write_report(str(tmp_path), rows, shifted, 1e22), encoding="utf-8") as f:
        text = f.read()
    assert len(linked_images(str(tmp_path), text)) == 4


def test_report_says_which_fits_are_identified_and_quotes_only_those(tmp_path, sweep):
    rows, fits = sweep
    approach3 = {**fits["approach3"], "identified": False, "reason": "Not identified: beta at the lower bound of its "
                 "search box."}
    noise = {"seed_sd": 0.0123, "seed_dof": 12, "n_seeded_settings": 6, "eval_se": 0.0021}
    rec = {**fits["recommendation"], "loss": {"value": 2.5, "low": None, "high": 2.6, "source": "frontier"}}
    changed = {**fits, "approach3": approach3, "noise": noise, "recommendation": rec}
    with open(write_report(str(tmp_path), rows, changed, 1e22), encoding="utf-8") as f:
        text = f.read()
    assert text.index("## Which fits are identified") < text.index("## Backtest") < text.index("## Fits")
    assert "| fit | identified | reason | bootstrap | resamples failed / attempted |" in text
    for label, key in (("frontier", "frontier"), ("Approach 2", "approach2"), ("η* law (lr)", "lr")):
        section = changed["hyperparameters"]["lr"] if key == "lr" else changed[key]
        verdict = "yes" if section["identified"] else "no"
        assert (f"| {label} | {verdict} | {section['reason']} | {section['bootstrap']} | "
                f"{section['n_failed']} / {section['n_bootstrap']} |") in text, label
    assert f"| Approach 3 | no | {approach3['reason']} | cases | 0 / 20 |" in text
    assert "| B* law (batch size) | — | could not be fitted (see notes) |" in text
    # Approach 3 is not identified: its parameters are not quoted.
    assert "- Approach 3, L(N, D) = E + A/N^α + B/D^β: not identified" in text
    assert format_value(approach3["params"]["alpha"]["value"]) not in text
    # The noise, and an unbounded side of an interval, in words.
    assert "seed SD of the eval loss 0.0123 (12 degrees of freedom over 6 settings" in text
    assert "eval-loss SE 0.0021" in text
    assert "| predicted loss | 2.5 | [unbounded, 2.6] | frontier |" in text


VALIDATION = {
    "target_flops": 1e20, "predicted_loss": {"value": 2.5, "low": 2.45, "high": 2.55}, "observed_loss": 2.53,
    "error_fraction": (2.53 - 2.5) / 2.53, "observed_in_interval": True, "recommended_is_best": True,
    "trials": [dict(role=role, N=1e7 * k, D=1e20 / (6e7 * k), C=1e20, n_layers=4, d_model=256, lr=1e-3,
                    eval_loss=loss, eval_loss_se=0.002, status="ok")
               for role, k, loss in (("recommended", 1, 2.53), ("half", 0.5, 2.56), ("double", 2, 2.571))],
    "extrapolated": {"target_flops": 1e22, "N": {"value": 1e9, "low": 5e8, "high": 2e9},
                     "D": {"value": 1e10, "low": None, "high": None}, "loss": {"value": 2.1, "low": 2.0, "high": 2.2},
                     "checked": False},
}


def test_report_renders_the_validation_runs_and_is_byte_deterministic(tmp_path, sweep):
    rows, fits = sweep
    with_validation = {**fits, "validation": VALIDATION}
    paths = [write_report(str(tmp_path / name), rows, with_validation, 1e22) for name in ("a", "b")]
    texts = [open(p, encoding="utf-8").read() for p in paths]
    assert texts[0] == texts[1]
    text = texts[0]
    assert text.index("## Validation") < text.index("## Backtest")
    assert ("the predicted loss of the recommended run was 2.5 [2.45, 2.55], its observed loss 2.53: "
            "error +1.19%") in text
    assert "| run | N | D | C | shape | lr | eval loss | eval loss SE | status |" in text
    assert "| recommended | 1e+07 | 1.667e+12 | 1e+20 | L4 d256 | 0.001 | 2.53 | 0.002 | ok |" in text
    assert "| double | 2e+07 |" in text and "| half | 5e+06 |" in text
    assert "Extrapolated to C = 1e+22 FLOPs: N* 1e+09 [5e+08, 2e+09], D* 1e+10 unbounded" in text
    assert "not checked by any run" in text
    assert len(linked_images(str(tmp_path / "a"), text)) == 4
    with open(write_report(str(tmp_path / "c"), rows, fits, 1e22), encoding="utf-8") as f:
        assert "## Validation" not in f.read()


def test_downstream_scores_are_plotted_against_compute_when_the_sweep_has_them(tmp_path, sweep):
    rows, fits = sweep
    plain = open(write_report(str(tmp_path / "plain"), rows, fits, 1e22), encoding="utf-8").read()
    assert "Downstream tasks" not in plain  # a sweep without train.eval_tasks
    scored = [dict(r, eval_task_shakespeare_cloze_acc=0.25 + 0.01 * math.log10(r["C"])) for r in rows]
    text = open(write_report(str(tmp_path / "tasks"), scored, fits, 1e22), encoding="utf-8").read()
    assert "### Downstream tasks vs compute" in text
    assert "plots/tasks_vs_compute.png" in linked_images(str(tmp_path / "tasks"), text)
