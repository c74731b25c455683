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
