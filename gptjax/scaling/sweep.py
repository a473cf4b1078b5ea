"""Runs a scaling sweep (`config.mode = "sweep"`): plan, train every unfinished trial, fit, report.

Workdir layout:
  plan.json              the trials (shapes, budgets, steps, FLOPs in all accountings) and warnings
  tokenizer.json         shared by every trial
  trials/<id>/           one trial: checkpoints/, metrics.jsonl, tensorboard/, result.json when done,
                         trial.lock while a process trains it
  results.jsonl          one row per trained model (see `result_rows`)
  fits.json, report.md, plots/   from gptjax/scaling/fit/ and report.py

Rerunning the same command skips trials with a result (diverged ones included: divergence is
deterministic) and resumes an interrupted trial from its checkpoint; trials that crashed are retried.
`sweep.trial_index=K` runs trial K only (cluster array jobs share one workdir), `sweep.mode=fit` refits
from the results, `sweep.mode=plan` writes plan.json and stops.

Processes sharing a workdir (array jobs, subprocess workers, a second sweep command) never train the same
trial at once: training holds trials/<id>/trial.lock (trial_lock.py), created atomically and naming its pid, host
and start time. A sweep that finds a trial locked skips it (it is left out of this run's fit);
`sweep.trial_index=K` on a locked trial fails with TrialLockedError. A lock whose process is dead on this
same host (and pid namespace) is stale and taken over; from another host liveness cannot be told, so the
error names the lock file to delete if its process is gone.

A multi-process job (many hosts, or `gptjax.launch`) trains each trial with all its processes together:
process 0 takes the lock and writes the shared files (the others wait for them before reading them back),
and sweep.n_workers is not used (worker subprocesses would not join the job).
"""

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
import traceback

import jax
from absl import logging

from gptjax.atomic import write_json_atomic, write_jsonl_atomic
from gptjax.config import create_workdir, default_config, validate
from gptjax.data.pipeline import markov_chain
from gptjax.data.sources import parse_source
from gptjax.evaluate.job import downstream_scorer
from gptjax.parallel.mesh import process_0s, sync_processes
from gptjax.scaling import adaptive, trial_lock, vectorized
from gptjax.scaling.plan import SweepPlanError, Trial, plan_sweep, resolved_flops, trial_config
from gptjax.train.checkpoint import data_with_split_seed, model_with_defaults
from gptjax.train.loop import TrainingDivergedError, json_config, train

RESULT_FILE = "result.json"
TRIAL_FILE = "trial.json"  # written when a trial starts: what it trains, to refuse a changed config
LOCK_FILE = "trial.lock"  # exists while a process trains the trial: {"pid", "host", "pid_namespace", "since"}
TRIAL_LOCKED_EXIT = 75  # a sweep worker's exit code when another process holds its trial's lock (EX_TEMPFAIL)


class TrialFailedError(RuntimeError):
    """`sweep.trial_index=K` ran a trial that crashed: the cluster job should fail (and be retried)."""


class TrialLockedError(TrialFailedError):
    """Another live process is training this trial: its trial.lock is there. A TrialFailedError, so
    `sweep.trial_index=K` on it fails the array job with this message (main.py prints it, exits 1)."""


