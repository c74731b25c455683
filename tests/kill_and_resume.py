"""What the SIGKILL-then-rerun tests of the resumable jobs (jobs/iterate.py, jobs/ppo.py) share:
start a job in its own process group, kill the whole group at a point, and compare summaries
without their timing- and location-dependent fields."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Fields of a summary that depend on timing, on resumption or on where the run lives.
UNSTABLE = {"wall_seconds", "instructions_per_second", "instructions_resumed", "stages", "step_seconds",
            "started_at_step", "policy", "model_dir", "model", "critic", "critic_dir", "resumed"}


def stable(data):
    """A summary without its timing- and location-dependent fields; floats rounded to 1e-4
    (training on CPU after a resume repeats exactly; rounding only guards the JSON text)."""
    if isinstance(data, dict):
        return {key: stable(value) for key, value in data.items() if key not in UNSTABLE}
    if isinstance(data, list):
        return [stable(value) for value in data]
    if isinstance(data, float):
        return round(data, 4)
    return data


def wait_for(predicate, process, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the job ended (rc {process.returncode}) before the kill point")
        if time.monotonic() > deadline:
            raise AssertionError("the kill point never came")
        time.sleep(0.2)


def kill_when(predicate, args: list[str]) -> None:
    """Start the job (`args`, run from the repository root) in its own process group and SIGKILL
    the whole group (driver, local Ray, actors, training workers) when predicate() holds."""
    job = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(predicate, job)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def any_file(directory: Path, pattern: str = "*") -> bool:
    return directory.is_dir() and any(directory.rglob(pattern))
