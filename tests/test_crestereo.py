"""CREStereo: the public checkpoint's layout loads strict, inference on odd sizes, batching,
determinism, checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.depth.crestereo import CREStereoBackend, load_state_dict
from pipeline.depth.crestereo_net import CREStereo, infer_disparity
from pipeline.errors import DataError

# The public checkpoint's parameter names and shapes, kept in the repository so this runs on a bare clone.
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference" / "crestereo_state_dict.json"


def _reference_state_dict(seed=0):
    shapes = json.loads(REFERENCE.read_text())
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=g) * 0.02 for k, v in shapes.items()}


@pytest.fixture(scope="module")
def crestereo():
    torch.manual_seed(0)
    net = CREStereo()
    net.load_state_dict(_reference_state_dict(), strict=True)
    return net.eval()


def test_crestereo_matches_reference_manifest(crestereo):
    shapes = json.loads(REFERENCE.read_text())
    sd = crestereo.state_dict()
    assert list(sd) == list(shapes)
    assert {k: list(v.shape) for k, v in sd.items()} == shapes
    assert sum(v.numel() for v in sd.values()) == 5_432_948


def test_crestereo_odd_sizes_batching_determinism(crestereo):
    g = torch.Generator().manual_seed(1)
    left = torch.rand(4, 3, 37, 61, generator=g) * 255
    right = torch.roll(left, shifts=-3, dims=3)
    batch = infer_disparity(crestereo, left, right, iters=2)
    assert batch.shape == (4, 37, 61) and torch.isfinite(batch).all()
    singles = torch.cat([infer_disparity(crestereo, left[i : i + 1], right[i : i + 1], iters=2) for i in range(4)])
    torch.testing.assert_close(batch, singles, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(infer_disparity(crestereo, left, right, iters=2), batch, atol=0, rtol=0)


def test_crestereo_checkpoint_files(tmp_path, crestereo):
    path = tmp_path / "crestereo_eth3d.pth"
    torch.save({"state_dict": crestereo.state_dict()}, path)
    b = CREStereoBackend(weights=str(path), device="cpu", iters=1)
    for k, v in crestereo.state_dict().items():
        assert torch.equal(b.net.state_dict()[k], v)
    with pytest.raises(DataError, match="CREStereo weights not found"):
        load_state_dict(tmp_path / "missing.pth")
    torch.save({"fnet.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="does not match the CREStereo architecture"):
        CREStereoBackend(weights=str(tmp_path / "bad.pth"), device="cpu")
