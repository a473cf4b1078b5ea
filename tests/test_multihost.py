"""Multi-process jobs through `gptjax.launch` on this machine (2 processes x 2 CPU devices, gloo collectives)
against one process with the same 4 devices: the same numbers, every process finishing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group("test_multihost")


def run(args: list[str], processes: int) -> dict:
    """The final JSON line of `gptjax.main args`: launched as `processes` x (4 / processes) CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    if processes == 1:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        command = [sys.executable, "-m", "gptjax.main", *args]
    else:
        command = [sys.executable, "-m", "gptjax.launch", f"--processes={processes}",
                   f"--devices_per_process={4 // processes}", "--", *args]
    result = subprocess.run(command + ["--config.train.progress_bar=False"], env=env, capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pretraining_on_two_processes_equals_one_process(tmp_path):
    args = ["--config=configs/pretrain_synthetic.py", "--config.train.steps=20", "--config.train.eval_every=20",
            "--config.optim.warmup_steps=5"]
    one = run(args + [f"--workdir={tmp_path / 'one'}"], 1)
    two = run(args + [f"--workdir={tmp_path / 'two'}"], 2)
    # gloo's all-reduces sum the gradients in another order than one process's: equal to float32 rounding
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)
    evaluate = ["--config=configs/pretrain_synthetic.py", "--config.mode=eval", f"--workdir={tmp_path / 'one'}"]
    assert run(evaluate, 2)["eval_loss"] == run(evaluate, 1)["eval_loss"] == one["eval_loss"]


