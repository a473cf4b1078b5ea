"""Executes the notebooks top to bottom in a fresh kernel and commits their outputs back, scrubbed.

    python colabs/run.py                              # every notebook, in its "small" setting
    python colabs/run.py colabs/01_quickstart.ipynb   # one notebook

This is the one command that regenerates the committed outputs (CI executes the same notebooks in
tests/test_colabs.py and fails on any cell error). Scrubbing keeps figures and printed results but removes
what changes on every run or names this machine: stderr (logs, warnings, progress bars), execution
timestamps, temporary and repository paths, and timings.
"""

import argparse
import glob
import os
import re
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

from gptjax.atomic import atomic_path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTEBOOKS = sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.ipynb")))
CELL_TIMEOUT_S = 1800

# A number followed by a time or rate unit: what the notebooks print for step times and throughput.
TIMING = re.compile(r"\b\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?\s?(?:ms/step|ms|s|min|tokens/s|steps/s)(?![\w/])")


def execute(path: str, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """The notebook at `path` run top to bottom in a fresh python3 kernel started in colabs/ (raises
    nbclient's CellExecutionError, naming the cell, at the first cell that fails)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    client.execute(env=kernel_env())
    return nb


def kernel_env() -> dict:
    """This process's environment without a forced fake-device count (pytest's conftest sets 8), so each
    notebook sees the machine's real devices and the sharding notebook sets its own."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env.pop("XLA_FLAGS", None)
    if flags:
        env["XLA_FLAGS"] = flags
    return env


def _machine_paths() -> list[tuple[str, str]]:
    """(prefix, placeholder), longest first, so /tmp/x inside the repo is not half-replaced."""
    pairs = {os.path.realpath(tempfile.gettempdir()): "<tmp>", tempfile.gettempdir(): "<tmp>",
             os.path.realpath(REPO): "<repo>", REPO: "<repo>", os.path.expanduser("~"): "<home>"}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub_text(text: str) -> str:
    """Replaces machine paths by placeholders and timings by '…'."""
    for prefix, placeholder in _machine_paths():
        if prefix not in ("", "/"):
            text = text.replace(prefix, placeholder)
    return TIMING.sub(lambda m: "…" + re.sub(r"^[\d,.e+-]+\s?", " ", m.group(0)), text)


def scrub(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """`nb` without stderr streams and execution metadata, its text outputs passed through `scrub_text`."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream":
                if out.name == "stderr":
                    continue
                out.text = scrub_text(out.text)
            elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.get("data", {}):
                out.data["text/plain"] = scrub_text(out.data["text/plain"])
            elif out.output_type == "error":
                out.traceback = [scrub_text(line) for line in out.traceback]
            kept.append(out)
        cell.outputs = kept
    return nb


def printed_text(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook's code cells printed to stdout or displayed as text, in order."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"] + "\n")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS)
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"executing {os.path.relpath(path, REPO)}", flush=True)
        nb = scrub(execute(path))
        with atomic_path(path) as tmp:  # a failed run leaves the committed notebook as it was
            nbformat.write(nb, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