def run_sweep(cfg, workdir: str) -> dict:
    """The sweep job; returns a summary (counts, the recommendation, where the report is)."""
    validate(cfg, workdir)
    create_workdir(workdir)
    enable_compilation_cache(cfg.sweep.compilation_cache)
    if cfg.sweep.mode == "fit":
        return fit_and_report(cfg, workdir)
    trials, warnings = prepare(cfg, workdir)
    if cfg.sweep.mode == "plan":
        return {"plan": os.path.join(workdir, "plan.json"), "trials": len(trials), "warnings": warnings}
    if cfg.sweep.trial_index >= 0:
        if cfg.sweep.trial_index >= len(trials):
            raise SweepPlanError(f"sweep.trial_index={cfg.sweep.trial_index}: the plan has {len(trials)} trials "
                                 f"(0..{len(trials) - 1}); see {os.path.join(workdir, 'plan.json')}")
        trial = trials[cfg.sweep.trial_index]
        rows = run_trial(cfg, trial, workdir)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise TrialFailedError(f"trial {trial.id} failed ({failed[0]['reason']}); its result is recorded in "
                                   f"{trial_dir(workdir, trial)} and a rerun retries it")
        return {"trial": trial.id, "results": rows}
    progress = SweepProgress(0, 0, cfg.train.progress_bar)
    try:
        skipped = _train_pending(cfg, trials, workdir, progress)
        trials, more_skipped = _adaptive_rounds(cfg, workdir, trials, progress)
        skipped += more_skipped
        rows = load_rows(workdir)
        print_summary([r for r in rows if r.get("kind") != "validation"])
        summary = fit_and_report(cfg, workdir, rows, progress=progress, trials=trials, skipped=skipped)
    finally:
        progress.close()
    if skipped:
        logging.warning("sweep: %d trial(s) are being trained by other processes and are left out of this fit "
                        "(%s); run --config.sweep.mode=fit once they finish", len(skipped), ", ".join(skipped))
    return dict(summary, skipped=skipped)


def enable_compilation_cache(path: str) -> None:
    """Turns on JAX's persistent compilation cache at `path` (~ expanded, XDG_CACHE_HOME honoured) for this
    process and, through the environment, for the sweep's worker subprocesses; "" leaves it off."""
    if not path:
        return
    if path.startswith("~/.cache/") and os.environ.get("XDG_CACHE_HOME"):
        path = os.path.join(os.environ["XDG_CACHE_HOME"], path[len("~/.cache/"):])
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"  # the default 1 s skips most trials'
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _train_pending(cfg, trials: list[Trial], workdir: str, progress: "SweepProgress") -> list[str]:
    """Trains the unfinished `trials` (in process or in sweep.n_workers subprocesses); returns the ids of
    those skipped as locked by another process."""
    todo = [t for t in trials if not _finished(cfg, workdir, t)]
    progress.add(len(trials), len(trials) - len(todo))
    logging.info("sweep: %d trials, %d already finished, %d to train", len(trials), len(trials) - len(todo), len(todo))
    # Worker subprocesses only on one CPU process: on an accelerator each would claim the device, and in a
    # multi-process job they would not join it (every process trains each trial together instead).
    if cfg.sweep.n_workers > 0 and jax.default_backend() == "cpu" and jax.process_count() == 1:
        return _run_in_subprocesses(cfg, todo, workdir, progress)
    return _run_in_process(cfg, todo, workdir, progress)


def _run_in_process(cfg, trials: list[Trial], workdir: str, progress: "SweepProgress") -> list[str]:
    """Trains `trials` one after another here; returns the ids of those skipped as locked by another process."""
    skipped = []
    for trial in trials:
        try:
            progress.trial_done(trial, run_trial(cfg, trial, workdir))
        except TrialLockedError as e:
            logging.warning("sweep: skipped: %s", e)
            skipped.append(trial.id)
    return skipped


def _adaptive_rounds(cfg, workdir: str, trials: list[Trial], progress) -> tuple[list[Trial], list[str]]:
    """After the grid: sweep.lr_widenings rounds of lr widening, then the noise-seed trials (adaptive.py),
    each round added to plan.json and trained. Returns every trial and the ids skipped as locked."""
    train_tokens = _read_plan(workdir)["train_tokens"]
    skipped = []
    rounds = [adaptive.lr_widening_trials] * cfg.sweep.lr_widenings + [adaptive.noise_seed_trials]
    for derive in rounds:
        planned = [t for t in trials if t.kind != "validation"]
        new = derive(cfg, planned, collect_results(workdir, planned), train_tokens)
        new = [t for t in new if t.id not in {p.id for p in planned}]
        if not new:
            continue
        trials = _renumber(planned + new)
        _write_plan(workdir, trials, train_tokens)
        skipped += _train_pending(cfg, trials[len(planned):], workdir, progress)
    return trials, skipped