LONG = ["--config=configs/pretrain_synthetic.py", "--config.train.steps=200", "--config.train.eval_every=200",
        "--config.train.log_every=1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    """LONG on two processes, never stopped: (its final metrics, its train loss at every step)."""
    workdir = tmp_path_factory.mktemp("multihost_reference")
    return run(LONG + [f"--workdir={workdir}"], 2), train_losses(workdir)


def train_losses(workdir) -> dict:
    """The last logged train loss of each step (a resumed run logs the steps after its checkpoint again)."""
    from gptjax.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if r["split"] == "train"}


@pytest.mark.slow
def test_sigterm_to_the_launch_checkpoints_one_step_on_every_process_and_the_rerun_resumes(uninterrupted, tmp_path):
    args = LONG + ["--config.train.checkpoint_every=1000"]
    reference = uninterrupted[0]
    stopped = tmp_path / "stopped"
    command = [sys.executable, "-m", "gptjax.launch", "--processes=2", "--devices_per_process=2", "--", *args,
               f"--workdir={stopped}", "--config.train.progress_bar=False"]
    proc = subprocess.Popen(command, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (stopped / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as a scheduler would: the launch passes it to both processes
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-2000:]
    [line] = [x for x in stderr.splitlines() if x.startswith("preempted:")]  # process 0's; process 1 exits 0 too
    at = int(line.split("at step ")[1].split()[0])
    assert 1 <= at < 200
    assert sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()) == [at]
    positions = {p.name: json.loads(p.read_text()) for p in (stopped / "checkpoints" / str(at) / "data").glob("*.json")}
    assert positions == {f"process_{i}-of-2.json": {"index": at} for i in (0, 1)}  # each process's own position
    resumed = run(args + [f"--workdir={stopped}"], 2)
    assert resumed["loss"] == reference["loss"] and resumed["eval_loss"] == reference["eval_loss"]


def child_pid(parent: int, marker: str) -> int | None:
    """The pid of `parent`'s child process whose command line contains `marker`."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and marker in cmdline:
            return int(entry)
    return None


@pytest.mark.slow
def test_sigkill_of_one_process_fails_the_launch_and_the_rerun_resumes_from_the_last_checkpoint(uninterrupted,
                                                                                                  tmp_path):
    """A host lost without warning: the launch fails naming it, nothing half-saved is read back, and the rerun
    continues from the last complete checkpoint exactly as the uninterrupted run went on."""
    killed = tmp_path / "killed"
    args = LONG + ["--config.train.checkpoint_every=50", f"--workdir={killed}", "--config.train.progress_bar=False"]
    launch = subprocess.Popen([sys.executable, "-m", "gptjax.launch", "--processes=2", "--devices_per_process=2", "--",
                               *args], env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "50").is_dir() and time.time() < deadline:
        time.sleep(0.02)
    victim = child_pid(launch.pid, "process_id=1")
    assert victim is not None and (killed / "checkpoints" / "50").is_dir()
    os.kill(victim, signal.SIGKILL)
    _, stderr = launch.communicate(timeout=180)
    assert launch.returncode != 0
    assert stderr.strip().splitlines()[-1].startswith("error: gptjax.launch: process 1 of 2 exited with code -9"), \
        stderr[-2000:]
    assert not (killed / "checkpoints" / "200").exists(), "the run finished before it could be killed"
    saved = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    resumed = run(args, 2)
    assert resumed["loss"] == uninterrupted[0]["loss"] and resumed["eval_loss"] == uninterrupted[0]["eval_loss"]
    losses, expected = train_losses(killed), uninterrupted[1]
    assert sorted(losses) == list(range(1, 201))
    assert [losses[s] for s in range(saved + 1, 201)] == [expected[s] for s in range(saved + 1, 201)]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> tuple[str, dict, dict]:
    """A short SFT run on one process and on two: (the one-process workdir, both final metrics)."""
    root = tmp_path_factory.mktemp("multihost_sft")
    sft = ["--config=configs/sft.py", "--config.train.steps=6", "--config.train.eval_every=6",
           "--config.optim.warmup_steps=2"]
    return str(root / "one"), run(sft + [f"--workdir={root / 'one'}"], 1), run(sft + [f"--workdir={root / 'two'}"], 2)


def post_training(*args: str) -> list[str]:
    return [*args, "--config.train.steps=2", "--config.train.eval_every=2", "--config.align.num_examples=80",
            "--config.optim.warmup_steps=1"]


@pytest.mark.slow
def test_sft_on_two_processes_equals_one_process(sft_runs):
    _, one, two = sft_runs
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("config", [["--config=configs/grpo.py"], ["--config=configs/grpo.py", "--config.mode=rloo"],
                                    ["--config=configs/ppo.py"]], ids=["grpo", "rloo", "ppo"])
def test_rl_on_two_processes_equals_one_process(config, sft_runs, tmp_path):
    """Rollouts sampled with the KV cache, scored and updated across processes (PPO: with its value model)."""
    rl = post_training(*config, f"--config.align.init_from={sft_runs[0]}")
    one = run(rl + [f"--workdir={tmp_path / 'one'}"], 1)
    two = run(rl + [f"--workdir={tmp_path / 'two'}"], 2)
    for key in ("reward_mean", "gold_reward", "response_length", "eval_reward", "eval_train_reward"):
        assert two[key] == one[key], key  # the same sampled tokens
    for key in ("loss", "kl_k1", "grad_norm", "param_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key  # reductions over gloo: another order


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["--config.sample.temperature=0.8"],
                                      ["--config.sample.beam_width=2", "--config.sample.num_samples=2"],
                                      ["--config.sample.regex=[0-9]+"]], ids=["sampled", "beam", "regex"])
def test_sampling_on_two_processes_writes_what_one_process_writes(strategy, sft_runs, tmp_path):
    sample = ["--config=configs/sample.py", f"--workdir={sft_runs[0]}", "--config.sample.prompt=2+3=",
              "--config.sample.chat=True", "--config.sample.num_samples=4", "--config.sample.max_new_tokens=6",
              "--config.sample.stop_strings=()", *strategy]
    one = run(sample + [f"--config.sample.output={tmp_path / 'one.jsonl'}"], 1)
    two = run(sample + [f"--config.sample.output={tmp_path / 'two.jsonl'}"], 2)
    assert two["completions"] == one["completions"]
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


