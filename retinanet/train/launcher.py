"""Start the workers of a multi-worker run on this machine, each with its own `TF_CONFIG`.

Worker i runs the same command with `TF_CONFIG` naming every worker's address on 127.0.0.1
(free ports picked here) and itself as task i; its output goes to `<log_dir>/worker-<i>.log`
(the chief's is also shown on the console). When one worker fails (an error, or killed), the
others would wait for it forever in their next all-reduce: they are stopped, and the launcher
exits with the failed worker's status. Running the same command with `--resume` in place of
`--config` and `--set` continues from the chief's last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from retinanet.runtime.safe_writes import make_directory

HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 10.0


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free on `host` now (held open together, so that none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` of a cluster of workers at `addresses` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def _copy_output(stream, log_path: Path, echo) -> None:
    with open(log_path, "wb") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            if echo is not None:
                echo.write(line)
                echo.flush()


def stop(processes: list[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process groups still running, SIGKILL to those left after `grace` seconds."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # each worker leads its own group: its children go too
    except ProcessLookupError:
        pass


def describe_status(code: int) -> str:
    return f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit status {code}"


def launch(command: list[str], num_workers: int, log_dir: Path, *, poll_seconds: float = 0.5,
           echo_chief: bool = True) -> int:
    """Run `command` as `num_workers` workers; 0 if all succeed, else the first failure's status
    (128 + signal number for a worker killed by a signal)."""
    if num_workers < 1:
        raise ValueError("--workers must be at least 1")
    log_dir = make_directory(log_dir)
    addresses = [f"{HOST}:{port}" for port in free_ports(num_workers)]
    processes, copiers = [], []
    try:
        for index in range(num_workers):
            environment = {**os.environ, "TF_CONFIG": tf_config(addresses, index)}
            process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            processes.append(process)
            echo = sys.stdout.buffer if echo_chief and index == 0 else None
            copier = threading.Thread(target=_copy_output, args=(process.stdout, log_dir / f"worker-{index}.log", echo),
                                      daemon=True)
            copier.start()
            copiers.append(copier)
        print(f"Started {num_workers} workers on {', '.join(addresses)}; logs in {log_dir}/worker-<i>.log",
              file=sys.stderr, flush=True)
        while True:
            codes = [process.poll() for process in processes]
            failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                print(f"error: worker {index} failed ({describe_status(code)}; see {log_dir / f'worker-{index}.log'}); "
                      "stopping the others. Run the same command with --resume in place of --config and --set "
                      "to continue from the last checkpoint.",
                      file=sys.stderr, flush=True)
                return 128 - code if code < 0 else code
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    finally:
        stop(processes)
        for copier in copiers:
            copier.join(timeout=5)
