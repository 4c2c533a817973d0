"""`stylebatch train-style`: train a fast_neural_style TransformerNet (Johnson et al., 2016) for one
painting, loadable by `--style style.pth`.

Content images are the user's own: frames sampled from their videos and the photos in their folders,
as random crops with random flips (flat crops, such as black frames, are drawn again). Losses (see
`losses`): VGG19 features (stylebatch.vgg) of the output against the content image's (relu2_2) and
Gram matrices against the painting's (relu1_1..relu4_1), each relative to its target's size, plus a
little total variation. The net starts out painting the painting's mean colour (`start_net`); Adam's
learning rate falls linearly to zero over --steps. Mixed precision (bfloat16 autocast) on a GPU. A
checkpoint next to the output (`<output>.ckpt`, a file or a blob like the output) is written every
--checkpoint-every steps, on Ctrl-C/SIGTERM/SIGHUP and at the end; the same command resumes from it (so
does a retried pod on Kubernetes), and, with a larger --steps, extends a finished training. It is kept
once the weights are written (that is what lets a finished training go on); an existing output with no
checkpoint beside it is refused, never trained again from step 1 over. (A StyleTransferJob's training
leaves it too, beside the trained style next to the job's work dir: a training pod lost after it wrote
the weights, or a job resumed with that work dir, finishes from it. The job's postprocess deletes it
with the work dir once the video is published: `postprocess --delete-checkpoint`.) One training at a
time into an output: a second one into the same -o (while `<output>.lock` is held) fails at once with
exit code 75.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from stylebatch import signals
from stylebatch.contract import EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED, beside_name, checkpoint_of
from stylebatch.errors import BadInput, Interrupted, StylebatchError
from stylebatch.progress import TrainProgress, format_train_line
from stylebatch.logs import counted, say
from stylebatch.requests import TrainRequest

log = logging.getLogger(__name__)
MAX_CONTENT = 400  # content images kept in memory
FRAMES_PER_VIDEO = 48
# Loss weights of relative terms (see `losses`), measured with benchmarks/train_check.py on Starry Night
# and the sample clip (docs/painting-styles.md: what was and was not checked).
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 2.0, 1e-2
LOSS_VERSION = 2  # in the checkpoint key: a checkpoint of other losses is not resumed
OUTPUT_GAIN = 30.0  # the untrained net's last conv weights x this: its pictures vary by ~12 levels, not 0.4
LOCK_SUFFIX = ".lock"  # `<output>.lock`: held by the one training writing the output and its checkpoint
FLAT = 2.0  # a crop whose pixels' standard deviation is below this (0..255) holds no content: drawn again


def sample_video(path: Path, count: int, side: int) -> list[np.ndarray]:
    """Up to `count` frames spread evenly over the video, upright, short side `side`."""
    import av

    from stylebatch.video import _rotation, open_video, video_stream

    frames = []
    with open_video(path, path.name) as container:
        vs = video_stream(container, path.name)
        total = vs.frames or _frames_in(container, vs)
        step = max(1, total // count) if total else 1
        try:
            for i, frame in enumerate(container.decode(vs)):
                if i % step == 0:
                    k = _rotation(frame) // 90
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(_short_side(np.rot90(rgb, k) if k else rgb, side))
                    if len(frames) >= count:
                        break
        except (av.FFmpegError, OSError, ValueError):
            if not frames:
                raise BadInput(f"content video {path.name} does not decode") from None
    return frames


def _frames_in(container, vs) -> int:
    """About how many frames a video holds whose header does not count them (Matroska, WebM): its
    duration times its frame rate; 0 where neither is known. Without it the first `count` frames were
    taken, a 10-minute WebM's first 2 seconds (a black fade-in: "the --content is all one colour")."""
    import av

    seconds = (float(vs.duration * vs.time_base) if vs.duration and vs.time_base else
               container.duration / av.time_base if container.duration else 0.0)
    rate = vs.average_rate or vs.guessed_rate
    return round(seconds * float(rate)) if seconds > 0 and rate else 0


def _short_side(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.LANCZOS))


def content_files(source: str) -> tuple[Path, list[Path]]:
    """A content source and, for a folder, its pictures; a missing source or an empty folder is BadInput."""
    from stylebatch.paintings import is_image_name

    path = Path(source).expanduser()
    if not path.exists():
        raise BadInput(f"content not found: {source}")
    if not path.is_dir():
        from stylebatch.storage.local import special_file

        if special := special_file(path):  # a FIFO was opened as a video: the training waited on it forever
            raise BadInput(f"content {source} is {special}, not a video or a picture")
        return path, []
    pictures = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))
    if not pictures:
        raise BadInput(f"content folder {source} holds no .jpg, .png or .webp pictures")
    return path, pictures


