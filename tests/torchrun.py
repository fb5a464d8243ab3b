"""Launch `python -m ppflow.cli ...` under torchrun on 2 CPU processes (gloo), or stop such a launch with SIGTERM."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str) -> list[str]:
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    return [str(torchrun_bin), "--nproc_per_node", "2", "--standalone", "-m", "ppflow.cli", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args), check=False, env=env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sigterm_after_rows(run_dir: Path, rows: int, *args: str, timeout: int = 300) -> tuple[str, float]:
    """Start a launch, SIGTERM the launcher once metrics.csv has `rows` rows; (its output, seconds to exit)."""
    proc = subprocess.Popen(command(*args), env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + timeout
    while len(metrics(run_dir)) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the launch ended before the signal"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return out, time.monotonic() - sent
