"""The Colab notebooks (colabs/*.ipynb): each runs top to bottom in a fresh kernel in its small setting
(slow) and prints sane figures; the committed copies carry outputs, scrubbed of machine paths and timings."""

import importlib.util
import math
import os
import re

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("colabs_run", os.path.join(REPO, "colabs", "run.py"))
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

NUMBER = r"([-+]?[\d.]+(?:e[+-]?\d+)?)"


def numbers(pattern: str, text: str) -> list[tuple[float, ...]]:
    """Every match of `pattern` (NUMBER groups) in `text`, as floats; at least one match required."""
    found = [tuple(float(g) for g in m) if isinstance(m, tuple) else (float(m),) for m in re.findall(pattern, text)]
    assert found, f"no line matches {pattern!r} in:\n{text[:3000]}"
    return found


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def check_quickstart(nb, text):
    [(loss, bits)] = numbers(rf"eval loss {NUMBER} nats/token = {NUMBER} bits/byte", text)
    assert 2.0 < loss < 6.0 and 1.0 < bits < 4.0  # log(2048) = 7.6 nats is a model that learned nothing
    for strategy in ("greedy", "temperature 0.8", "top-p 0.9", "min-p 0.1"):
        sample = re.search(rf"--- {re.escape(strategy)} \(logprob {NUMBER}, (\w+)\)\nROMEO:(.+)", text)
        assert sample and float(sample.group(1)) < 0 and sample.group(3).strip(), strategy
    constrained = re.findall(r"stop_token \{'speaker': '([A-Z][a-z]{2,9})', 'mood': '(merry|sad|wrathful)'\}", text)
    assert len(constrained) == 3, text  # every sample ended, parsed and fit the schema
    assert images(nb) == 1  # the loss curve


def check_scaling_sweep(nb, text):
    [(trained, total)] = numbers(rf"{NUMBER} of {NUMBER} models trained", text)
    assert trained == total == 51  # 3 budgets x 5 sizes x 3 lrs, then 2 per budget with a second seed
    [(a,)] = numbers(rf"Approach 3    N\*\(C\) ~ C\^a, a = {NUMBER} \(95%", text)
    assert 0 < a < 1
    # The recommended N: a number with its interval from an identified fit, or none, said so, when no fit is.
    if re.search(r"\n +N = none: no identified fit gives it", text):
        assert re.search(r"(Approach 3|Approach 2) +Not identified: ", text)
    else:
        [(n_target,)] = numbers(rf"\n +N = {NUMBER} \(95%", text)
        assert math.isfinite(n_target) and n_target > 0
    # The committed main job: seed 0's Approach-2 exponent and whether that fit is identified.
    committed = r"committed main job \(seed 0\), Approach 2: a = [-\d.]+ \(95%: [^)]*\) - (Identified|Not identified)"
    assert re.search(committed, text)
    # The Chinchilla CSV: the fit recovers the published exponents and the optimum they imply.
    [(alpha, low, high)] = numbers(rf"alpha: fitted {NUMBER} \(95%: {NUMBER} \.\. {NUMBER}\), published 0.34", text)
    assert abs(alpha - 0.34) < 0.02 and low < 0.34 + 0.01 and high > 0.34 - 0.01
    [(n_fit, n_published)] = numbers(rf"N\* = {NUMBER} \(95%: [^)]*\) \(published constants: {NUMBER}\)", text)
    assert abs(math.log(n_fit / n_published)) < math.log(1.25)
    assert images(nb) >= 4  # the sweep's plots (loss vs compute and the fits it could make) + the committed one


def check_sharding(nb, text):
    assert "8 x cpu" in text  # no accelerator here: 8 fake devices
    # Where the MLP's up projection [256, 1024] lives: rows split 8 ways under FSDP, columns under tensor.
    per_device = re.findall(r"blocks\.0\.mlp\.up\.kernel +\(256, 1024\) +P\('fsdp', 'tensor'\) +\((\d+), (\d+)\)", text)
    assert per_device == [("32", "1024"), ("256", "128")], per_device
    layouts = re.findall(r"(data parallel|FSDP|tensor parallel|FSDP x tensor) \{[^}]*\} +(…|[\d.]+) ms/step", text)
    assert [name for name, _ in layouts] == ["data parallel", "FSDP", "tensor parallel", "FSDP x tensor"]
    assert all(t == "…" or float(t) > 0 for _, t in layouts)