def _renumber(trials: list[Trial]) -> list[Trial]:
    return [dataclasses.replace(t, index=i) for i, t in enumerate(trials)]


def prepare(cfg, workdir: str) -> tuple[list[Trial], list[str]]:
    """Builds the shared tokenizer and token caches once, plans, checks every trial's config, and
    writes plan.json: the grid, then the trials an earlier run of this sweep added (lr widening, noise
    seeds, validation), so their indices stay valid for sweep.trial_index."""
    from gptjax.data.pipeline import make_streams  # the data stack is only needed to plan or train

    data = make_streams(cfg, workdir)
    train_tokens = (round(data.batches_per_epoch * cfg.data.batch_size * cfg.data.seq_len)
                    if data.batches_per_epoch else None)
    trials, warnings = plan_sweep(cfg, train_tokens)
    grid_ids = {t.id for t in trials}
    trials += [t for t in (_plan_trials(workdir) or []) if t.kind != "grid" and t.id not in grid_ids]
    trials = _renumber(trials)
    for trial in trials:  # a trial config that cannot run is a config error now, not a failed trial later
        validate(trial_config(cfg, trial, _tokenizer_path(cfg, workdir)))
    for warning in warnings:
        logging.warning("sweep plan: %s", warning)
    _write_plan(workdir, trials, train_tokens, warnings)
    return trials, warnings


def _write_plan(workdir: str, trials: list[Trial], train_tokens, warnings=None) -> None:
    if warnings is None:
        warnings = _read_plan(workdir).get("warnings", [])
    write_json_atomic(os.path.join(workdir, "plan.json"),
                      {"train_tokens": train_tokens, "warnings": warnings, "trials": [t.to_json() for t in trials]})
    sync_processes("gptjax sweep: plan.json written")  # every process reads it back


def _read_plan(workdir: str) -> dict:
    path = os.path.join(workdir, "plan.json")
    if not os.path.isfile(path):
        return {"train_tokens": None, "warnings": [], "trials": []}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tokenizer_path(cfg, workdir: str) -> str | None:
    if not parse_source(cfg.data.source).is_text:
        return None
    return cfg.data.tokenizer or os.path.join(os.path.abspath(workdir), "tokenizer.json")


def trial_dir(workdir: str, trial: Trial) -> str:
    return os.path.join(workdir, "trials", trial.id)


def trial_identity(cfg, trial: Trial) -> dict:
    """What a trial's results and checkpoints mean: the trial and every config key that shapes its
    training (not paths or display settings). A rerun with another identity is refused."""
    tcfg = json_config(trial_config(cfg, trial, None))
    for key in ("tokenizer", "cache_dir", "tfds_data_dir"):
        tcfg["data"].pop(key, None)
    return {"trial": dict(trial.to_json(), index=None), "model": tcfg["model"], "data": tcfg["data"],
            "optim": tcfg["optim"], "steps": tcfg["train"]["steps"], "seed": tcfg["seed"]}


