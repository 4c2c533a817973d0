"""A user's .pth stands in as a seeded TransformerNet (no trained one can be downloaded here): fixtures
for every test module (conftest.py's pytest_plugins)."""

from __future__ import annotations

import re

import pytest
import torch

from stylebatch.transformer_net import TransformerNet


@pytest.fixture(scope="module")
def user_net() -> TransformerNet:
    """A randomly initialised TransformerNet stands in for a trained one: no real .pth can be downloaded here.

    Its last layer is scaled so the output spans 0..255 instead of clamping to near black,
    so comparisons between outputs mean something.
    """
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(60)
        net.deconv3.conv2d.bias.fill_(128)
    return net


@pytest.fixture(scope="module")
def user_pth(tmp_path_factory, user_net) -> tuple:
    """Two files with the same weights: today's format, and the pre-0.4 one with InstanceNorm running stats."""
    folder = tmp_path_factory.mktemp("pth")
    state = user_net.state_dict()
    torch.save(state, folder / "plain.pth")
    old = dict(state)
    for key in [k for k in state if re.search(r"in\d+\.weight$", k)]:
        channels = state[key].shape[0]
        old[key.replace(".weight", ".running_mean")] = torch.randn(channels)
        old[key.replace(".weight", ".running_var")] = torch.rand(channels) + 0.5
    assert len(old) == len(state) + 2 * 15  # in1..in5 plus two per residual block
    torch.save(old, folder / "old_format.pth")
    return folder / "plain.pth", folder / "old_format.pth"
