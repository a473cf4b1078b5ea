"""`python -m gptjax.launch --processes N [--devices_per_process M] -- <gptjax.main args>`: one job as N
local processes joined by `jax.distributed` on localhost, the way to run multi-host code on one machine
(like torchrun's --nproc_per_node).

Each process runs `python -m gptjax.main <args>` with parallel.multi_host=True, parallel.coordinator
(localhost and a free port), parallel.num_processes and parallel.process_id; with --devices_per_process
each gets M CPU devices (XLA's host-platform device count; CPU processes talk over gloo). Process 0's
output streams through; the others' is kept and shown only if one fails. The launch fails (with the exit
code and last line of the first process that failed, the others stopped) if any process fails. SIGTERM
to the launcher goes on to every process (each checkpoints the same step and exits 0: a rerun resumes).
On a real cluster the same gptjax.main runs once per host by auto-detection instead (README "Many hosts").
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(devices_per_process: int) -> dict:
    """This environment, with each process's CPU device count when one is asked for."""
    env = dict(os.environ)
    if devices_per_process:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def commands(main_args: list[str], processes: int, port: int) -> list[list[str]]:
    return [[sys.executable, "-m", "gptjax.main", *main_args, "--config.parallel.multi_host=True",
             f"--config.parallel.coordinator=localhost:{port}", f"--config.parallel.num_processes={processes}",
             f"--config.parallel.process_id={i}"] for i in range(processes)]


def last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(no output)"


def launch(main_args: list[str], processes: int, devices_per_process: int = 0, port: int = 0) -> int:
    """Runs the job; returns 0, or the exit code of the first process that failed."""
    env, port = process_env(devices_per_process), port or free_port()
    with tempfile.TemporaryDirectory(prefix="gptjax_launch_") as logs:
        running = []
        for i, command in enumerate(commands(main_args, processes, port)):
            log = os.path.join(logs, f"process{i}.log")
            if i == 0:  # process 0 streams; the others' output is kept for a failure
                running.append((subprocess.Popen(command, env=env), log))
                continue
            with open(log, "w") as out:  # the child keeps its own descriptor
                running.append((subprocess.Popen(command, env=env, stdout=out, stderr=out), log))
        # SIGTERM (a scheduler's preemption notice) goes on to every process: they checkpoint and exit 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: [p.send_signal(signal.SIGTERM) for p, _ in running])
        while True:
            codes = [p.poll() for p, _ in running]
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or None not in codes:
                break
            time.sleep(0.2)
        if failed is None:
            return 0
        for p, _ in running:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in running:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        code = running[failed][0].returncode
        detail = "" if failed == 0 else f": {last_line(running[failed][1])}"
        print(f"error: gptjax.launch: process {failed} of {processes} exited with code {code}{detail}; "
              "the others were stopped", file=sys.stderr)
        return code if code > 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptjax.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, required=True, help="how many local processes")
    parser.add_argument("--devices_per_process", type=int, default=0,
                        help="CPU devices each process gets (0: the platform's own devices)")
    parser.add_argument("--port", type=int, default=0, help="the coordinator's port (0: a free one)")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then gptjax.main's arguments")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.processes < 1 or args.devices_per_process < 0:
        parser.error(f"--processes={args.processes} must be >= 1 and --devices_per_process="
                     f"{args.devices_per_process} >= 0")
    if not any(a.startswith("--config") for a in main_args):
        parser.error("give gptjax.main's arguments after --, e.g. -- --config=configs/pretrain_synthetic.py "
                     "--workdir=/tmp/run")
    return launch(main_args, args.processes, args.devices_per_process, args.port)


if __name__ == "__main__":
    sys.exit(main())