def load_content(sources: list[str], size: int) -> list[np.ndarray]:
    """Frames from videos and pictures from folders (recursively), each with short side ~1.25 x size."""
    from stylebatch.paintings import is_image_name

    side, images = math.ceil(size * 1.25), []
    for source in sources:
        path, pictures = content_files(source)
        if path.is_dir():
            images += [_short_side(_content_image(p), side) for p in pictures[:MAX_CONTENT]]
        elif is_image_name(path.name):
            images.append(_short_side(_content_image(path), side))
        else:
            images += sample_video(path, FRAMES_PER_VIDEO, side)
    if not images:
        raise BadInput("no content images: give --content with your videos or folders of photos")
    if all(image.std() < FLAT for image in images):  # every crop flat: not finite gradients, "diverged"
        raise BadInput("the --content is all one colour (every frame and picture is flat): it has nothing to "
                       "learn from; give videos or photos with detail")
    rng = np.random.default_rng(0)
    return [images[i] for i in rng.permutation(len(images))[:MAX_CONTENT]]


def _content_image(path: Path) -> np.ndarray:
    """A content photo, read and checked as a painting is (paintings.read_style_image), and named in a
    refusal as the content image it is."""
    from stylebatch.paintings import read_style_image

    return read_style_image(path, label=f"content image {path.name}", what="a content image")


def crops(images: list[np.ndarray], batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A batch of random size x size crops, each flipped left-right half of the time. A flat crop (a
    black frame of a fade, a letterbox bar) teaches nothing and can make a step's gradients NaN, so it is
    drawn again (up to 20 times; then it is kept)."""
    out = np.empty((batch, size, size, 3), np.uint8)
    for b in range(batch):
        for _ in range(20):
            image = images[rng.integers(len(images))]
            top, left = rng.integers(image.shape[0] - size + 1), rng.integers(image.shape[1] - size + 1)
            crop = image[top:top + size, left:left + size]
            if crop.std() >= FLAT:
                break
        out[b] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def start_net(painting: np.ndarray):
    """An untrained TransformerNet whose pictures have the painting's mean colour and visible shading.
    pytorch/examples' initialisation paints near-black and nearly flat (its last conv has no output
    activation, a bias near 0 and outputs varying by ~0.4 of 255 levels), and Adam moves each weight
    ~lr per step: short runs never got out of the dark. Only initial values change: the state dict is
    fast_neural_style's."""
    import torch

    from stylebatch.transformer_net import TransformerNet

    net = TransformerNet()
    with torch.no_grad():
        net.deconv3.conv2d.bias.copy_(torch.from_numpy(painting.reshape(-1, 3).mean(0)))
        net.deconv3.conv2d.weight.mul_(OUTPUT_GAIN)
    return net


def losses(fy: dict, fx: dict, targets: list) -> tuple:
    """(content, style) losses, each relative to its target, so that neither the loss network's units
    (Caffe VGG: relu4_1's Gram matrices are 300-600x relu1_1's) nor the crop size decide what counts:
    content = |F(y) - F(x)|^2 / |F(x)|^2 at relu2_2; style = sum over relu1_1..relu4_1 of
    |G(y) - G(painting)|^2 / |G(painting)|^2, so the colour layer relu1_1 counts as much as relu4_1."""
    from stylebatch.vgg import CONTENT_LAYER, STYLE_LAYERS, gram

    a, b = fy[CONTENT_LAYER].float(), fx[CONTENT_LAYER].float()
    content = ((a - b) ** 2).mean() / (b ** 2).mean().clamp_min(1e-6)
    style = sum(((gram(fy[name]) - t) ** 2).sum((1, 2)).mean() / (t ** 2).sum()
                for name, t in zip(STYLE_LAYERS, targets))
    return content, style


def learning_rate(peak: float, step: int, steps: int) -> float:
    """Linear decay from `peak` at the first step to near 0 at the last."""
    return peak * (1 - step / steps)


