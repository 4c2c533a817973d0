"""The side-by-side benchmarks run end to end on tiny clips, so their figures can be remade at any time
(no timings are checked: only that every row is measured and both pipelines made every frame)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_the_reference_pipeline_and_stylebatch_both_make_every_frame_for_each_style():
    result = bench("reference_pipeline.py", "--sizes", "64x48", "--frames", "8", "--ranks", "2",
                   "--layouts", "pipelines,ranks", "--repeats", "1")
    rows = table_rows(result.stdout)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("TransformerNet .pth", "2", "1 rank x 2 pipelines"), ("TransformerNet .pth", "2", "2 ranks"),
        ("lavender-gold", "2", "1 rank x 2 pipelines"), ("lavender-gold", "2", "2 ranks")]
    for row in rows:
        assert row[-1] == "8 / 8", row  # output frames, reference / stylebatch
        peaks = [float(v.replace(",", "")) for v in row[9].split("/")]
        assert all(p > 50 for p in peaks), row  # MiB: the process tree was seen, torch and all
        pss = [float(v.replace(",", "")) for v in row[10].split("/")]
        # the physical memory: torch's libraries once for both ranks, so below the summed RSS
        assert all(50 < q < p for q, p in zip(pss, peaks)), row


def test_the_side_by_side_runs_as_many_ranks_as_the_reference_with_stylebatchs_defaults(monkeypatch):
    """Issue 14's target names the rank count: `--layouts default` runs `--workers RANKS` with
    stylebatch's own pipelines (one per core of a rank's share, no more than the clip's chunks: two
    per reference rank) beside the reference's RANKS ranks, and names what ran; a layout that runs
    stylebatch as another already does for the same rank count runs once. The cores are the ranks'
    own count (stylebatch.ranks.cpu_count: affinity within a CPU quota)."""
    import argparse

    from stylebatch import ranks

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import reference_pipeline as ref

    monkeypatch.setattr(ranks, "cpu_count", lambda: 8)
    assert ref.cores() == 8
    parser = argparse.ArgumentParser()
    assert ref.LAYOUTS["default"](1) == ["--workers", "1"]  # nothing but the rank count
    runs = ref.layouts_to_run(parser, "1,2,4", "default,pipelines,ranks")
    assert [(n, ref.layout_label(lay, n, ref.side_by_side_chunks(n))) for n, lay in runs] == [
        (1, "1 rank x 2 pipelines (defaults)"), (1, "1 rank"),  # 8 cores, but 2 chunks
        (2, "2 ranks x 4 pipelines (defaults)"), (2, "1 rank x 2 pipelines"), (2, "2 ranks"),
        (4, "4 ranks x 2 pipelines (defaults)"), (4, "1 rank x 4 pipelines"), (4, "4 ranks")]
    assert ref.effective("default", 4, chunks=3) == (3, 2)  # no more ranks, nor pipelines, than chunks


def test_the_uneven_rank_benchmark_gives_the_slow_rank_fewer_frames():
    result = bench("bench_uneven.py", "--size", "160x96", "--frames", "96", "--chunk-frames", "8",
                   "--repeats", "1")
    rows = {r[0]: r for r in table_rows(result.stdout)}
    fast, slow = (int(v) for v in rows["one at half speed, chunks taken dynamically"][2].split("/"))
    assert fast + slow == 96 and fast >= slow
    assert "x of" in rows["one at half speed, chunks taken dynamically"][3]


@pytest.mark.parametrize("style", ["lavender-gold", "weights"])
def test_the_pipeline_benchmark_measures_the_model_alone_beside_every_run(style):
    """Each layout's end-to-end, stylize-stage and painting rates (the ranks' own, without their start-up:
    never below end to end) beside the model alone with as many networks, and each rate's share of it."""
    result = bench("bench_pipeline.py", "--size", "128x72", "--seconds", "1", "--workers", "1,2",
                   "--layouts", "pipelines,ranks", "--chunk-frames", "8", "--style", style)
    rows = table_rows(result.stdout)
    assert [r[:2] for r in rows] == [["1", "1 rank"], ["2", "1 rank x 2 pipelines"], ["2", "2 ranks"]]
    for row in rows:
        end_to_end, stylize, painting, model_alone = (float(v) for v in row[4:8])
        assert 0 < end_to_end <= stylize and end_to_end <= painting and model_alone > 0, row
        for rate, share in ((end_to_end, row[8]), (stylize, row[9]), (painting, row[10])):
            assert float(share) == pytest.approx(rate / model_alone, abs=0.01), row


def test_the_precision_benchmark_measures_every_kind_of_frame_for_each_arithmetic():
    """Its last column says what --precision auto would pick: bf16 for a built-in style painted near
    fp32 in it (contract.BF16_BUILTIN_STYLES), fp32 for one that is not."""
    result = bench("bench_precision.py", "--styles", "lavender-gold,tangled-ribbons", "--frames", "1",
                   "--size", "96x64", "--fp16")
    rows = table_rows(result.stdout)
    assert [(r[0], r[1], r[-1]) for r in rows] == [("lavender-gold", "bf16", "on a CPU where bf16 is faster"),
                                                    ("lavender-gold", "fp16", "on a GPU"),
                                                    ("tangled-ribbons", "bf16", "no: fp32"),
                                                    ("tangled-ribbons", "fp16", "on a GPU")]
    for row in rows:
        assert all(float(v) >= 40 for v in row[2:-1]), row  # dB: measured, not a failure to paint