@pytest.mark.slow
def test_reward_dpo_and_label_on_two_processes_equal_one_process(sft_runs, tmp_path):
    reward = post_training("--config=configs/reward.py:arithmetic", f"--config.align.init_from={sft_runs[0]}")
    one = run(reward + [f"--workdir={tmp_path / 'rm1'}"], 1)
    two = run(reward + [f"--workdir={tmp_path / 'rm2'}"], 2)
    assert two["eval_accuracy"] == one["eval_accuracy"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)
    dpo = post_training("--config=configs/dpo.py", f"--config.align.init_from={sft_runs[0]}")
    one = run(dpo + [f"--workdir={tmp_path / 'dpo1'}"], 1)
    two = run(dpo + [f"--workdir={tmp_path / 'dpo2'}"], 2)
    assert two["eval_accuracy"] == one["eval_accuracy"]
    assert two["eval_margin"] == pytest.approx(one["eval_margin"], rel=1e-4, abs=1e-7)
    label = ["--config=configs/dpo.py", "--config.mode=label", "--config.align.judge=reward_model",
             f"--config.align.reward_model={tmp_path / 'rm1'}", "--config.align.samples_per_prompt=4",
             f"--config.align.init_from={sft_runs[0]}", "--config.align.num_examples=40",
             "--config.rl.max_new_tokens=4"]
    one = run(label + [f"--workdir={tmp_path / 'label1'}"], 1)
    two = run(label + [f"--workdir={tmp_path / 'label2'}"], 2)
    assert two["rows"] == one["rows"] > 0
    assert (tmp_path / "label2/preferences.jsonl").read_text() == (tmp_path / "label1/preferences.jsonl").read_text()
    best_of = ["--config=configs/sample.py", f"--workdir={sft_runs[0]}", "--config.sample.prompt=2+3=",
               "--config.sample.chat=True", "--config.sample.num_samples=4", "--config.sample.max_new_tokens=6",
               "--config.sample.temperature=0.8", f"--config.sample.scorer={tmp_path / 'rm1'}"]
    one = run(best_of + [f"--config.sample.output={tmp_path / 'best1.jsonl'}"], 1)
    two = run(best_of + [f"--config.sample.output={tmp_path / 'best2.jsonl'}"], 2)
    assert two == dict(one, output=two["output"]) and one["best_of"] == 4  # the same scores and picks
    assert (tmp_path / "best2.jsonl").read_text() == (tmp_path / "best1.jsonl").read_text()


def test_a_failing_process_fails_the_launch_with_its_line(tmp_path):
    command = [sys.executable, "-m", "gptjax.launch", "--processes=2", "--devices_per_process=1", "--",
               "--config=configs/pretrain_synthetic.py", f"--workdir={tmp_path / 'run'}", "--config.train.steps=0"]
    result = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: train.steps=0: must be positive" and "Traceback" not in result.stderr, lines
    assert lines[-1].startswith("error: gptjax.launch: process ") and "exited with code 2" in lines[-1]


def test_a_coordinator_without_process_ids_is_a_config_error():
    from gptjax.config import ConfigError, default_config, validate

    cfg = default_config()
    cfg.parallel.update(multi_host=True, coordinator="localhost:1234")
    with pytest.raises(ConfigError, match="parallel.coordinator.*num_processes"):
        validate(cfg)


