"""Progress lines: what `stylebatch run` and the operator read from the ranks' stdout."""

from stylebatch.progress import RankProgress, aggregate, format_line, parse_line, parse_records


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
