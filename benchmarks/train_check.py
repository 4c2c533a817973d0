"""Does a short `stylebatch train-style` run take on the painting? Colour histogram and VGG Gram
distances to the painting, before and after, for a trained style and (as a yardstick) the zero-shot
painting style; a before/after picture.

    .venv/bin/python benchmarks/train_check.py [--steps 300] [--size 96] [--batch-size 2] [--lr 0.005] \
        [--style-weight 1] [--content-weight 1] [--image docs/img/trained-before-after.jpg]

Trains on the sample clip (samples/sample.mp4) with Starry Night (Debian's opencv-doc), on the CPU,
then paints the clip's middle frame at --max-side. Figures (lower is nearer):
- colour: L1 distance between 6x6x6-bin RGB histograms (0 = same colours, 2 = disjoint), as
  tests/test_paintings.py measures it;
- gram: mean over relu1_1..relu4_1 of |G(x) - G(painting)| / |G(painting)| (Frobenius), the style
  loss's own features;
- structure: correlation of the frame's and the picture's luminance, both blurred to 1/8 size (1 =
  the frame's shapes and shading all there, 0 = none of them): how much of the content is left.
Prints one markdown table and the loss at the start and the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STARRY = Path("/usr/share/doc/opencv-doc/examples/data/starry_night.jpg")
SAMPLE = REPO / "samples" / "sample.mp4"


def colour_histogram(image: np.ndarray) -> np.ndarray:
    bins = (image.reshape(-1, 3) // 43).astype(np.int64)
    counts = np.bincount(bins[:, 0] * 36 + bins[:, 1] * 6 + bins[:, 2], minlength=216).astype(np.float64)
    return counts / counts.sum()


def middle_frame(path: Path, max_side: int) -> np.ndarray:
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    frame = frames[len(frames) // 2]
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    size = (round(w * scale) // 4 * 4, round(h * scale) // 4 * 4)
    return np.asarray(Image.fromarray(frame).resize(size, Image.LANCZOS))


def measures(images: dict[str, np.ndarray], painting: np.ndarray) -> dict[str, dict[str, float]]:
    import torch

    from stylebatch.vgg import STYLE_LAYERS, gram, load_vgg19

    vgg = load_vgg19()

    def feats(image: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return vgg(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float(), STYLE_LAYERS)

    target_hist, target = colour_histogram(painting), feats(painting)
    target_grams = {k: gram(target[k]) for k in STYLE_LAYERS}
    frame = _coarse_luma(images["frame"])
    out = {}
    for name, image in images.items():
        f = feats(image)
        grams = [float((gram(f[k]) - target_grams[k]).norm() / target_grams[k].norm()) for k in STYLE_LAYERS]
        out[name] = {"colour": float(np.abs(colour_histogram(image) - target_hist).sum()),
                     "gram": float(np.mean(grams)),
                     "structure": float(np.corrcoef(frame, _coarse_luma(image))[0, 1])}
    return out


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _coarse_luma(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    small = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((w // 8, h // 8), Image.BOX)
    return np.asarray(small, np.float64).ravel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--style-weight", type=float)
    parser.add_argument("--content-weight", type=float)
    parser.add_argument("--max-side", type=int, default=256, help="size the frame is painted at")
    parser.add_argument("--weights", type=Path, help="keep the trained weights here (default: a temp file); "
                                                     "when the file exists, measure it without training")
    parser.add_argument("--image", type=Path, help="write frame | trained | zero-shot here (JPEG)")
    args = parser.parse_args()

    from PIL import Image

    from stylebatch.models import load_stylizer

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or Path(tmp) / "starry.pth"
        trained = not weights.exists()
        cmd = [str(REPO / ".venv/bin/stylebatch"), "train-style", str(STARRY), "-o", str(weights), "--content",
               str(SAMPLE), "--steps", str(args.steps), "--size", str(args.size), "--batch-size",
               str(args.batch_size), "--device", "cpu", "--checkpoint-every", "50"]
        for flag, value in (("--lr", args.lr), ("--style-weight", args.style_weight),
                            ("--content-weight", args.content_weight)):
            if value is not None:
                cmd += [flag, str(value)]
        if trained:
            print("$", " ".join(cmd[1:]), file=sys.stderr)
            started, cpu_before = time.monotonic(), _children_cpu()
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            seconds, cpu = time.monotonic() - started, _children_cpu() - cpu_before
            print(done.stdout.strip())
        frame = middle_frame(SAMPLE, args.max_side)
        images = {"frame": frame,
                  "trained": load_stylizer(str(weights), device="cpu")(frame[None].copy())[0],
                  "zero-shot": load_stylizer(str(STARRY), device="cpu")(frame[None].copy())[0]}
    painting = np.asarray(Image.open(STARRY).convert("RGB"))
    found = measures(images, painting)
    if trained:
        print(f"train-style {args.steps} steps at {args.size} px, batch {args.batch_size}, lr {args.lr or 'default'}, "
              f"style weight {args.style_weight or 'default'}, content weight {args.content_weight or 'default'}: "
              f"{seconds:.0f} s, {cpu:.0f} s of CPU")
    else:
        print(f"measured the existing weights {weights} (no training)")
    print("| picture | colour to painting | gram to painting | structure kept |")
    print("|---|---|---|---|")
    for name, m in found.items():
        print(f"| {name} | {m['colour']:.3f} | {m['gram']:.3f} | {m['structure']:.2f} |")
    if args.image:
        Image.fromarray(np.concatenate(list(images.values()), axis=1)).save(args.image, quality=85)
    return 0


if __name__ == "__main__":
    sys.exit(main())
