"""What each stage is asked to do, as typed, frozen requests: one per stage and one for `run`.

Each field is declared once, with its flag, help, type and check (stylebatch.fields); the CLI's
flags, `validate()`, `to_argv()` and `from_argv()` all come from that declaration, and the operator
builds every pod command with `to_argv()`. Adding an option is adding one field here.

    req = StylizeRequest(work="az://videos/work/", model=ModelOptions(style="ink-wash", strength=0.8))
    req.validate().to_argv()  # ['stylize', '--work', 'az://videos/work/', '--style', 'ink-wash', ...]
    StylizeRequest.from_argv(req.to_argv()) == req  # True

Pure: no torch, no PyAV, no Azure SDK.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import PurePath, PurePosixPath
from urllib.parse import unquote, urlsplit

from stylebatch.contract import (CHECKPOINT_SUFFIX, DEFAULT_STYLE, DEVICES, OUTPUT_EXTENSIONS, PRECISION_AUTO,
                                 PRECISIONS, STYLE_WEIGHTS_SUFFIXES, is_az, precision_problem, style_problem)
from stylebatch.errors import BadInput, StylebatchError
from stylebatch.temporal_defaults import DEFAULT_MODE as TEMPORAL_DEFAULT
from stylebatch.temporal_defaults import DEFAULT_STRENGTH as TEMPORAL_STRENGTH
from stylebatch.temporal_defaults import MAX_STRENGTH as TEMPORAL_MAX_STRENGTH
from stylebatch.temporal_defaults import MODES as TEMPORAL_MODES
from stylebatch.fields import ArgParser, Request, at_least, between, flag, options

MIN_MAX_SIDE = 32
CROP_MULTIPLE = 4  # train-style's crops: the network halves them twice and doubles them back


def _crop_size(value: int) -> str | None:
    if value < MIN_MAX_SIDE:
        return f"must be at least {MIN_MAX_SIDE}"
    if value % CROP_MULTIPLE:
        low = value - value % CROP_MULTIPLE
        return (f"must be a multiple of {CROP_MULTIPLE} (the network halves the crops twice): give "
                f"{max(low, MIN_MAX_SIDE)} or {low + CROP_MULTIPLE}")
    return None


def _temporal_strength(value: float) -> str | None:
    """--temporal-strength's range, 0 to TEMPORAL_MAX_STRENGTH, in one message for every value outside it."""
    if 0 <= value <= TEMPORAL_MAX_STRENGTH:
        return None
    frozen = " (1 would freeze the picture)" if TEMPORAL_MAX_STRENGTH < value <= 1 else ""
    return f"must be between 0 and {TEMPORAL_MAX_STRENGTH:g}{frozen}"


@dataclass(frozen=True, kw_only=True)
class EncodingOptions(Request):
    """How the output is encoded, and the unit of work. Unset fields take the container's defaults."""

    codec: str | None = flag("--codec", help="h264 (default; vp9 for .webm, mjpeg for .avi), hevc, vp9, "
                             "h264_nvenc, hevc_nvenc, mjpeg")
    crf: int | None = flag("--crf", kind=int, check=at_least(0), exclusive="rate",
                           help="constant quality (lower is better; default 18 for h264)")
    bitrate: str | None = flag("--bitrate", exclusive="rate", help="target bitrate instead of --crf, e.g. 4M or 800k")
    preset: str | None = flag("--preset", help="encoder speed preset, e.g. medium (x264/x265), good (vp9), p5 (nvenc); "
                                               "x264's default veryfast is tuned for painted frames (README)")
    chunk_frames: int | None = flag("--chunk-frames", kind=int, check=at_least(1),
                                    help="frames per chunk, the unit of work and of resume "
                                         "(default: 16 to 120, aiming at 16 chunks; a short clip in 8, 4 or 2 equal ones)")

    def settings(self, output_name: str):
        """The manifest's EncoderSettings for an output of this name (pix_fmt left to preprocess),
        or BadInput: a codec the container cannot hold, a crf out of the codec's range, ..."""
        from stylebatch.encoding import choose_settings

        return choose_settings(output_name, codec=self.codec, crf=self.crf, bitrate=self.bitrate,
                               preset=self.preset)


