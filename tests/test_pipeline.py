"""run_pipeline (decode thread -> model -> encode thread) says where the model thread's time went,
so a GPU node's log shows whether the GPU, the decoder or the encoder limits a run."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stylebatch.pipeline import Progress, run_pipeline
from stylebatch.ranks import World

CHUNKS = [(0, 4), (4, 8), (8, 12)]


class Writer:
    def __init__(self, delay: float, written: list) -> None:
        self.delay, self.written = delay, written

    def write(self, frames: np.ndarray) -> None:
        time.sleep(self.delay * len(frames))
        self.written.extend(frames[:, 0, 0, 0].tolist())

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def pipeline(read_s: float, model_s: float, write_s: float, wrapped: bool = False):
    """Three chunks of four frames through run_pipeline; `wrapped`: items are not arrays but objects
    that `finish` turns into the frames to encode, with one warm-up frame a chunk left out (as
    `--temporal on` does)."""
    written: list[int] = []

    def read(chunk):
        for start in range(chunk[0], chunk[1], 2):
            time.sleep(read_s * 2)
            frames = np.zeros((2, 4, 4, 3), np.uint8)
            frames[:, 0, 0, 0] = [start, start + 1]
            yield frames

    def stylizer(frames):
        time.sleep(model_s * len(frames))
        return frames

    progress = Progress(World(0, 1, 0, 1), 12, 0, 12, sink=lambda record: None)
    if wrapped:
        def read_wrapped(chunk):
            for frames in read(chunk):
                yield Item(frames, skip=int(frames[0, 0, 0, 0] % 4 == 0))

        def stylize_wrapped(item):
            item.frames = stylizer(item.frames)
            return item

        return run_pipeline(CHUNKS, read_wrapped, stylize_wrapped, lambda chunk: (Writer(write_s, written), None),
                            lambda chunk, path: None, progress, finish=lambda item: item.frames[item.skip:]), written
    busy = run_pipeline(CHUNKS, read, stylizer, lambda chunk: (Writer(write_s, written), None),
                        lambda chunk, path: None, progress)
    return busy, written


class Item:
    def __init__(self, frames: np.ndarray, skip: int) -> None:
        self.frames, self.skip = frames, skip


@pytest.mark.parametrize("read_s, model_s, write_s, limit", [
    (0.0, 0.12, 0.0, "model"),
    (0.12, 0.0, 0.0, "waiting for the decoder"),
    (0.0, 0.0, 0.12, "waiting for the encoder"),
])
def test_the_summary_names_what_limits_the_run(read_s, model_s, write_s, limit):
    busy, written = pipeline(read_s, model_s, write_s)
    assert written == list(range(12))  # every frame, in order
    assert busy.count == 12
    shares = {"model": busy.model, "waiting for the decoder": busy.decoder, "waiting for the encoder": busy.encoder}
    assert max(shares, key=shares.get) == limit, busy.summary()
    assert shares[limit] > 0.6 * sum(shares.values()), busy.summary()
    summary = busy.summary()
    assert summary.startswith("12 frames in ") and f"{limit} " in summary


def test_items_that_are_not_arrays_are_counted_as_the_frames_encoded():
    """--temporal on hands the pipeline batches with warm-up frames that are stylized, not encoded:
    the summary counts what was encoded (a run crashed on len() of such a batch)."""
    busy, written = pipeline(0.0, 0.01, 0.0, wrapped=True)
    assert written == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert busy.count == 9
    assert busy.summary().startswith("9 frames in ")


def test_a_rank_with_no_frames_says_so():
    busy, written = pipeline(0.0, 0.0, 0.0)
    busy.count = 0
    assert busy.summary() == "no frames to stylize"

