"""Reward-model over-optimisation at tiny scale (after Gao, Schulman & Hilton 2022).

A dense programmatic *gold* reward with an interior optimum (gptjax.align.tasks.concise_gold_reward: each word
up to 7 earns, each beyond costs, repeats cost) judges samples of an SFT policy; preferences are drawn from
Bradley-Terry on gold (so some flip, as human labels do); *proxy* reward models are trained on nested sets of
250 / 1000 / 4000 pairs for the same number of epochs; best-of-n (from pools of 512 samples per prompt) and RLOO
then optimise against each proxy, and gold and proxy are tracked against d = sqrt(KL(pi || pi_init)).
Fits: R_bon(d) = d (alpha - beta d), R_rl(d) = d (alpha - beta log d); pass criteria: shapes.py.

    .venv/bin/python experiments/rm_overoptimization/run.py [--root=/tmp/exp_rmo] [--force=STAGE,...]
    .venv/bin/python experiments/rm_overoptimization/run.py --report-only [--out PATH]

Stages (each reused on a rerun when its result marker exists; --force=bon,rl_2000 redoes some):
pretrain -> sft -> label (SFT samples, gold-judged, Bradley-Terry pairs; nested RM sets + a common test set)
-> rm_<n> -> bon (pools of SFT samples on held-out prompts, scored by gold and every proxy) -> rl_<n> (RLOO,
a checkpoint every RL_EVAL_EVERY steps) -> rl_eval_<n> (each checkpoint samples the held-out prompts; gold,
proxy and the KL to the SFT policy per prompt) -> analysis (results.json with the commit and command, *.png,
then report.md next to this file, written from results.json alone: `--report-only` rebuilds it byte for byte,
tests/test_experiment_reports.py). Everything runs on CPU.
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
from shapes import bon_expectations, shape_check, verdict  # this script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from provenance import commit as code_commit, cpu_name  # noqa: E402  experiments/provenance.py
RESULTS = os.path.join(HERE, "results.json")
SCRIPT = ".venv/bin/python experiments/rm_overoptimization/run.py"

# ------------------------------------------------------------------------------------------ settings
SEED = 0
TASK = "shakespeare_concise"
PRETRAIN_STEPS = 250
SFT_STEPS = 100
MAX_NEW_TOKENS = 24
LABEL_PROMPTS = 8800  # each answered twice by the SFT policy: one Bradley-Terry pair per prompt
BT_TEMPERATURE = 0.35  # P(a preferred to b) = sigmoid((gold_a - gold_b) / BT_TEMPERATURE)
N_TEST_PAIRS = 500  # labelled pairs every proxy is tested on (never trained on)
RM_SIZES = (250, 1000, 4000)  # nested training sets of the proxies (pairs)
RM_EPOCHS = 2  # the same for every proxy
RM_BATCH = 32
HELD_OUT_PROMPTS = 64  # after the LABEL_PROMPTS ones: best-of-n and the RL evaluations use these
BON_POOL = 512  # SFT samples per held-out prompt
BON_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GEN_BATCH = 256
RL_STEPS = 120
RL_LR = 1e-5
RL_KL_COEF = 1e-9  # ~0, but > 0 so the library holds the reference (kl_k1 in the training log)
RL_EVAL_EVERY = 10  # steps between the checkpoints rl_eval samples
RL_EVAL_SAMPLES = 8  # per held-out prompt and checkpoint
N_BOOT = 1000
PRETRAIN_ARGS = ()  # extra flags of the pretraining stage
# --miniature (tests/test_rm_overoptimization.py): every stage for a few seconds, into --root alone.
MINIATURE = dict(PRETRAIN_STEPS=6, SFT_STEPS=4, LABEL_PROMPTS=160, N_TEST_PAIRS=16, RM_SIZES=(24, 48, 96),
                 RM_EPOCHS=1, HELD_OUT_PROMPTS=4, BON_POOL=32, BON_NS=(1, 2, 4, 8, 16), GEN_BATCH=64, RL_STEPS=4,
                 RL_EVAL_EVERY=2, RL_EVAL_SAMPLES=4, N_BOOT=20,
                 PRETRAIN_ARGS=("--config.model.n_layers=1", "--config.model.d_model=32", "--config.model.n_heads=2",
                                "--config.model.n_kv_heads=2", "--config.model.d_ff=64", "--config.data.batch_size=8",
                                "--config.data.eval_batches=1"))


# ------------------------------------------------------------------------------------------ plumbing
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


# ------------------------------------------------------------------------------------------ sampling
class Sampler:
    """The SFT policy's tokenizer, prompts and mesh, and sampling as RL samples (rl.temperature, rl.top_p)."""

    def __init__(self, sft_dir, cfg, mesh):
        from gptjax.align import chat
        from gptjax.align.tasks import get_task
        from gptjax.sample.strategies import Strategy
        from gptjax.train.network import load_network

        self.rules, self.mesh = tuple(cfg.parallel.rules), mesh
        self.strategy = Strategy(temperature=cfg.rl.temperature, top_p=cfg.rl.top_p)
        self.sft = load_network(sft_dir, self.mesh, self.rules, what="sft policy")
        self.tok = self.sft.tokenizer
        self.task = get_task(TASK)
        prompts = self.task.prompts(LABEL_PROMPTS + HELD_OUT_PROMPTS, SEED)
        self.label_prompts, self.held_out = prompts[:LABEL_PROMPTS], prompts[LABEL_PROMPTS:]  # RL, SFT: a prefix
        self.prompt_tokens = lambda text: chat.prompt_tokens(text, self.tok)
        self.response_tokens = lambda text: chat.response_tokens(text, self.tok)

    def sample(self, network, prompts, per_prompt, seed):
        """per_prompt completions of each prompt: a list (per prompt) of lists of Completion; the sample of
        (prompt i, j) depends only on (seed, i, j)."""
        import jax

        from gptjax.align.stage import full_batches
        from gptjax.sample.generate import generate

        ptoks = [self.prompt_tokens(text) for text, _ in prompts]
        jobs = [(i, j) for i in range(len(prompts)) for j in range(per_prompt)]
        root_key, out = jax.random.key(seed), [[] for _ in prompts]
        for chunk, n in full_batches(jobs, GEN_BATCH):
            keys = jax.numpy.stack([jax.random.fold_in(jax.random.fold_in(root_key, i), j) for i, j in chunk])
            comps = generate(network.model_cfg, network.params, [ptoks[i] for i, _ in chunk],
                             max_new_tokens=MAX_NEW_TOKENS, strategy=self.strategy, seed=keys, tokenizer=self.tok,
                             rules=self.rules)
            for (i, _), c in zip(chunk[:n], comps[:n]):
                out[i].append(c)
        return out

    def rows(self, prompts, completions):
        """Token rows prompt + generated tokens (as RL scores a rollout), flattened, and each row's prompt length."""
        rows, prompt_len = [], []
        for (text, _), comps in zip(prompts, completions):
            ptoks = self.prompt_tokens(text)
            rows += [ptoks + list(c.tokens) for c in comps]
            prompt_len += [len(ptoks)] * len(comps)
        return rows, prompt_len

    def batched(self, fn, rows, *extra):
        """fn(tokens_RxL, lengths_R, *extra_R) over rows in GEN_BATCH chunks, as one numpy array."""
        from gptjax.align.stage import full_batches
        from gptjax.data.tokenizer import PAD_ID, pad_rows

        out, idx = [], list(range(len(rows)))
        for chunk, n in full_batches(idx, GEN_BATCH):
            width = max(len(rows[i]) for i in chunk)
            tokens = pad_rows([rows[i] for i in chunk], width, PAD_ID)
            lengths = np.array([len(rows[i]) for i in chunk], np.int32)
            out.append(np.asarray(fn(tokens, lengths, *[np.asarray(e)[chunk] for e in extra]))[:n])
        return np.concatenate(out)

    def proxy_scores(self, rm_dir, rows):
        from gptjax.align.reward import RewardModel

        return self.batched(RewardModel(rm_dir, self.mesh, self.rules), rows)

    def sft_logprobs(self, rows, prompt_len):
        """log pi_SFT(response | prompt) of each row."""
        import functools

        import jax

        from gptjax.align.dpo import response_logprobs
        from gptjax.model.build import model_graphdef

        if not hasattr(self, "_logprobs"):  # jitted once: every RL checkpoint's samples are scored with it
            self._logprobs = jax.jit(functools.partial(response_logprobs,
                                                       graphdef=model_graphdef(self.sft.model_cfg, self.rules)))
        return self.batched(lambda t, n, p: self._logprobs(self.sft.params, tokens_RxL=t, prompt_len_R=p,
                                                           lengths_R=n)[0],
                            rows, np.asarray(prompt_len, np.int32))