@pytest.mark.slow
def test_a_token_cache_the_hosts_do_not_share_is_an_error_at_start_and_a_shared_one_trains(tmp_path):
    """Two 'hosts' (processes started by hand, as a cluster would) each with its own ~/.cache: both stop at
    start with one line naming data.cache_dir, instead of waiting hours for parts the other one writes."""
    def job(caches: list[str], workdir) -> list[subprocess.CompletedProcess]:
        port = 20000 + os.getpid() % 20000
        procs = [subprocess.Popen(
            [sys.executable, "-m", "gptjax.main", "--config=configs/pretrain_shakespeare.py", f"--workdir={workdir}",
             "--config.train.steps=2", "--config.optim.warmup_steps=1", "--config.train.progress_bar=False",
             "--config.parallel.multi_host=True", f"--config.parallel.coordinator=localhost:{port}",
             "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}"],
            env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                     XDG_CACHE_HOME=cache), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, cache in enumerate(caches)]
        outputs = [p.communicate(timeout=300) for p in procs]  # read as they run: a full pipe would block
        return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]

    for i, done in enumerate(job([str(tmp_path / "host0"), str(tmp_path / "host1")], tmp_path / "apart")):
        assert done.returncode == 1, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == (
            f"error: data.cache_dir={tmp_path / f'host{i}' / 'gptjax' / 'tokens'} is not shared: process(es) [1] do "
            "not see what process 0 writes there; set data.cache_dir to a directory every host mounts")
    losses = [json.loads(done.stdout.strip().splitlines()[-1])["loss"]
              for done in job([str(tmp_path / "shared")] * 2, tmp_path / "together")]
    assert losses[0] == losses[1]


SWEEP_CONFIG = '''
from gptjax.config import default_config


def get_config():  # one budget, three sizes, two learning rates trained together: 3 trials, 6 models
    cfg = default_config()
    cfg.mode = "sweep"
    cfg.model.update(vocab_size=40, max_len=32)
    cfg.data.update(seq_len=16, batch_size=8, eval_batches=2)
    cfg.optim.update(warmup_steps=2)
    cfg.train.update(cpu_peak_flops=1e11)
    cfg.sweep.update(budgets=(2e8,), family="depth", depths=(1, 2, 3), width_per_layer=8, head_dim=8,
                     sizes_per_budget=3, size_spread=4.0, learning_rates=(3e-3, 1e-2), min_steps=10, n_bootstrap=20,
                     target_flops=1e10, lr_widenings=0, validate_flops=0, compilation_cache="", n_workers=0)
    return cfg
'''


def _losses(workdir) -> list[tuple]:
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    return [(r["trial"], r["lr"], r["eval_loss"], r["train_loss"]) for r in rows]


@pytest.mark.slow
def test_a_sweep_and_one_of_its_trials_on_two_processes_equal_one_process(tmp_path):
    """Every process trains each trial together (the worker subprocesses of sweep.n_workers would not join
    the job, so they are not used), process 0 writes the shared files, and they all fit the same rows."""
    config = tmp_path / "sweep_config.py"
    config.write_text(SWEEP_CONFIG)
    one = run([f"--config={config}", f"--workdir={tmp_path / 'one'}"], 1)
    two = run([f"--config={config}", f"--workdir={tmp_path / 'two'}", "--config.sweep.n_workers=2"], 2)
    assert one["models"] == two["models"] == two["ok"] == 6 and two["skipped"] == []
    for a, b in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two"), strict=True):
        assert a[:2] == b[:2] and b[2:] == pytest.approx(a[2:], rel=1e-6)  # gloo sums in another order
    assert (tmp_path / "two" / "report.md").is_file() and (tmp_path / "two" / "plots" / "loss_vs_compute.png").is_file()
    assert not [p for p in (tmp_path / "two").rglob(".*.tmp-*")]  # no write left half done
    trial = run([f"--config={config}", f"--workdir={tmp_path / 'trial'}", "--config.sweep.trial_index=1"], 2)
    [index] = {r["index"] for r in (json.loads(x) for x in (tmp_path / "one" / "results.jsonl").read_text().splitlines())
               if r["trial"] == trial["trial"]}
    assert index == 1
    expected = [row for row in _losses(tmp_path / "one") if row[0] == trial["trial"]]
    got = [(trial["trial"], r["lr"], r["eval_loss"], r["train_loss"]) for r in trial["results"]]
    for a, b in zip(expected, got, strict=True):
        assert a[:2] == b[:2] and b[2:] == pytest.approx(a[2:], rel=1e-6)
