"""Progress lines: what `stylebatch run` and the operator read from the ranks' stdout, and from
train-style's."""

import pytest

from stylebatch.progress import (
    RankProgress, TrainProgress, aggregate, format_line, format_train_line, latest_train_progress, parse_line,
    parse_records,
)


def test_a_line_round_trips():
    p = RankProgress(rank=1, ranks=2, done=40, share=60, frames=120)
    assert parse_line(format_line(p)) == p


def test_other_and_garbled_lines_are_ignored():
    assert parse_line("INFO stylize: rank 0 starts") is None
    assert parse_line(format_line(RankProgress(0, 1, 1, 2, 2))[:-5]) is None


def test_two_ranks_glued_on_one_line_are_both_read():
    a, b = RankProgress(0, 2, 10, 60, 120), RankProgress(1, 2, 20, 60, 120)
    assert parse_records(format_line(a) + format_line(b)) == [a, b]


def test_aggregate_takes_the_latest_line_of_each_rank():
    lines = [
        format_line(RankProgress(0, 2, 10, 60, 120)),
        "some log line",
        format_line(RankProgress(1, 2, 30, 60, 120)),
        format_line(RankProgress(0, 2, 50, 60, 120)),
    ]
    total = aggregate(lines)
    assert (total.done, total.frames) == (80, 120)
    assert round(total.percent) == 67
    assert aggregate(["nothing here"]) is None


@pytest.mark.parametrize("progress", [TrainProgress(1, 4000, 0.0, None), TrainProgress(1680, 4000, 3.1, 748.0),
                                      TrainProgress(4000, 4000, 12.5, 0.0)])
def test_a_training_line_reads_back_as_it_was_written(progress):
    line = format_train_line(progress, {"loss": 1.5e6, "content": 2e5, "style": 1.3e6})
    assert latest_train_progress(["other", f"stylebatch: {line}"]) == progress