# ------------------------------------------------------------------------------------------ labels
def words(text):
    from gptjax.align.tasks import _words

    return len(_words(text))


def label_stage(root, sampler, force):
    """Two SFT samples per labelling prompt, judged by gold; the preferred one drawn from Bradley-Terry on gold.
    Pairs of identical texts are dropped; the rest are shuffled into a common test set and nested RM sets."""
    name = "label"
    done = load_marker(root, name)
    if done is not None and name not in force:
        print(f"[{name}] reused ({done['seconds']:.0f} s when it ran)", flush=True)
        return done
    clock = time.time()
    comps = sampler.sample(sampler.sft, sampler.label_prompts, 2, SEED + 1)
    rng = np.random.default_rng([SEED, 1])
    pairs, lengths, stopped = [], [], []
    for (prompt, meta), (a, b) in zip(sampler.label_prompts, comps):
        lengths += [words(a.text), words(b.text)]
        stopped += [a.finish_reason == "stop_token", b.finish_reason == "stop_token"]
        if a.text == b.text:
            continue
        ga, gb = sampler.task.reward(meta, a.text), sampler.task.reward(meta, b.text)
        a_wins = rng.random() < 1.0 / (1.0 + math.exp(-(ga - gb) / BT_TEMPERATURE))
        (chosen, gc), (rejected, gr) = ((a.text, ga), (b.text, gb)) if a_wins else ((b.text, gb), (a.text, ga))
        pairs.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, gold_chosen=gc, gold_rejected=gr))
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    test, pool = pairs[:N_TEST_PAIRS], pairs[N_TEST_PAIRS:]
    if len(pool) < max(RM_SIZES):
        raise SystemExit(f"only {len(pool)} training pairs after the test set; raise LABEL_PROMPTS")
    data_dir = os.path.join(root, "rm_data")
    os.makedirs(data_dir, exist_ok=True)
    write_jsonl(os.path.join(data_dir, "test.jsonl"), test)
    files = {}
    for n in RM_SIZES:  # nested: each smaller set is a prefix of the larger ones
        files[str(n)] = os.path.join(data_dir, f"rm_{n}.jsonl")
        write_jsonl(files[str(n)], pool[:n])
    decided = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    result = dict(
        samples=2 * len(comps), pairs=len(pairs), identical_pairs_dropped=len(comps) - len(pairs),
        gold_tie_fraction=1 - len(decided) / len(pairs),
        flip_fraction=float(np.mean([p["gold_chosen"] < p["gold_rejected"] for p in decided])),
        sft_words_percentiles={str(q): float(np.percentile(lengths, q)) for q in (10, 50, 90, 99, 100)},
        sft_eos_fraction=float(np.mean(stopped)),
        sft_gold_mean=float(np.mean([p[k] for p in pairs for k in ("gold_chosen", "gold_rejected")])),
        files=files, seconds=time.time() - clock)
    save_marker(root, name, result)
    print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return result


