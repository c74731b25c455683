"""The pipeline-overhead benchmark at a small size: the engine's own stages with instant
backends (bench.instant_backends) run a whole pass on local Ray, make pairs and report a
row. No timing is asserted."""

from click.testing import CliRunner

from bench.bench_pipeline_overhead import main


def test_a_small_pass_with_instant_backends_makes_pairs(ray_local):
    result = CliRunner().invoke(main, ["--images", "jpeg640", "--instructions", "12", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    # The table's row; Ray may print its workers' log lines into the same output.
    (row,) = [line for line in result.output.splitlines() if line.startswith("jpeg640 ")]
    _, kilobytes, instructions, pairs, *_ = row.split()
    assert int(kilobytes) > 20 and int(instructions) == 12 and int(pairs) > 0