@dataclass(frozen=True, kw_only=True)
class ModelOptions(Request):
    """Which style, how strongly, at what size and on which device."""

    style: str | None = flag("--style", check=style_problem,
                             help="built-in style name or index (see `stylebatch styles`), a painting to "
                             "imitate (.jpg .png .webp), a .pth weights file (paths or blob URIs), or a blend "
                             f"such as starry.jpg:0.7,lavender-gold:0.3; default {DEFAULT_STYLE}")
    strength: float = flag("--strength", kind=float, default=1.0, check=between(0, 1),
                           help="1 is full style; toward 0 a built-in or .pth is mixed with the picture (0 keeps "
                                "it), a painting's style moves to the video's own (0 still repaints, in the "
                                "video's own style)")
    keep_colors: bool = flag("--keep-colors", kind=bool, help="keep the video's own colours: transfer only the "
                             "style's brightness and strokes")
    device: str = flag("--device", default="auto", choices=DEVICES, help="auto (a GPU if there is one), cpu, cuda")
    max_side: int | None = flag("--max-side", kind=int, check=at_least(MIN_MAX_SIDE),
                                help=f"stylize at most this many pixels on the long side, at least {MIN_MAX_SIDE} "
                                     "(output keeps its size)")
    batch_size: int | None = flag("--batch-size", kind=int, check=at_least(1),
                                  help="frames per model call (default: 1 on a CPU, 8 on a GPU)")
    precision: str | None = flag("--precision", choices=PRECISIONS,
                                 help=f"model arithmetic: auto (default) is {PRECISION_AUTO}")
    temporal: str | None = flag("--temporal", choices=TEMPORAL_MODES,
                                help="on: blend each frame with the previous one moved along the optical flow, so "
                                     f"texture holds still (default: {TEMPORAL_DEFAULT})")
    temporal_strength: float | None = flag("--temporal-strength", kind=float, check=_temporal_strength,
                                           help=f"0..{TEMPORAL_MAX_STRENGTH:g}: how much of the previous frame is "
                                                f"kept where the motion is trusted (default {TEMPORAL_STRENGTH:g})")

    def check(self) -> None:
        if problem := precision_problem(self.precision, self.device):
            raise BadInput(f"--precision {problem}")

    @property
    def chosen_style(self) -> str:
        """The style to paint with: `style`, or DEFAULT_STYLE where none was given (None) only. A
        given style is never replaced: an empty one is refused by validate() (contract.style_problem)."""
        return DEFAULT_STYLE if self.style is None else self.style


PIPELINES_HELP = ("chunks each rank stylizes at once, each with its own decoder and encoder, sharing one copy of "
                  "torch and the network (default: on the CPU one per core of the rank's share, at most 4; "
                  "on a GPU 1)")

_INPUT_HELP = "video file or blob URI (az://container/path, https://...)"
_OUTPUT_HELP = f"output file or blob URI; its extension picks the container ({' '.join(OUTPUT_EXTENSIONS)})"


@dataclass(frozen=True, kw_only=True)
class PreprocessRequest(Request):
    """Stage 1: copy and probe the input, write the work dir's manifest."""

    command = "preprocess"
    summary = "stage 1: copy and probe the input, write the work dir's manifest"
    input: str = flag(help=_INPUT_HELP, metavar="input")
    work: str = flag("--work", required=True, help="work dir (folder or blob prefix)")
    output: str = flag("-o", "--output", required=True, help=_OUTPUT_HELP)
    encoding: EncodingOptions = options(EncodingOptions, "encoding")

    def check(self) -> None:
        self.encoding.settings(_output_name(self.output))


@dataclass(frozen=True, kw_only=True)
class StylizeRequest(Request):
    """Stage 2, on every MPI rank: stylize this rank's chunks into parts."""

    command = "stylize"
    summary = "stage 2 (under mpiexec): stylize this rank's chunks into parts"
    work: str = flag("--work", required=True, help="work dir made by preprocess")
    pipelines: int | None = flag("--pipelines", kind=int, check=at_least(1), help=PIPELINES_HELP)
    restyle: bool = flag("--restyle", kind=bool, help="delete the work dir's parts stylized with other settings "
                         "(style, strength, size, colours, temporal) instead of refusing them (what `run` does "
                         "with its own work dir)")
    model: ModelOptions = options(ModelOptions, "style")