# ------------------------------------------------------------------------------------------ best-of-n pools
def bon_stage(root, sampler, rm_dirs, force):
    """BON_POOL SFT samples of each held-out prompt, scored once by gold and every proxy; and every proxy's
    scores of the common test pairs."""
    name = "bon"
    done = load_marker(root, name)
    if done is not None and name not in force:
        print(f"[{name}] reused ({done['seconds']:.0f} s when it ran)", flush=True)
        return done
    clock = time.time()
    prompts = sampler.held_out
    comps = sampler.sample(sampler.sft, prompts, BON_POOL, SEED + 2)
    gen_seconds = time.time() - clock
    rows, _ = sampler.rows(prompts, comps)
    gold = np.array([[sampler.task.reward(meta, c.text) for c in cs] for (_, meta), cs in zip(prompts, comps)])
    test = read_jsonl(os.path.join(root, "rm_data", "test.jsonl"))
    test_rows = []
    for p in test:
        test_rows += [sampler.prompt_tokens(p["prompt"]) + sampler.response_tokens(p[k]) for k in ("chosen", "rejected")]
    scores = {}
    for n_rm, rm_dir in rm_dirs.items():
        scores[f"proxy_{n_rm}"] = sampler.proxy_scores(rm_dir, rows).reshape(gold.shape)
        scores[f"test_{n_rm}"] = sampler.proxy_scores(rm_dir, test_rows).reshape(-1, 2)
    out_dir = os.path.join(root, "bon")
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "scores.npz"), gold=gold,
             words=np.array([[words(c.text) for c in cs] for cs in comps]), **scores)
    result = dict(prompts=len(prompts), pool=BON_POOL, generate_seconds=gen_seconds, seconds=time.time() - clock)
    save_marker(root, name, result)
    print(f"[{name}] done in {result['seconds']:.0f} s (generation {gen_seconds:.0f} s)", flush=True)
    return result