def check_post_training(nb, text):
    [(pretrain_loss,)] = numbers(rf"pretrained \d+ steps: eval loss {NUMBER} nats/token", text)
    assert pretrain_loss < 6.0
    [(accuracy,)] = numbers(rf"held-out pairwise accuracy {NUMBER}", text)
    assert accuracy > 0.7  # warm words vs not: easy for a reward model (measured 0.855)
    curves = dict(re.findall(r" *(reward_mean|gold_reward|kl_k1): ([^\n]+) \(first -> last 10 steps\)", text))
    first, last = (float(v) for v in curves["reward_mean"].split(" -> "))
    assert last > first + 0.5  # PPO raises the reward model's score of its samples (measured -1.15 -> +2.53)
    kl_first, kl_last = (float(v) for v in curves["kl_k1"].split(" -> "))
    assert kl_last > kl_first >= 0  # ... by moving away from the SFT model
    gold = dict(re.findall(rf" *(one sample|best of \d+, [a-z ]+): mean gold {NUMBER} over", text))
    assert len(gold) == 3, gold
    assert float(gold["best of 16, reward model"]) > float(gold["one sample"])  # measured +0.18 vs +0.01
    # The committed over-optimisation study: one shape check per method and proxy, read from its results.json.
    checks = re.findall(r"shape check +(bon|rl), proxy on +(\d+) pairs: proxy rises (?:True|False), gold peaks then "
                        r"falls (?:True|False)", text)
    assert sorted(checks) == sorted((m, n) for m in ("bon", "rl") for n in ("250", "1000", "4000")), checks
    assert images(nb) == 3  # reward / KL curves and the committed study's two plots


def check_bring_your_own_model(nb, text):
    assert re.search(r"imported a qwen2 of [\d,]+ parameters; chat template: True", text)
    scores = {label: (float(v), float(se)) for label, v, se in re.findall(
        rf"(imported|after SFT|after LoRA-DPO): arithmetic_chat exact match {NUMBER} ± {NUMBER} on 60 problems", text)}
    assert set(scores) == {"imported", "after SFT", "after LoRA-DPO"}, scores
    assert scores["imported"][0] < 0.1 < 0.5 < scores["after SFT"][0]  # random weights know no sums; SFT teaches them
    [(accuracy, _)] = numbers(rf"LoRA-DPO, \d+ steps: held-out preference accuracy {NUMBER}, margin {NUMBER}", text)
    assert 0 <= accuracy <= 1
    assert re.search(r"DPO - SFT: [-+][\d.]+ ± [\d.]+ \(95%\): (a real change|no real change)", text)
    [(diff,)] = numbers(rf"max \|logit difference\| gptjax vs transformers: {NUMBER}", text)
    assert diff < 1e-4 and "exported as qwen2" in text  # the merged export is the same function in transformers
    assert re.search(r"transformers answers 'What is 12\+7\?' with: '.*'", text)


CHECKS = {"01_quickstart": check_quickstart, "02_scaling_sweep": check_scaling_sweep,
          "03_sharding_on_tpu": check_sharding, "04_post_training": check_post_training,
          "05_bring_your_own_model": check_bring_your_own_model}


REQUIRES = {"05_bring_your_own_model": ("torch", "transformers", "lm_eval")}


def notebook_path(name: str) -> str:
    return os.path.join(REPO, "colabs", f"{name}.ipynb")


def test_every_notebook_is_checked():
    assert sorted(os.path.basename(p)[:-len(".ipynb")] for p in runner.NOTEBOOKS) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_committed_notebook_has_scrubbed_outputs_that_pass_its_checks(name):
    nb = nbformat.read(notebook_path(name), as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "google.colab" in code[0].source and "pip" in code[0].source  # the install cell comes first
    assert re.search(r'^SETTING = "small"', code[1].source, re.M)  # committed in CI's setting
    assert all(cell.execution_count is not None for cell in code), "regenerate with python colabs/run.py"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert not [out for out in outputs if out.get("name") == "stderr"]
    text = runner.printed_text(nb)
    assert not re.search(r"(/tmp/|/home/|/root/|/work/|/content/)", text)
    assert not re.search(r"\d\s?(ms/step|tokens/s)\b", text)
    CHECKS[name](nb, text)


def test_scrub_replaces_paths_and_timings_but_keeps_results():
    text = (f"wrote {os.path.join(runner.REPO, 'configs')} and {os.path.join(os.path.realpath('/tmp'), 'run_1')}: "
            "eval loss 4.285 nats/token in 12.5 s, 514.1 ms/step, 12,345 tokens/s, 1e10 FLOPs")
    assert runner.scrub_text(text) == ("wrote <repo>/configs and <tmp>/run_1: eval loss 4.285 nats/token in … s, "
                                       "… ms/step, … tokens/s, 1e10 FLOPs")


def test_scrub_drops_stderr_and_execution_metadata():
    cell = nbformat.v4.new_code_cell("print(1)", execution_count=1, metadata={"execution": {"iopub.status.busy": "x"}})
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="I1203 10:00 step 3\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="took 3.0 s\n")]
    nb = runner.scrub(nbformat.v4.new_notebook(cells=[cell]))
    assert nb.cells[0].outputs == [nbformat.v4.new_output("stream", name="stdout", text="took … s\n")]
    assert "execution" not in nb.cells[0].metadata


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs_top_to_bottom_and_prints_sane_figures(name):
    for module in REQUIRES.get(name, ()):  # the optional extras a notebook installs in Colab
        pytest.importorskip(module)
    nb = runner.execute(notebook_path(name))  # raises at the first failing cell, naming it
    CHECKS[name](nb, runner.printed_text(nb))
