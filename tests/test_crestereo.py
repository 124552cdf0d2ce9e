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


def test_crestereo_checkpoint_files(tmp_path):
    """Checkpoints made from the public layout (not from our model's own state dict) load as
    they are: a plain torch file with DataParallel's 'module.' prefix, a nested
    {'state_dict': ...}, and safetensors; their tensors arrive unchanged."""
    from safetensors.torch import save_file

    sd = _reference_state_dict(seed=1)
    files = {"plain.pth": {f"module.{k}": v for k, v in sd.items()}, "nested.pth": {"state_dict": sd}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in (*files, "w.safetensors"):
        loaded = CREStereoBackend(weights=str(tmp_path / name), device="cpu", iters=1).net.state_dict()
        assert loaded.keys() == sd.keys()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items()), name
    with pytest.raises(DataError, match="CREStereo weights not found"):
        load_state_dict(tmp_path / "missing.pth")
    torch.save({"fnet.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="does not match the CREStereo architecture"):
        CREStereoBackend(weights=str(tmp_path / "bad.pth"), device="cpu")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(DataError, match="not a loadable weights file"):
        load_state_dict(tmp_path / "corrupt.pth")


# ----------------------------------------------------------------------------- fidelity to the official code
def test_position_encoding_uses_the_official_factor():
    """megvii-research/CREStereo nets/attention/position_encoding.py writes the factor as
    ``-math.log(10000.0) / d_model // 2``; Python reads that as a floor division: -1.0."""
    import math

    from pipeline.depth.crestereo_net import pe_log_factor, sine_position_encoding

    d_model, h, w = 256, 5, 7
    official = eval("-math.log(10000.0) / d_model // 2", {"math": math, "d_model": d_model})
    assert official == -1.0 and pe_log_factor(d_model) == -1.0
    assert pe_log_factor(32) == -1.0  # any d_model above ~4.6
    pe = sine_position_encoding(d_model, h, w)[0].double()
    expected = torch.empty(d_model, h, w, dtype=torch.float64)
    for j in range(d_model // 4):
        freq = math.exp(-2.0 * j)  # k = 2j, frequencies exp(-k)
        for yy in range(h):
            for xx in range(w):
                expected[4 * j, yy, xx] = math.sin((xx + 1) * freq)
                expected[4 * j + 1, yy, xx] = math.cos((xx + 1) * freq)
                expected[4 * j + 2, yy, xx] = math.sin((yy + 1) * freq)
                expected[4 * j + 3, yy, xx] = math.cos((yy + 1) * freq)
    torch.testing.assert_close(pe, expected, atol=2e-6, rtol=0)
    # LoFTR's corrected factor would give another encoding: the test tells them apart.
    corrected = math.exp(2 * -math.log(10000.0) / (d_model // 2))  # group j = 1
    assert abs(float(pe[4, 0, 2]) - math.sin(3 * corrected)) > 0.1


def _hand_loftr_layer(layer, x, source):
    """One LoFTR encoder layer written out with explicit weights, in float64."""
    p = {k: v.double() for k, v in layer.state_dict().items()}
    x, source = x.double(), source.double()
    heads = layer.nhead
    n, length, c = x.shape
    d = c // heads
    q = (x @ p["q_proj.weight"].T).view(n, length, heads, d)
    k = (source @ p["k_proj.weight"].T).view(n, source.shape[1], heads, d)
    v = (source @ p["v_proj.weight"].T).view(n, source.shape[1], heads, d)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    out = torch.empty(n, length, heads, d, dtype=torch.float64)
    for b in range(n):
        for hd in range(heads):
            qh, kh, vh = q[b, :, hd], k[b, :, hd], v[b, :, hd]  # (L, d), (S, d), (S, d)
            out[b, :, hd] = (qh @ (kh.T @ vh)) / (qh @ kh.sum(0) + 1e-6)[:, None]
    msg = out.reshape(n, length, c) @ p["merge.weight"].T
    msg = torch.nn.functional.layer_norm(msg, (c,), p["norm1.weight"], p["norm1.bias"])
    hidden = torch.relu(torch.cat([x, msg], 2) @ p["mlp.0.weight"].T)
    msg = torch.nn.functional.layer_norm(hidden @ p["mlp.2.weight"].T, (c,), p["norm2.weight"], p["norm2.bias"])
    return x + msg


def test_cross_attention_updates_sequentially():
    """CREStereo's LocalFeatureTransformer (nets/attention/transformer.py): in a 'cross' layer
    ``feat0 = layer(feat0, feat1)`` and then ``feat1 = layer(feat1, feat0)`` with the new feat0."""
    from pipeline.depth.crestereo_net import LocalFeatureTransformer

    torch.manual_seed(3)
    att = LocalFeatureTransformer(256, 8, ["cross"])
    with torch.no_grad():
        for name, p in att.named_parameters():
            if "norm" in name:  # LayerNorm weights/biases away from 1/0 so they matter
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    g = torch.Generator().manual_seed(4)
    f0, f1 = torch.randn(2, 12, 256, generator=g), torch.randn(2, 12, 256, generator=g)
    with torch.no_grad():
        got0, got1 = att(f0, f1)
    layer = att.layers[0]
    new0 = _hand_loftr_layer(layer, f0, f1)
    new1 = _hand_loftr_layer(layer, f1, new0.float())
    torch.testing.assert_close(got0.double(), new0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got1.double(), new1, atol=1e-4, rtol=1e-4)
    # The parallel update (feat1 from the old feat0) is measurably different.
    parallel1 = _hand_loftr_layer(layer, f1, f0)
    assert (parallel1 - new1).abs().max() > 1e-2