# ------------------------------------------------------------------------------------------ RL evaluations
def rl_eval_stage(root, sampler, n_rm, rm_dir, force):
    """Each kept RL checkpoint (and the SFT policy as step 0) samples RL_EVAL_SAMPLES completions of every
    held-out prompt; per prompt and checkpoint: mean gold, mean proxy, and the mean of log pi - log pi_SFT
    over its samples (an unbiased estimate of the sequence KL to the SFT policy on that prompt)."""
    from gptjax.align.tasks import CONCISE_WORDS
    from gptjax.train.network import load_network

    name = f"rl_eval_{n_rm}"
    done = load_marker(root, name)
    if done is not None and name not in force:
        print(f"[{name}] reused ({done['seconds']:.0f} s when it ran)", flush=True)
        return done
    clock = time.time()
    prompts, wd = sampler.held_out, os.path.join(root, f"rl_{n_rm}")
    steps = list(range(0, RL_STEPS + 1, RL_EVAL_EVERY))
    gold, proxy, kl, length, over = [], [], [], [], []
    for step in steps:
        policy = sampler.sft if step == 0 else load_network(wd, sampler.mesh, sampler.rules, step=step)
        comps = sampler.sample(policy, prompts, RL_EVAL_SAMPLES, SEED + 3)
        rows, prompt_len = sampler.rows(prompts, comps)
        shape = (len(prompts), RL_EVAL_SAMPLES)
        logp = np.array([c.logprob for cs in comps for c in cs]).reshape(shape)
        kl.append((logp - sampler.sft_logprobs(rows, prompt_len).reshape(shape)).mean(1))
        gold.append([np.mean([sampler.task.reward(meta, c.text) for c in cs]) for (_, meta), cs in zip(prompts, comps)])
        proxy.append(sampler.proxy_scores(rm_dir, rows).reshape(shape).mean(1))
        counts = [[words(c.text) for c in cs] for cs in comps]  # words per reply, per prompt
        length.append([np.mean(n) for n in counts])
        over.append([np.mean(np.array(n) > CONCISE_WORDS) for n in counts])
    out = os.path.join(root, f"{name}.npz")
    np.savez(out, steps=np.array(steps), gold_XxU=np.array(gold), proxy_XxU=np.array(proxy), kl_XxU=np.array(kl),
             words_XxU=np.array(length), over_XxU=np.array(over))
    result = dict(steps=steps, seconds=time.time() - clock)
    save_marker(root, name, result)
    print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return result


# ------------------------------------------------------------------------------------------ analysis
def pairwise_accuracy(proxy_PxN, gold_PxN):
    """Share of same-prompt sample pairs with different gold whose proxy order agrees (proxy ties: 1/2)."""
    agree = total = 0.0
    for p, g in zip(proxy_PxN, gold_PxN):
        dg, dp = g[:, None] - g[None, :], p[:, None] - p[None, :]
        mask = dg > 0
        agree += float(((dp > 0) + 0.5 * (dp == 0))[mask].sum())
        total += float(mask.sum())
    return agree / max(total, 1.0)


def curve(check, d_X, gold_UxX, proxy_UxX, words_UxX, over_UxX, **extra):
    """What the plots and the report read of one method x proxy besides its shape check (over: the share of
    replies longer than gold's best length)."""
    se = lambda a: (a.std(0, ddof=1) / math.sqrt(len(a))).tolist()  # noqa: E731
    return dict(check, d=list(map(float, d_X)), gold=gold_UxX.mean(0).tolist(), gold_se=se(gold_UxX),
                proxy=proxy_UxX.mean(0).tolist(), proxy_se=se(proxy_UxX), words=words_UxX.mean(0).tolist(),
                over=over_UxX.mean(0).tolist(), **extra)


