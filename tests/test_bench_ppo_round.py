"""bench/bench_ppo_round.py at a tiny size, so the bench runs when someone needs its figure:
every phase of the round appears in the table and the shares add up to the round. No timing
is asserted."""

import json

from click.testing import CliRunner

from bench.bench_ppo_round import PHASES, main


def test_a_tiny_round_reports_every_phase(tmp_path):
    out = tmp_path / "round.json"
    result = CliRunner().invoke(main, ["--policy", "tiny:llava", "--instructions", "2", "--n", "2",
                                       "--max-new-tokens", "8", "--epochs", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for label in PHASES.values():
        assert any(line.startswith(label) for line in lines), label
    report = json.loads(out.read_text())
    assert set(report["seconds"]) == set(PHASES) and all(t >= 0 for t in report["seconds"].values())
    assert abs(sum(report["shares"].values()) - 1) < 1e-9
    assert report["max_logp_gap"] < 1e-4  # old and reference log-probs are the same policy's
