"""The CLI: every job's --help explains its options, and config errors are one clear line."""

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from engine.cli import JOBS, main
from engine.config import Config, config_keys, load_config

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


def test_config_show_round_trips_through_load_config(tmp_path):
    overrides = ["--set", "sample.n=3", "--set", "train.accelerator_type=A100"]
    shown = CliRunner().invoke(main, ["config", "show", *overrides])
    assert shown.exit_code == 0, shown.output
    path = tmp_path / "shown.toml"
    path.write_text(shown.output)
    assert load_config(path) == load_config(REPO / "configs" / "smoke.toml", ["sample.n=3", "train.accelerator_type=A100"])


def test_config_show_explain_prints_every_key_with_its_range_and_meaning():
    shown = CliRunner().invoke(main, ["config", "show", "--explain", "--set", "sample.n=3"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    words = " ".join(shown.output.split())
    for doc in config_keys(Config()):
        head = f"[{doc.key}]" if doc.table else f"{doc.key} = "
        line = next((line for line in lines if line.strip().startswith(head)), None)
        assert line is not None, f"no line for {doc.key}"
        assert doc.allowed in line
        assert " ".join(doc.description.split()) in words  # wrapped, but every word there
    line = {line.split(" = ")[0].strip(): line for line in lines if " = " in line}
    assert line["sample.n"].split()[2:] == ["3", "int", ">=", "2"]
    assert "(0, 1]" in line["sample.top_p"]
    assert all(f'"{name}"' in line["models.policy.backend"] for name in ("hf", "vllm", "toy-grammar"))
    assert "(unset)" in line["train.accelerator_type"]


def test_the_default_config_is_found_from_any_working_directory(tmp_path):
    # The package imported from the checkout, run elsewhere, as an installed `rlaifv` is.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", "config", "show"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'name = "smoke"' in out.stdout and 'path = "tiny:llm"' in out.stdout
