"""`stylebatch train-style` through the real CLI: a tiny run whose loss falls and whose weights load,
an interrupted run that resumes from its checkpoint, and bad input as one line."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clips import error_lines, make_clip, stylebatch
from PIL import Image

from stylebatch.errors import BadInput
from stylebatch.models import load_stylizer
from stylebatch.train import FLAT, crops, load_content, losses, sample_video
from stylebatch.vgg import CONTENT_LAYER, STYLE_LAYERS, gram, load_vgg19

STARRY = "/usr/share/doc/opencv-doc/examples/data/starry_night.jpg"
TINY = ["--size", "32", "--batch-size", "1", "--lr", "0.01", "--device", "cpu"]


@pytest.fixture(scope="module")
def content(tmp_path_factory) -> list[str]:
    """A clip and a folder with a photo: both kinds of content a user gives."""
    folder = tmp_path_factory.mktemp("content")
    clip = make_clip(folder / "clip.mp4", size=(96, 64), frames=6)
    photos = folder / "photos"
    photos.mkdir()
    Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").resize((120, 100)).save(photos / "fruits.png")
    return ["--content", str(clip), "--content", str(photos)]


def test_tiny_training_lowers_the_loss_and_writes_weights_that_load(tmp_path, content):
    out = tmp_path / "starry.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--steps", "8", *TINY, *content, timeout=900)
    assert result.returncode == 0, result.stderr
    first, last = map(float, re.search(r"loss (\S+) at step 1, (\S+) over the last", result.stdout).groups())
    assert last < 0.9 * first, result.stdout
    assert "steps/s" in result.stderr and "ETA" in result.stderr  # the progress line
    assert Path(f"{out}.ckpt").exists()  # kept: a larger --steps goes on from it
    frame = np.asarray(Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").convert("RGB"))[None, :64, :80]
    painted = load_stylizer(str(out), device="cpu")(np.ascontiguousarray(frame))
    assert painted.shape == frame.shape and np.abs(painted.astype(np.int16) - frame).mean() > 5


def test_a_one_step_training_already_paints_in_the_paintings_colours_not_black(tmp_path, content):
    """pytorch/examples' initialisation paints near-black, and short runs stayed dark; the net starts
    from the painting's mean colour instead."""
    out = tmp_path / "one.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--steps", "1", *TINY, *content, timeout=900)
    assert result.returncode == 0, result.stderr
    painting = np.asarray(Image.open(STARRY).convert("RGB"), np.float64).reshape(-1, 3).mean(0)
    frame = np.asarray(Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").convert("RGB"))[None, :64, :80]
    painted = load_stylizer(str(out), device="cpu")(np.ascontiguousarray(frame))
    assert np.abs(painted.reshape(-1, 3).mean(0) - painting).max() < 20, (painted.reshape(-1, 3).mean(0), painting)


@pytest.fixture(scope="module")
def painting_features() -> dict[str, torch.Tensor]:
    image = np.asarray(Image.open(STARRY).convert("RGB").resize((64, 52)))
    with torch.no_grad():
        rgb = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
        return load_vgg19()(rgb, STYLE_LAYERS + (CONTENT_LAYER,))


def test_a_one_step_training_says_1_step_and_over_the_last_1_step(tmp_path, content):
    """The summary read "1 steps, ... over the last 1", where every other line counts in English
    (logs.counted: "1 frame")."""
    result = stylebatch("train-style", STARRY, "-o", tmp_path / "one.pth", "--steps", "1", *TINY, *content, timeout=900)
    assert result.returncode == 0, result.stderr
    assert ": 1 step, loss " in result.stdout and "over the last step;" in result.stdout, result.stdout


@pytest.mark.parametrize("layer", STYLE_LAYERS)
def test_a_gram_matrix_ten_percent_off_costs_the_same_at_every_style_layer(painting_features, layer):
    """Caffe VGG's relu4_1 Gram matrices are ~600x relu1_1's: with plain squared errors the colour
    layer did not count at all. Each layer's loss is relative to its target's size."""
    targets = [gram(painting_features[name]) for name in STYLE_LAYERS]
    off = {name: f * (1.1 ** 0.5 if name == layer else 1.0) for name, f in painting_features.items()}
    _, style = losses(off, painting_features, targets)
    assert float(style) == pytest.approx(0.1 ** 2, rel=1e-3)


def test_training_crops_skip_flat_patches_such_as_the_black_frames_of_a_fade():
    """A flat crop teaches nothing and made steps' gradients NaN (a run of three ended the training
    as 'diverged')."""
    black = np.zeros((64, 64, 3), np.uint8)
    detail = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    batch = crops([black, black, detail], 40, 32, np.random.default_rng(0))
    assert all(crop.std() >= FLAT for crop in batch)


def _frame_index(rgb: np.ndarray, frames: int) -> int:
    """Which frame of a make_clip(index_colors=True) clip a sampled picture is (its nearest colour)."""
    colours = np.array([[(n * 67 + 20) % 200 + 20, (n * 29 + 90) % 200 + 20, (n * 113 + 160) % 200 + 20]
                        for n in range(frames)])
    return int(np.abs(colours - rgb.reshape(-1, 3).mean(0)).sum(1).argmin())


@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.mkv", "libx264"),
                                         ("clip.webm", "libvpx-vp9")])
