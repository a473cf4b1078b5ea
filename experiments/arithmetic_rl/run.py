"""GRPO vs RLOO vs PPO on the embedded arithmetic task, from one SFT'd model at equal sampling budgets.

    .venv/bin/python experiments/arithmetic_rl/run.py [--root /tmp/exp_arith]

Runs configs/sft.py once, then each method with the same prompts per step, samples per prompt, steps,
learning rate and KL coefficient (only the advantage estimator and, for PPO, the value model differ),
through the CLI exactly as a user would. Finished runs are reused (rerunning resumes / returns at once).
Writes results.json, accuracy.png and report.md next to this file.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# One budget for every method: 8 problems x 8 samples per step.
SHARED = ["--config.align.num_examples=400", "--config.align.val_fraction=0.1", "--config.align.batch_size=8",
          "--config.rl.group_size=8", "--config.rl.max_new_tokens=4", "--config.rl.kl_coef=0.01",
          "--config.rl.epochs=1", "--config.rl.minibatches=2", "--config.optim.schedule=constant",
          "--config.optim.lr=1e-4", "--config.train.steps=1000", "--config.train.eval_every=100",
          "--config.train.checkpoint_every=500", "--config.train.log_every=10"]
METHODS = {  # name -> (config file, extra overrides)
    "GRPO": ("configs/grpo.py", []),
    "RLOO": ("configs/grpo.py", ["--config.mode=rloo"]),
    "PPO": ("configs/ppo.py", []),  # its own KL form: k1 per token in the reward
}


def cli(config: str, workdir: str, overrides: list[str]) -> float:
    """Runs one job through gptjax.main; returns its wall time in seconds."""
    clock = time.time()
    command = [sys.executable, "-m", "gptjax.main", f"--config={config}", f"--workdir={workdir}",
               "--config.train.progress_bar=False", *overrides]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - clock


def metrics(workdir: str) -> dict:
    """{"train": {step: row}, "eval": {step: row}}, the last row of each step winning (resumed runs)."""
    out = {"train": {}, "eval": {}}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["split"]][row["step"]] = row
    return out


def smoothed(train: dict, key: str, window: int = 100) -> tuple[list[int], list[float]]:
    """Mean of `key` over consecutive windows of logged steps (reward_mean is noisy: 64 samples a step)."""
    steps = sorted(train)
    xs, ys = [], []
    for i in range(0, len(steps), max(1, window // 10)):
        chunk = [train[s][key] for s in steps[i:i + max(1, window // 10)]]
        xs.append(steps[min(i + len(chunk) - 1, len(steps) - 1)])
        ys.append(sum(chunk) / len(chunk))
    return xs, ys


def summarise(name: str, m: dict) -> dict:
    first, last = min(m["eval"]), max(m["eval"])
    train_steps = sorted(m["train"])
    head, tail = train_steps[:10], train_steps[-10:]
    mean = lambda steps, k: sum(m["train"][s][k] for s in steps) / len(steps)  # noqa: E731
    return dict(
        method=name,
        heldout_greedy=(m["eval"][first]["reward"], m["eval"][last]["reward"]),
        heldout_sampled=(m["eval"][first]["sampled_reward"], m["eval"][last]["sampled_reward"]),
        train_greedy=(m["eval"][first]["train_reward"], m["eval"][last]["train_reward"]),
        train_reward_mean=(mean(head, "reward_mean"), mean(tail, "reward_mean")),
        final_kl_k1=mean(tail, "kl_k1"), final_entropy=mean(tail, "entropy"),
        steps=last,
    )


def plot(runs: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, m in runs.items():
        steps = sorted(m["eval"])
        axes[0].plot(steps, [m["eval"][s]["reward"] for s in steps], marker="o", label=name)
        axes[1].plot(steps, [m["eval"][s]["train_reward"] for s in steps], marker="o", label=name)
        axes[2].plot(*smoothed(m["train"], "reward_mean"), label=name)
    for ax, title in zip(axes, ("held-out accuracy (greedy, 40 problems)", "training-prompt accuracy (greedy, 64)",
                                "sampled reward during training (T=1)")):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict], seconds: dict) -> str:
    def pair(v):
        return f"{v[0]:.3f} → {v[1]:.3f}"

    lines = ["| method | held-out greedy acc | held-out sampled acc | training-prompt greedy acc | "
             "sampled reward (first → last 10 steps) | KL k1 (nats/seq) | entropy | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {pair(r['heldout_greedy'])} | {pair(r['heldout_sampled'])} | "
                     f"{pair(r['train_greedy'])} | {pair(r['train_reward_mean'])} | {r['final_kl_k1']:.3f} | "
                     f"{r['final_entropy']:.3f} | {seconds[r['method']]:.0f} s |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/exp_arith")
    args = parser.parse_args()
    os.makedirs(args.root, exist_ok=True)
    seconds = {"SFT": cli("configs/sft.py", os.path.join(args.root, "sft"), [])}
    runs = {}
    for name, (config, extra) in METHODS.items():
        workdir = os.path.join(args.root, name.lower())
        seconds[name] = cli(config, workdir, [f"--config.align.init_from={os.path.join(args.root, 'sft')}",
                                              *SHARED, *extra])
        runs[name] = metrics(workdir)
    rows = [summarise(name, m) for name, m in runs.items()]
    plot(runs, os.path.join(HERE, "accuracy.png"))
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(dict(settings=SHARED, methods={k: v[1] for k, v in METHODS.items()}, results=rows,
                       wall_seconds=seconds), f, indent=1)
    print(report(rows, seconds))


if __name__ == "__main__":
    main()
