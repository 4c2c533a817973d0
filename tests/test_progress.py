"""Progress lines: what `stylebatch run` and the operator read from the ranks' stdout, and from
train-style's."""

import pytest

from stylebatch.progress import (
    RankProgress, TrainProgress, format_line, format_train_line, latest_by_rank, latest_train_progress,
    parse_records,
)


def test_a_line_round_trips():
    p = RankProgress(rank=1, ranks=2, done=40, share=60, frames=120)
    assert parse_records(format_line(p)) == [p]


def test_other_and_garbled_lines_are_ignored():
    assert parse_records("INFO stylize: rank 0 starts") == []
    assert parse_records(format_line(RankProgress(0, 1, 1, 2, 2))[:-5]) == []


def test_two_ranks_glued_on_one_line_are_both_read():
    a, b = RankProgress(0, 2, 10, 60, 120), RankProgress(1, 2, 20, 60, 120)
    assert parse_records(format_line(a) + format_line(b)) == [a, b]


def test_the_latest_line_of_each_rank_counts():
    lines = [
        format_line(RankProgress(0, 2, 10, 60, 120)),
        "some log line",
        format_line(RankProgress(1, 2, 30, 60, 120)),
        format_line(RankProgress(0, 2, 50, 60, 120)),
    ]
    assert latest_by_rank(lines) == {0: RankProgress(0, 2, 50, 60, 120), 1: RankProgress(1, 2, 30, 60, 120)}
    assert latest_by_rank(["nothing here"]) == {}


@pytest.mark.parametrize("progress", [TrainProgress(1, 4000, 0.0, None), TrainProgress(1680, 4000, 3.1, 748.0),
                                      TrainProgress(4000, 4000, 12.5, 0.0)])
def test_a_training_line_reads_back_as_it_was_written(progress):
    line = format_train_line(progress, {"loss": 1.5e6, "content": 2e5, "style": 1.3e6})
    assert latest_train_progress(["other", f"stylebatch: {line}"]) == progress


@pytest.mark.parametrize("eta, shown", [(30 * 3600 + 61, "30:01:01"), (1e30, None)])
def test_a_training_eta_past_a_day_is_shown_in_hours_and_never_fails(eta, shown):
    """The ETA was time.strftime("%H:%M:%S", gmtime(eta)): 30 hours left (a long run on a CPU) read
    "06:00:00", and the operator's status took it for 6 hours; an ETA past what time_t holds (a huge
    --steps) ended train-style with an OverflowError traceback at its first step."""
    progress = TrainProgress(1, 10**30, 1.0, eta)
    line = format_train_line(progress, {"loss": 1.0})
    if shown is not None:
        assert line.endswith(f"ETA {shown}") and latest_train_progress([line]) == progress
    else:
        assert latest_train_progress([line]).eta >= 1e29