def analyse(root, results_meta):
    from gptjax.align.losses import best_of_n_kl
    from gptjax.align.tasks import CONCISE_OVERLONG_COST, CONCISE_WORDS

    z = np.load(os.path.join(root, "bon", "scores.npz"))
    gold, words_pool = z["gold"], z["words"]
    ns = np.array(BON_NS)
    d_bon = np.sqrt([best_of_n_kl(int(n)) for n in ns])
    gold0 = float(gold.mean())
    out = dict(settings=dict(seed=SEED, task=TASK, gold_best_words=CONCISE_WORDS,
                             gold_overlong_cost=CONCISE_OVERLONG_COST, pretrain_steps=PRETRAIN_STEPS, sft_steps=SFT_STEPS,
                             max_new_tokens=MAX_NEW_TOKENS, label_prompts=LABEL_PROMPTS, bt_temperature=BT_TEMPERATURE,
                             n_test_pairs=N_TEST_PAIRS, rm_sizes=list(RM_SIZES), rm_epochs=RM_EPOCHS,
                             rm_batch=RM_BATCH, held_out_prompts=HELD_OUT_PROMPTS, bon_pool=BON_POOL,
                             bon_ns=list(BON_NS), rl_steps=RL_STEPS, rl_lr=RL_LR, rl_kl_coef=RL_KL_COEF,
                             rl_eval_every=RL_EVAL_EVERY, rl_eval_samples=RL_EVAL_SAMPLES, n_boot=N_BOOT),
               initial_policy=dict(gold_mean=gold0, words_mean=float(words_pool.mean())),
               rm={}, bon={}, rl={}, shape_checks=[])
    out.update(results_meta)
    test_pairs = read_jsonl(os.path.join(root, "rm_data", "test.jsonl"))
    for n_rm in RM_SIZES:
        key = str(n_rm)
        proxy, test = z[f"proxy_{n_rm}"], z[f"test_{n_rm}"]
        by_gold = [(s[0] > s[1]) == (p["gold_chosen"] > p["gold_rejected"]) for s, p in zip(test, test_pairs)
                   if p["gold_chosen"] != p["gold_rejected"]]
        trained = load_marker(root, f"rm_{n_rm}") or {}
        out["rm"][key] = dict(
            train_pairs=n_rm, test_accuracy_labels=float(np.mean(test[:, 0] > test[:, 1])),
            test_accuracy_gold=float(np.mean(by_gold)), accuracy_on_bon_pools=pairwise_accuracy(proxy, gold),
            heldout_accuracy_own_split=trained.get("eval_accuracy"), train_seconds=trained.get("seconds"))

        # --- best-of-n: units are the held-out prompts; rewards relative to the SFT pool's mean
        rng = np.random.default_rng((SEED, n_rm))
        g_curve = bon_expectations(proxy, gold, ns, rng) - gold0
        p_curve = bon_expectations(proxy, proxy, ns, rng) - float(proxy.mean())
        w_curve = bon_expectations(proxy, words_pool, ns, rng)
        o_curve = bon_expectations(proxy, words_pool > CONCISE_WORDS, ns, rng)
        check = shape_check("bon", n_rm, d_bon, p_curve, g_curve, N_BOOT, rng)
        out["shape_checks"].append(check)
        out["bon"][key] = curve(check, d_bon, g_curve, p_curve, w_curve, o_curve, n=ns.tolist())

        # --- RL: units are the same held-out prompts, sampled at every kept checkpoint
        path = os.path.join(root, f"rl_eval_{n_rm}.npz")
        if not os.path.isfile(path):
            continue
        r = np.load(path)
        kl_X = r["kl_XxU"].mean(1)
        d_rl = np.sqrt(np.maximum(kl_X, 0.0))
        g_rl = r["gold_XxU"].T - r["gold_XxU"][0].mean()
        p_rl = r["proxy_XxU"].T - r["proxy_XxU"][0].mean()
        check = shape_check("rl", n_rm, d_rl, p_rl, g_rl, N_BOOT, rng)
        out["shape_checks"].append(check)
        out["rl"][key] = curve(check, d_rl, g_rl, p_rl, r["words_XxU"].T, r["over_XxU"].T,
                               step=r["steps"].tolist(), kl=kl_X.tolist(),
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
def plots(res, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [str(n) for n in res["settings"]["rm_sizes"]]
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0.0, 0.8, len(sizes)))))
    for method, title, fit_form in (("bon", "best-of-n", "d (alpha - beta d)"),
                                    ("rl", "RLOO", "d (alpha - beta log d)")):
        if not res[method]:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for key, c in colors.items():
            if key not in res[method]:
                continue
            r = res[method][key]
            d = np.array(r["d"])
            axes[0].errorbar(d, r["gold"], yerr=r["gold_se"], fmt="o", color=c, capsize=2, label=f"RM {key} pairs")
            grid = np.linspace(1e-3, d.max() * 1.02, 200)
            shape = grid if method == "bon" else np.log(grid)
            axes[0].plot(grid, grid * (r["alpha"] - r["beta"] * shape), "-", color=c, lw=1)
            axes[1].errorbar(d, r["proxy"], yerr=r["proxy_se"], fmt="s-", color=c, capsize=2, label=f"RM {key} pairs")
            axes[2].plot(d, r["words"], "^-", color=c, label=f"RM {key} pairs")
        for ax, what in zip(axes, ("gold reward (relative to SFT)", "proxy reward (relative to SFT)",
                                   "words per reply")):
            ax.set_xlabel("d = sqrt(KL to the SFT policy)")
            ax.set_title(f"{title}: {what}")
            ax.grid(alpha=0.3)
        axes[2].axhline(res["settings"]["gold_best_words"], color="gray", ls=":", lw=1)  # gold's best length
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title} against proxies of 3 training-set sizes (mean +- SE over held-out prompts); "
                     f"lines: {fit_form}")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{method}.png"), dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------------------------------ report
NOTES = """## How to read it

- Units: both methods are evaluated on the same held-out prompts, which no stage trained on; every SE and
  interval resamples those prompts (each prompt's curve kept whole, so points along a curve stay paired). For RL
  this replaces a bootstrap over training steps, whose rewards are correlated from step to step.
- Best-of-n uses the unbiased estimator over each prompt's stored pool (shapes.bon_expectations): the pool is
  twice the largest n, so n = 256 is not just the pool's maximum. KL(best-of-n || SFT) = log n - (n-1)/n.
- RL's d: per prompt, the mean over its samples of log pi(y) - log pi_SFT(y), averaged over prompts.
- Fitted coefficients are in gold units per d; the proxies' own scales are Bradley-Terry logits, so proxy
  curves are compared by shape, not height.
- The words panel shows how far each optimiser pushed the length past gold's optimum (dotted).
"""


def _recorded(res, key):
    """A provenance field of results.json; results written before run.py recorded it say so instead."""
    return f"`{res[key]}`" if key in res else "not recorded in results.json"


