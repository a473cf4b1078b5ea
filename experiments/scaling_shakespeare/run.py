"""The main job, run twice with different seeds, and the comparison of the two runs.

    python experiments/scaling_shakespeare/run.py              # both seeds (~2 x 20 min on 2 CPU cores)
    python experiments/scaling_shakespeare/run.py --seeds 1    # one seed; README.md compares what is there
    python experiments/scaling_shakespeare/run.py --report-only [--out DIR]
    python experiments/scaling_shakespeare/run.py --refit      # refit the finished runs with the current code

Each seed runs `python -m gptjax.main --config=configs/sweep.py --workdir=WORK/seed<S> --config.seed=<S>` (the
README's command 1 with another seed) and copies its plan.json, results.jsonl, fits.json, report.md and plots/
into seed<S>/ here, with run.json (commit, command, wall time, CPU, versions). README.md is then written from
those files alone: `--report-only` rebuilds it byte for byte (tests/test_experiment_reports.py checks that).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COPIED = ("plan.json", "results.jsonl", "fits.json", "report.md")
SCRIPT = "python experiments/scaling_shakespeare/run.py"
sys.path.insert(0, os.path.dirname(HERE))
from provenance import commit as code_commit, cpu_name  # noqa: E402  experiments/provenance.py


def run_seed(seed: int, work: str, refit: bool = False) -> None:
    """Runs the main job with `seed` and copies its outputs to seed<seed>/ with run.json. With `refit`, the
    same command on the finished workdir of an earlier run trains nothing and refits with the code checked
    out now: run.json keeps the training run's commit, command and wall time and adds "refit" (its commit,
    command, wall time and date)."""
    import jax

    workdir = os.path.join(work, f"seed{seed}")
    out = os.path.join(HERE, f"seed{seed}")
    if refit and not (os.path.isfile(os.path.join(out, "run.json")) and os.path.isdir(workdir)):
        sys.exit(f"--refit: needs seed{seed}/run.json here and the run's workdir {workdir}; run without --refit")
    command = [sys.executable, "-m", "gptjax.main", "--config=configs/sweep.py", f"--workdir={workdir}",
               f"--config.seed={seed}"]
    commit = code_commit()
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    this_run = {"commit": commit, "command": " ".join(["python"] + command[1:]),
                "wall_seconds": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d")}
    if refit:
        with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
            meta = {**json.load(f), "refit": this_run}
    else:
        meta = {"seed": seed, **this_run, "cpu": cpu_name(), "python": platform.python_version(),
                "jax": jax.__version__}
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in COPIED:
        shutil.copy(os.path.join(workdir, name), out)
    shutil.copytree(os.path.join(workdir, "plots"), os.path.join(out, "plots"))
    with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def _fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _interval(e) -> str:
    if not e or e.get("value") is None:
        return "—"
    low = "−∞" if e.get("low") is None else _fmt(e["low"])
    high = "+∞" if e.get("high") is None else _fmt(e["high"])
    return f"{_fmt(e['value'])} [{low}, {high}]"


def _inside(e, x) -> bool | None:
    if not e or x is None:
        return None
    low = -float("inf") if e.get("low") is None else e["low"]
    high = float("inf") if e.get("high") is None else e["high"]
    return low <= x <= high


def _seed_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root)
                  if d.startswith("seed") and os.path.isfile(os.path.join(root, d, "fits.json")))


def _load(root: str, d: str) -> tuple[dict, dict]:
    with open(os.path.join(root, d, "fits.json"), encoding="utf-8") as f:
        fits = json.load(f)
    with open(os.path.join(root, d, "run.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return fits, meta


def targets(fits: dict) -> dict:
    """The issue's targets for one run: {name: (value, met)}."""
    out = {}
    law = (fits.get("approach2") or {}).get("N_law", {}).get("exponent")
    if law and law.get("low") is not None and law.get("high") is not None:
        width = law["high"] - law["low"]
        out["Approach-2 N* exponent interval width ≤ 0.15"] = (f"{width:.3f}", width <= 0.15)
    else:
        out["Approach-2 N* exponent interval width ≤ 0.15"] = ("unbounded or not fitted", False)
    n = (fits.get("recommendation") or {}).get("N")
    if n and n.get("low") and n.get("high"):
        ratio = n["high"] / n["low"]
        out["N* at the target: high/low ≤ 3"] = (f"{ratio:.2f} ({n['source']})", ratio <= 3)
    else:
        out["N* at the target: high/low ≤ 3"] = ("no bounded N*", False)
    v = fits.get("validation") or {}
    if v.get("error_fraction") is not None:
        err = v["error_fraction"]
        out["validation: abs(error_fraction) ≤ 0.02"] = (f"{err:+.4f}", abs(err) <= 0.02)
        out["validation: observed loss inside the predicted interval"] = (
            "yes" if v["observed_in_interval"] else "no", bool(v["observed_in_interval"]))
    else:
        out["validation: abs(error_fraction) ≤ 0.02"] = (v.get("skipped", "not run"), False)
    return out