def settings_key(painting: Path, req: TrainRequest, style_weight: float, content_weight: float) -> str:
    """What a checkpoint must match to be resumed: the painting's bytes, the training settings, the
    content as given (a blob's SAS left out) and the seed (other content or another seed resumed without a
    word)."""
    from stylebatch.storage.scrub import scrub_uri

    digest = hashlib.sha256(painting.read_bytes()).hexdigest()
    # a blob by its URI without its query: the same content under a fresh SAS (the old one expired)
    given = [scrub_uri(c) if "://" in c else c for c in req.content]
    content = hashlib.sha256("\n".join(given).encode()).hexdigest()[:16]
    return (f"{digest}:{req.size}:{req.batch_size}:{style_weight}:{content_weight}:{req.lr}:{req.seed}:{content}"
            f":v{LOSS_VERSION}")


def write(state: dict, part: Path, shown: str) -> None:
    """torch.save to the partial file `part` of `shown`. However it fails (Ctrl-C, a full disk) the
    partial file is removed; a full disk or a folder that cannot be written is one line (torch says
    "unexpected pos ..." of a full disk, with a traceback, and left the partial file filling it)."""
    import errno
    import shutil

    import torch

    try:
        torch.save(state, part)
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if not isinstance(exc, (OSError, RuntimeError)):
            raise
        try:
            full = shutil.disk_usage(part.parent).free < 64 << 20  # (torch's error says no errno)
        except OSError:
            full = False
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or full:
            why = f"no space left in {part.parent}; free some, then run the same command again"
        else:
            why = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:160]
        raise BadInput(f"cannot write {shown}: {why}") from None


def beside(output: str, suffix: str):
    """The Location of `<output><suffix>`: a file beside a local output, a blob beside a blob one (a
    blob URL's SAS query kept, after the new name)."""
    from stylebatch.storage import location

    return location(beside_name(output, suffix))


class Checkpoint:
    """`<output>.ckpt` beside the weights: a local file, or a blob with a local copy that torch reads
    and writes (downloaded at the start when it exists, uploaded at each save)."""

    def __init__(self, output: str, local: Path) -> None:
        from stylebatch.storage import location

        loc = location(checkpoint_of(output))
        self.remote = None if loc.is_local() else loc
        self.path = Path(loc.local_path()) if loc.is_local() else local
        self.name = loc.display
        self.weights: str | None = None  # the output as displayed, where it is already there

    def fetch(self) -> bool:
        """Whether there is a checkpoint to resume from (a blob one is downloaded first)."""
        if self.remote is not None and self.remote.exists():
            self.remote.download(self.path)
        return self.path.exists()

    def save(self, state: dict) -> None:
        import torch

        part = self.path.with_name(self.path.name + ".part")
        write(state, part, self.name)
        part.replace(self.path)
        if self.remote is not None:
            self.remote.upload(self.path)

    def exists(self) -> bool:
        """Whether there is a checkpoint (a blob one is only looked at, not downloaded)."""
        return self.path.exists() if self.remote is None else self.remote.exists()

    def anew(self) -> str:
        """How to start the training again from step 1: delete the checkpoint, and the weights it
        made where they are there (else the next run refuses to train over them from step 1)."""
        return f"delete it and {self.weights}" if self.weights else "delete it"


