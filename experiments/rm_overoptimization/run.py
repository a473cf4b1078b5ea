"""Reward-model over-optimisation at tiny scale (after Gao, Schulman & Hilton 2022).

A programmatic *gold* reward (gptjax.align.tasks.gold_reward on the Shakespeare continuation task)
labels preferences between samples of an SFT policy; Bradley-Terry *proxy* reward models are trained
on nested subsets of those labels of three sizes; best-of-n sampling (BoN) and GRPO then optimise
against each proxy, and the gold and proxy rewards are tracked against d = sqrt(KL(pi || pi_init)).
Fits: R_bon(d) = d (alpha - beta d), R_rl(d) = d (alpha - beta log d), with bootstrap intervals.

    .venv/bin/python experiments/rm_overoptimization/run.py [--root=/tmp/exp_rmo] [--force=STAGE,...]
    .venv/bin/python experiments/rm_overoptimization/run.py --report-only [--out PATH]

Stages (each reused on a rerun when its result marker exists; --force=bon,rl_400 redoes some):
pretrain -> sft -> label (gold-judged SFT samples) -> split (nested RM training sets + a common
test set) -> rm_<n> -> bon (samples of the SFT policy scored by gold and every proxy) -> rl_<n>
-> analysis (results.json with the commit and command, *.png, then report.md next to this file, written from
results.json alone: `--report-only` rebuilds it byte for byte, tests/test_experiment_reports.py). Everything runs
on CPU.
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
from shapes import bon_expectations, fit_bon, fit_rl, interval, shape_check, verdict  # this script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results.json")
SCRIPT = ".venv/bin/python experiments/rm_overoptimization/run.py"

# ------------------------------------------------------------------------------------------ settings
SEED = 0
PRETRAIN_STEPS = 250
SFT_STEPS = 100
LABEL_PROMPTS = 2400  # prompts the SFT policy answers SAMPLES_PER_PROMPT times for gold labels
SAMPLES_PER_PROMPT = 4
MAX_NEW_TOKENS = 24
N_TEST_PAIRS = 150  # gold-labelled pairs every proxy is tested on (never trained on)
RM_SIZES = (45, 180, 720)  # nested training sets of the proxies (pairs)
RM_STEPS = 120
RM_BATCH = 16
BON_PROMPTS = 48  # held-out prompts (after the LABEL_PROMPTS ones)
BON_N_MAX = 64
BON_NS = (1, 2, 4, 8, 16, 32, 64)
GEN_BATCH = 256
RL_STEPS = 80
RL_LR = 3e-4
RL_KL_COEF = 1e-9  # ~0, but > 0 so the library loads the reference and kl_k1 is KL to pi_init (see report)
N_BOOT = 1000


# ------------------------------------------------------------------------------------------ plumbing
def _git(*args) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def marker(root, name):
    return os.path.join(root, "done", f"{name}.json")


def load_marker(root, name):
    path = marker(root, name)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def save_marker(root, name, result):
    os.makedirs(os.path.join(root, "done"), exist_ok=True)
    tmp = marker(root, name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, marker(root, name))


def cli_stage(root, name, workdir, args, force):
    """Runs `python -m gptjax.main` for a stage unless its marker exists; returns its final JSON metrics."""
    done = load_marker(root, name)
    if done is not None and name not in force:
        print(f"[{name}] reused ({done['seconds']:.0f} s when it ran)", flush=True)
        return done
    if os.path.isdir(workdir):  # a half-finished run: start it afresh (stages are cheap)
        subprocess.run(["rm", "-rf", workdir], check=True)
    cmd = [sys.executable, "-m", "gptjax.main", f"--workdir={workdir}"] + args + ["--config.train.progress_bar=False"]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    clock = time.time()
    log = os.path.join(root, f"{name}.log")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode:
        raise SystemExit(f"[{name}] failed (rc {proc.returncode}); see {log}\n{proc.stdout[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = dict(json.loads(lines[-1]) if lines else {}, seconds=time.time() - clock, workdir=workdir)
    save_marker(root, name, result)
    print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return result


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    with open(path + ".tmp", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------------------------------ data split
def split_stage(root, force):
    name = "split"
    done = load_marker(root, name)
    if done is not None and name not in force:
        return done
    clock = time.time()
    rows = read_jsonl(os.path.join(root, "label", "preferences.jsonl"))
    pairs = []
    for row in rows:  # rankings -> best vs worst pair, so every RM trains on plain Bradley-Terry pairs
        if "chosen" in row:
            pairs.append(dict(prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"]))
        else:
            order = row["ranking"]
            pairs.append(dict(prompt=row["prompt"], chosen=row["responses"][order[0]],
                              rejected=row["responses"][order[-1]]))
    order = np.random.default_rng(SEED).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    test, pool = pairs[:N_TEST_PAIRS], pairs[N_TEST_PAIRS:]
    if len(pool) < max(RM_SIZES):
        raise SystemExit(f"only {len(pool)} training pairs after the test set; raise LABEL_PROMPTS")
    data_dir = os.path.join(root, "rm_data")
    os.makedirs(data_dir, exist_ok=True)
    write_jsonl(os.path.join(data_dir, "test.jsonl"), test)
    files = {}
    for n in RM_SIZES:  # nested: each smaller set is a prefix of the larger ones
        files[n] = os.path.join(data_dir, f"rm_{n}.jsonl")
        write_jsonl(files[n], pool[:n])
    result = dict(labelled_rows=len(rows), pairs=len(pairs), test=len(test), pool=len(pool),
                  files={str(k): v for k, v in files.items()}, seconds=time.time() - clock)
    save_marker(root, name, result)
    return result


# ------------------------------------------------------------------------------------------ best-of-n samples
def bon_stage(root, sft_dir, rm_dirs, force):
    """Samples BON_N_MAX completions of each held-out prompt from the SFT policy once; scores each with
    the gold judge and every proxy; also scores the common test pairs with every proxy."""
    name = "bon"
    done = load_marker(root, name)
    if done is not None and name not in force:
        print(f"[bon] reused ({done['seconds']:.0f} s when it ran)", flush=True)
        return done
    import jax

    from gptjax.align import chat
    from gptjax.align.reward import RewardModel
    from gptjax.align.stage import full_batches
    from gptjax.data.tokenizer import pad_rows
    from gptjax.align.tasks import get_task
    from gptjax.config import default_config
    from gptjax.data.tokenizer import PAD_ID
    from gptjax.parallel.mesh import make_mesh
    from gptjax.sample.generate import generate
    from gptjax.sample.strategies import Strategy
    from gptjax.train.network import load_network

    clock = time.time()
    cfg = default_config()
    rules = tuple(cfg.parallel.rules)
    mesh = make_mesh(cfg.parallel)
    out_dir = os.path.join(root, "bon")
    os.makedirs(out_dir, exist_ok=True)
    with jax.set_mesh(mesh):
        policy = load_network(sft_dir, mesh, rules, what="sft policy")
        tok = policy.tokenizer
        task = get_task("shakespeare")
        prompts = task.prompts(LABEL_PROMPTS + BON_PROMPTS, SEED)[LABEL_PROMPTS:]  # unseen by label / RL / SFT
        ptoks = [chat.prompt_tokens(text, tok) for text, _ in prompts]
        jobs = [(i, j) for i in range(len(prompts)) for j in range(BON_N_MAX)]
        root_key = jax.random.key(SEED + 12345)
        strategy = Strategy(temperature=cfg.rl.temperature, top_p=cfg.rl.top_p)  # as RL and label sample
        texts, rows, gold, stopped = [], [], [], []
        for chunk, n in full_batches(jobs, GEN_BATCH):
            keys = jax.numpy.stack([jax.random.fold_in(jax.random.fold_in(root_key, i), j) for i, j in chunk])
            comps = generate(policy.model_cfg, policy.params, [ptoks[i] for i, _ in chunk],
                             max_new_tokens=MAX_NEW_TOKENS, strategy=strategy, seed=keys, tokenizer=tok)[:n]
            for (i, _), c in zip(chunk[:n], comps):
                texts.append(c.text)
                rows.append(ptoks[i] + list(c.tokens))  # as RL scores a rollout: prompt + generated tokens
                gold.append(task.reward(prompts[i][1], c.text))
                stopped.append(c.finish_reason == "stop_token")
        gen_seconds = time.time() - clock
        test = read_jsonl(os.path.join(root, "rm_data", "test.jsonl"))
        test_rows = [chat.prompt_tokens(p["prompt"], tok) + chat.response_tokens(p[k], tok)
                     for p in test for k in ("chosen", "rejected")]
        proxy, test_scores = {}, {}
        for n_rm, rm_dir in rm_dirs.items():
            rm = RewardModel(rm_dir, mesh, rules)

            def score(all_rows):
                out = []
                for chunk, n in full_batches(all_rows, GEN_BATCH):
                    width = max(map(len, chunk))
                    out += rm(pad_rows(chunk, width, PAD_ID), [len(r) for r in chunk])[:n].tolist()
                return np.array(out)

            proxy[n_rm] = score(rows)
            test_scores[n_rm] = score(test_rows).reshape(-1, 2)
    P, N = len(prompts), BON_N_MAX
    np.savez(os.path.join(out_dir, "scores.npz"), gold=np.array(gold).reshape(P, N),
             stopped=np.array(stopped).reshape(P, N),
             **{f"proxy_{k}": v.reshape(P, N) for k, v in proxy.items()},
             **{f"test_{k}": v for k, v in test_scores.items()})
    write_jsonl(os.path.join(out_dir, "samples.jsonl"),
                [dict(prompt=prompts[i][0], text=t, gold=g, **{f"proxy_{k}": float(v[r]) for k, v in proxy.items()})
                 for r, ((i, _), t, g) in enumerate(zip(jobs, texts, gold))])
    result = dict(prompts=P, samples_per_prompt=N, generate_seconds=gen_seconds, seconds=time.time() - clock)
    save_marker(root, name, result)
    print(f"[bon] done in {result['seconds']:.0f} s (generation {gen_seconds:.0f} s)", flush=True)
    return result


# ------------------------------------------------------------------------------------------ analysis
def smooth(x, window):
    """Centered moving average (window shrinks at the edges)."""
    x = np.asarray(x, float)
    half = window // 2
    return np.array([x[max(0, i - half):i + half + 1].mean() for i in range(len(x))])


def pairwise_accuracy(proxy_PxN, gold_PxN):
    """Share of same-prompt sample pairs with different gold whose proxy order agrees (proxy ties: 1/2)."""
    agree = total = 0.0
    for p, g in zip(proxy_PxN, gold_PxN):
        dg, dp = g[:, None] - g[None, :], p[:, None] - p[None, :]
        mask = dg > 0
        agree += float(((dp > 0) + 0.5 * (dp == 0))[mask].sum())
        total += float(mask.sum())
    return agree / max(total, 1.0)


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(root, results_meta):
    from gptjax.align.losses import best_of_n_kl

    rng = np.random.default_rng(SEED)
    z = np.load(os.path.join(root, "bon", "scores.npz"))
    gold = z["gold"]
    P = gold.shape[0]
    ns = np.array(BON_NS)
    kl_bon = np.array([best_of_n_kl(int(n)) for n in ns])
    d_bon = np.sqrt(kl_bon)
    gold0 = float(gold.mean())
    out = dict(settings=dict(seed=SEED, pretrain_steps=PRETRAIN_STEPS, sft_steps=SFT_STEPS, label_prompts=LABEL_PROMPTS,
                             samples_per_prompt=SAMPLES_PER_PROMPT, max_new_tokens=MAX_NEW_TOKENS,
                             rm_sizes=list(RM_SIZES), rm_steps=RM_STEPS, rm_batch=RM_BATCH, n_test_pairs=N_TEST_PAIRS,
                             bon_prompts=BON_PROMPTS, bon_n_max=BON_N_MAX, rl_steps=RL_STEPS, rl_lr=RL_LR,
                             rl_kl_coef=RL_KL_COEF, n_boot=N_BOOT),
               initial_policy=dict(gold_mean=gold0, eos_fraction=float(z["stopped"].mean())),
               bon=dict(n=ns.tolist(), kl=kl_bon.tolist(), d=d_bon.tolist()), rl={}, rm={}, shape_checks=[])
    out.update(results_meta)
    for n_rm in RM_SIZES:
        proxy = z[f"proxy_{n_rm}"]
        test = z[f"test_{n_rm}"]
        proxy0 = float(proxy.mean())
        flat_g, flat_p = gold.ravel(), proxy.ravel()
        rm_info = dict(test_accuracy=float(np.mean((test[:, 0] > test[:, 1]) + 0.5 * (test[:, 0] == test[:, 1]))),
                       accuracy_on_bon_samples=pairwise_accuracy(proxy, gold), initial_proxy_mean=proxy0,
                       spearman_gold_proxy_on_sft_samples=spearman(flat_g, flat_p),
                       train_pairs=n_rm)
        done = load_marker(root, f"rm_{n_rm}") or {}
        rm_info.update(heldout_accuracy_own_split=done.get("eval_accuracy"), train_seconds=done.get("seconds"))
        out["rm"][str(n_rm)] = rm_info

        # --- best-of-n
        g_curve = bon_expectations(proxy, gold, ns, rng) - gold0  # P x len(ns); column n=1 is exactly 0 on average
        p_curve = bon_expectations(proxy, proxy, ns, rng) - proxy0
        # RL's per-step rows carry no per-prompt rewards, so only best-of-n gets a shape check here.
        out["shape_checks"].append(shape_check("bon", n_rm, d_bon, p_curve, g_curve, N_BOOT,
                                               np.random.default_rng((SEED, n_rm))))  # leaves `rng`'s draws as before
        g_mean, p_mean = g_curve.mean(0), p_curve.mean(0)
        boot_g, boot_p, boot_peak = [], [], []
        for _ in range(N_BOOT):
            idx = rng.integers(0, P, P)
            gm, pm = g_curve[idx].mean(0), p_curve[idx].mean(0)
            boot_g.append(fit_bon(d_bon, gm))
            boot_p.append(fit_bon(d_bon, pm))
            boot_peak.append(d_bon[int(np.argmax(gm))])
        boot_g, boot_p = np.array(boot_g), np.array(boot_p)
        a, b = fit_bon(d_bon, g_mean)
        ap, bp = fit_bon(d_bon, p_mean)
        peak = int(np.argmax(g_mean))
        out["bon"][str(n_rm)] = dict(
            gold=g_mean.tolist(), proxy=p_mean.tolist(),
            gold_se=(g_curve.std(0, ddof=1) / math.sqrt(P)).tolist(),
            gold_fit=dict(alpha=a, beta=b, alpha_ci=interval(boot_g[:, 0]), beta_ci=interval(boot_g[:, 1]),
                          d_peak=a / (2 * b) if b > 0 else None, r_peak=a * a / (4 * b) if b > 0 else None),
            proxy_fit=dict(alpha=ap, beta=bp, alpha_ci=interval(boot_p[:, 0]), beta_ci=interval(boot_p[:, 1])),
            measured_gold_peak=dict(n=int(ns[peak]), d=float(d_bon[peak]), gold=float(g_mean[peak]),
                                    gold_at_n_max=float(g_mean[-1]),
                                    peak_d_ci=interval(np.array(boot_peak))),
            proxy_monotone=bool(np.all(np.diff(p_mean) > 0)))

        # --- RL
        wd = os.path.join(root, f"rl_{n_rm}")
        mpath = os.path.join(wd, "metrics.jsonl")
        if not os.path.isfile(mpath):
            continue
        rows = sorted((r for r in read_jsonl(mpath) if r.get("split") == "train" and "kl_k1" in r),
                      key=lambda r: r["step"])
        steps = np.array([r["step"] for r in rows])
        kl = np.array([r["kl_k1"] for r in rows])
        d = np.sqrt(np.maximum(kl, 0.0))
        rg = np.array([r["gold_reward"] for r in rows]) - gold0
        rp = np.array([r["reward_mean"] for r in rows]) - proxy0
        ag, bg = fit_rl(d, rg)
        apr, bpr = fit_rl(d, rp)
        boot_g, boot_p = [], []
        for _ in range(N_BOOT):
            idx = rng.integers(0, len(d), len(d))
            boot_g.append(fit_rl(d[idx], rg[idx]))
            boot_p.append(fit_rl(d[idx], rp[idx]))
        boot_g, boot_p = np.array(boot_g), np.array(boot_p)
        w = 9
        sg, sp, sd = smooth(rg, w), smooth(rp, w), smooth(d, w)
        pk = int(np.argmax(sg))
        third = max(len(sp) // 3, 1)
        out["rl"][str(n_rm)] = dict(
            step=steps.tolist(), kl=kl.tolist(), d=d.tolist(), gold=rg.tolist(), proxy=rp.tolist(),
            response_length=[r.get("response_length") for r in rows],
            eos_fraction=[r.get("eos_fraction") for r in rows],
            gold_fit=dict(alpha=ag, beta=bg, alpha_ci=interval(boot_g[:, 0]), beta_ci=interval(boot_g[:, 1]),
                          d_peak=math.exp(ag / bg - 1) if bg > 0 else None,
                          r_peak=bg * math.exp(ag / bg - 1) if bg > 0 else None),
            proxy_fit=dict(alpha=apr, beta=bpr, alpha_ci=interval(boot_p[:, 0]), beta_ci=interval(boot_p[:, 1])),
            smoothed=dict(window=w, d=sd.tolist(), gold=sg.tolist(), proxy=sp.tolist()),
            measured_gold_peak=dict(step=int(steps[pk]), d=float(sd[pk]), gold=float(sg[pk]),
                                    gold_final=float(sg[-1]), d_final=float(sd[-1])),
            proxy_rho_vs_step=spearman(steps, rp), proxy_rho_vs_d=spearman(d, rp), gold_rho_vs_d=spearman(d, rg),
            d_final=float(sd[-1]), kl_final=float(smooth(kl, w)[-1]),
            proxy_first_third=float(sp[:third].mean()), proxy_last_third=float(sp[-third:].mean()),
            seconds=(load_marker(root, f"rl_{n_rm}") or {}).get("seconds"))
    out["shape_verdict"] = verdict(out["shape_checks"])
    return out


def to_float(o):
    if isinstance(o, dict):
        return {k: to_float(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_float(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


# ------------------------------------------------------------------------------------------ plots
def plots(res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip([str(n) for n in RM_SIZES], plt.cm.viridis(np.linspace(0.0, 0.8, len(RM_SIZES)))))
    # best-of-n
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    d = np.array(res["bon"]["d"])
    grid = np.linspace(0, d.max() * 1.05, 100)
    for key, c in colors.items():
        b = res["bon"][key]
        axes[0].errorbar(d, b["gold"], yerr=b["gold_se"], fmt="o", color=c, label=f"RM {key} pairs")
        f = b["gold_fit"]
        axes[0].plot(grid, grid * (f["alpha"] - f["beta"] * grid), "-", color=c)
        axes[1].plot(d, b["proxy"], "s", color=c, label=f"RM {key} pairs")
        f = b["proxy_fit"]
        axes[1].plot(grid, grid * (f["alpha"] - f["beta"] * grid), "--", color=c)
    top = res["bon"]["n"]
    for ax, title in zip(axes, ("gold reward (relative to SFT)", "proxy reward (relative to SFT)")):
        ax.set_xlabel("d = sqrt(KL(best-of-n || SFT))  [n = " + ", ".join(map(str, top)) + "]")
        ax.set_title("best-of-n: " + title)
        ax.axhline(0, color="gray", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Best-of-n against proxies of 3 training-set sizes; lines: d(alpha - beta d)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "bon.png"), dpi=120)
    plt.close(fig)

    # RL
    if res["rl"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for key, c in colors.items():
            if key not in res["rl"]:
                continue
            r = res["rl"][key]
            dd = np.array(r["d"])
            grid = np.linspace(1e-3, max(dd.max(), 1e-2) * 1.02, 200)
            for ax, what, fit, ls in ((axes[0], "gold", "gold_fit", "-"), (axes[1], "proxy", "proxy_fit", "--")):
                ax.plot(dd, r[what], ".", color=c, alpha=0.25)
                ax.plot(r["smoothed"]["d"], r["smoothed"][what], "-", color=c, lw=2.0, alpha=0.6,
                        label=f"RM {key} pairs (moving avg)")
                f = r[fit]
                ax.plot(grid, grid * (f["alpha"] - f["beta"] * np.log(grid)), ls, color=c, lw=1)
        for ax, title in zip(axes, ("gold reward (relative to SFT)", "proxy reward (relative to SFT)")):
            ax.set_xlabel("d = sqrt(KL(pi || pi_init))  (per-step rollout batches)")
            ax.set_title("GRPO: " + title)
            ax.axhline(0, color="gray", lw=0.5)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("RL against proxies; dots: steps, thick: moving average, thin: d(alpha - beta log d)")
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "rl.png"), dpi=120)
        plt.close(fig)

    # coefficients vs proxy size
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = np.array(RM_SIZES, float)
    for ax, coef in zip(axes, ("alpha", "beta")):
        for method, offset, marker_ in (("bon", 0.95, "o"), ("rl", 1.05, "s")):
            keys = [str(n) for n in RM_SIZES if str(n) in res[method] and isinstance(res[method][str(n)], dict)]
            if not keys:
                continue
            x = np.array([float(k) for k in keys]) * offset
            y = np.array([res[method][k]["gold_fit"][coef] for k in keys])
            lo = np.array([res[method][k]["gold_fit"][f"{coef}_ci"][0] for k in keys])
            hi = np.array([res[method][k]["gold_fit"][f"{coef}_ci"][1] for k in keys])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=marker_ + "-", capsize=3, label=method.upper())
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(int(s)) for s in sizes])
        ax.set_xlabel("proxy RM training pairs")
        ax.set_title(f"gold-fit {coef} (95% bootstrap)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "coefficients.png"), dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ report
NOTES = """**Verdict: half of Gao et al.'s picture reproduced.** The proxy side held, with a caveat for RL. BoN: the
proxy rises monotonically with n for every proxy. RL: against every proxy the proxy reward climbs steeply (by
about +2 to +3 logits by d = 3) and then saturates, with no decline in its moving average; d(alpha - beta log d)
fits it with tight intervals. The automatic rank check fails for the 45- and 180-pair runs only because most of
their steps sit on that plateau (d around 3-6), where per-step noise dominates Spearman(d, proxy).
The gold side only partly held. Gold
rises with d for the 180- and 720-pair proxies (BoN up to +0.13 / +0.16 at n = 64; RL up to about +0.1 to +0.27),
and barely moves for the 45-pair proxy, which is near chance (54% accuracy): a worse proxy buys less gold per
nat of KL, as in Gao. But **no run showed a significant gold peak followed by a fall**:
- BoN reaches only d = 1.78 (n = 64). There gold is still *accelerating*, so the fitted beta_bon is negative
  (convex) for all three sizes, the peak d* = alpha/2beta is undefined, and the form d(alpha - beta d) is not
  tested in its over-optimisation regime. Gao also sees BoN gold peak only at large n for decent RMs.