def test_the_bf16_shape_check_tries_every_layer_and_reports_what_it_found():
    """bench_bf16_shapes.py (run after a torch upgrade on a CPU with native bf16): a table of the
    convolution shapes oneDNN gets wrong in bf16, or the line saying there are none."""
    out = bench("bench_bf16_shapes.py", "--trials", "1", "--sides", "1,2").stdout
    rows = table_rows(out)
    assert "No shape over 5% of its output's peak." in out or rows, out
    assert all(row[0].split(",")[2].strip().startswith("stride") and float(row[3]) > 0.05 for row in rows), rows


def test_the_efficiency_benchmark_rates_every_network_against_the_faster_gemm():
    # a small torch.mm: a bf16 one of 2048 takes about 16 s a call where the CPU emulates bf16
    result = bench("bench_efficiency.py", "--sizes", "64x48", "--seconds", "0.2", "--bf16", "--gemm-size", "256")
    rows = table_rows(result.stdout)
    assert len(rows) == 8 and all(r[1] == "64x48" for r in rows)
    for row in rows:
        rate, gemm, share = float(row[5]), float(row[6]), float(row[7].rstrip("%"))
        assert rate > 0 and gemm > 0  # the share, from the unrounded rates: within the printed ones' rounding
        assert 100 * (rate - 0.05) / (gemm + 0.05) - 0.5 <= share <= 100 * (rate + 0.05) / (gemm - 0.05) + 0.5
    head = result.stdout.split("|")[0]
    assert "torch.mm (256^3)" in head and "oneDNN's implicit GEMM" in head


def test_the_rank_memory_benchmark_splits_each_runs_peak_by_process_and_kind():
    result = bench("bench_rank_memory.py", "--sizes", "64x48", "--frames", "8", "--styles", "lavender-gold",
                   "--pipelines", "1,2")
    rows = table_rows(result.stdout)
    assert [(r[0], r[2]) for r in rows] == [("lavender-gold", "1"), ("lavender-gold", "2")]
    for row in rows:
        total = float(row[4].replace(",", ""))
        rank, launcher, _ = (float(v.replace(",", "")) for v in row[5].split("/"))
        anon, file = (float(v.replace(",", "")) for v in row[6].split("/"))
        assert rank > 100 and launcher > 5 and rank + launcher <= total + 1, row  # torch in the rank; MiB
        assert abs(anon + file - rank) < 0.25 * rank, row  # the rank's two kinds make up its RSS


def test_the_layer_benchmark_splits_a_frame_into_its_layers_for_each_precision():
    """Each precision's rows: the network's layers (the 12 residual convolutions of the built-in net one
    row), "other", and the frame, whose time the rows add up to and whose arithmetic (counted over the
    whole frame) the layers' rows cover: no layer of the network goes unseen."""
    result = bench("bench_layers.py", "--size", "64x48", "--seconds", "0.2", "--gemm-size", "256")
    rows = table_rows(result.stdout)
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r[0] == precision]
        frame, other, layers = mine[-1], mine[-2], mine[:-2]
        assert frame[1] == "**frame**" and other[1] == "other" and len(layers) >= 8, mine
        assert {r[1] for r in layers} >= {"convolution", "instance norm (and ReLU)", "upsample x2 + convolution",
                                          "last convolution"}
        assert ["convolution", "32x12x16 float32" if precision == "fp32" else "32x12x16 bfloat16", "12"] in \
            [r[1:4] for r in layers]
        ms = [float(r[4]) for r in layers]
        assert all(m > 0 for m in ms) and sum(ms) + float(other[4]) == pytest.approx(float(frame[4].strip("*")),
                                                                                    abs=0.01 * len(mine))
        assert float(frame[6]) > 0
        assert sum(float(r[6]) for r in layers) == pytest.approx(float(frame[6]), rel=0.02, abs=0.001 * len(layers))


def test_the_x264_benchmark_prices_each_preset_in_bytes_at_the_default_presets_quality():
    """`--match`: the default preset's row first (its PSNR is the quality the others are read at), each
    other preset's bit rate at that PSNR and its difference from the default's, from encodes at 4 CRFs;
    the default as stylebatch sets it and as x264 has it, and each --params try over x264's own."""
    result = bench("bench_x264.py", "--frames", "4", "--sizes", "128x72", "--presets", "superfast,medium",
                   "--match", "--crfs", "10,14,22,30", "--params", "me=dia;subme=1")
    rows = table_rows(result.stdout)
    assert [r[1] for r in rows] == ["veryfast", "veryfast, x264's own", "superfast", "medium",
                                    "veryfast, x264's own + me=dia", "veryfast, x264's own + subme=1"]
    own, subme1 = rows[1], rows[5]
    assert subme1[3:5] != own[3:5]  # the try's settings reached x264: other bytes or another picture
    assert rows[0][5:] == [rows[0][3], "(the default)"]
    base = float(rows[0][3].replace(",", ""))
    for row in rows[1:]:  # crf 10..30 spans any preset's PSNR at crf 18
        at, against = float(row[5].replace(",", "")), float(row[6].rstrip("%"))
        assert against == pytest.approx(100 * (at / base - 1), abs=0.6 + 100 * 0.5 / base), row


def test_a_presets_rate_at_a_quality_is_read_off_its_curve_log_linearly():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from bench_x264 import rate_at
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    curve = [(4000.0, 42.0), (1000.0, 38.0), (2000.0, 40.0)]  # (kbit/s, dB), in no order
    assert rate_at(curve, 40.0) == pytest.approx(2000)
    assert rate_at(curve, 39.0) == pytest.approx(2000 / 2 ** 0.5)  # halfway in dB: the geometric mean
    assert rate_at(curve, 43.0) is None and rate_at(curve, 37.9) is None  # beyond what it reaches
