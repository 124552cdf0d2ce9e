"""train.<ds>.resolution: the net trains and is validated at a fraction of the stored frame size;
the metric stays the full-size one (logits resized back to the labels). Golden values by numpy:
bilinear halving (align_corners=False) is the 2x2 block mean, nearest-exact halving takes the
odd rows and columns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lix.config import TrainConfig
from lix.evaluate import predict_logits
from lix.loaders import augment_config
from pipeline.errors import ConfigError


class _Probe(torch.nn.Module):
    """Records its inputs; returns 3-class logits at its input's size (a 1x1 conv of RGB)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen = None

    def forward(self, rgb, x=None):
        self.seen = (rgb, x)
        return self.conv(rgb)


def _inputs(batch):
    return batch["rgb"], batch["x"]


def test_validation_at_half_resolution_resizes_inputs_and_brings_logits_back():
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.rand(2, 3, 8, 12, generator=g), "x": torch.rand(2, 1, 8, 12, generator=g),
             "label": torch.zeros(2, 8, 12, dtype=torch.long)}
    model = _Probe()
    full = predict_logits(model, _inputs, batch, 1.0)
    assert torch.equal(full, model.conv(batch["rgb"]))
    half = predict_logits(model, _inputs, batch, 0.5)
    rgb, x = (t.numpy() for t in model.seen)
    block = batch["rgb"].numpy().reshape(2, 3, 4, 2, 6, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(rgb, block, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(x, batch["x"].numpy()[:, :, 1::2, 1::2])
    assert half.shape == (2, 3, 8, 12)  # the labels' size: the metric is the full-size one
    low = model.conv(torch.from_numpy(block)).detach().numpy()
    # bilinear doubling (align_corners=False): interior output pixel 2i+1 is 3/4 of low i + 1/4 of low i+1
    np.testing.assert_allclose(half[:, :, 1, 1].detach().numpy(),
                               (9 * low[:, :, 0, 0] + 3 * low[:, :, 0, 1] + 3 * low[:, :, 1, 0] + low[:, :, 1, 1]) / 16,
                               rtol=1e-5, atol=1e-6)


def test_training_scales_with_the_resolution_and_bad_values_are_refused():
    cfg = dataclasses.replace(TrainConfig(), scale=(0.75, 1.5), resolution=0.5)
    assert augment_config(cfg).scale == pytest.approx((0.375, 0.75))
    assert augment_config(TrainConfig()).scale == TrainConfig().scale
    with pytest.raises(ConfigError, match="resolution"):
        TrainConfig(resolution=0.0)