def fmt_ci(c, key, digits=3):
    lo, hi = c[f"{key}_ci"]
    return f"{c[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def trend(checks, coef):
    """How a fitted coefficient moves with the proxy's data, and whether the intervals of the smallest and the
    largest proxy are apart."""
    parts = [f"{c['rm_pairs']}: {fmt_ci(c, coef)}" for c in checks]
    first, last = checks[0], checks[-1]
    apart = first[f"{coef}_ci"][1] < last[f"{coef}_ci"][0] or last[f"{coef}_ci"][1] < first[f"{coef}_ci"][0]
    direction = "rises" if last[coef] > first[coef] else "falls"
    resolved = (f"{direction} from the smallest to the largest proxy, with their 95% intervals apart" if apart else
                f"{direction} from the smallest to the largest proxy, but their 95% intervals overlap: not resolved")
    return f"{coef} " + "; ".join(parts) + f" — {resolved}"


def first_move(key, rl, bon, best_words):
    """One line: RL's first evaluation against the best-of-n point nearest to it in d, for the same proxy."""
    j = int(np.argmin([abs(d - rl["d"][1]) for d in bon["d"]]))
    return (f"- Proxy {key}: RL's first evaluation (step {rl['step'][1]}, d = {rl['d'][1]:.2f}) has gold "
            f"{rl['gold'][1]:+.3f} (SE {rl['gold_se'][1]:.3f}), {rl['words'][1]:.1f} words a reply and "
            f"{100 * rl['over'][1]:.1f}% of replies past {best_words} words (SFT: {rl['words'][0]:.1f} words, "
            f"{100 * rl['over'][0]:.1f}%); best-of-{bon['n'][j]} at d = {bon['d'][j]:.2f} has gold "
            f"{bon['gold'][j]:+.3f}, {bon['words'][j]:.1f} words and {100 * bon['over'][j]:.1f}% past {best_words}.")


