"""The sweep's human-readable report: WORKDIR/report.md and its plots under WORKDIR/plots/.

Drawn from the trial rows and `fit.fit_all`'s dict (the runner writes that dict to WORKDIR/fits.json,
with the validation runs under "validation" when the sweep trained them); nothing is refitted here. A table
near the top says which fits are identified; a fit that is not is neither quoted nor drawn as a curve.
report.md is byte-deterministic for the same inputs (no timestamps). Each plot whose fit is missing is
replaced by a sentence saying so, so a sweep with failed trials or too few budgets still gets a report.
matplotlib is imported inside `write_report` and draws on an Agg canvas without pyplot, so importing this
module, or a notebook's own backend, is unaffected.
"""

import math
import os

import jax
import numpy as np

from gptjax.atomic import atomic_path
from gptjax.scaling import fit as fitlib
from gptjax.scaling.fit.frontier import ZERO_E

PLOTS_DIR = "plots"


def format_value(x, digits: int = 4) -> str:
    """A number as report.md prints it (4 significant digits); None (a missing value) as an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}g}"


def _interval(estimate) -> str:
    """"[low, high]"; an end that is None (too many failed resamples, or none drawn) as "unbounded"."""
    if not estimate:
        return "—"
    low, high = estimate.get("low"), estimate.get("high")
    if low is None and high is None:
        return "unbounded"
    low, high = ("unbounded" if x is None else format_value(x) for x in (low, high))
    return f"[{low}, {high}]"


def _identified(section) -> bool:
    return bool(section) and section.get("identified", False)


def write_report(workdir: str, rows: list[dict], fits: dict, target_flops: float) -> str:
    """Write WORKDIR/report.md and WORKDIR/plots/*.png; returns the path of report.md.

    rows: the sweep's trial rows (results.jsonl); fits: `fit.fit_all(rows, target_flops, ...)`.
    Images are linked with paths relative to report.md. Every file is written atomically, by process 0 of a
    multi-process job only.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: only reporting pays the import
    from matplotlib.figure import Figure

    path = os.path.join(workdir, "report.md")
    if jax.process_index() != 0:
        return path

    def save(fig, name):
        FigureCanvasAgg(fig)
        with atomic_path(os.path.join(workdir, PLOTS_DIR, name)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        return f"![{name[:-4].replace('_', ' ')}]({PLOTS_DIR}/{name})"

    def new_figure(panels=1):
        fig = Figure(figsize=(5.5 * panels, 4.2), layout="constrained")
        return fig, fig.subplots(1, panels, squeeze=False)[0]

    usable = fitlib.usable_rows(rows)
    lines = ["# Scaling sweep report", "",
             f"Target compute: **{format_value(target_flops)} FLOPs**. {_rows_summary(fits)}", ""]
    lines += _recommendation_section(fits, target_flops)
    lines += _identification_section(fits)
    lines += _validation_section(fits.get("validation"))
    lines += _known_truth_section(fits.get("known_truth"))
    lines += _backtest_section(fits.get("backtest"))
    lines += _fits_section(fits)
    lines += ["## Plots", "", "### Loss vs compute", "",
              _plot_loss_vs_compute(usable, fits, target_flops, new_figure, save), "",
              "### IsoFLOP profiles", "", _plot_isoflops(usable, fits, new_figure, save), "",
              "### Compute-optimal N and D", "", _plot_allocation(fits, target_flops, new_figure, save), "",
              "### Hyperparameters", "", _plot_hyperparameters(fits, target_flops, new_figure, save), ""]
    tasks = _plot_tasks_vs_compute(usable, new_figure, save)
    if tasks:
        lines += ["### Downstream tasks vs compute", "", tasks, ""]
    notes = fits.get("notes") or []
    lines += ["## Notes", ""] + ([f"- {n}" for n in notes] or ["None."]) + [""]
    lines += _trials_table(rows)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------
# Text


def _rows_summary(fits):
    n = fits.get("n_rows") or {}
    if not n:
        return ""
    return (f"{n['total']} trials, {n['fitted']} fitted ({n['excluded']} excluded: failed, diverged or no loss); "
            f"{n['models']} model sizes over {n['budgets']} budgets.")


_QUANTITIES = (("N", "N* (compute parameters)"), ("D", "D* (tokens)"), ("tokens_per_param", "tokens per parameter"),
               ("loss", "predicted loss"), ("lr", "learning rate η*"), ("batch_size", "batch size B* (sequences)"))


def _recommendation_section(fits, target_flops):
    rec = fits.get("recommendation") or {}
    lines = [f"## Recommendation at C = {format_value(target_flops)} FLOPs", "",
             "Each number comes from the first identified fit that gives it (Approach 3, then Approach 2 for N*, D* "
             "and tokens per parameter or the frontier for the loss; the η* and B* laws); a fit that is not "
             "identified gives nothing.", "",
             "| quantity | value | 95% interval | from |", "| --- | --- | --- | --- |"]
    for key, label in _QUANTITIES:
        est = rec.get(key)
        if est:
            lines.append(f"| {label} | {format_value(est['value'])} | {_interval(est)} | {est['source']} |")
        else:
            lines.append(f"| {label} | — | — | no identified fit (see notes) |")
    return lines + [""]


def _fit_entries(fits):
    """(label, section) of every fit the identification table lists, in report order; section None when the
    fit could not be made."""
    hyper = fits.get("hyperparameters") or {}
    entries = [("frontier", fits.get("frontier")), ("Approach 2", fits.get("approach2")),
               ("Approach 3", fits.get("approach3")), ("η* law (lr)", hyper.get("lr")),
               ("B* law (batch size)", hyper.get("batch_size"))]
    back = fits.get("backtest") or {}
    for key, label in (("frontier", "backtest: frontier"), ("approach3", "backtest: Approach 3")):
        if back.get(key) and "identified" in back[key]:
            entries.append((label, back[key]))
    return entries


def _identification_section(fits):
    lines = ["## Which fits are identified", "",
             "A fit is identified when the rows pin it down: at most 5% of its bootstrap resamples failed, no key "
             "parameter (or end of its interval) sits at a bound of its search box, and its key intervals are "
             "bounded. Only identified fits are quoted below and feed the recommendation.", "",
             "| fit | identified | reason | bootstrap | resamples failed / attempted |",
             "| --- | --- | --- | --- | --- |"]
    for label, section in _fit_entries(fits):
        if not section:
            lines.append(f"| {label} | — | could not be fitted (see notes) | — | — |")
            continue
        if "identified" not in section:  # a fits.json written before fits said so
            lines.append(f"| {label} | unknown | not assessed: these fits predate identification; refit them "
                         "(sweep.mode=fit) | — | — |")
            continue
        failed = (f"{section['n_failed']} / {section['n_bootstrap']}" if "n_failed" in section else "—")
        reason = str(section["reason"]).replace("|", "/")
        lines.append(f"| {label} | {'yes' if section['identified'] else 'no'} | {reason} | "
                     f"{section.get('bootstrap', 'none')} | {failed} |")
    return lines + ["", _noise_sentence(fits.get("noise")), ""]


def _noise_sentence(noise):
    if not noise:
        return "Measured noise: not recorded in these fits."
    if noise["seed_sd"] is None and noise["eval_se"] is None:
        return ("Measured noise: none (no setting was run with two or more seeds, and no run recorded its eval-loss "
                "standard error), so the intervals resample cases and residuals instead.")
    seed = ("seed SD not measured (no setting has two seeds)" if noise["seed_sd"] is None else
            f"seed SD of the eval loss {format_value(noise['seed_sd'])} ({noise['seed_dof']} degrees of freedom over "
            f"{noise['n_seeded_settings']} settings with two or more seeds)")
    evals = ("eval-loss SE not recorded" if noise["eval_se"] is None else
             f"eval-loss SE {format_value(noise['eval_se'])} (median over runs)")
    return (f"Measured noise: {seed}; {evals}. The parametric bootstraps redraw each point with this noise or the "
            "fit's residual scatter, whichever is larger.")


def _validation_section(validation):
    if not validation:
        return []
    if "predicted_loss" not in validation or validation.get("observed_loss") is None:
        why = validation.get("skipped") or "the recommended run did not finish with a finite loss"
        return ["## Validation", "", f"No validation: {why}.", ""]
    pred = validation["predicted_loss"]
    yes_no = {True: "yes", False: "no"}
    lines = ["## Validation", "",
             f"Runs trained after the fit at C = {format_value(validation['target_flops'])} FLOPs: the predicted loss "
             f"of the recommended run was {format_value(pred['value'])} {_interval(pred)}, its observed loss "
             f"{format_value(validation['observed_loss'])}: error {100 * validation['error_fraction']:+.2f}% "
             "((observed − predicted) / observed). Observed inside the interval: "
             f"{yes_no[bool(validation['observed_in_interval'])]}. The recommended run is the best of the three: "
             f"{yes_no[bool(validation['recommended_is_best'])]}.", "",
             "| run | N | D | C | shape | lr | eval loss | eval loss SE | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in validation.get("trials", []):
        cells = [t.get("role", "—"), format_value(t.get("N")), format_value(t.get("D")), format_value(t.get("C")),
                 _shape(t), format_value(t.get("lr")), format_value(t.get("eval_loss")),
                 format_value(t.get("eval_loss_se")), t.get("status", "—")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    ext = validation.get("extrapolated")
    if ext:
        parts = ", ".join(f"{label} {format_value(ext[key]['value'])} {_interval(ext[key])}"
                          for key, label in (("N", "N*"), ("D", "D*"), ("loss", "loss")) if ext.get(key))
        lines += ["", f"Extrapolated to C = {format_value(ext['target_flops'])} FLOPs: {parts}; "
                      f"{'checked by a run' if ext.get('checked') else 'not checked by any run'}."]
    return lines + [""]


def _known_truth_section(truth):
    """Synthetic data: each free E against the source's exact entropy rate."""
    if not truth:
        return []
    lines = ["## Known truth", "", f"The data is a Markov chain whose entropy rate, the best loss any model can reach, "
             f"is {format_value(truth['entropy_rate'])} nats/token.", ""]
    labels = {"approach3": "Approach 3", "frontier": "The frontier"}
    for name, entry in truth["fits"].items():
        flag = "" if entry["identified"] else " (not identified)"
        inside = "inside" if entry["truth_in_interval"] else "outside"
        lines.append(f"- {labels[name]}{flag}: E = {format_value(entry['E']['value'])} {_interval(entry['E'])}, "
                     f"E − H = {entry['error']:+.4f} nats; the entropy rate is {inside} the interval.")
    if not truth["fits"]:
        lines.append("- No fit has a free E (Approach 3 failed and the frontier fixed E at 0).")
    return lines + [""]


def _backtest_section(back):
    lines = ["## Backtest", ""]
    if not back:
        return lines + ["No backtest: it needs at least two budgets (see notes).", ""]
    parts = []
    for name, label in (("frontier", "frontier"), ("approach3", "Approach 3")):
        entry = back.get(name) or {}
        if "predicted" in entry:
            flag = "" if entry.get("identified", True) else " (not identified)"
            parts.append(f"{label}{flag} predicted {format_value(entry['predicted'])} (error {entry['error']:+.4g}, "
                         f"{100 * entry['rel_error']:+.2f}%)")
        else:
            parts.append(f"{label} skipped ({entry.get('skipped', 'no fit')})")
    lines.append(f"Refitted without the largest budget ({format_value(back['held_out_budget'])} FLOPs), whose best "
                 f"observed loss is {format_value(back['observed'])}: " + "; ".join(parts) + ".")
    return lines + [""]


def _fits_section(fits):
    lines = ["## Fits", ""]
    unquoted = "not identified (see the table above); its numbers are in fits.json but not quoted here."
    frontier = fits.get("frontier")
    if frontier and not _identified(frontier):
        lines.append(f"- Frontier L(C) = E + (C0/C)^γ: {unquoted}")
    elif frontier:
        p = frontier["params"]
        offset = (f"E = {format_value(p['E']['value'])} {_interval(p['E'])}, " if frontier.get("form") != ZERO_E
                  else "E fixed at 0 (a free offset did not improve the fit significantly: a pure power law), ")
        lines.append(f"- Frontier L(C) = E + (C0/C)^γ: {offset}"
                     f"C0 = {format_value(p['C0']['value'])} {_interval(p['C0'])}, "
                     f"γ = {format_value(p['gamma']['value'])} {_interval(p['gamma'])}.")
    a2 = fits.get("approach2")
    if a2 and not _identified(a2):
        lines.append(f"- Approach 2 (IsoFLOP parabolas): {unquoted}")
    elif a2:
        n_law, d_law = a2["N_law"], a2["D_law"]
        lines.append(f"- Approach 2 (IsoFLOP parabolas): N*(C) = {format_value(n_law['coef']['value'])} · "
                     f"C^{format_value(n_law['exponent']['value'])} (exponent {_interval(n_law['exponent'])}), "
                     f"D*(C) ∝ C^{format_value(d_law['exponent']['value'])} {_interval(d_law['exponent'])}.")
    a3 = fits.get("approach3")
    if a3 and not _identified(a3):
        lines.append(f"- Approach 3, L(N, D) = E + A/N^α + B/D^β: {unquoted}")
    elif a3:
        p = a3["params"]
        terms = ", ".join(f"{name} = {format_value(p[key]['value'])} {_interval(p[key])}"
                          for key, name in (("E", "E"), ("A", "A"), ("B", "B"), ("alpha", "α"), ("beta", "β")))
        lines.append(f"- Approach 3, L(N, D) = E + A/N^α + B/D^β: {terms}; "
                     f"N_opt ∝ C^{format_value(p['a']['value'])}, D_opt ∝ C^{format_value(p['b']['value'])}.")
    for key, label in (("lr", "η*(C)"), ("batch_size", "B*(C)")):
        law = (fits.get("hyperparameters") or {}).get(key)
        if law and not _identified(law):
            lines.append(f"- {label}: {unquoted}")
        elif law:
            lines.append(f"- {label} = {format_value(law['law']['coef']['value'])} · "
                         f"C^{format_value(law['law']['exponent']['value'])} "
                         f"(exponent {_interval(law['law']['exponent'])}), from {len(law['budgets'])} budgets.")
    if len(lines) == 2:
        lines.append("No fit could be made (see notes).")
    return lines + [""]


def _trials_table(rows):
    lines = ["## Trials", "",
             "| trial | budget | shape | N | D | lr | batch | eval loss | status | tokens/s | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def key(row):
        return tuple(row.get(k) if isinstance(row.get(k), (int, float)) else math.inf
                     for k in ("budget", "N", "lr", "batch_size"))

    for row in sorted(rows, key=key):
        status = row.get("status", "ok") + (f" ({row['reason']})" if row.get("reason") else "")
        cells = [row.get("trial", "—"), format_value(row.get("budget")), _shape(row), format_value(row.get("N")),
                 format_value(row.get("D")), format_value(row.get("lr")), format_value(row.get("batch_size")),
                 format_value(row.get("eval_loss")), status, format_value(row.get("tokens_per_sec")),
                 format_value(row.get("wall_seconds"))]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return lines + [""]


def _shape(row):
    if row.get("n_layers") is None or row.get("d_model") is None:
        return "—"
    extra = "".join(f" {tag}{row[k]}" for k, tag in (("n_heads", "h"), ("d_ff", "ff")) if row.get(k) is not None)
    return f"L{row['n_layers']} d{row['d_model']}{extra}"


# ---------------------------------------------------------------------------------------------------
# Plots: each returns the markdown for report.md (an image link, or a sentence when it is skipped)


def _budget_colors(budgets):
    from matplotlib import colormaps

    budgets = sorted(set(budgets))
    cmap = colormaps["viridis"]
    return {b: cmap(i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def _error_bar(estimate):
    """matplotlib's yerr for one estimate; a missing interval end draws no bar on that side. A percentile
    interval need not contain the point fit (e.g. E fitted at its bound 0 while every resample lands a hair
    above it), and matplotlib refuses negative lengths, so such a side draws no bar either."""
    value = estimate["value"]
    low, high = estimate.get("low"), estimate.get("high")
    return [[max(0.0, value - (value if low is None else low))], [max(0.0, (value if high is None else high) - value)]]


def _draw_band(ax, band, color, label):
    c = np.array(band["C"], float)
    value = np.array([np.nan if v is None else v for v in band["value"]], float)
    ax.plot(c, value, color=color, label=label)
    low = np.array([np.nan if v is None else v for v in band["low"]], float)
    high = np.array([np.nan if v is None else v for v in band["high"]], float)
    if np.isfinite(low).any():
        ax.fill_between(c, low, high, color=color, alpha=0.2, linewidth=0)


def _plot_loss_vs_compute(usable, fits, target_flops, new_figure, save):
    if not usable:
        return "Skipped: no trial finished with a finite loss."
    fig, (ax,) = new_figure()
    colors = _budget_colors(r["budget"] for r in usable)
    ax.scatter([r["C"] for r in usable], [r["eval_loss"] for r in usable], s=14, alpha=0.6,
               c=[colors[r["budget"]] for r in usable], label="trials")
    frontier = fits.get("frontier")
    sentence = ""
    if frontier:
        ax.scatter([p["C"] for p in frontier["points"]], [p["loss"] for p in frontier["points"]], s=40,
                   facecolors="none", edgecolors="black", label="frontier points")
    if _identified(frontier):
        _draw_band(ax, frontier["curve"], "black", "frontier fit (95% band)")
        at = frontier.get("at_target", {}).get("loss")
        if at and at["value"] is not None:
            ax.errorbar([target_flops], [at["value"]], yerr=_error_bar(at), fmt="*", color="crimson", markersize=10,
                        label=f"frontier at target: {format_value(at['value'])}")
    elif frontier:
        sentence = "\n\nThe frontier is not identified, so its curve is not drawn (see the identification table)."
    else:
        sentence = "\n\nThe frontier could not be fitted, so only the trials are shown (see notes)."
    _draw_validation(ax, fits.get("validation"))
    ax.axvline(target_flops, color="gray", linestyle=":", linewidth=1)
    ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel="eval loss", title="Loss vs compute")
    ax.legend(fontsize=8)
    return save(fig, "loss_vs_compute.png") + sentence


TASK_PREFIX = "eval_task_"  # train.eval_tasks' final scores on each row (gptjax/evaluate/job.py score_names)
MAX_TASK_PANELS = 3


def _plot_tasks_vs_compute(usable, new_figure, save):
    """Loss and each downstream score (train.eval_tasks) against compute, side by side: every trial, and per
    budget the trial with the lowest loss joined by a line. None when no trial was scored on tasks."""
    metrics = sorted({k for r in usable for k in r if k.startswith(TASK_PREFIX)})
    if not metrics:
        return None
    shown = metrics[:MAX_TASK_PANELS]
    fig, axes = new_figure(1 + len(shown))
    colors = _budget_colors(r["budget"] for r in usable)
    best = {}
    for r in usable:
        if r["budget"] not in best or r["eval_loss"] < best[r["budget"]]["eval_loss"]:
            best[r["budget"]] = r
    frontier = [best[b] for b in sorted(best)]
    for ax, key, label in zip(axes, ["eval_loss", *shown], ["eval loss", *(m[len(TASK_PREFIX):] for m in shown)]):
        scored = [r for r in usable if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        ax.scatter([r["C"] for r in scored], [r[key] for r in scored], s=14, alpha=0.6,
                   c=[colors[r["budget"]] for r in scored])
        ax.plot([r["C"] for r in frontier], [r.get(key, math.nan) for r in frontier], "k-o", markersize=4,
                label="lowest-loss trial per budget")
        ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel=label, title=label)
        ax.legend(fontsize=8)
    left_out = f" ({len(metrics) - len(shown)} more scores are in results.jsonl)" if len(metrics) > len(shown) else ""
    return save(fig, "tasks_vs_compute.png") + left_out


_ROLE_MARKERS = {"recommended": "D", "half": "<", "double": ">"}


def _draw_validation(ax, validation):
    """The validation runs (one marker per role) and the loss predicted for the recommended run, with its
    interval, at the validation's compute."""
    if not validation or "predicted_loss" not in validation:
        return
    for t in validation.get("trials", []):
        if t.get("eval_loss") is not None and t.get("C"):
            ax.plot([t["C"]], [t["eval_loss"]], marker=_ROLE_MARKERS.get(t.get("role"), "o"), color="tab:red",
                    markerfacecolor="none", linestyle="none", markersize=8, label=f"validation: {t.get('role')}")
    pred = validation["predicted_loss"]
    if pred.get("value") is not None:
        ax.errorbar([validation["target_flops"]], [pred["value"]], yerr=_error_bar(pred), fmt="_", color="tab:red",
                    markersize=14, capsize=4, label=f"predicted for validation: {format_value(pred['value'])}")


def _plot_isoflops(usable, fits, new_figure, save):
    models = fitlib.best_per_model(usable)
    if not models:
        return "Skipped: no trial finished with a finite loss."
    fig, (ax,) = new_figure()
    colors = _budget_colors(m["budget"] for m in models)
    for b, color in colors.items():
        pts = [m for m in models if m["budget"] == b]
        ax.scatter([m["N"] for m in pts], [m["eval_loss"] for m in pts], color=color, s=20,
                   label=f"C = {format_value(b, 3)}")
    a2, a3 = fits.get("approach2"), fits.get("approach3")
    for v in (a2 or {}).get("budgets", []):
        color = colors.get(v["budget"], "gray")
        lo, hi = v["N_range"]
        n = np.geomspace(lo / 1.5, hi * 1.5, 100)
        x = np.log(n)
        ax.plot(n, np.polyval(v["coef"], x), color=color, linewidth=1)
        ax.plot([v["N_opt"]], [np.polyval(v["coef"], math.log(v["N_opt"]))], marker="v" if v["status"] == "ok" else "x",
                color=color, markersize=8, linestyle="none")
    if _identified(a3):
        for b, color in colors.items():
            c = np.exp(np.mean([math.log(m["C"]) for m in models if m["budget"] == b]))
            ns = [m["N"] for m in models if m["budget"] == b]
            n = np.geomspace(min(ns) / 1.5, max(ns) * 1.5, 100)
            ax.plot(n, fitlib.predict_loss(a3, n, c / (6 * n)), color=color, linestyle="--", linewidth=0.8)
    ax.set(xscale="log", xlabel="N (compute parameters)", ylabel="eval loss (best over lr / batch / seed)",
           title="IsoFLOP profiles: parabolas (solid, ▼ vertex), Approach 3 (dashed)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    sentence = "" if a2 else "\n\nNo IsoFLOP parabolas: Approach 2 could not be fitted (see notes)."
    if a3 and not _identified(a3):
        sentence += "\n\nApproach 3 is not identified, so its curves are not drawn."
    return save(fig, "isoflop_profiles.png") + sentence


def _plot_allocation(fits, target_flops, new_figure, save):
    a2, a3 = fits.get("approach2"), fits.get("approach3")
    if not (a2 or a3):
        return "Skipped: neither Approach 2 nor Approach 3 could be fitted (see notes)."
    if not (a2 or _identified(a3)):
        return "Skipped: Approach 2 could not be fitted and Approach 3 is not identified (see notes)."
    fig, axes = new_figure(2)
    for ax, key, label in ((axes[0], "N", "N* (compute parameters)"), (axes[1], "D", "D* (tokens)")):
        if a2:
            pts = [v for v in a2["budgets"] if v["status"] == "ok"]
            c = np.array([v["C"] for v in pts])
            if key == "N":
                value = np.array([v["N_opt"] for v in pts])
                low = np.array([v["N_opt_interval"]["low"] or v["N_opt"] for v in pts])
                high = np.array([v["N_opt_interval"]["high"] or v["N_opt"] for v in pts])
            else:  # D* = C / (6 N*): the interval flips
                value = np.array([v["D_opt"] for v in pts])
                low = c / (6 * np.array([v["N_opt_interval"]["high"] or v["N_opt"] for v in pts]))
                high = c / (6 * np.array([v["N_opt_interval"]["low"] or v["N_opt"] for v in pts]))
            # A percentile interval need not contain its point (`_error_bar`): such a side draws no bar.
            ax.errorbar(c, value, yerr=[np.maximum(value - low, 0), np.maximum(high - value, 0)], fmt="o",
                        color="tab:blue",
                        label="Approach 2 vertices")
            if _identified(a2):
                _draw_band(ax, a2["curve"][key], "tab:blue", "Approach 2 law")
        if _identified(a3):
            _draw_band(ax, a3["curve"][key], "tab:orange", "Approach 3")
        rec = (fits.get("recommendation") or {}).get(key)
        if rec:
            ax.errorbar([target_flops], [rec["value"]], yerr=_error_bar(rec), fmt="*", color="crimson",
                        markersize=10, label=f"recommended ({rec['source']}): {format_value(rec['value'])}")
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel=label)
        ax.legend(fontsize=8)
    return save(fig, "compute_optimal.png")


def _plot_hyperparameters(fits, target_flops, new_figure, save):
    laws = [(key, law) for key, law in (fits.get("hyperparameters") or {}).items() if law]
    if not laws:
        return ("Skipped: no hyperparameter law was fitted (learning rate and batch size not swept over >= 3 "
                "budgets; see notes).")
    fig, axes = new_figure(len(laws))
    labels = {"lr": "best learning rate η*", "batch_size": "best batch size B* (sequences)"}
    for ax, (key, law) in zip(axes, laws):
        ax.scatter([o["C"] for o in law["budgets"]], [o["value"] for o in law["budgets"]], color="tab:green",
                   label="per-budget optimum", zorder=3)
        if _identified(law):
            _draw_band(ax, law["curve"], "tab:green", "power law (95% band)")
        at = law.get("at_target")
        if at and at["value"] is not None:
            ax.plot([target_flops], [at["value"]], "*", color="crimson", markersize=10,
                    label=f"at target: {format_value(at['value'])}")
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel=labels.get(key, key))
        ax.legend(fontsize=8)
    return save(fig, "hyperparameters.png")