- RL against the 720-pair proxy comes closest: gold climbs to about +0.10 by d around 4-5, then stays flat
  (0.05-0.10, noisy) while KL keeps growing to d of about 8 and the proxy keeps rising. The fit gives
  beta > 0 with an interval excluding 0 and a peak d* of about 8.5, at the edge of the data. That is a plateau
  consistent with the onset of over-optimisation, not a demonstrated decline. The 180-pair run's gold is still at
  its highest at the last step (+0.27 smoothed, d around 6). The fit is convex (beta < 0), so that run shows no
  peak at all.
- How alpha and beta move with proxy size: the proxy-fit alpha_bon and beta_bon both *fall* with training
  pairs (45 -> 720: alpha 4.0 -> 1.6, beta 1.2 -> 0.3), and so does the RL proxy fit, but proxies are on
  different scales (Bradley-Terry logits, not calibrated), so this mostly reflects how confident each RM's
  scores are. For gold, the intervals of alpha and beta overlap across sizes for both methods. No trend is
  resolved beyond "the 45-pair proxy gives about 0 gold".

Why the gold hack is weak here: the SFT policy is tiny (250 + 100 steps; gold = 0 on about 90% of its samples),
so only 873 of 2400 labelled prompts had a gold preference, and the proxies saw 45-720 pairs. The RL with kl_coef
of about 0 moves KL to 10+ nats within about 10 steps (lr 3e-4, GRPO), before gold can be resolved from
per-step noise. To resolve the peak: more labelled pairs (more prompts or samples per prompt), larger n for BoN
(n_max of about 1000 reaches d of about 2.4), a lower RL lr or more rollouts per step, and several RL seeds.
"""


LIBRARY_NOTES = """## Library notes

