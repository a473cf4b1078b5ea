"""Committed experiment reports are written by their run.py from the committed raw results: rebuilding them
with `--report-only` reproduces every byte."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (experiment, the report its run.py writes from the committed files, whether --out names its directory)
REBUILDABLE = [("scaling_shakespeare", "README.md", False), ("arithmetic_rl", "report.md", False),
               ("rm_overoptimization", "report.md", False), ("mup_transfer", "README.md", True)]


@pytest.mark.parametrize("experiment,report,out_is_dir", REBUILDABLE)
def test_report_rebuilds_byte_for_byte_from_the_committed_results(experiment, report, out_is_dir, tmp_path):
    out = tmp_path / report
    script = os.path.join(REPO, "experiments", experiment, "run.py")
    subprocess.run([sys.executable, script, "--report-only", "--out", str(tmp_path if out_is_dir else out)],
                   check=True, cwd=REPO, timeout=120)
    with open(os.path.join(REPO, "experiments", experiment, report), encoding="utf-8") as f:
        assert out.read_text(encoding="utf-8") == f.read()


def test_scaling_shakespeare_has_two_seeds_each_naming_its_commit_and_command():
    import json

    root = os.path.join(REPO, "experiments", "scaling_shakespeare")
    seeds = sorted(d for d in os.listdir(root) if d.startswith("seed"))
    assert len(seeds) == 2
    losses = []
    for d in seeds:
        meta = json.load(open(os.path.join(root, d, "run.json")))
        assert len(meta["commit"]) >= 40 and "--config=configs/sweep.py" in meta["command"]
        fits = json.load(open(os.path.join(root, d, "fits.json")))
        assert "validation" in fits and all("identified" in (fits[k] or {"identified": 0}) for k in
                                            ("frontier", "approach2", "approach3"))
        with open(os.path.join(root, d, "results.jsonl"), encoding="utf-8") as f:
            losses.append([json.loads(line)["eval_loss"] for line in f])
    assert losses[0] != losses[1]  # two seeds, two sets of initialisations and data orders