def _check_identity(cfg, workdir: str, trial: Trial) -> None:
    path = os.path.join(trial_dir(workdir, trial), TRIAL_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = _with_keys_added_since(json.load(f))
    current = json.loads(json.dumps(trial_identity(cfg, trial)))
    if saved != current:
        diffs = [f"{section}" for section in current if saved.get(section) != current[section]]
        raise SweepPlanError(
            f"{trial_dir(workdir, trial)} was trained with another config (differs in: {', '.join(diffs)}); "
            "rerun with the config that started this sweep, refit its results with --config.sweep.mode=fit, or use "
            "a fresh --workdir")


def _with_keys_added_since(saved: dict) -> dict:
    """A trial.json from before newer config keys existed. Model keys added since read as their defaults,
    which reproduce the old model (an older μP sweep differs in mup_base_head_dim: its attention scale
    really was another). data.split_seed: its split came from the trial's seed, so it matches a config
    whose split_seed is that seed (the default 0 for the seed-0 trials), else not; for the other seeds
    of such a sweep refit its results (sweep.mode=fit) or start a fresh workdir. data.tokenizer_sample_bytes
    does nothing for synthetic sources, so their old trials read it as the default; text trials from before
    it were tokenized and split another way (data/cache.py) and are refused."""
    if isinstance(saved.get("model"), dict):
        saved["model"] = model_with_defaults(saved["model"])
    if isinstance(saved.get("data"), dict):
        saved["data"] = data_with_split_seed(saved["data"], saved.get("seed"))
        if str(saved["data"].get("source", "")).startswith("synthetic:"):  # a saved, possibly partial dict
            saved["data"].setdefault("tokenizer_sample_bytes", default_config().data.tokenizer_sample_bytes)
    return saved


def _finished(cfg, workdir: str, trial: Trial) -> bool:
    """True when the trial has a result (ok or diverged) written by this same config. In a multi-process job
    process 0 reads the files and every process takes its answer."""
    finished = _ANOTHER_CONFIG
    if jax.process_index() == 0:
        try:
            finished = _has_result(cfg, workdir, trial)
        except SweepPlanError:
            process_0s(_ANOTHER_CONFIG)
            raise
    finished = process_0s(finished)
    if finished == _ANOTHER_CONFIG:  # the other processes: process 0 has raised the error
        raise SweepPlanError(f"{trial_dir(workdir, trial)} was trained with another config (see process 0's error)")
    return bool(finished)


_ANOTHER_CONFIG = 2  # _finished's answer from process 0 when the trial's identity differs


def _has_result(cfg, workdir: str, trial: Trial) -> bool:
    _check_identity(cfg, workdir, trial)
    path = os.path.join(trial_dir(workdir, trial), RESULT_FILE)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return all(r["status"] != "failed" for r in json.load(f))


def _failed_rows(trial: Trial, reason: str, **extra) -> list[dict]:
    return [dict(lr=lr, seed=trial.seed, status="failed", reason=reason, eval_loss=math.nan, **extra)
            for lr in trial.learning_rates]


def _load_result(directory: str) -> list[dict]:
    with open(os.path.join(directory, RESULT_FILE), encoding="utf-8") as f:
        return json.load(f)


def run_trial(cfg, trial: Trial, workdir: str) -> list[dict]:
    """Trains one trial (all its learning rates) unless it already has a result, holding its lock;
    raises TrialLockedError when another live process holds it. Never raises for a diverging or
    crashing trial: its rows carry status "diverged" / "failed" and the reason (a crash in a multi-process
    job raises: the other processes may be waiting in one of its collectives; a rerun retries the trial)."""
    directory = trial_dir(workdir, trial)
    if _finished(cfg, workdir, trial):
        return _load_result(directory)
    os.makedirs(directory, exist_ok=True)
    lock = _lock_trial(trial, directory)
    try:
        if _finished(cfg, workdir, trial):  # another process finished it between the check and the lock
            return _load_result(directory)
        return _train_trial(cfg, trial, workdir, directory)
    finally:
        trial_lock.release(lock)


def _train_trial(cfg, trial: Trial, workdir: str, directory: str) -> list[dict]:
    """Trains the trial and writes its result.json (failed rows when training crashes)."""
    write_json_atomic(os.path.join(directory, TRIAL_FILE), trial_identity(cfg, trial))
    tcfg = trial_config(cfg, trial, _tokenizer_path(cfg, workdir))
    start = time.perf_counter()
    try:
        if len(trial.learning_rates) > 1:
            members = [{"lr": lr, "seed": trial.seed} for lr in trial.learning_rates]
            results = vectorized.train_group(tcfg, members, directory, downstream_scorer(tcfg, directory))
        else:
            results = [_train_one(tcfg, directory)]
    except Exception as e:  # noqa: BLE001 - a crashing trial must not stop the sweep
        if jax.process_count() > 1:  # the others may wait in a collective of this trial: fail the job; a rerun retries
            raise
        logging.error("trial %s failed:\n%s", trial.id, traceback.format_exc())
        results = _failed_rows(trial, f"{type(e).__name__}: {e}", wall_seconds=time.perf_counter() - start)
    write_json_atomic(os.path.join(directory, RESULT_FILE), results)
    sync_processes(f"gptjax sweep: {trial.id} result written")  # every process gathers the results next
    return results


# ---------------------------------------------------------------- the per-trial lock


def _locked_message(trial: Trial, path: str, holder: dict | None) -> str:
    if holder is None:  # a multi-host job: process 0 read the lock
        who = "another process (see process 0's log)"
    elif "pid" in holder:
        who = f"pid {holder['pid']} on host {holder.get('host')} since {holder.get('since')}"
    else:
        who = "another process (its lock file is being written, or is corrupt)"
    return f"trial {trial.index} ({trial.id}) is being trained by {who}; if that process is dead, delete {path}"


def _lock_trial(trial: Trial, directory: str) -> str:
    """Takes the trial's lock for this job and returns its path, or raises TrialLockedError. Process 0
    takes it; every process of a multi-host job learns the outcome, so all train or all skip."""
    path = os.path.join(directory, LOCK_FILE)
    holder = trial_lock.acquire(path) if jax.process_index() == 0 else None
    if process_0s(holder is not None):
        raise TrialLockedError(_locked_message(trial, path, holder))
    return path


def _train_one(tcfg, directory: str) -> dict:
    """One model through the regular training loop (sharded over the mesh, as any pretraining run)."""
    start = time.perf_counter()
    try:
        final = train(tcfg, directory, downstream_scorer(tcfg, directory))
    except TrainingDivergedError as e:
        final = {"diverged": str(e)}
    return vectorized.member_result(tcfg, tcfg.optim.lr, tcfg.seed, final, group_size=1, wall_seconds=time.perf_counter() - start)


def trial_cost(trial: Trial) -> float:
    """The FLOPs a trial trains: its budget times the models trained together."""
    return trial.C * len(trial.learning_rates)


def _worker(cfg, trial: Trial, workdir: str) -> None:
    """Entry point of a sweep subprocess: one trial, its result written to the trial's directory. Its
    steps are not shown (the workers' lines would interleave): the parent reports each finished trial."""
    logging.set_verbosity(logging.WARNING)
    cfg = cfg.copy_and_resolve_references()
    cfg.train.show_steps = False
    try:
        run_trial(cfg, trial, workdir)
    except TrialLockedError as e:  # not a failure: tells the parent to skip the trial
        logging.warning("sweep: skipped: %s", e)
        sys.exit(TRIAL_LOCKED_EXIT)


def _run_in_subprocesses(cfg, trials: list[Trial], workdir: str, progress: "SweepProgress") -> list[str]:
    """Runs each trial in its own spawned process (its own JAX runtime), sweep.n_workers at a time.
    A process that dies without a result (e.g. killed for memory) gets its trial recorded as failed and
    its lock removed; the others go on. Returns the ids of trials skipped as locked by another process.
    Used on a CPU backend only (`_train_pending`: on an accelerator each process would claim most of the
    device's memory). On the 2-core CPU two workers train 1.31x the tokens/s of one process
    (bench/RESULTS.md): the main job's tiny ops keep one process's two threads from splitting its steps
    well. The largest trials go first, so that no worker is left with a long one at the end
    (longest-processing-time order)."""
    context = multiprocessing.get_context("spawn")
    queue, running, skipped = sorted(trials, key=trial_cost, reverse=True), {}, []
    while queue or running:
        while queue and len(running) < cfg.sweep.n_workers:
            trial = queue.pop(0)
            process = context.Process(target=_worker, args=(cfg, trial, workdir), daemon=True)
            process.start()
            running[process] = trial
        time.sleep(0.2)
        for process in [p for p in running if not p.is_alive()]:
            trial = running.pop(process)
            path = os.path.join(trial_dir(workdir, trial), RESULT_FILE)
            trial_lock.release(os.path.join(trial_dir(workdir, trial), LOCK_FILE), pid=process.pid)  # if it was killed
            if not os.path.isfile(path) and process.exitcode == TRIAL_LOCKED_EXIT:
                skipped.append(trial.id)
                continue
            if not os.path.isfile(path):
                os.makedirs(trial_dir(workdir, trial), exist_ok=True)
                write_json_atomic(path, _failed_rows(trial, f"worker process died (exit code {process.exitcode})"))
            with open(path, encoding="utf-8") as f:
                progress.trial_done(trial, json.load(f))
    return skipped


def progress_bar_wanted(progress_bar: bool) -> bool:
    return bool(progress_bar) and sys.stderr.isatty()


class SweepProgress:
    """The sweep-level display: a tqdm bar over trials on a terminal (each trial's own step bar shows
    below it), and one line per finished trial either way."""

    def __init__(self, total: int, done: int, progress_bar: bool):
        self.total, self.done = 0, 0
        self._bar, self._want_bar = None, progress_bar
        self.add(total, done)

    def add(self, trials: int, finished: int) -> None:
        """Counts `trials` more trials, `finished` of them already done (a resumed run or a new round)."""
        self.total += trials
        self.done += finished
        if self._bar is None and progress_bar_wanted(self._want_bar) and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit="trial", desc="sweep", dynamic_ncols=True)
        elif self._bar is not None:
            self._bar.total = self.total
            self._bar.n = self.done
            self._bar.refresh()

    def trial_done(self, trial: Trial, rows: list[dict]) -> None:
        self.done += 1
        ok = [r for r in rows if r["status"] == "ok"]
        if ok:
            best = min(ok, key=lambda r: r["eval_loss"])
            outcome = f"best eval_loss {best['eval_loss']:.4f} at lr {best['lr']:.3g}"
        else:
            outcome = f"{rows[0]['status']}: {rows[0]['reason']}"
        message = f"[sweep {self.done}/{self.total}] {trial.id} (N={trial.N:.3g}, D={trial.tokens:.3g}): {outcome}"
        logging.info("%s", message)
        if jax.process_index() != 0:  # one job, one display
            return
        if self._bar is not None:
            self._bar.write(message)
            self._bar.update(1)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def result_rows(trial: Trial, results: list[dict]) -> list[dict]:
    """results.jsonl rows of one trial: the plan's shapes and FLOPs joined with each model's result."""
    shape = trial.shape
    rows = []
    for r in results:
        rows.append(dict(
            trial=trial.id, index=trial.index, kind=trial.kind, budget=trial.budget, n_layers=shape.n_layers,
            d_model=shape.d_model, n_heads=shape.n_heads, d_ff=shape.d_ff, batch_size=trial.batch_size,
            seq_len=round(trial.tokens / trial.steps / trial.batch_size), lr=r["lr"], seed=r["seed"],
            steps=trial.steps, tokens=trial.tokens, N=trial.N, D=trial.tokens, C=trial.C, params=trial.params,
            flops_per_token=trial.flops_per_token,
            flops={k: v * trial.tokens for k, v in trial.flops_per_token.items()},
            **{k: r.get(k) for k in ("eval_loss", "eval_loss_se", "eval_bits_per_byte", "train_loss", "tokens_per_sec",
                                     "wall_seconds", "compile_seconds", "group_size", "epochs", "status",
                                     "reason")},
            **{k: v for k, v in r.items() if k.startswith("eval_task_")}))  # train.eval_tasks' final scores
    return rows