class Bar:
    """step/steps, losses, steps/s, ETA: one rewritten line on a terminal, a log line now and then otherwise."""

    def __init__(self, steps: int, first: int) -> None:
        self.steps, self.first, self.start = steps, first, time.monotonic()
        self.tty, self.last = sys.stderr.isatty(), 0.0

    def show(self, step: int, losses: dict[str, float], final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        rate = (step - self.first) / max(now - self.start, 1e-9)
        eta = (self.steps - step) / rate if rate > 0 else float("inf")
        line = format_train_line(TrainProgress(step, self.steps, rate, eta if math.isfinite(eta) else None), losses)
        if self.tty:
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log.info("%s", line)


def train(req: TrainRequest, painting: Path, output: Path, ckpt: Checkpoint,
          given: tuple[str, ...] | None = None) -> list[float]:
    """Train and write the weights to the local file `output`, after saving `ckpt` at the last step
    (kept: a larger --steps goes on from it); returns the loss of every step (resumed steps included).
    `given`: the content as the user gave it, where req.content holds the local copies of blobs (fresh
    temporary names each run: what a checkpoint is matched on)."""
    import contextlib
    import signal

    import torch

    from stylebatch.models import _device
    from stylebatch.paintings import read_style_image
    from stylebatch.vgg import CONTENT_LAYER, STYLE_LAYERS, gram, load_vgg19
    from stylebatch.weights_file import load_state, plain_real

    size, batch = req.size, req.batch_size
    style_weight = STYLE_WEIGHT if req.style_weight is None else req.style_weight
    content_weight = CONTENT_WEIGHT if req.content_weight is None else req.content_weight
    style_image = _short_side(read_style_image(painting), size)
    images = load_content(list(req.content), size)
    dev = _device(req.device)
    torch.manual_seed(req.seed)
    net = start_net(style_image).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), req.lr)
    vgg = load_vgg19().to(dev)
    with torch.no_grad():
        p = torch.from_numpy(style_image).permute(2, 0, 1)[None].float().to(dev)
        targets = [gram(f) for f in vgg(p, STYLE_LAYERS).values()]
    key = settings_key(painting, replace(req, content=given) if given is not None else req, style_weight,
                       content_weight)
    step, history = 0, []
    if ckpt.fetch():
        try:
            state = load_state(ckpt.path, f"checkpoint {ckpt.name}")
        except BadInput as exc:
            raise BadInput(f"{exc}: {ckpt.anew()}, or write to another -o") from None
        if not isinstance(state, dict) or not {"key", "net", "optimizer", "step", "history"} <= state.keys():
            raise BadInput(f"{ckpt.name} is not a stylebatch training checkpoint: {ckpt.anew()}, or write to "
                           "another -o")
        if state["key"] != key:
            raise BadInput(f"{ckpt.name} is from training another painting or other settings: {ckpt.anew()}, "
                           "or write to another -o")
        if not isinstance(state["net"], dict) or not all(plain_real(v) for v in state["net"].values()):
            raise BadInput(f"checkpoint {ckpt.name} is damaged: {ckpt.anew()}, or write to another -o")
        try:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["optimizer"])
            step, history = int(state["step"]), list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError):  # the right key, the wrong contents
            raise BadInput(f"checkpoint {ckpt.name} is damaged: {ckpt.anew()}, or write to another -o") from None
        if step > req.steps:  # the weights it would write are step's, not --steps'
            raise BadInput(f"{ckpt.name} is at step {step}, past --steps {req.steps}: give --steps {step} or "
                           f"more to go on from it, or {ckpt.anew()}")
        log.info("resuming from %s at step %d", ckpt.name, step)

    def save() -> None:
        ckpt.save({"key": key, "step": step, "history": history, "net": net.state_dict(),
                   "optimizer": opt.state_dict()})

    stop: list[int] = []  # the stop signals received: the loop ends after its step and saves
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    rng, bar, diverged, first = np.random.default_rng(req.seed + step), Bar(req.steps, step), 0, step
    with signals.noted(stop):
        while step < req.steps and not stop:
            x = torch.from_numpy(crops(images, batch, size, rng)).to(dev).permute(0, 3, 1, 2).float()
            with amp:
                y = net(x)
                fy = vgg(y, STYLE_LAYERS + (CONTENT_LAYER,))
                with torch.no_grad():
                    fx = vgg(x, (CONTENT_LAYER,))
            content, style = losses(fy, fx, targets)
            tv = (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., 1:] - y[..., :-1]).abs().mean()
            loss = content_weight * content + style_weight * style + TV_WEIGHT * tv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))  # measures only
            if not (torch.isfinite(loss) and torch.isfinite(norm)):  # skip a bad step; a run of them: lr too high
                diverged += 1
                if diverged >= 3:
                    if bool(torch.isfinite(content) and torch.isfinite(style)):  # the weights overflow them
                        raise BadInput(f"the loss is not finite at step {step + 1}: its parts are, but weighted "
                                       f"(--style-weight {style_weight:g}, --content-weight {content_weight:g}) "
                                       "they overflow: give smaller weights")
                    raise StylebatchError(f"training diverged at step {step + 1} (the loss is not finite): "
                                          f"run again with a lower --lr than {req.lr:g}")
                continue
            diverged = 0
            for group in opt.param_groups:
                group["lr"] = learning_rate(req.lr, step, req.steps)
            opt.step()
            step += 1
            history.append(float(loss.detach()))
            bar.show(step, {"loss": history[-1], "content": content_weight * float(content.detach()),
                            "style": style_weight * float(style.detach())}, final=step == req.steps)
            if step % req.checkpoint_every == 0 and step < req.steps:
                save()
        if stop or step > first:  # at the end too: what a larger --steps goes on from
            save()
        if stop:
            code = {signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HUNG_UP}.get(stop[0], EXIT_INTERRUPTED)
            raise Interrupted(f"training stopped at step {step} of {req.steps}; run the same command again "
                              f"to resume from {ckpt.name}", exit_code=code)
    part = output.with_name(f".{output.name}.part")
    write({k: v.detach().cpu().float() for k, v in net.state_dict().items()}, part, str(output))
    part.replace(output)  # atomic: never a half-written .pth under its name
    return history