- While this study was built, `rl.kl_coef=0` skipped loading the reference and logged `kl_k1`/`kl_k3` as 0 instead of
  the KL to pi_init; the study therefore sets kl_coef=1e-9. Fixed since in gptjax/align/rl.py: with kl_coef 0 the
  reference is still held for the KL metrics unless `rl.track_kl=False` (then no KL is logged at all).
- The RL intervals resample training steps as if independent; successive steps are correlated, so those intervals
  are too narrow (a block bootstrap over contiguous steps would be more honest).
- RL's baselines (initial mean gold / proxy) come from the BoN held-out prompts while RL trains on the labelling
  prompts: a small offset.
"""


def _recorded(res, key):
    """A provenance field of results.json; results written before run.py recorded it say so instead."""
    return f"`{res[key]}`" if key in res else "not recorded in results.json"


def fmt_ci(f, key):
    lo, hi = f[f"{key}_ci"]
    return f"{f[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def proxy_fit(size, result):
    return f"{size}: alpha {fmt_ci(result['proxy_fit'], 'alpha')}, beta {fmt_ci(result['proxy_fit'], 'beta')}"


def write_report(res, out):
    """report.md from the contents of results.json (a full run's and --report-only's one writer), written to `out`."""
    L = []
    L.append("# Reward-model over-optimisation at tiny scale (Gao, Schulman & Hilton 2022)\n")
    L.append(f"Regenerate: `{SCRIPT}` (stages are cached under "
             f"{res['root']}; delete that directory for a full rerun).\n")
    # Stages are reused from earlier invocations, so the commit is that of the analysis, not of every stage.
    L.append(f"Written by `run.py` from `results.json` (rebuild: `{SCRIPT} --report-only`), never by hand. Commit "
             f"of the invocation that wrote results.json (reused stages may have run earlier): "
             f"{_recorded(res, 'commit')}. Command: {_recorded(res, 'command')}.\n")
    L.append(f"Wall time: all stages from scratch took **{res['wall_seconds_all_stages'] / 60:.1f} min** of measured "
             f"stage time on a shared 2-core CPU; this invocation took {res['wall_seconds_this_invocation'] / 60:.1f} "
             "min.\n")
    s = res["settings"]
    sizes = [str(n) for n in s["rm_sizes"]]  # results.json's own, as this file's constants may have changed since
    L.append("## Setup\n")
    L.append(f"- Policy: 4-layer d=128 decoder, pretrained {s['pretrain_steps']} steps on the embedded Shakespeare "
             f"corpus, then SFT {s['sft_steps']} steps on `Continue: <4 words>` -> rest of the line.")
    L.append(f"- Gold: `gptjax.align.tasks.gold_reward` (distinct warm words up, repetition and >16 words down). "
             f"Preferences: {s['label_prompts']} prompts x {s['samples_per_prompt']} SFT samples "
             f"({s['max_new_tokens']} new tokens max), gold-judged (`mode=label`), reduced to best-vs-worst pairs; "
             f"{res['split']['pairs']} pairs, {s['n_test_pairs']} held out as a common test set.")
    L.append(f"- Proxies: Bradley-Terry RMs from the SFT checkpoint on nested subsets of {s['rm_sizes']} pairs, "
             f"{s['rm_steps']} steps of batch {s['rm_batch']} each.")
    L.append(f"- BoN: {s['bon_prompts']} held-out prompts x {s['bon_n_max']} SFT samples, scored once; each n <= "
             f"{s['bon_n_max']} evaluated with the unbiased order-statistics estimator over subsets; "
             "KL = log n - (n-1)/n.")
    L.append(f"- RL: GRPO (8 prompts x 4 samples/step, {s['rl_steps']} steps, lr {s['rl_lr']}, kl_coef "
             f"{s['rl_kl_coef']}, missing_eos_penalty 0). d from each step's `kl_k1` (sequence KL to pi_init on "
             "that step's rollouts); gold and proxy of the same rollouts.")
    L.append(f"- Rewards relative to the SFT policy: initial mean gold {res['initial_policy']['gold_mean']:.3f} "
             "(BoN n=1 samples) and each proxy's mean on those samples are subtracted, for BoN and RL alike. "
             f"Fit intervals: 95% bootstrap ({s['n_boot']} resamples; prompts for BoN, steps for RL).\n")
    L.append("## Proxy reward models\n")
    L.append(f"| train pairs | test accuracy ({s['n_test_pairs']} labelled pairs) | accuracy on BoN samples (all "
             "same-prompt pairs with different gold) | own 5% held-out acc | Spearman(gold, proxy) on SFT samples |")
    L.append("|---|---|---|---|---|")
    for k, r in res["rm"].items():
        own = r["heldout_accuracy_own_split"]
        L.append(f"| {k} | {r['test_accuracy']:.3f} | {r['accuracy_on_bon_samples']:.3f} | "
                 f"{own if own is None else f'{own:.3f}'} | "
                 f"{r['spearman_gold_proxy_on_sft_samples']:.3f} |")
    L.append("\n## Best-of-n\n![bon](bon.png)\n")
    L.append("| RM pairs | gold alpha | gold beta | fitted d* (gold peak) | measured gold peak (n, d, R) "
             "| gold at n=max | proxy rises monotonically |")
    L.append("|---|---|---|---|---|---|---|")
    for k in sizes:
        b = res["bon"][k]
        f, m = b["gold_fit"], b["measured_gold_peak"]
        dpk = "none (beta<=0)" if f["d_peak"] is None else f"{f['d_peak']:.2f}"
        L.append(f"| {k} | {fmt_ci(f, 'alpha')} | {fmt_ci(f, 'beta')} | {dpk} | n={m['n']}, d={m['d']:.2f}, "
                 f"{m['gold']:+.3f} | {m['gold_at_n_max']:+.3f} | {b['proxy_monotone']} |")
    L.append("\nProxy fits (BoN): " + "; ".join(proxy_fit(k, res["bon"][k]) for k in sizes) + "\n")
    if res["rl"]:
        L.append("## RL (GRPO)\n![rl](rl.png)\n")
        L.append("| RM pairs | gold alpha | gold beta | fitted d* | measured gold peak (step, d, R) "
                 "| final (d, R gold) | proxy first/last third | Spearman(d, proxy) | Spearman(d, gold) | run time |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in sizes:
            if k not in res["rl"]:
                continue
            r = res["rl"][k]
            f, m = r["gold_fit"], r["measured_gold_peak"]
            dpk = "none (beta<=0)" if f["d_peak"] is None else f"{f['d_peak']:.2f}"
            L.append(f"| {k} | {fmt_ci(f, 'alpha')} | {fmt_ci(f, 'beta')} | {dpk} | step {m['step']}, "
                     f"d={m['d']:.2f}, {m['gold']:+.3f} | d={m['d_final']:.2f}, {m['gold_final']:+.3f} | "
                     f"{r['proxy_first_third']:+.3f} / {r['proxy_last_third']:+.3f} | {r['proxy_rho_vs_d']:.2f} | "
                     f"{r['gold_rho_vs_d']:.2f} | "
                     f"{(r['seconds'] or 0) / 60:.1f} min |")
        L.append("\nProxy fits (RL): " + "; ".join(proxy_fit(k, res["rl"][k]) for k in sizes if k in res["rl"]) + "\n")
    L.append("![coefficients](coefficients.png)\n")
    L.append("## Did the shapes hold?\n")
    L.append("Automatic checks. Proxy rises: BoN, the expected proxy of the pick increases at every n; RL, the mean "
             "proxy of the last third of steps exceeds the first third's and Spearman(d, proxy) > 0.5 over steps. "
             "Gold peaks and falls: the measured gold maximum lies before the last point, is > 0, and the last point "
             "is lower by more than 0.02 (BoN: by more than 2 standard errors).\n")
    L.append("| method | RM pairs | proxy rises | gold peaks then falls | peak gold | last gold |")
    L.append("|---|---|---|---|---|---|")
    for method in ("bon", "rl"):
        for k in sizes:
            if k not in res[method] or not isinstance(res[method][k], dict):
                continue
            r, m = res[method][k], res[method][k]["measured_gold_peak"]
            if method == "bon":
                rises = r["proxy_monotone"]
                last = m["gold_at_n_max"]
                falls = m["n"] < res["bon"]["n"][-1] and m["gold"] > 0 and m["gold"] - last > 2 * r["gold_se"][-1]
            else:
                rises = r["proxy_last_third"] > r["proxy_first_third"] and r["proxy_rho_vs_d"] > 0.5
                last = m["gold_final"]
                falls = m["step"] < r["step"][-1] and m["gold"] > 0 and m["gold"] - last > 0.02
            L.append(f"| {method.upper()} | {k} | {rises} | {falls} | {m['gold']:+.3f} | {last:+.3f} |")
    if "shape_checks" in res:  # written by analyse() since the pass criteria were defined (shapes.py)
        L += ["", "## Shape checks (results.json `shape_checks`, computed by `shapes.shape_check`)", "",
              "| method | RM pairs | proxy rises | gold peaks then falls | d at gold's peak (95%) | alpha (95%) | "
              "beta (95%) |", "|---|---|---|---|---|---|---|"]
        for c in res["shape_checks"]:
            ci = {k: f"{c[k]:.3g} ({c[k + '_ci'][0]:.3g} .. {c[k + '_ci'][1]:.3g})" for k in ("d_peak", "alpha", "beta")}
            L.append(f"| {c['method']} | {c['rm_pairs']} | {c['proxy_rises']} | {c['gold_peaks_then_falls']} | "
                     f"{ci['d_peak']} | {ci['alpha']} | {ci['beta']} |")
        for method, v in res["shape_verdict"].items():
            L.append(f"\n{method}: the shape holds for {len(v['proxies_passing'])} of 3 proxies (needs 2: "
                     f"{'met' if v['shape_holds'] else 'not met'}); d at the peak grows with the proxy's data: "
                     f"{v['d_peak_grows_with_data']}.")
    L += ["", NOTES, LIBRARY_NOTES]
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(L))


# ------------------------------------------------------------------------------------------ main
def rebuild_report(out):
    """report.md from results.json alone (what --report-only does, and a full run's last step)."""
    with open(RESULTS, encoding="utf-8") as f:
        write_report(json.load(f), out)
    print(f"wrote {out}")


def run(args):
    """Runs (or reuses) every stage up to --until; after the last, writes results.json, the plots and the report."""
    # The analysis runs the code checked out now; "-dirty" marks uncommitted changes to tracked files.
    commit = _git("rev-parse", "HEAD") + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__), REPO), *sys.argv[1:]])
    root, force = args.root, set(filter(None, args.force.split(",")))
    os.makedirs(root, exist_ok=True)
    start = time.time()
    d = lambda name: os.path.join(root, name)  # noqa: E731
    cli_stage(root, "pretrain", d("pretrain"), [
        "--config=configs/pretrain_shakespeare.py", f"--config.train.steps={PRETRAIN_STEPS}",
        f"--config.optim.warmup_steps={PRETRAIN_STEPS // 10}", f"--config.train.eval_every={PRETRAIN_STEPS}",
        f"--config.train.checkpoint_every={PRETRAIN_STEPS}"], force)
    if args.until == "pretrain":
        return
    cli_stage(root, "sft", d("sft"), [
        "--config=configs/sft.py:shakespeare", f"--config.align.init_from={d('pretrain')}",
        f"--config.train.steps={SFT_STEPS}", f"--config.train.eval_every={SFT_STEPS}",
        f"--config.train.checkpoint_every={SFT_STEPS}"], force)
    if args.until == "sft":
        return
    cli_stage(root, "label", d("label"), [
        "--config=configs/reward.py", "--config.mode=label", "--config.align.judge=gold",
        f"--config.align.init_from={d('sft')}", f"--config.align.samples_per_prompt={SAMPLES_PER_PROMPT}",
        f"--config.align.num_examples={LABEL_PROMPTS}", f"--config.rl.max_new_tokens={MAX_NEW_TOKENS}",
        f"--config.align.batch_size={GEN_BATCH // SAMPLES_PER_PROMPT}",
        f"--config.align.output={os.path.join(d('label'), 'preferences.jsonl')}"], force)
    split = split_stage(root, force)
    if args.until == "label":
        return
    rm_dirs = {}
    for n in RM_SIZES:
        rm_dirs[n] = d(f"rm_{n}")
        cli_stage(root, f"rm_{n}", rm_dirs[n], [
            "--config=configs/reward.py", f"--config.align.init_from={d('sft')}",
            f"--config.align.data={split['files'][str(n)]}", f"--config.train.steps={RM_STEPS}",
            f"--config.align.batch_size={RM_BATCH}", f"--config.optim.warmup_steps={RM_STEPS // 10}",
            f"--config.train.eval_every={RM_STEPS}", f"--config.train.checkpoint_every={RM_STEPS}"], force)
        if args.until == f"rm_{n}":
            return
    bon = bon_stage(root, d("sft"), rm_dirs, force)
    if args.until == "bon":
        return
    for n in RM_SIZES:
        cli_stage(root, f"rl_{n}", d(f"rl_{n}"), [
            "--config=configs/grpo.py", "--config.align.task=shakespeare", f"--config.align.init_from={d('sft')}",
            f"--config.align.reward_model={rm_dirs[n]}", f"--config.align.num_examples={LABEL_PROMPTS}",
            f"--config.rl.max_new_tokens={MAX_NEW_TOKENS}", "--config.rl.group_size=4", "--config.align.batch_size=8",
            f"--config.rl.kl_coef={RL_KL_COEF}", "--config.rl.missing_eos_penalty=0.0", f"--config.optim.lr={RL_LR}",
            f"--config.train.steps={RL_STEPS}", f"--config.train.eval_every={RL_STEPS}",
            f"--config.train.checkpoint_every={RL_STEPS}", "--config.train.log_every=10"], force)
        if args.until == f"rl_{n}":
            return
    stages = ["pretrain", "sft", "label", "split"] + [f"rm_{n}" for n in RM_SIZES] + ["bon"] + \
        [f"rl_{n}" for n in RM_SIZES]
    stage_seconds = {s: (load_marker(root, s) or {}).get("seconds") for s in stages}
    meta = dict(commit=commit, command=command, root=root, split=split, bon_stage=bon, stage_seconds=stage_seconds,
                label=load_marker(root, "label"), sft=load_marker(root, "sft"), pretrain=load_marker(root, "pretrain"))
    res = to_float(analyse(root, meta))
    total = float(sum(v for v in stage_seconds.values() if v))
    res["wall_seconds_all_stages"] = total
    plots(res)
    res["wall_seconds_this_invocation"] = time.time() - start
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=1)
    # From the file, as --report-only does, so that it rebuilds this very report.
    rebuild_report(args.out)
    print(json.dumps(dict(rm={k: v["test_accuracy"] for k, v in res["rm"].items()},
                          bon={k: res["bon"][k]["gold_fit"] for k in map(str, RM_SIZES)},
                          rl={k: v["gold_fit"] for k, v in res["rl"].items()}, wall_s=total), default=str)[:3000])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/exp_rmo")
    parser.add_argument("--force", default="", help="comma-separated stages to redo")
    parser.add_argument("--until", default="", help="stop after this stage (for timing)")
    parser.add_argument("--report-only", action="store_true", help="rebuild report.md from results.json, run nothing")
    parser.add_argument("--out", default=os.path.join(HERE, "report.md"), help="where to write the report")
    args = parser.parse_args()
    if args.report_only:
        rebuild_report(args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
