"""What every experiment records about the code and machine that produced its results (imported by the
experiments' run.py scripts, which put this directory on sys.path)."""

import os
import platform
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def commit() -> str:
    """HEAD's hash, with "-dirty" when tracked files have uncommitted changes (the code that runs is the code
    checked out now)."""
    return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_name() -> str:
    """The CPU model `lscpu` names (figures are compared only within one machine)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else platform.processor() or "unknown CPU"