@dataclass(frozen=True, kw_only=True)
class PostprocessRequest(Request):
    """Stage 3: mux the parts and the sound, publish the output."""

    command = "postprocess"
    summary = "stage 3: mux the parts and the sound, publish the output"
    work: str = flag("--work", required=True, help="work dir made by preprocess and stylize")
    output: str | None = flag("-o", "--output", help="override the output recorded by preprocess")
    delete_work: bool = flag("--delete-work", kind=bool, help="after the output is published, delete the files "
                             "stylebatch wrote into the work dir")
    delete_checkpoint: str | None = flag("--delete-checkpoint",
                                         help=f"after the output is published, delete this training checkpoint "
                                              f"(a name ending in {CHECKPOINT_SUFFIX}: what train-style leaves "
                                              "beside its weights, which stay)")

    def check(self) -> None:
        if self.delete_checkpoint is not None and not _path(self.delete_checkpoint).endswith(CHECKPOINT_SUFFIX):
            raise BadInput(f"--delete-checkpoint {_path(self.delete_checkpoint)!r} is no training checkpoint: give "
                           f"the name train-style wrote, ending in {CHECKPOINT_SUFFIX}")
        if self.output is not None:
            from stylebatch.encoding import container_for

            container_for(_output_name(self.output))


@dataclass(frozen=True, kw_only=True)
class RunRequest(Request):
    """The three stages chained on this machine, stylize on `workers` MPI ranks."""

    command = "run"
    summary = "stylize a video end to end: preprocess, stylize on N ranks, postprocess"
    input: str = flag(help=_INPUT_HELP, metavar="input")
    output: str = flag("-o", "--output", required=True, help=_OUTPUT_HELP)
    workers: int | None = flag("--workers", kind=int, check=at_least(1),
                               help="MPI ranks to run locally (default: one per GPU, else one, with a pipeline "
                                    "per core, at most 4)")
    pipelines: int | None = flag("--pipelines", kind=int, check=at_least(1), help=PIPELINES_HELP)
    work: str | None = flag("--work", help="work dir (folder or blob prefix); re-use one to resume (default: a folder under "
                                           "$XDG_CACHE_HOME/stylebatch/work named for the input and output, so the "
                                           "same command resumes)")
    keep_work: bool = flag("--keep-work", kind=bool, help="keep the work dir after success")
    model: ModelOptions = options(ModelOptions, "style")
    encoding: EncodingOptions = options(EncodingOptions, "encoding")

    def check(self) -> None:
        self.encoding.settings(_output_name(self.output))

    def preprocess_request(self, work: str, input: str | None = None, output: str | None = None) -> PreprocessRequest:
        """`input`, `output`: the places as the launcher resolved them, if they differ (its child stage gets
        SAS-free addresses; their tokens travel in its environment)."""
        return PreprocessRequest(input=self.input if input is None else input, work=work,
                                 output=self.output if output is None else output, encoding=self.encoding)

    def stylize_request(self, work: str, style: str | None = None) -> StylizeRequest:
        """`style`: the style as resolved by the launcher (a downloaded weights file), if it differs. In
        the work dir of the launcher's own (no --work) parts of other settings are deleted (--restyle)."""
        model = self.model if style is None else replace(self.model, style=style)
        return StylizeRequest(work=work, model=model, pipelines=self.pipelines, restyle=self.work is None)

    def postprocess_request(self, work: str) -> PostprocessRequest:
        return PostprocessRequest(work=work, output=self.output)

    def with_places(self, input: str, output: str) -> RunRequest:
        """The same run for another input and output (`stylebatch watch`)."""
        return replace(self, input=input, output=output)


def _positive(value: float) -> str | None:
    return None if 0 < value < math.inf else "must be more than 0 and finite"


SEED_MAX = 2**64 - 1  # what torch.manual_seed takes; numpy's generators take no negative seed


def _seed(value: int) -> str | None:
    return None if 0 <= value <= SEED_MAX else f"must be between 0 and {SEED_MAX}"