def write_report(res, out):
    """report.md from the contents of results.json (a full run's and --report-only's one writer), written to `out`."""
    s, lab = res["settings"], res["label"]
    L = ["# Reward-model over-optimisation at tiny scale (Gao, Schulman & Hilton 2022)\n"]
    L.append(f"Regenerate: `{SCRIPT}` (stages are cached under {res['root']}; delete that directory for a full "
             "rerun).\n")
    # Stages are reused from earlier invocations, so the commit is that of the analysis, not of every stage.
    L.append(f"Written by `run.py` from `results.json` (rebuild: `{SCRIPT} --report-only`), never by hand. Commit "
             f"of the invocation that wrote results.json (reused stages may have run earlier): "
             f"{_recorded(res, 'commit')}. Command: {_recorded(res, 'command')}.\n")
    L.append(f"Wall time: all stages, as measured when each ran: **{res['wall_seconds_all_stages'] / 60:.1f} min** on "
             f"a 2-core CPU ({res.get('cpu', 'CPU not recorded')}); this invocation took "
             f"{res['wall_seconds_this_invocation'] / 60:.1f} min.\n")
    v = res["shape_verdict"]
    L.append("## Result\n")
    for method, name in (("bon", "Best-of-n"), ("rl", "RL (RLOO)")):
        if method not in v:
            L.append(f"- {name}: not run.")
            continue
        m = v[method]
        L.append(f"- {name}: the over-optimisation shape (proxy rises throughout; gold peaks inside the range and "
                 f"its last point is significantly below the peak) holds for {len(m['proxies_passing'])} of 3 proxies "
                 f"({', '.join(map(str, m['proxies_passing'])) + ' pairs' if m['proxies_passing'] else 'none'}): "
                 "the criterion (>= 2) is "
                 f"**{'met' if m['shape_holds'] else 'not met'}**. d at gold's peak grows with the proxy's data: "
                 f"**{'yes' if m['d_peak_grows_with_data'] else 'no'}**.")
    L.append("")
    L.append("## Setup\n")
    pct = lab["sft_words_percentiles"]
    L.append(f"- Policy: 4-layer d=128 decoder, pretrained {s['pretrain_steps']} steps on the embedded Shakespeare "
             f"corpus, then SFT {s['sft_steps']} steps on `Continue: <4 words>` -> the rest of the line. Its replies "
             f"run {pct['10']:.0f} / {pct['50']:.0f} / {pct['90']:.0f} / {pct['99']:.0f} / {pct['100']:.0f} words "
             f"(10th / 50th / 90th / 99th percentile / max); {100 * lab['sft_eos_fraction']:.1f}% end with EOS "
             f"within {s['max_new_tokens']} tokens.")
    L.append(f"- Gold: `gptjax.align.tasks.concise_gold_reward` (task `{s['task']}`): 0.25 per word up to "
             f"{s['gold_best_words']}, -{s['gold_overlong_cost']:g} per word beyond, minus the share of repeated words. "
             f"Its optimum ({s['gold_best_words']} distinct words) lies inside what the SFT policy produces, above "
             "its median.")
    L.append(f"- Labels: {s['label_prompts']} prompts x 2 SFT samples; the preferred one drawn from Bradley-Terry on "
             f"gold at temperature {s['bt_temperature']}: {lab['pairs']} pairs ({lab['identical_pairs_dropped']} "
             f"identical pairs dropped), {100 * lab['gold_tie_fraction']:.0f}% with equal gold (a coin flip), and "
             f"{100 * lab['flip_fraction']:.1f}% of the rest labelled against gold. {s['n_test_pairs']} pairs are a "
             "common test set.")
    L.append(f"- Proxies: Bradley-Terry reward models from the SFT checkpoint on nested sets of "
             f"{', '.join(map(str, s['rm_sizes']))} pairs, {s['rm_epochs']} epochs each at batch {s['rm_batch']}.")
    L.append(f"- Best-of-n: {s['held_out_prompts']} held-out prompts x {s['bon_pool']} SFT samples, each scored once "
             f"by gold and every proxy; n = {', '.join(map(str, s['bon_ns']))}.")
    L.append(f"- RL: RLOO (leave-one-out baseline, no std normalisation), 8 prompts x 4 samples per step, "
             f"{s['rl_steps']} steps at lr {s['rl_lr']}, kl_coef {s['rl_kl_coef']} (none, in effect). A checkpoint "
             f"every {s['rl_eval_every']} steps samples {s['rl_eval_samples']} replies to each held-out prompt.")
    L.append(f"- Rewards are relative to the SFT policy (its mean gold on the pools: "
             f"{res['initial_policy']['gold_mean']:+.3f}, mean {res['initial_policy']['words_mean']:.1f} words). "
             f"Intervals: 95%, bootstrap over the held-out prompts ({s['n_boot']} resamples).\n")
    L.append("## Proxy reward models\n")
    L.append(f"| train pairs | test acc. vs labels ({s['n_test_pairs']} pairs) | test acc. vs gold (pairs with "
             "different gold) | acc. on the BoN pools (same-prompt pairs, different gold) | own held-out acc. | "
             "train time |")
    L.append("|---|---|---|---|---|---|")
    for k, r in res["rm"].items():
        own = r["heldout_accuracy_own_split"]
        L.append(f"| {k} | {r['test_accuracy_labels']:.3f} | {r['test_accuracy_gold']:.3f} | "
                 f"{r['accuracy_on_bon_pools']:.3f} | {'-' if own is None else f'{own:.3f}'} | "
                 f"{(r['train_seconds'] or 0):.0f} s |")
    for method, name in (("bon", "Best-of-n"), ("rl", "RL (RLOO)")):
        if not res[method]:
            continue
        L.append(f"\n## {name}\n\n![{method}]({method}.png)\n")
        where = "n" if method == "bon" else "step"
        L.append(f"| RM pairs | proxy rises | gold peaks then falls | gold's peak ({where}, d, gold) | last point "
                 "(d, gold, words) | drop / SE (needs > z) | d at the peak (95%) | alpha (95%) | beta (95%) |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for k, r in res[method].items():
            i = int(np.argmax(r["gold"]))
            L.append(f"| {k} | {r['proxy_rises']} | {r['gold_peaks_then_falls']} | {r[where][i]}, {r['d'][i]:.2f}, "
                     f"{r['gold'][i]:+.3f} | {r['d'][-1]:.2f}, {r['gold'][-1]:+.3f}, {r['words'][-1]:.1f} | "
                     f"{r['gold_drop'] / max(r['gold_drop_se'], 1e-12):.1f} (z {r['drop_z']:.2f}) | "
                     f"{fmt_ci(r, 'd_peak', 2)} | {fmt_ci(r, 'alpha')} | {fmt_ci(r, 'beta')} |")
        checks = sorted((c for c in res["shape_checks"] if c["method"] == method), key=lambda c: c["rm_pairs"])
        if method == "rl":
            L.append("")
            L += [first_move(k, r, res["bon"][k], s["gold_best_words"]) for k, r in res["rl"].items()]
        L.append("\nHow the gold fit moves with the proxy's data:\n")
        L.append(f"- {trend(checks, 'alpha')}.")
        L.append(f"- {trend(checks, 'beta')}.")
    L += ["", NOTES]
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(L))


# ------------------------------------------------------------------------------------------ main
def rebuild_report(out, results=RESULTS):
    """report.md from results.json alone (what --report-only does, and a full run's last step)."""
    with open(results, encoding="utf-8") as f:
        write_report(json.load(f), out)
    print(f"wrote {out}")


