"""The CLI: every job's --help explains its options, and config errors are one clear line."""

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import JOBS, main

REPO = Path(__file__).resolve().parent.parent


def test_every_job_has_help_with_every_option_explained():
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"]).output
    for job in JOBS:
        if not (REPO / "jobs" / f"{job}.py").exists():
            continue
        assert job in listed
        result = runner.invoke(main, [job, "--help"])
        assert result.exit_code == 0, result.output
        command = main.get_command(None, job)
        for param in command.params:
            if param.name != "help" and hasattr(param, "help"):
                assert param.help, f"{job} --{param.name} has no help text"


def test_job_scripts_run_directly_from_a_checkout():
    # `python jobs/train.py` must import the `train` package, not itself.
    for job in ("generate", "iterate", "train"):
        out = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "--config" in out.stdout


def test_config_show_and_errors():
    runner = CliRunner()
    shown = runner.invoke(main, ["config", "show", "--set", "sample.n=3"])
    assert shown.exit_code == 0 and "n = 3" in shown.output
    bad = runner.invoke(main, ["config", "show", "--set", "sample.tempature=1"])
    assert bad.exit_code == 1 and bad.output.startswith("error: ") and "tempature" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_the_default_config_is_found_from_any_working_directory(tmp_path):
    # The package imported from the checkout, run elsewhere, as an installed `rlaifv` is.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", "config", "show"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'name = "smoke"' in out.stdout and 'path = "tiny:llm"' in out.stdout