def write_readme(root: str, out: str) -> str:
    """README.md from the committed seed<S>/ directories under `root`, written to `out`."""
    dirs = _seed_dirs(root)
    runs = [_load(root, d) for d in dirs]
    lines = ["# The main job, run with two seeds", "",
             f"Written by `{SCRIPT}` from the files in `seed*/` (rebuild: `{SCRIPT} --report-only`); never edited by "
             "hand. Each `seed*/report.md` is that run's own report (written by the sweep).", ""]
    lines += ["| seed | commit | command | wall | CPU | Python / jax | date | refitted at |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d, (_, meta) in zip(dirs, runs):
        refit = meta.get("refit")
        refitted = (f"`{refit['commit'][:12]}` ({refit['date']}, {refit['wall_seconds']:.0f} s, nothing retrained)"
                    if refit else "—")
        lines.append(f"| {meta['seed']} | `{meta['commit'][:12]}` | `{meta['command']}` | "
                     f"{meta['wall_seconds'] / 60:.1f} min | {meta['cpu']} | {meta['python']} / {meta['jax']} | "
                     f"{meta['date']} | {refitted} |")
    lines += ["", "## Fits", "", "| quantity | " + " | ".join(f"seed {m['seed']}" for _, m in runs) + " |",
              "| --- |" + " --- |" * len(runs)]

    def row(label, get):
        lines.append(f"| {label} | " + " | ".join(get(f) for f, _ in runs) + " |")

    def ident(name):
        return lambda f: ("identified" if (f.get(name) or {}).get("identified") else "not identified")

    row("Approach 2", ident("approach2"))
    row("Approach 3", ident("approach3"))
    row("frontier", ident("frontier"))
    row("lr law", lambda f: "identified" if ((f.get("hyperparameters") or {}).get("lr") or {}).get("identified")
        else "not identified")
    row("Approach 2: N* exponent", lambda f: _interval(((f.get("approach2") or {}).get("N_law") or {}).get("exponent")))
    row("Approach 3: E", lambda f: _interval(((f.get("approach3") or {}).get("params") or {}).get("E")))
    row("Approach 3: α", lambda f: _interval(((f.get("approach3") or {}).get("params") or {}).get("alpha")))
    row("Approach 3: β", lambda f: _interval(((f.get("approach3") or {}).get("params") or {}).get("beta")))
    row("target FLOPs", lambda f: _fmt(f["target_flops"]))
    for key in ("N", "D", "loss", "lr"):
        row(f"recommended {key}", lambda f, key=key: _interval((f.get("recommendation") or {}).get(key))
            + f" ({((f.get('recommendation') or {}).get(key) or {}).get('source', '—')})")
    row("seed noise SD (dof)", lambda f: f"{_fmt(f['noise']['seed_sd'])} ({f['noise']['seed_dof']})")
    row("eval noise (median SE)", lambda f: _fmt(f["noise"]["eval_se"]))
    row("validation: predicted loss", lambda f: _interval((f.get("validation") or {}).get("predicted_loss")))
    row("validation: observed loss", lambda f: _fmt((f.get("validation") or {}).get("observed_loss"), 4))
    row("validation: recommended run is the best of three",
        lambda f: {True: "yes", False: "no", None: "—"}[(f.get("validation") or {}).get("recommended_is_best")])

    lines += ["", "## Targets (issue 22)", "", "| target | " + " | ".join(f"seed {m['seed']}" for _, m in runs) + " |",
              "| --- |" + " --- |" * len(runs)]
    per_run = [targets(f) for f, _ in runs]
    for name in per_run[0] if per_run else []:
        lines.append(f"| {name} | " + " | ".join(f"{t[name][0]} — {'met' if t[name][1] else 'missed'}"
                                                 for t in per_run) + " |")
    if len(runs) == 2:
        (a, ma), (b, mb) = runs
        ea = ((a.get("approach2") or {}).get("N_law") or {}).get("exponent")
        eb = ((b.get("approach2") or {}).get("N_law") or {}).get("exponent")
        both = ea and eb and _inside(ea, eb["value"]) and _inside(eb, ea["value"])
        lines += ["", f"The two runs' Approach-2 N* exponents fall inside each other's intervals: "
                      f"{'yes' if both else 'no'} (seed {ma['seed']}: {_interval(ea)}; "
                      f"seed {mb['seed']}: {_interval(eb)})."]
    text = "\n".join(lines) + "\n"
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default="/tmp/gptjax/scaling_shakespeare", help="where the sweeps run")
    parser.add_argument("--report-only", action="store_true", help="rebuild README.md from the committed files")
    parser.add_argument("--out", default=None, help="write README.md here instead (with --report-only)")
    parser.add_argument("--refit", action="store_true",
                        help="rerun each seed's command on its finished workdir: refit with the current code")
    args = parser.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            run_seed(seed, args.work, args.refit)
    write_readme(HERE, args.out or os.path.join(HERE, "README.md"))


if __name__ == "__main__":
    main()
