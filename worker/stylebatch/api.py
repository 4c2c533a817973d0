"""The Python API: what the CLI does, as functions over typed requests (stylebatch.requests).

    import stylebatch
    result = stylebatch.stylize_video("in.mp4", "out.mp4", style="ink-wash", max_side=720,
                                      progress=lambda done, total: print(done, "/", total))

Importing this module (or `stylebatch`) imports neither torch nor PyAV; the stages do, when called.
Every failure is a stylebatch.StylebatchError: BadInput (retrying cannot help), TransientError
(storage unreachable, a timeout: retry), Interrupted (a signal; the work dir can be resumed).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from stylebatch.errors import BadInput
from stylebatch.requests import (
    EncodingOptions, ModelOptions, PostprocessRequest, PreprocessRequest, RunRequest, StylizeRequest,
)

from stylebatch.run import Progress, Result

if TYPE_CHECKING:
    from stylebatch.manifest import Manifest


def stylize_video(input: str, output: str, *, style: str | None = None, strength: float = 1.0,
                  max_side: int | None = None, workers: int | None = None, pipelines: int | None = None,
                  device: str = "auto",
                  encoder: str | EncodingOptions | None = None, work: str | None = None, keep_work: bool = False,
                  batch_size: int | None = None, keep_colors: bool = False, precision: str | None = None,
                  temporal: str | None = None, temporal_strength: float | None = None,
                  progress: Progress | None = None) -> Result:
    """Stylize the video `input` into `output` (paths or blob URIs; the output's extension picks the
    container), exactly like `stylebatch run`, and return a Result: frames, duration, output, and
    wall seconds per stage.

    style: a built-in name or index (`stylebatch.list_styles()`), a blend "a:0.5,b:0.5" or .pth
        weights; default lavender-gold. strength: 1 full; toward 0 a built-in or .pth is mixed with the
        picture (0 keeps it), a painting's style moves to the video's own. max_side: stylize at most
        this many pixels on the long side (the output keeps its size).
    workers: MPI ranks on this machine (default: one per GPU, else one, with a pipeline per core).
    pipelines: chunks each rank stylizes at once, sharing its torch and network (default: on the
        CPU one per core of the rank's share, at most 4; on a GPU 1).
    device: "auto", "cpu" or "cuda". encoder: a codec name ("h264", "hevc", "vp9", ...) or
        EncodingOptions for crf/bitrate/preset/chunk size.
    work: the work dir; give the same one again to resume an interrupted run (default: one under
        $XDG_CACHE_HOME/stylebatch/work named for the input, output and settings, so the same call
        resumes; deleted after success). keep_work: keep it after success.
    batch_size, keep_colors, precision, temporal, temporal_strength: as the flags of `stylebatch run`
        (stylebatch.ModelOptions).
    progress: called as progress(done, total) with the frames stylized so far, from this thread, once
        for each new count: at the start, after every chunk, every few seconds between, and at the end
        (done == total, the last call, made once).

    A SAS in a URL signs this call's requests only: a later call's URLs without one never use it.

    Raises BadInput before any work when a setting is wrong, and leaves no partial output; Ctrl-C
    (KeyboardInterrupt, also one raised by `progress`), SIGTERM and SIGHUP (where the program left
    them at their defaults; called from the main thread) stop the ranks and raise Interrupted.
    """
    from stylebatch import signals
    from stylebatch.errors import Interrupted
    from stylebatch.run import run
    from stylebatch.contract import api_call
    from stylebatch.storage.credentials import url_sas_of_this_call

    _check_progress(progress)
    encoding = encoder if isinstance(encoder, EncodingOptions) else EncodingOptions(codec=encoder)
    req = RunRequest(input=input, output=output, workers=workers, pipelines=pipelines, work=work,
                     keep_work=keep_work, encoding=encoding,
                     model=ModelOptions(style=style, strength=strength, max_side=max_side, device=device,
                                        batch_size=batch_size, keep_colors=keep_colors, precision=precision,
                                        temporal=temporal, temporal_strength=temporal_strength))
    with signals.handled(), _warnings_shown(), url_sas_of_this_call(), api_call():
        try:
            return run(req, progress, api=True)
        except KeyboardInterrupt:  # stopped before the run had begun any work (checking the places, the claim)
            raise Interrupted(f"interrupted by {signals.cause()} before any work began",
                              signals.exit_code()) from None


@contextlib.contextmanager
def _warnings_shown() -> Iterator[None]:
    """For the call: where the caller set up no logging (Python would print a warning's bare text,
    not saying whose it is), stylebatch's warnings go to stderr as the CLI shows them, `stylebatch:
    warning: ...`; where it did, through the caller's handlers, untouched."""
    import logging
    import sys

    from stylebatch.logs import TextFormat

    logger = logging.getLogger("stylebatch")
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)  # as Python's own last resort: no info lines
    handler.setFormatter(TextFormat())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _check_progress(progress) -> None:
    """BadInput for a progress that is not a function of (done, total): else a TypeError once
    preprocess had run (not callable) or at the first chunk (another number of arguments)."""
    import inspect

    if progress is None:
        return
    if not callable(progress):
        raise BadInput(f"progress must be a function progress(done, total), not {type(progress).__name__}")
    try:
        inspect.signature(progress).bind(0, 0)
    except TypeError:
        raise BadInput(f"progress must take two arguments, progress(done, total): {progress!r} "
                       "cannot be called that way") from None
    except ValueError:  # a builtin without a signature to read: called as it is
        pass


def preprocess(req: PreprocessRequest) -> Manifest:
    """Stage 1: copy and probe the input into the work dir; the work dir's manifest (resumed if there)."""
    from stylebatch.preprocess import run

    return run(_expect(req, PreprocessRequest))


def stylize(req: StylizeRequest) -> None:
    """Stage 2 in this process (one rank; under mpiexec each rank calls it with the same request).
    torch's thread count, which the rank sets for its pipelines, is the caller's again afterwards."""
    from stylebatch.stylize import run

    req = _expect(req, StylizeRequest)
    import torch

    threads = torch.get_num_threads()
    try:
        run(req)
    finally:
        torch.set_num_threads(threads)


def postprocess(req: PostprocessRequest) -> str:
    """Stage 3: mux the parts and the sound into the output; the output as shown to people."""
    from stylebatch.postprocess import run

    return run(_expect(req, PostprocessRequest))


def _expect(req, cls):
    """`req` if it is a `cls`; else BadInput (not an AttributeError from deep inside the stage)."""
    if not isinstance(req, cls):
        raise BadInput(f"{cls.__name__} expected, not {type(req).__name__}: build one with "
                       f"stylebatch.requests.{cls.__name__}(...)")
    return req


def list_styles() -> list:
    """The built-in styles (name, index, description) in index order; torch is not imported."""
    from stylebatch.styles import list_styles as styles

    return styles()