def run(args):
    """Runs (or reuses) every stage up to --until; after the last, writes results.json, the plots and the report."""
    import jax

    from gptjax.config import default_config
    from gptjax.parallel.mesh import make_mesh

    commit = code_commit()  # the analysis runs the code checked out now
    command = shlex.join(["python", os.path.relpath(os.path.abspath(__file__), REPO), *sys.argv[1:]])
    root, force = args.root, set(filter(None, args.force.split(",")))
    os.makedirs(root, exist_ok=True)
    start = time.time()
    d = lambda name: os.path.join(root, name)  # noqa: E731
    cli_stage(root, "pretrain", d("pretrain"), [
        "--config=configs/pretrain_shakespeare.py", f"--config.train.steps={PRETRAIN_STEPS}",
        f"--config.optim.warmup_steps={PRETRAIN_STEPS // 10}", f"--config.train.eval_every={PRETRAIN_STEPS}",
        f"--config.train.checkpoint_every={PRETRAIN_STEPS}", *PRETRAIN_ARGS], force)
    if args.until == "pretrain":
        return
    cli_stage(root, "sft", d("sft"), [
        "--config=configs/sft.py:shakespeare", f"--config.align.task={TASK}", f"--config.align.init_from={d('pretrain')}",
        f"--config.train.steps={SFT_STEPS}", f"--config.optim.warmup_steps={min(20, SFT_STEPS)}",  # 20: sft.py's
        f"--config.train.eval_every={SFT_STEPS}",
        f"--config.train.checkpoint_every={SFT_STEPS}"], force)
    if args.until == "sft":
        return
    cfg = default_config()
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        sampler = Sampler(d("sft"), cfg, mesh)
        label = label_stage(root, sampler, force)
        if args.until == "label":
            return
        rm_dirs = {}
        for n in RM_SIZES:
            rm_dirs[n] = d(f"rm_{n}")
            steps = math.ceil(RM_EPOCHS * n / RM_BATCH)
            cli_stage(root, f"rm_{n}", rm_dirs[n], [
                "--config=configs/reward.py", f"--config.align.init_from={d('sft')}",
                f"--config.align.data={label['files'][str(n)]}", f"--config.train.steps={steps}",
                f"--config.align.batch_size={RM_BATCH}", f"--config.optim.warmup_steps={max(steps // 10, 1)}",
                f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={steps}"], force)
            if args.until == f"rm_{n}":
                return
        bon = bon_stage(root, sampler, rm_dirs, force)
        if args.until == "bon":
            return
        for n in RM_SIZES:
            cli_stage(root, f"rl_{n}", d(f"rl_{n}"), [
                "--config=configs/grpo.py", "--config.mode=rloo", f"--config.align.task={TASK}",
                f"--config.align.init_from={d('sft')}", f"--config.align.reward_model={rm_dirs[n]}",
                "--config.align.num_examples=2400", f"--config.rl.max_new_tokens={MAX_NEW_TOKENS}",
                "--config.rl.group_size=4", "--config.align.batch_size=8", f"--config.rl.kl_coef={RL_KL_COEF}",
                "--config.rl.missing_eos_penalty=0.0", f"--config.optim.lr={RL_LR}",
                f"--config.train.steps={RL_STEPS}", f"--config.optim.warmup_steps={min(5, RL_STEPS)}",  # 5: grpo.py's
                f"--config.train.eval_every={RL_STEPS}",
                f"--config.train.checkpoint_every={RL_EVAL_EVERY}",
                f"--config.train.max_to_keep={RL_STEPS // RL_EVAL_EVERY + 1}", "--config.train.log_every=10"], force)
            rl_eval_stage(root, sampler, n, rm_dirs[n], force)
            if args.until == f"rl_{n}":
                return
        stages = ["pretrain", "sft", "label"] + [f"rm_{n}" for n in RM_SIZES] + ["bon"] + \
            [f"{kind}_{n}" for n in RM_SIZES for kind in ("rl", "rl_eval")]
        stage_seconds = {s: (load_marker(root, s) or {}).get("seconds") for s in stages}
        meta = dict(commit=commit, command=command, root=root, cpu=cpu_name(), label=label, bon_stage=bon,
                    stage_seconds=stage_seconds)
        res = to_float(analyse(root, meta))
    res["wall_seconds_all_stages"] = float(sum(v for v in stage_seconds.values() if v))
    results = os.path.join(root, "results.json") if args.miniature else RESULTS
    plots(res, os.path.dirname(results))
    res["wall_seconds_this_invocation"] = time.time() - start
    with open(results + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(results + ".tmp", results)
    # From the file, as --report-only does, so that it rebuilds this very report.
    rebuild_report(os.path.join(root, "report.md") if args.miniature else args.out, results)
    print(json.dumps(dict(verdict=res["shape_verdict"], wall_s=res["wall_seconds_all_stages"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/exp_rmo")
    parser.add_argument("--force", default="", help="comma-separated stages to redo")
    parser.add_argument("--until", default="", help="stop after this stage (for timing)")
    parser.add_argument("--report-only", action="store_true", help="rebuild report.md from results.json, run nothing")
    parser.add_argument("--out", default=os.path.join(HERE, "report.md"), help="where to write the report")
    parser.add_argument("--miniature", action="store_true",
                        help="a few seconds per stage; results, plots and report go to --root (tests)")
    args = parser.parse_args()
    if args.miniature:
        globals().update(MINIATURE)
    if args.report_only:
        rebuild_report(args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