def run(req: TrainRequest) -> int:
    from stylebatch.storage import location

    dest = location(req.output)  # a weights file's name: TrainRequest.check
    if dest.is_local() and not Path(dest.local_path()).parent.is_dir():
        raise BadInput(f"-o {dest.display}: folder {Path(dest.local_path()).parent} does not exist")
    if not req.content:
        raise BadInput("no content images: give --content with your videos or folders of photos "
                       "(repeatable)")
    _check_memory(req)
    dest.check_writable()  # before any slow start-up: not after hours of training
    with _only_training(req.output, dest.display), tempfile.TemporaryDirectory(prefix="stylebatch-train-") as tmp:
        ckpt = Checkpoint(req.output, Path(tmp) / "style.pth.ckpt")
        if dest.exists():
            if not ckpt.exists():  # a finished training's weights: never trained again from step 1 over
                raise BadInput(f"-o {dest.display} is already there, with no checkpoint {ckpt.name} beside it to go "
                               "on from: training would start again at step 1 and replace it; delete it to train "
                               "it anew, or write to another -o")
            ckpt.weights = dest.display
        content = [_fetched(source, Path(tmp) / f"content-{i}") for i, source in enumerate(req.content)]
        for source in content:
            content_files(source)
        src = location(req.painting)
        if src.is_local():
            painting = Path(src.local_path()).expanduser()  # `~/starry.jpg`: as --content and run's --style
        else:
            painting = Path(tmp) / f"painting-{os.path.basename(src.name or 'style.jpg')}"
            src.download(painting)
        output = Path(dest.local_path()) if dest.is_local() else Path(tmp) / "style.pth"
        history = train(replace(req, content=tuple(content)), painting, output, ckpt, given=tuple(req.content))
        if not dest.is_local():
            dest.upload(output)
    tail = history[-max(1, len(history) // 4):]
    last = "step" if len(tail) == 1 else f"{len(tail)} steps"
    say(f"{dest.display}: {counted(len(history), 'step')}, loss {history[0]:.4g} at step 1, "
        f"{sum(tail) / len(tail):.4g} over the last {last}; use it with --style {dest.display}")
    return 0


def _only_training(output: str, shown: str):
    """One training at a time into an output, for the whole run: its lock `<output>.lock` (LOCK_SUFFIX;
    a local flock, or a blob lease beside a blob output: workdir.take), taken before the output or its
    checkpoint is looked at and let go (its file removed) once the weights are written. Two trainings
    into one -o wrote one checkpoint by turns (a resume went on from whichever saved last), and one
    started later went on from the first's checkpoint and published weights while the first still
    trained, to be replaced by the first's. A second training is a TransientError (exit code 75) at once, naming the first:
    once that one has ended, the same command goes on from its checkpoint. A killed training's lock
    holds nothing: the kernel lets go of a flock; a blob lease whose holder is known to have stopped
    (a process of this host that has ended, an earlier attempt of the same STYLEBATCH_JOB) is waited
    out, at most a minute."""
    from stylebatch.workdir import exclusive

    return exclusive(beside(output, LOCK_SUFFIX), shown,
                     "one training at a time into an output: wait for it to end (the same command then goes on "
                     "from its checkpoint), or write to another -o")


def _check_memory(req: TrainRequest) -> None:
    """On the CPU, a step that would not fit the machine's memory is refused before anything starts
    (the kernel would kill it without a word, after the downloads). A GPU's memory is not checked."""
    from stylebatch.memory import check_training_fits, on_gpu

    if not on_gpu(req.device):
        check_training_fits(req.batch_size, req.size)


def _fetched(source: str, folder: Path) -> str:
    """A content source as a local path: a blob (a video or a picture) is downloaded into `folder`."""
    from stylebatch.storage import location

    loc = location(source)
    if loc.is_local():
        return source
    if not loc.name or source.split("?", 1)[0].endswith("/"):
        raise BadInput(f"--content {loc.display}: give the blob URI of a video or a picture (a blob folder "
                       "cannot be listed for pictures)")
    if not loc.exists():
        raise BadInput(f"content not found: {loc.display}")
    folder.mkdir()
    path = folder / os.path.basename(loc.name)
    loc.download(path)
    return str(path)