@dataclass(frozen=True, kw_only=True)
class TrainRequest(Request):
    """Train a fast_neural_style network for one painting, on frames of your videos and your photos.
    Checkpoints beside the weights (`<output>.ckpt`, a file or blob): the same command resumes."""

    command = "train-style"
    module = "train"
    summary = "train a fast_neural_style network for a painting (best quality)"
    painting: str = flag(help="the painting (.jpg .png .webp), file or blob URI", metavar="painting")
    output: str = flag("-o", "--output", required=True,
                       help="the weights file to write (.pth, .pt or .model), file or blob URI, for --style")
    content: tuple[str, ...] = flag("--content", many=True,
                                    help="a video, picture or folder of pictures to learn on (file or blob URI; "
                                         "repeatable); frames are sampled")
    steps: int = flag("--steps", kind=int, default=4000, check=at_least(1), help="training steps (default 4000)")
    size: int = flag("--size", kind=int, default=256, check=_crop_size,
                     help=f"training crop size in pixels, a multiple of {CROP_MULTIPLE} (default 256)")
    batch_size: int = flag("--batch-size", kind=int, default=4, check=at_least(1), help="crops per step (default 4)")
    lr: float = flag("--lr", kind=float, default=5e-3, check=_positive,
                     help="Adam learning rate at the first step, falling linearly to 0 at the last (default 0.005)")
    style_weight: float | None = flag("--style-weight", kind=float, check=_positive,
                                      help="style loss weight (default tuned)")
    content_weight: float | None = flag("--content-weight", kind=float, check=_positive,
                                        help="content loss weight (default tuned)")
    checkpoint_every: int = flag("--checkpoint-every", kind=int, default=200, check=at_least(1),
                                 help="steps between checkpoints (default 200)")
    seed: int = flag("--seed", kind=int, default=0, check=_seed, help="random seed of the crops and the initial weights")
    device: str = flag("--device", default="auto", choices=DEVICES, help="auto (a GPU if there is one), cpu, cuda")

    def check(self) -> None:
        # before hours of training: what --style reads as weights, never a picture or video overwritten
        if not _path(self.output).lower().endswith(STYLE_WEIGHTS_SUFFIXES):
            raise BadInput(f"--output {_path(self.output)!r} is no weights file: give a name ending in "
                           f"{', '.join(STYLE_WEIGHTS_SUFFIXES)} (what --style reads as a network)")


def _path(place: str) -> str:
    """The file name of a path or URI as it will be written: what its extension is read from. A URI's
    is the name storage.location parses (never a SAS query; percent-decoded in a blob URL, where
    `in%2Emp4` is the blob `in.mp4`; as given in az://, where '#' and '%' are part of the name). A URI
    location() cannot parse (refused with its own message when the place is opened) is read as a URL
    path here, not refused: validate() adds no refusal of its own for it."""
    if "://" not in place:
        return PurePath(place).name
    from stylebatch.storage import location

    try:
        return location(place).name
    except StylebatchError:  # the same reading: an az:// name whole, a URL's path percent-decoded
        az = is_az(place)
        return PurePosixPath(place.split("?", 1)[0] if az else unquote(urlsplit(place).path)).name


def _output_name(place: str) -> str:
    """The file name of an output place (`_path`), or BadInput where the place names a folder, not a
    file: one ending in / (a folder or blob prefix), or a local folder. The disk is looked at only for
    a name without an extension, refused either way: a folder only changes what the message says."""
    shown = place.split("?", 1)[0]  # never a SAS
    if shown.endswith("/"):
        raise BadInput(f"--output {shown!r} ends in /, so it names a folder, not a file: give the output file's "
                       f"name too, e.g. {shown}out.mp4")
    name = _path(place)
    if "://" not in place and not PurePath(name).suffix and os.path.isdir(place):
        raise BadInput(f"--output {shown!r} is a folder: give the output file's name in it, e.g. "
                       f"{os.path.join(shown, 'out.mp4')}")
    return name


RUN_FLAGS = frozenset({"workers", "pipelines", "model", "encoding"})  # what `watch` passes on to each run


STAGES = (RunRequest, PreprocessRequest, StylizeRequest, PostprocessRequest, TrainRequest)
BY_COMMAND = {cls.command: cls for cls in STAGES}


def add_commands(subparsers) -> None:
    """A subcommand per request type on an argparse subparsers object; its handler is
    `stylebatch.<module or command>:run`, called with the validated request."""
    for cls in STAGES:
        sub = subparsers.add_parser(cls.command, help=cls.summary, description=cls.__doc__)
        cls.add_arguments(sub)
        sub.set_defaults(request=cls, handler=f"stylebatch.{cls.module or cls.command}:run")


def parse_argv(argv: list[str]) -> Request:
    """The validated request of a stage command line such as ['stylize', '--work', ...]."""
    cls = BY_COMMAND.get(argv[0] if argv else "")
    if cls is None:
        raise BadInput(f"not a stylebatch stage command: {' '.join(argv[:1]) or '(empty)'}")
    return cls.from_argv(argv)


__all__ = ["EncodingOptions", "ModelOptions", "PreprocessRequest", "StylizeRequest", "PostprocessRequest",
           "RunRequest", "TrainRequest", "Request", "ArgParser", "parse_argv", "STAGES", "MIN_MAX_SIDE"]