def collect_results(workdir: str, trials: list[Trial]) -> list[dict]:
    """Gathers every finished trial's result into WORKDIR/results.jsonl (rewritten atomically)."""
    rows = []
    for trial in trials:
        path = os.path.join(trial_dir(workdir, trial), RESULT_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                rows.extend(result_rows(trial, json.load(f)))
    write_jsonl_atomic(os.path.join(workdir, "results.jsonl"), rows)
    return rows


def _plan_trials(workdir: str) -> list[Trial] | None:
    """The trials of WORKDIR/plan.json, or None when there is no plan (results from elsewhere)."""
    from gptjax.scaling.plan import ModelShape

    if not os.path.isfile(os.path.join(workdir, "plan.json")):
        return None
    return [Trial(**dict(t, shape=ModelShape(**t["shape"]), learning_rates=tuple(t["learning_rates"])))
            for t in _read_plan(workdir)["trials"]]


def load_rows(workdir: str) -> list[dict]:
    """The sweep's rows: gathered from trials/*/result.json into results.jsonl when the trial
    directories are there, else read from results.jsonl alone (e.g. a copied or committed sweep)."""
    from gptjax.scaling.fit import load_results

    trials = _plan_trials(workdir)
    results_path = os.path.join(workdir, "results.jsonl")
    if trials is not None and any(os.path.isfile(os.path.join(trial_dir(workdir, t), RESULT_FILE)) for t in trials):
        return collect_results(workdir, trials)
    if os.path.isfile(results_path):
        return load_results(results_path)
    raise SweepPlanError(f"sweep.mode=fit: {os.path.abspath(workdir)} has no trial results and no results.jsonl; "
                         "run the sweep first (sweep.mode=run) or point --workdir at a finished sweep")


def fit_and_report(cfg, workdir: str, rows: list[dict] | None = None, progress: "SweepProgress | None" = None,
                   trials: list[Trial] | None = None, skipped: list[str] | None = None) -> dict:
    """Fits the scaling laws to `rows` (default: WORKDIR's results, see `load_rows`) at sweep.target_flops,
    checks the recommendation (adaptive.py: trains the validation runs when `progress` is given, i.e. in a
    sweep run; `sweep.mode=fit` uses the validation results already there) and writes fits.json, report.md
    and plots/. Validation rows never enter the fits."""
    from gptjax.scaling.fit import fit_all, known_truth
    from gptjax.scaling.report import write_report

    rows = load_rows(workdir) if rows is None else rows
    fit_rows = [r for r in rows if r.get("kind") != "validation"]
    _, target = resolved_flops(cfg.sweep)
    fits = fit_all(fit_rows, target, n_bootstrap=cfg.sweep.n_bootstrap, seed=cfg.seed)
    planned = [t for t in (trials if trials is not None else _plan_trials(workdir) or []) if t.kind != "validation"]
    train_tokens = _read_plan(workdir)["train_tokens"]
    validation, info = adaptive.validation_plan(cfg, fits, fit_rows, len(planned), train_tokens)
    if validation and progress is not None:
        _write_plan(workdir, planned + validation, train_tokens)
        (skipped if skipped is not None else []).extend(_train_pending(cfg, validation, workdir, progress))
        rows = collect_results(workdir, planned + validation)
    fits["validation"] = adaptive.validation_summary(fits, validation, rows, info)
    if parse_source(cfg.data.source).kind == "synthetic":  # the truth is known: how close did E come?
        fits["known_truth"] = known_truth(fits, markov_chain(cfg).entropy_rate())
    write_json_atomic(os.path.join(workdir, "fits.json"), fits)
    report = write_report(workdir, fit_rows, fits, target)
    statuses = [r["status"] for r in fit_rows]
    return {"models": len(fit_rows), "ok": statuses.count("ok"), "diverged": statuses.count("diverged"),
            "failed": statuses.count("failed"), "recommendation": fits.get("recommendation"),
            "validation": fits["validation"], "report": report}


def print_summary(rows: list[dict]) -> None:
    """The table of every trained model, to stderr (by process 0 of a multi-process job)."""
    if jax.process_index() != 0:
        return
    header = f"{'trial':<34} {'N':>9} {'D':>9} {'lr':>8} {'eval_loss':>9} {'status':>8} {'tok/s':>8} {'wall s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        loss = r["eval_loss"] if r["eval_loss"] is not None else math.nan
        lines.append(f"{r['trial']:<34} {r['N']:>9.3g} {r['D']:>9.3g} {r['lr']:>8.2g} {loss:>9.4f} "
                     f"{r['status']:>8} {r.get('tokens_per_sec') or math.nan:>8.0f} {r.get('wall_seconds') or math.nan:>7.1f}")
    print("\n".join(lines), file=sys.stderr, flush=True)