def test_content_frames_are_sampled_over_the_whole_video_whatever_its_container(tmp_path, name, codec):
    """A Matroska or WebM header counts no frames: the first 48 were taken, a long video's first
    seconds (a black fade-in was refused as content "all one colour"). 4 of 40 frames: one every 10."""
    path = make_clip(tmp_path / name, size=(32, 32), frames=40, fps=10, codec=codec, index_colors=True)
    picked = [_frame_index(frame, 40) for frame in sample_video(path, 4, 32)]
    assert len(picked) == 4 and picked[-1] >= 30, picked


@pytest.mark.parametrize("colour", [(0, 0, 0), (128, 128, 128)])
def test_content_that_is_all_one_colour_is_refused_as_such_not_as_a_diverged_training(tmp_path, colour):
    """Content whose every picture is flat (a black clip, a grey card): each crop was drawn again 20
    times and then kept, its gradients were not finite, and the run ended "training diverged ...: run
    again with a lower --lr", which no --lr cures. Now one line, before training, naming the content."""
    Image.new("RGB", (200, 120), colour).save(tmp_path / "card.png")
    out = tmp_path / "flat.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--content", tmp_path / "card.png", "--steps", "3",
                        *TINY, timeout=900)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    line = error_lines(result)[0]
    assert "--lr" not in line and "one colour" in line and "--content" in line, line
    assert "step" not in result.stdout + result.stderr.replace(line, "")  # refused before training
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


@pytest.mark.parametrize("special", ["fifo", "device"])
def test_content_that_is_a_named_pipe_or_a_device_is_refused_not_waited_on(tmp_path, special):
    """--content given a FIFO (a named pipe, nothing writing to it) was opened as a video and the
    training waited on it forever before saying anything; run and preview refuse such an input."""
    import os

    source = tmp_path / "clip.mp4"
    if special == "fifo":
        os.mkfifo(source)
    else:
        source = Path("/dev/zero")
    out = tmp_path / "x.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--content", source, "--steps", "1", *TINY, timeout=60)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    line = error_lines(result)[0]
    assert ("a FIFO (named pipe), not" if special == "fifo" else "a device, not") in line and str(source) in line
    assert not out.exists()


def test_a_checkpoint_is_resumed_with_a_fresh_sas_on_the_content_blobs_but_not_with_other_content():
    """The checkpoint's key hashed the content as given, a blob's SAS query included: the same command
    with a new SAS (the old one expired, a retried job's) refused to resume, "k.pth.ckpt is from
    training another painting or other settings". A blob is the same content under any SAS."""
    from stylebatch.requests import TrainRequest
    from stylebatch.train import settings_key

    blob = "https://acct.blob.core.windows.net/videos/clip.mp4"
    def key(*content: str) -> str:
        return settings_key(Path(STARRY), TrainRequest(painting=STARRY, output="k.pth", content=content), 2.0, 1.0)

    assert key(f"{blob}?sv=2024-01-01&se=2030-01-01&sp=r&sig=AAAA", "photos") == key(
        f"{blob}?sv=2024-01-01&se=2031-06-30&sp=rl&sig=BBBB", "photos") == key(blob, "photos")
    assert key(blob, "photos") != key(blob.replace("clip", "other"), "photos") != key(blob, "photos2")


