"""Progress lines a person reads: done/total, rate, ETA, rounded."""

from engine.progress import format_seconds, progress_line


def test_a_progress_line_has_done_total_rate_and_eta():
    line = progress_line("sample", 30, 120, seconds=60.0)
    assert line.split() == ["sample", "30/120", "instructions", "0.50/s", "ETA", "3", "min", "00", "s"]


def test_a_finished_stage_has_no_eta_and_nothing_done_has_no_rate():
    assert "ETA" not in progress_line("pair", 120, 120, seconds=10.0)
    assert progress_line("score", 0, 10, seconds=5.0).split()[-1] == "0.00/s"


def test_durations_read_as_a_person_says_them():
    assert [format_seconds(s) for s in (4.4, 75, 3725)] == ["4 s", "1 min 15 s", "1 h 02 min"]


def test_metrics_are_rounded_and_a_chair_without_mentions_says_so():
    from engine.evaluation_format import NO_MENTIONS, format_metrics

    lines = format_metrics({"chair_s": 0.0, "chair_i": 0.0, "mentions": 0, "mean_words": 12.345678}, ["chair_s", "mean_words"])
    assert [line.split() for line in lines[:2]] == [["chair_s", "0"], ["mean_words", "12.35"]]
    assert lines[-1].strip() == NO_MENTIONS
    assert NO_MENTIONS.strip() not in "\n".join(format_metrics({"chair_s": 0.1, "mentions": 3}))


def test_the_progress_board_counts_and_lives_on_the_driver_node(ray_local):
    """A board on a worker node would die with it and end the pass (tests/test_autoscaling.py
    kills one); it is pinned to the driver's node."""
    import ray
    from ray._private.state import actors  # the GCS actor table: the state API needs a dashboard

    from engine.progress import board

    tally = board()
    ray.get([tally.add.remote("sample", 3), tally.add.remote("sample", 2), tally.add.remote("score", 1)])
    assert ray.get(tally.counts.remote()) == {"sample": 5, "score": 1}
    assert actors(tally._actor_id.hex())["Address"]["NodeID"] == ray.get_runtime_context().get_node_id()


def test_a_lost_tally_stops_the_progress_lines_not_the_pass(ray_local):
    import ray

    from engine.progress import ProgressPrinter, board

    tally, lines = board(), []
    ray.get(tally.add.remote("sample", 1))
    printer = ProgressPrinter(tally, ["sample"], 4, lines.append, interval=3600)
    printer.print_moved()
    ray.kill(tally)
    printer.print_moved()
    printer.print_moved()
    assert len(lines) == 2 and "1/4" in lines[0] and lines[1].startswith("  progress lines stop")
