"""GRPO vs RLOO vs PPO on the embedded arithmetic task, from one SFT'd model at equal sampling budgets, with
seeds and error bars.

    .venv/bin/python experiments/arithmetic_rl/run.py [--root /tmp/exp_arith]
    .venv/bin/python experiments/arithmetic_rl/run.py --report-only [--out PATH]

1. SFT once (configs/sft.py) on the training half of the 400 problems; the other half is held out by every stage.
2. An lr probe per method: PROBE_LRS x PROBE_STEPS on a probe seed; each method gets the lr with the highest
   sampled training reward over the probe's last third (chosen on training prompts, never on held-out ones).
3. SEEDS x methods at their lr, the same prompts per step, samples per prompt, steps and KL form (beta * k3 as a
   loss term, for PPO too); only the advantage estimator and, for PPO, the value model differ.
4. Every run's final policy (and the SFT model) answers each held-out problem PASS_SAMPLES times at T = 1:
   pass@1 per problem. Differences between methods are paired by seed and by problem.
Runs go through the CLI exactly as a user's would; finished ones are reused. Writes results.json (with the commit
and command) and accuracy.png next to this file, then report.md from results.json alone: `--report-only` rebuilds
it byte for byte without training (tests/test_experiment_reports.py).
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from provenance import commit as code_commit, cpu_name  # noqa: E402  experiments/provenance.py
RESULTS = os.path.join(HERE, "results.json")
SCRIPT = ".venv/bin/python experiments/arithmetic_rl/run.py"

SEEDS = (1, 2, 3)
PROBE_SEED = 0
PROBE_LRS = (3e-5, 1e-4, 3e-4)
PROBE_STEPS = 300
STEPS = 1000
PASS_SAMPLES = 16
KL_COEF = 0.01
SPLIT = ["--config.align.num_examples=400", "--config.align.val_fraction=0.5"]  # 200 train / 200 held-out problems
# One budget for every method: 8 problems x 8 samples per step; one KL form: beta * k3 as a loss term.
SHARED = [*SPLIT, "--config.align.batch_size=8", "--config.rl.group_size=8", "--config.rl.max_new_tokens=4",
          f"--config.rl.kl_coef={KL_COEF}", "--config.rl.kl_estimator=k3", "--config.rl.kl_in_reward=False",
          "--config.rl.epochs=1", "--config.rl.minibatches=2", "--config.optim.schedule=constant",
          "--config.train.log_every=5", "--config.train.progress_bar=False"]
METHODS = {  # name -> (config file, extra overrides)
    "GRPO": ("configs/grpo.py", []),
    "RLOO": ("configs/grpo.py", ["--config.mode=rloo"]),
    "PPO": ("configs/ppo.py", []),
}


def cli(config: str, workdir: str, overrides: list[str]) -> float:
    """Runs one job through gptjax.main (a finished run returns at once); returns its wall time in seconds."""
    clock = time.time()
    command = [sys.executable, "-m", "gptjax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "run.log"), "w") as log:
        if subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, check=False).returncode:
            raise SystemExit(f"{' '.join(command[1:])} failed; see {workdir}/run.log")
    return time.time() - clock


def train_rows(workdir: str) -> list[dict]:
    """The logged training rows by step (a resumed run's later row for a step wins)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train":
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def last_third(rows: list[dict], key: str) -> float:
    tail = rows[-max(len(rows) // 3, 1):]
    return float(np.mean([r[key] for r in tail]))


def pass_at_1(workdirs: dict) -> dict:
    """{name: {"held_out": pass@1 per held-out problem from PASS_SAMPLES samples at T = 1, "greedy": greedy
    accuracy per held-out problem, "train": pass@1 per training problem}}."""
    import jax

    from gptjax.align.rl import task_prompts
    from gptjax.align.tasks import get_task
    from gptjax.config import load_config
    from gptjax.parallel.mesh import make_mesh
    from gptjax.sample.generate import generate
    from gptjax.sample.strategies import Strategy
    from gptjax.train.network import load_network

    cfg = load_config(os.path.join(REPO, "configs/grpo.py"))
    cfg.align.update(num_examples=400, val_fraction=0.5)  # SPLIT: the same held-out problems as every run
    task, rules, mesh = get_task("arithmetic"), tuple(cfg.parallel.rules), make_mesh(cfg.parallel)
    out = {}
    with jax.set_mesh(mesh):
        for name, workdir in workdirs.items():
            net = load_network(workdir, mesh, rules)
            train, val = task_prompts(cfg, task, net.tokenizer, net.model_cfg.max_len)

            def sampled(prompts):
                rows = [t for t in prompts.tokens for _ in range(PASS_SAMPLES)]
                comps = generate(net.model_cfg, net.params, rows, max_new_tokens=cfg.rl.max_new_tokens,
                                 strategy=Strategy(temperature=1.0), seed=12345, tokenizer=net.tokenizer, rules=rules)
                correct = [task.reward(prompts.meta[i // PASS_SAMPLES], c.text) for i, c in enumerate(comps)]
                return np.array(correct).reshape(-1, PASS_SAMPLES).mean(1).tolist()

            greedy = generate(net.model_cfg, net.params, val.tokens, max_new_tokens=cfg.rl.max_new_tokens,
                              strategy=Strategy(temperature=0.0), tokenizer=net.tokenizer, rules=rules)
            out[name] = dict(held_out=sampled(val), train=sampled(train),
                             greedy=[task.reward(m, c.text) for m, c in zip(val.meta, greedy)])
    return out


def t_interval(values) -> list:
    """The 95% Student-t interval of the mean of `values` (independent seeds)."""
    from scipy.stats import t

    v = np.asarray(values, float)
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


def analyse(passes: dict, train: dict, lrs: dict) -> dict:
    """Per method: pass@1 per seed and its mean with a t interval over seeds; the gain over SFT; and every pair of
    methods' paired (by seed) difference with its t interval. A difference is "real" when its interval excludes 0."""
    sft = float(np.mean(passes["SFT"]["held_out"]))
    methods = {}
    for name in METHODS:
        per_seed = [float(np.mean(passes[f"{name}/{s}"]["held_out"])) for s in SEEDS]
        methods[name] = dict(lr=lrs[name], pass_at_1=per_seed, mean=float(np.mean(per_seed)),
                             interval=t_interval(per_seed), gain_over_sft=float(np.mean(per_seed)) - sft,
                             gain_interval=[x - sft for x in t_interval(per_seed)],
                             greedy=[float(np.mean(passes[f"{name}/{s}"]["greedy"])) for s in SEEDS],
                             train_pass_at_1=[float(np.mean(passes[f"{name}/{s}"]["train"])) for s in SEEDS],
                             train_reward_last_third=[last_third(train[f"{name}/{s}"], "reward_mean") for s in SEEDS],
                             kl_k1_last_third=[last_third(train[f"{name}/{s}"], "kl_k1") for s in SEEDS])
    pairs = []
    names = list(METHODS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diffs = [x - y for x, y in zip(methods[a]["pass_at_1"], methods[b]["pass_at_1"])]
            lo, hi = t_interval(diffs)
            pairs.append(dict(a=a, b=b, differences=diffs, mean=float(np.mean(diffs)), interval=[lo, hi],
                              real=bool(lo > 0 or hi < 0)))
    return dict(sft=dict(pass_at_1=sft, greedy=float(np.mean(passes["SFT"]["greedy"])),
                         train_pass_at_1=float(np.mean(passes["SFT"]["train"]))), methods=methods, pairs=pairs)


def plot(train: dict, path: str) -> None:
    import matplotlib  # here, so that --report-only needs no plotting library

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = dict(zip(METHODS, ("C0", "C1", "C2")))
    block = STEPS // 20  # reward_mean is noisy (64 samples a step): means over blocks of steps

    def blocks(rows, key):
        values = np.array([r[key] for r in rows][:len(rows) // block * block])
        return values.reshape(-1, block).mean(1)

    for name in METHODS:
        runs = [train[f"{name}/{s}"] for s in SEEDS]
        reward = np.array([blocks(rows, "reward_mean") for rows in runs])
        kl = np.array([blocks(rows, "kl_k1") for rows in runs])
        steps = (np.arange(reward.shape[1]) + 0.5) * block
        for r in reward:
            axes[0].plot(steps, r, color=colors[name], alpha=0.25, lw=1)
        axes[0].plot(steps, reward.mean(0), color=colors[name], lw=2, label=f"{name} (thin: each seed)")
        axes[1].plot(kl.mean(0), reward.mean(0), "o-", color=colors[name], ms=3, label=name)
    axes[0].set(xlabel="RL step", ylabel=f"sampled training reward (mean of {block} steps)",
                title=f"training reward, {len(SEEDS)} seeds each")
    axes[1].set(xlabel="KL to the SFT policy (k1, nats/sequence)", ylabel="sampled training reward",
                title=f"reward against KL (mean of seeds, {block}-step blocks)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _recorded(res: dict, key: str) -> str:
    """A provenance field of results.json; results written before run.py recorded it say so instead."""
    return f"`{res[key]}`" if key in res else "not recorded in results.json"


def write_report(res: dict, out: str) -> None:
    """report.md from the contents of results.json (a full run's and --report-only's one writer), written to `out`."""
    a, s = res["analysis"], res["settings"]
    ci = lambda v: f"[{v[0]:+.3f}, {v[1]:+.3f}]"  # noqa: E731
    lines = ["# GRPO vs RLOO vs PPO on the embedded arithmetic task, with seeds", "",
             f"Regenerate: `{SCRIPT}` (workdirs under {res['root']}; finished runs are reused), or "
             f"`{SCRIPT} --report-only` for this file from results.json alone. Written by `run.py`, never by hand. "
             f"Commit: {_recorded(res, 'commit')}. Command: {_recorded(res, 'command')}.", "",
             f"Wall time: **{sum(res['wall_seconds'].values()) / 60:.1f} min** of runs on a 2-core CPU "
             f"({res['cpu']}).", "", "## Setup", "",
             f"- Task: \"What is a+b?\", a, b in 0..19 (400 distinct problems); reward 1 for the exact answer. "
             f"{s['train_problems']} problems train (SFT and RL), {s['held_out_problems']} are held out by every stage.",
             f"- Start: `configs/sft.py` on the training half (2 layers, d_model 128, 300 steps). Held-out pass@1 "
             f"{a['sft']['pass_at_1']:.3f}, greedy accuracy {a['sft']['greedy']:.3f}.",
             f"- Every method: {s['steps']} steps x 8 problems x 8 sampled answers, temperature 1, 1 epoch x 2 "
             f"minibatches, constant lr, beta = {s['kl_coef']} with k3 as a loss term (the same KL form for PPO). "
             "GRPO: (R - mean) / std group advantages; RLOO: leave-one-out baseline; PPO: a separate value model "
             "from the SFT network, GAE, whitened advantages.",
             f"- lr: per method, the best of {', '.join(map(str, s['probe_lrs']))} by sampled training reward over "
             f"the last third of a {s['probe_steps']}-step probe (seed {s['probe_seed']}): "
             + ", ".join(f"{m} {v['reward']}" for m, v in res["probe"].items()) + ".",
             f"- Seeds {', '.join(map(str, s['seeds']))} per method. Score: pass@1 on each held-out problem from "
             f"{s['pass_samples']} samples at T = 1, averaged over problems; intervals are 95% Student-t over the "
             "seeds (differences paired by seed, on the same problems).", "", "## Results", "",
             "| method | lr | held-out pass@1 per seed | mean [95%] | change from SFT [95%] | greedy acc. per seed | "
             "training-problem pass@1 per seed | training reward, last third | KL k1, last third |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| SFT | - | {a['sft']['pass_at_1']:.3f} | - | - | {a['sft']['greedy']:.3f} | "
             f"{a['sft']['train_pass_at_1']:.3f} | - | - |"]
    for name, m in a["methods"].items():
        lines.append(f"| {name} | {m['lr']:g} | {', '.join(f'{x:.3f}' for x in m['pass_at_1'])} | {m['mean']:.3f} "
                     f"{ci(m['interval'])} | {m['gain_over_sft']:+.3f} {ci(m['gain_interval'])} | "
                     f"{', '.join(f'{x:.3f}' for x in m['greedy'])} | "
                     f"{', '.join(f'{x:.3f}' for x in m['train_pass_at_1'])} | "
                     f"{', '.join(f'{x:.3f}' for x in m['train_reward_last_third'])} | "
                     f"{', '.join(f'{x:.2f}' for x in m['kl_k1_last_third'])} |")
    lines += ["", "Paired differences in held-out pass@1 (same seed index, same problems):", "",
              "| pair | per seed | mean [95%] | real? |", "|---|---|---|---|"]
    for p in a["pairs"]:
        lines.append(f"| {p['a']} - {p['b']} | {', '.join(f'{x:+.3f}' for x in p['differences'])} | "
                     f"{p['mean']:+.3f} {ci(p['interval'])} | {'yes' if p['real'] else 'no: the interval holds 0'} |")
    real_changes = [f"{n} {m['gain_over_sft']:+.3f}" for n, m in a["methods"].items()
                    if m["gain_interval"][0] > 0 or m["gain_interval"][1] < 0]
    real_pairs = [f"{p['a']} vs {p['b']}" for p in a["pairs"] if p["real"]]
    train_pass = [x for m in a["methods"].values() for x in m["train_pass_at_1"]]
    lines += ["", "## Reading", "",
              f"- Changes in held-out pass@1 from the SFT model whose interval excludes 0: "
              f"{', '.join(real_changes) or 'none'}.",
              f"- Training-problem pass@1 (the {s['train_problems']} problems RL samples from) goes from the SFT "
              f"model's {a['sft']['train_pass_at_1']:.3f} to {min(train_pass):.3f}-{max(train_pass):.3f} across all "
              f"{len(train_pass)} runs, while held-out pass@1 moves by "
              f"{min(m['gain_over_sft'] for m in a['methods'].values()):+.3f} to "
              f"{max(m['gain_over_sft'] for m in a['methods'].values()):+.3f} on average per method"
              + (": the gain is on the problems RL trains on, and the held-out change is within seed noise."
                 if not real_changes else "."),
              f"- Differences between methods whose interval excludes 0: {', '.join(real_pairs) or 'none'}"
              + ("." if real_pairs else ": at this budget the three estimators are not distinguishable on held-out "
                 "problems."), "", "![accuracy](accuracy.png)", ""]
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def run(root: str) -> None:
    """SFT, the probes and every seeded run under `root`; writes results.json and accuracy.png."""
    commit = code_commit()
    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__), REPO), *sys.argv[1:]])
    sft_dir = os.path.join(root, "sft")
    seconds = {"SFT": cli("configs/sft.py", sft_dir, [*SPLIT, "--config.train.progress_bar=False"])}
    start = [f"--config.align.init_from={sft_dir}", *SHARED]
    probe, lrs = {}, {}
    for name, (config, extra) in METHODS.items():
        scores = {}
        for lr in PROBE_LRS:
            workdir = os.path.join(root, "probe", f"{name.lower()}_lr{lr:g}")
            seconds[f"probe {name} {lr:g}"] = cli(config, workdir, [
                *start, *extra, f"--config.optim.lr={lr}", f"--config.seed={PROBE_SEED}",
                f"--config.train.steps={PROBE_STEPS}", f"--config.train.eval_every={PROBE_STEPS}",
                f"--config.train.checkpoint_every={PROBE_STEPS}"])
            scores[f"{lr:g}"] = last_third(train_rows(workdir), "reward_mean")
        lrs[name] = float(max(scores, key=scores.get))
        probe[name] = dict(scores=scores, lr=lrs[name], reward=" / ".join(f"{k}: {v:.3f}" for k, v in scores.items()))
    workdirs, train = {"SFT": sft_dir}, {}
    for name, (config, extra) in METHODS.items():
        for seed in SEEDS:
            key, workdir = f"{name}/{seed}", os.path.join(root, f"{name.lower()}_seed{seed}")
            seconds[key] = cli(config, workdir, [
                *start, *extra, f"--config.optim.lr={lrs[name]}", f"--config.seed={seed}",
                f"--config.train.steps={STEPS}", f"--config.train.eval_every={STEPS}",
                f"--config.train.checkpoint_every={STEPS}"])
            workdirs[key], train[key] = workdir, train_rows(workdir)
    clock = time.time()
    passes = pass_at_1(workdirs)
    seconds["evaluation"] = time.time() - clock
    plot(train, os.path.join(HERE, "accuracy.png"))
    settings = dict(seeds=list(SEEDS), probe_seed=PROBE_SEED, probe_lrs=list(PROBE_LRS), probe_steps=PROBE_STEPS,
                    steps=STEPS, pass_samples=PASS_SAMPLES, kl_coef=KL_COEF, shared=SHARED,
                    methods={k: v[1] for k, v in METHODS.items()},
                    train_problems=len(passes["SFT"]["train"]), held_out_problems=len(passes["SFT"]["held_out"]))
    res = dict(settings=settings, probe=probe, analysis=analyse(passes, train, lrs), wall_seconds=seconds,
               commit=commit, command=command, root=root, cpu=cpu_name())
    with open(RESULTS + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(RESULTS + ".tmp", RESULTS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/exp_arith", help="where the runs' workdirs go")
    parser.add_argument("--report-only", action="store_true", help="rebuild report.md from results.json, no training")
    parser.add_argument("--out", default=os.path.join(HERE, "report.md"), help="where to write the report")
    args = parser.parse_args()
    if not args.report_only:
        run(args.root)
    # Both modes write the report from the file, so a full run's report is what --report-only rebuilds.
    with open(RESULTS, encoding="utf-8") as f:
        write_report(json.load(f), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