def test_a_painting_given_under_the_home_folder_as_a_tilde_path_is_found_as_content_is(tmp_path, content):
    """`--content ~/clip.mp4` and `run --style ~/starry.jpg` expand the `~` (a path from a config file or
    a quoted argument); train-style's painting did not: "style image starry.jpg not found", of a file
    that is there."""
    import os
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(STARRY, home / "starry.jpg")
    result = stylebatch("train-style", "~/starry.jpg", "-o", tmp_path / "s.pth", "--steps", "1", *TINY, *content,
                        env={**os.environ, "HOME": str(home)}, timeout=900)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.pth").exists()


def _signalled_once_checkpointed(proc: subprocess.Popen, ckpt: Path, sig: int) -> str:
    """Send a training `sig` once its first checkpoint is there (or it ended); its stderr once it ends."""
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    return proc.communicate(timeout=600)[1]


def test_interrupted_training_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, content):
    out = tmp_path / "resumed.pth"
    ckpt = Path(f"{out}.ckpt")
    cmd = [sys.executable, "-m", "stylebatch", "train-style", STARRY, "-o", str(out), *TINY, *content,
           "--checkpoint-every", "2"]
    proc = subprocess.Popen([*cmd, "--steps", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = _signalled_once_checkpointed(proc, ckpt, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert len([line for line in stderr.splitlines() if line.startswith("stylebatch: error:")]) == 1
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] >= 2 and len(saved["history"]) == saved["step"] and not out.exists()
    result = subprocess.run([*cmd, "--steps", str(saved["step"] + 2)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {ckpt} at step {saved['step']}" in result.stderr
    assert f"{saved['step'] + 2} steps" in result.stdout and out.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == saved["step"] + 2  # kept, at the last step


def test_a_training_started_under_nohup_trains_on_through_a_hang_up(tmp_path, content):
    """`nohup stylebatch train-style ...` over ssh: the training replaced the ignored SIGHUP with its own
    stop, so closing the terminal stopped hours of training (exit 129) though nohup was there to keep
    it going. A signal the process was started ignoring stays ignored, as `stylebatch run` leaves it."""
    out = tmp_path / "nohup.pth"
    ckpt = Path(f"{out}.ckpt")
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "train-style", STARRY, "-o", str(out), *TINY, *content,
                             "--checkpoint-every", "2", "--steps", "12"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    stderr = _signalled_once_checkpointed(proc, ckpt, signal.SIGHUP)
    assert proc.returncode == 0, stderr
    assert torch.load(ckpt, weights_only=True)["step"] == 12 and out.exists()


def test_a_training_called_from_a_thread_of_a_service_trains(tmp_path, content):
    """stylebatch.train.run(TrainRequest(...).validate()) from a worker thread (docs/api.md) failed after
    loading everything: 'signal only works in main thread'. Stop signals are the main thread's there."""
    import threading

    from stylebatch.requests import TrainRequest
    from stylebatch.train import run

    content_args = content[1::2]
    req = TrainRequest(painting=STARRY, output=str(tmp_path / "thread.pth"), content=content_args, steps=2, size=32,
                       batch_size=1, lr=0.01, device="cpu").validate()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_outcome(run, req)))
    worker.start()
    worker.join(600)
    assert outcome == [0] and (tmp_path / "thread.pth").exists(), outcome
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - what the thread saw, for the assertion
        return repr(exc)


def test_training_stopped_while_its_weights_are_written_leaves_no_partial_file_beside_them(tmp_path, content,
                                                                                          monkeypatch):
    """The weights are written to `.NAME.part` and renamed; a Ctrl-C (or any failure) while torch.save
    wrote them left that hidden partial file in the output's folder, after the signal handlers of the
    training loop were gone. Now it is removed, the checkpoint kept for the same command to finish."""
    from stylebatch import train as training
    from stylebatch.requests import TrainRequest

    out = tmp_path / "w.pth"
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if Path(path).name == f".{out.name}.part":
            Path(path).write_bytes(b"half of it")
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    req = TrainRequest(painting=STARRY, output=str(out), content=tuple(content[1::2]), steps=1, size=32, batch_size=1,
                       device="cpu")
    with pytest.raises(KeyboardInterrupt):
        training.train(req, Path(STARRY), out, training.Checkpoint(str(out), tmp_path / "unused"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth.ckpt"]


@pytest.mark.parametrize("size, kept", [("4m", []), ("24m", ["x.pth.ckpt"])], ids=["checkpoint", "weights"])
def test_a_full_disk_while_the_checkpoint_or_the_weights_are_written_is_one_line_and_fills_nothing(
        tmp_path, content, size, kept):
    """A full output folder: torch.save failed with "RuntimeError: ... unexpected pos ...", a traceback and
    exit code 1, and its partial file was left, filling the disk. Now one line naming the folder, exit
    code 2; a checkpoint that was written is kept, for the same command to finish once there is room."""
    import os
    import shlex

    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -r -m)")
    small = tmp_path / "small"
    small.mkdir()
    command = [sys.executable, "-m", "stylebatch", "train-style", STARRY, "-o", str(small / "x.pth"), "--steps", "2",
               *TINY, *content]
    script = (f"mount -t tmpfs -o size={size} none {shlex.quote(str(small))} && {shlex.join(command)}; "
              f"echo rc=$?; ls -A {small}")
    result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True,
                            env=dict(os.environ), timeout=900)
    lines = error_lines(result)
    assert "rc=2" in result.stdout and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "no space left in " + str(small) in lines[0], lines[0]
    assert result.stdout.split("rc=2", 1)[1].split() == kept, result.stdout


def test_a_finished_training_goes_on_with_a_larger_steps_and_is_never_trained_again_from_step_1(tmp_path, content):
    """The checkpoint was deleted at the end, so the same command with a larger --steps trained again
    from step 1 and replaced the finished weights without a word. Now it goes on from the last step;
    and weights with no checkpoint beside them are refused, not trained over."""
    out = tmp_path / "starry.pth"
    ckpt = Path(f"{out}.ckpt")
    first = stylebatch("train-style", STARRY, "-o", out, "--steps", "2", *TINY, *content, timeout=900)
    assert first.returncode == 0, first.stderr
    more = stylebatch("train-style", STARRY, "-o", out, "--steps", "3", *TINY, *content, timeout=900)
    assert more.returncode == 0, more.stderr
    assert f"resuming from {ckpt} at step 2" in more.stderr and "3 steps" in more.stdout, more.stderr
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    ckpt.unlink()
    weights = out.read_bytes()
    again = stylebatch("train-style", STARRY, "-o", out, "--steps", "4", *TINY, *content, timeout=900)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr
    line = error_lines(again)[0]
    assert f"-o {out} is already there" in line and "step 1" in line and "delete it" in line, line
    assert "Traceback" not in again.stderr and out.read_bytes() == weights


def _checkpoint_at_step_3(path: Path, content: list[str], **settings) -> None:
    """A sound checkpoint of TINY's settings (and `settings`) at step 3."""
    from stylebatch.requests import TrainRequest
    from stylebatch.train import CONTENT_WEIGHT, STYLE_WEIGHT, settings_key
    from stylebatch.transformer_net import TransformerNet

    req = TrainRequest(painting=STARRY, output=str(path)[:-5], size=32, batch_size=1, lr=0.01, device="cpu",
                       content=tuple(content[1::2]), **settings)
    net = TransformerNet()
    opt = torch.optim.Adam(net.parameters(), 0.01)
    torch.save({"key": settings_key(Path(STARRY), req, STYLE_WEIGHT, CONTENT_WEIGHT), "step": 3,
                "history": [3.0, 2.0, 1.0], "net": net.state_dict(), "optimizer": opt.state_dict()}, path)


@pytest.mark.parametrize("case, given, written, words", [
    ("another seed", ["--steps", "5", "--seed", "7"], {}, "from training another painting or other settings"),
    ("other content", ["--steps", "5"], {"content": ("elsewhere.mp4",)}, "from training another painting or other"),
    ("fewer steps than it has done", ["--steps", "2"], {}, "is at step 3, past --steps 2: give --steps 3 or more"),
])
def test_a_checkpoint_the_command_cannot_go_on_from_is_one_line_and_kept(tmp_path, content, case, given, written,
                                                                         words):
    """--seed and --content were not part of what a checkpoint must match: other content resumed without
    a word; and one past --steps wrote its own step's weights, said to be --steps'."""
    out = tmp_path / "x.pth"
    ckpt = Path(f"{out}.ckpt")
    if "content" in written:
        _checkpoint_at_step_3(ckpt, ["--content", *written["content"]])
    else:
        _checkpoint_at_step_3(ckpt, content)
    before = ckpt.read_bytes()
    result = stylebatch("train-style", STARRY, "-o", out, *TINY, *content, *given, timeout=900)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert words in error_lines(result)[0] and "Traceback" not in result.stderr, result.stderr
    assert ckpt.read_bytes() == before and not out.exists()


def test_a_training_into_blob_storage_keeps_its_checkpoint_there_and_a_new_pod_resumes_it(tmp_path, azure_env):
    """As the training Job does on Kubernetes: painting, content and weights are blobs, the checkpoint
    is a blob beside the weights, a pod stopped by SIGTERM saves it, and the next pod continues."""
    service, container = azure_env.azurite.service_client(), azure_env.container
    blobs = service.get_container_client(container)
    for name, path in (("styles/starry.jpg", STARRY), ("videos/clip.mp4", make_clip(tmp_path / "c.mp4", size=(96, 64), frames=6))):
        blobs.upload_blob(name, Path(path).read_bytes())
    out = f"az://{container}/work/job-1234abcd.pth"
    cmd = [sys.executable, "-m", "stylebatch", "train-style", f"az://{container}/styles/starry.jpg", "-o", out,
           "--content", f"az://{container}/videos/clip.mp4", *TINY, "--checkpoint-every", "2"]
    proc = subprocess.Popen([*cmd, "--steps", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=azure_env.env)
    deadline = time.monotonic() + 600
    while not blobs.get_blob_client("work/job-1234abcd.pth.ckpt").exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr
    saved = torch.load(io.BytesIO(blobs.download_blob("work/job-1234abcd.pth.ckpt").readall()), weights_only=True)
    assert saved["step"] >= 2 and not blobs.get_blob_client("work/job-1234abcd.pth").exists()
    result = subprocess.run([*cmd, "--steps", str(saved["step"] + 2)], capture_output=True, text=True, timeout=900,
                            env=azure_env.env)
    assert result.returncode == 0, result.stderr
    assert f"at step {saved['step']}" in result.stderr and f"{saved['step'] + 2} steps" in result.stdout
    assert blobs.get_blob_client("work/job-1234abcd.pth.ckpt").exists()  # kept: a larger --steps goes on
    weights = tmp_path / "w.pth"
    weights.write_bytes(blobs.download_blob("work/job-1234abcd.pth").readall())
    frame = np.zeros((1, 32, 48, 3), np.uint8)
    assert load_stylizer(str(weights), device="cpu")(frame).shape == frame.shape


class _Output:
    """A training's -o, local or a blob, as a test looks at it: its checkpoint's step, whether the
    weights and the lock are there."""

    def __init__(self, backend: str, tmp_path: Path, request) -> None:
        self.env = dict(os.environ)
        if backend == "local":
            self.out, self.blobs = str(tmp_path / "x.pth"), None
        else:
            azure_env = request.getfixturevalue("azure_env")
            self.env, self.out = azure_env.env, f"az://{azure_env.container}/styles/x.pth"
            self.blobs = azure_env.azurite.service_client().get_container_client(azure_env.container)

    def _bytes(self, suffix: str) -> bytes | None:
        if self.blobs is None:
            path = Path(self.out + suffix)
            return path.read_bytes() if path.exists() else None
        blob = self.blobs.get_blob_client("styles/x.pth" + suffix)
        return blob.download_blob().readall() if blob.exists() else None

    def exists(self, suffix: str = "") -> bool:
        if self.blobs is None:
            return Path(self.out + suffix).exists()
        return self.blobs.get_blob_client("styles/x.pth" + suffix).exists()

    def step(self) -> int:
        return torch.load(io.BytesIO(self._bytes(".ckpt")), weights_only=True)["step"]


@pytest.mark.parametrize("backend", ["local", pytest.param("blob", marks=pytest.mark.azurite)])
def test_a_second_training_into_the_same_output_fails_at_once_and_leaves_the_first_alone(tmp_path, content, backend,
                                                                                        request):
    """Two `train-style` runs into one -o had no lock: the second went on from the first's checkpoint and
    published its weights while the first still trained (both saving the one checkpoint by turns). Now
    the second fails at once, exit code 75 (the same command works once the first has ended), in one
    line naming the first; the first goes on, and nothing of the second's is left."""
    import socket

    where = _Output(backend, tmp_path, request)
    cmd = [sys.executable, "-m", "stylebatch", "train-style", STARRY, "-o", where.out, *TINY, *content,
           "--checkpoint-every", "2"]
    first = subprocess.Popen([*cmd, "--steps", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=where.env)
    try:
        deadline = time.monotonic() + 600
        while not where.exists(".ckpt") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGSTOP)  # held still: it cannot end (or save again) while the second is tried
        try:
            step = where.step()
            started = time.monotonic()
            second = subprocess.run([*cmd, "--steps", str(step + 1)], capture_output=True, text=True, timeout=900,
                                    env=where.env)
            took = time.monotonic() - started
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 75 and "Traceback" not in second.stderr, second.stderr
        [line] = error_lines(second)
        assert "in use by another stylebatch" in line and f"pid {first.pid}" in line, line
        assert socket.gethostname() in line and "write to another -o" in line, line
        assert took < 60 and not where.exists()  # at once, and no weights published
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130 and "run the same command again to resume" in stderr, stderr
    assert where.step() >= step and not where.exists() and not where.exists(".lock")  # the first's, its lock gone


def _dead_pid() -> str:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return str(ended.pid)


@pytest.mark.parametrize("backend", ["local", pytest.param("blob", marks=pytest.mark.azurite)])
def test_the_lock_of_a_killed_training_blocks_the_next_one_at_most_until_it_expires(tmp_path, content, backend,
                                                                                   request):
    """A training killed outright (`kill -9`, the OOM killer) leaves its lock: a local lock file no
    process holds, which blocks nothing; a blob lease that lasts until it expires, which the next
    training of this host, seeing its holder is gone, waits out instead of failing."""
    import json
    import socket

    where = _Output(backend, tmp_path, request)
    holder = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "earlier"}
    if where.blobs is None:
        Path(where.out + ".lock").write_text(json.dumps({**holder, "token": "gone"}))
    else:
        lock = where.blobs.get_blob_client("styles/x.pth.lock")
        lock.upload_blob(b"")
        lease = lock.acquire_lease(lease_duration=15)  # as a killed holder's: never renewed again
        lock.set_blob_metadata(holder, lease=lease)
    result = stylebatch("train-style", STARRY, "-o", where.out, "--steps", "1", *TINY, *content, env=where.env,
                        timeout=900)
    assert result.returncode == 0, result.stderr
    waited = "still locked by a stylebatch of this host that has ended" in result.stderr
    assert waited == (backend == "blob"), result.stderr
    assert where.exists() and not where.exists(".lock")


@pytest.mark.parametrize("args, words", [
    (["-o", "{tmp}/x.pth"], ["--content"]),
    (["-o", "{tmp}/x.png", "--content", "{tmp}"], ["'x.png' is no weights file", ".pth, .pt, .model"]),
    (["-o", "{tmp}/nowhere/x.pth", "--content", "{tmp}"], ["does not exist"]),
    (["-o", "{tmp}/x.pth", "--content", "az://videos/photos/"], ["blob URI of a video or a picture"]),
    (["-o", "{tmp}/x.pth", "--content", "{tmp}/missing.mp4"], ["content not found"]),
    (["-o", "{tmp}/x.pth", "--content", "{tmp}"], ["holds no .jpg, .png or .webp pictures"]),
    # the crops are halved twice: 250 ended in a tensor-size traceback with exit code 1
    (["-o", "{tmp}/x.pth", "--content", "{tmp}", "--size", "250"], ["--size", "multiple of 4", "give 248 or 252"]),
    (["-o", "{tmp}/x.pth", "--content", "{tmp}", "--size", "33"], ["give 32 or 36"]),
])
def test_bad_training_input_is_one_line(tmp_path, args, words):
    result = stylebatch("train-style", STARRY, *[a.format(tmp=tmp_path) for a in args], "--steps", "1")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert all(w in error_lines(result)[0] for w in words), result.stderr
    assert not list(tmp_path.glob("*.pth"))


GIB = 1024 ** 3


@pytest.mark.parametrize("batch, size, available_gib, advice", [
    (4, 256, 8, None),  # the defaults: about 2 GiB
    (4, 512, 8, None),  # about 6.5 GiB, in 6.8 usable
    (8, 512, 8, "give --batch-size 4 or less"),
    (2, 512, 4, "give --batch-size 1"),
    (1, 1024, 4, "give --size 704 or less"),
    (4, 1024, 4, "give --size 704 or less and --batch-size 1"),
    (1, 256, 0.5, "train on a machine with more memory"),
])
def test_a_training_step_that_would_not_fit_the_memory_says_what_would(batch, size, available_gib, advice):
    from stylebatch.memory import check_training_fits

    if advice is None:
        check_training_fits(batch, size, available=int(available_gib * GIB))
        return
    with pytest.raises(BadInput) as caught:
        check_training_fits(batch, size, available=int(available_gib * GIB))
    assert str(caught.value).endswith(": " + advice)


def test_a_batch_too_large_for_the_machine_is_refused_at_once_in_one_line_not_killed_later(tmp_path, content):
    """train-style --batch-size 64 --size 1024 went on into the downloads and the first step, and the
    kernel killed it: no error line, exit code 137, nothing to say which flag to lower."""
    result = stylebatch("train-style", STARRY, "-o", tmp_path / "w.pth", *content, "--steps", "1",
                        "--batch-size", "64", "--size", "1024", "--device", "cpu", timeout=120)
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert re.search(r"training 64 crops of 1024x1024 a step needs about \d+\.\d GiB, more than the \d+\.\d GiB "
                     r"it may use here \(85% of \d+\.\d GiB\): give --batch-size \d+( or less)?$", lines[0]), lines[0]
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no /sys/kernel here")
def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    """A folder access() calls writable that is not (root in /sys or on a read-only mount): training
    ran every step, then torch.save failed with a 28-line traceback and exit code 1, the steps lost."""
    result = stylebatch("train-style", STARRY, "-o", "/sys/kernel/x.pth", "--content", STARRY, "--steps", "2",
                        "--size", "32", "--batch-size", "1", "--device", "cpu", timeout=300)
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot write /sys/kernel/x.pth: the folder /sys/kernel is not writable" in lines[0]
    assert "Traceback" not in result.stderr and "step" not in result.stdout + result.stderr


@pytest.mark.parametrize("given", ["folder", "file"])
def test_a_content_photo_with_too_many_pixels_is_named_as_a_content_image_not_a_style_image(tmp_path, given):
    """The limit's message said "more than the 64 megapixels a style image may have" of a content photo."""
    huge = tmp_path / "huge.jpg"
    Image.new("L", (8200, 8200)).save(huge)
    with pytest.raises(BadInput) as info:
        load_content([str(tmp_path if given == "folder" else huge)], 64)
    assert str(info.value) == ("content image huge.jpg is 8200x8200 pixels, more than the 64 megapixels "
                               "a content image may have; scale it down")


def test_a_diverging_training_stops_with_one_line_and_writes_no_weights(tmp_path, content):
    out = tmp_path / "wild.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--steps", "20", "--size", "32", "--batch-size", "1",
                        "--lr", "1e12", "--device", "cpu", *content, timeout=900)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "training diverged" in error_lines(result)[0] and "lower --lr" in error_lines(result)[0]
    assert not out.exists()


def test_loss_weights_so_large_that_the_loss_overflows_are_named_not_the_learning_rate(tmp_path, content):
    """--style-weight 1e308 made every step's loss inf, and the line said to lower --lr, which no
    --lr cures (newcomer pass)."""
    out = tmp_path / "heavy.pth"
    result = stylebatch("train-style", STARRY, "-o", out, "--steps", "20", "--size", "32", "--batch-size", "1",
                        "--style-weight", "1e308", "--device", "cpu", *content, timeout=900)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    line = error_lines(result)[0]
    assert "--style-weight 1e+308" in line and "smaller weights" in line and "--lr" not in line, line
    assert not out.exists()


def _foreign_pickle(path: Path, content: list[str]) -> None:
    torch.save([1, 2, 3], path)


def _complex_weights(path: Path, content: list[str]) -> None:
    """A checkpoint of these very settings (TINY, STARRY) whose net holds a complex tensor: torch's
    load_state_dict warned that it drops the imaginary part, and training went on."""
    from stylebatch.requests import TrainRequest
    from stylebatch.train import CONTENT_WEIGHT, STYLE_WEIGHT, settings_key
    from stylebatch.transformer_net import TransformerNet

    req = TrainRequest(painting=STARRY, output=str(path)[:-5], size=32, batch_size=1, lr=0.01, device="cpu",
                       content=tuple(content[1::2]))
    net = TransformerNet().state_dict()
    net["conv1.conv2d.weight"] = net["conv1.conv2d.weight"].to(torch.complex64)
    torch.save({"key": settings_key(Path(STARRY), req, STYLE_WEIGHT, CONTENT_WEIGHT), "step": 1, "history": [1.0],
                "net": net, "optimizer": {}}, path)


@pytest.mark.parametrize("write, words", [
    (lambda p, content: p.write_text("not a checkpoint"), "not a PyTorch checkpoint, or corrupt or truncated"),
    # the first bytes of a pickle of protocol 254: torch also warned on stderr
    (lambda p, content: p.write_bytes(b"\x80\xfe" + bytes(range(256)) * 4),
     "not a PyTorch checkpoint, or corrupt or truncated"),
    (_foreign_pickle, "is not a stylebatch training checkpoint"),
    (_complex_weights, "is damaged"),
], ids=["text", "pickle-like bytes", "another program's tensors", "complex weights"])
def test_a_file_in_the_checkpoints_place_that_is_not_one_is_one_line_and_is_kept(tmp_path, content, write, words):
    """Training resumes from `<output>.ckpt` when it exists; a foreign or damaged file there was a traceback
    (exit 1) or torch's warning. Now one line naming it, exit 2, the file untouched, no weights written."""
    out = tmp_path / "x.pth"
    ckpt = Path(f"{out}.ckpt")
    write(ckpt, content)
    before = ckpt.read_bytes()
    result = stylebatch("train-style", STARRY, "-o", out, "--steps", "2", *TINY, *content, timeout=900)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    line = error_lines(result)[0]
    assert words in line and str(ckpt) in line and "delete it" in line, line
    assert result.stderr.strip().splitlines() == [line], result.stderr  # nothing else: no warning, no traceback
    assert ckpt.read_bytes() == before and not out.exists()
