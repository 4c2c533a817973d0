"""benchmarks/bench_gpu.py runs end to end on a CPU (tiny sizes), so it is ready for a GPU session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_gpu_benchmark_prints_every_row_on_a_cpu():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--tiny"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[cell.strip() for cell in row] for row in rows[1:]]  # without the header
    kinds = {row[0] for row in rows}
    assert kinds == {"quality", "model", "x264", "nvenc", "pipeline"}
    measured = {(row[0], row[2]) for row in rows if row[3] != "n/a"}
    for setting in ("built-in (CIN), fp32, contiguous, batch 1", "TransformerNet, bf16, channels-last, batch 2"):
        assert ("model", setting) in measured
    assert ("x264", "libx264, preset medium, 1 thread") in measured
    assert ("pipeline", "stylebatch run --device cpu --codec h264") in measured
    assert ("quality", "TransformerNet, bf16 against fp32") in measured  # the product's Stylizer, PSNR in dB
    assert all(float(row[3]) > 0 for row in rows if row[3] != "n/a")
    assert all(row[4] for row in rows if row[3] == "n/a")  # every row it cannot run says why
    assert "fastest model setting" in result.stdout
