"""benchmarks/train_check.py, the documented check of a short training on a known painting, runs end
to end (tiny sizes): it trains, paints the sample clip's frame and measures it against the painting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_training_check_trains_measures_and_writes_its_picture(tmp_path):
    image = tmp_path / "before-after.jpg"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_check.py"), "--steps", "2", "--size",
                             "32", "--batch-size", "1", "--max-side", "64", "--image", str(image)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line and "picture" not in line}
    assert rows.keys() == {"frame", "trained", "zero-shot"}
    assert rows["frame"][2] == 1.0  # the frame keeps all of its own structure
    assert rows["zero-shot"][0] < rows["frame"][0]  # the zero-shot painting style is the yardstick: nearer in colour
    assert rows["trained"][0] < rows["frame"][0]  # even 2 steps paint in the painting's colours (they painted black)
    assert "2 steps" in result.stdout
    width, height = Image.open(image).size
    assert width == 3 * 64 and height < 64
