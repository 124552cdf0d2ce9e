"""MFNet teacher/student: names, shapes, counts, forward, taps, checkpoint loading, RGBT reader.

Golden values come from outside the code under test: the JSON manifest of the official
checkpoint (tests/fixtures/reference/mfnet_state_dict.json), counts worked out from that
manifest or by hand from the official widths (haqishen/MFNet-pytorch model/MFNet.py:
rgb_ch = [16,48,48,96,96], inf_ch = [16,16,16,36,36]), a functional re-statement of the official
forward written here with torch.nn.functional on a bare state dict, and hand-computed logits.
All forward passes run at tiny sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lix.models.mfnet import MFNet, load_official, read_rgbt_png  # registers "mfnet"
from lix.models.registry import create_model
from lix.models.taps import FeatureTaps
from pipeline.errors import ConfigError, DataError, LixError

MANIFEST = Path(__file__).parent / "fixtures" / "reference" / "mfnet_state_dict.json"
OFFICIAL_RGB = [16, 48, 48, 96, 96]
OFFICIAL_INF = [16, 16, 16, 36, 36]


def manifest() -> dict[str, list[int]]:
    return json.loads(MANIFEST.read_text())


def part(name: str) -> str:
    top = name.split(".")[0]
    return "rgb" if top.endswith("_rgb") else "inf" if top.endswith("_inf") else "decoder"


def random_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        elif k.endswith("conv.weight"):
            t = t * (2.0 / (shape[1] * 9)) ** 0.5  # keep activations O(1)
        sd[k] = t
    return sd


# ---------------------------------------------------------------------------------------------
# an independent statement of the official forward (model/MFNet.py at the checkpoint's commit)


def ref_block(sd, p, x, dilation=1):
    y = F.conv2d(x, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=dilation, dilation=dilation)
    y = F.batch_norm(y, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                     sd[f"{p}.bn.bias"], training=False, eps=1e-5)
    return torch.where(y >= 0, y, 0.2 * y)


def ref_inception(sd, p, x):
    for i in (1, 2, 3):
        x = torch.cat((ref_block(sd, f"{p}.conv{i}_left", x), ref_block(sd, f"{p}.conv{i}_right", x, 2)), 1)
    return x


def ref_up(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def ref_mfnet(sd, image):
    """The official MFNet.forward on an (N, 4, H, W) image, H and W multiples of 16."""
    feats = {}
    for tag, t in (("rgb", image[:, :3]), ("inf", image[:, 3:])):
        t = F.max_pool2d(ref_block(sd, f"conv1_{tag}", t), 2, 2)
        p2 = ref_block(sd, f"conv2_2_{tag}", ref_block(sd, f"conv2_1_{tag}", t))
        p3 = ref_block(sd, f"conv3_2_{tag}", ref_block(sd, f"conv3_1_{tag}", F.max_pool2d(p2, 2, 2)))
        p4 = ref_inception(sd, f"conv4_{tag}", F.max_pool2d(p3, 2, 2))
        feats[tag] = (p2, p3, p4, ref_inception(sd, f"conv5_{tag}", F.max_pool2d(p4, 2, 2)))
    (r2, r3, r4, r5), (i2, i3, i4, i5) = feats["rgb"], feats["inf"]
    x = torch.cat((r5, i5), 1)
    x = ref_block(sd, "decode4", ref_up(x) + torch.cat((r4, i4), 1))
    x = ref_block(sd, "decode3", ref_up(x) + torch.cat((r3, i3), 1))
    x = ref_block(sd, "decode2", ref_up(x) + torch.cat((r2, i2), 1))
    return ref_block(sd, "decode1", ref_up(x))


@pytest.fixture(scope="module")
def official_sd():
    return random_state_dict(manifest())


@pytest.fixture
def teacher(official_sd):
    m = MFNet(9, 1)
    m.load_state_dict(official_sd, strict=True)
    return m.eval()


# ---------------------------------------------------------------------------------------------
# names, shapes, counts


def test_state_dict_equals_official_manifest():
    got = [(k, list(v.shape)) for k, v in MFNet(n_classes=9, x_channels=1).state_dict().items()]
    assert got == list(manifest().items())  # names, order and shapes
    assert not any("num_batches_tracked" in k for k, _ in got)


def test_random_official_state_dict_loads_strict(official_sd):
    m = MFNet(9, 1)
    result = m.load_state_dict(dict(official_sd), strict=True)  # plain dict, no version metadata
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in m.state_dict().items():
        assert torch.equal(v, official_sd[k]), k


def test_registry_builds_mfnet():
    m = create_model("mfnet", 9, 1)
    assert isinstance(m, MFNet) and (m.n_classes, m.x_channels) == (9, 1)


def test_part_counts_from_manifest():
    counts = {"rgb": 0, "inf": 0, "decoder": 0}
    for k, shape in manifest().items():
        if not k.endswith(("running_mean", "running_var")):
            counts[part(k)] += math.prod(shape)
    assert counts == {"rgb": 528_096, "inf": 73_752, "decoder": 134_427}
    assert sum(counts.values()) == 736_275
    m = MFNet(9, 1)
    assert m.parameter_counts() == {"rgb_encoder": 528_096, "x_encoder": 73_752, "decoder": 134_427}
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 736_275


def cbl(cin: int, cout: int) -> int:
    """Parameters of one official ConvBnLeakyRelu2d: 3x3 weights + bias + BN weight and bias."""
    return 9 * cin * cout + cout + 2 * cout


def test_normals_teacher_changes_only_the_first_x_conv():
    ref = manifest()
    got = {k: list(v.shape) for k, v in MFNet(9, 3).state_dict().items()}
    assert list(got) == list(ref)
    assert {k for k in ref if got[k] != ref[k]} == {"conv1_inf.conv.weight"}
    assert got["conv1_inf.conv.weight"] == [16, 3, 3, 3]
    assert MFNet(9, 3).parameter_counts()["x_encoder"] == 73_752 + 2 * 16 * 9


def test_student_has_no_x_branch_and_rgb_only_decoder():
    ref = manifest()
    m = MFNet(9, 0)
    got = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert not any("_inf" in k for k in got)
    assert {k: v for k, v in got.items() if part(k) == "rgb"} == {k: v for k, v in ref.items() if part(k) == "rgb"}
    # decoder widths = official rgb_ch[i] + inf_ch[i] with inf_ch = 0
    r = OFFICIAL_RGB
    assert got["decode4.conv.weight"] == [r[2], r[3], 3, 3] == [48, 96, 3, 3]
    assert got["decode3.conv.weight"] == [r[1], r[2], 3, 3] == [48, 48, 3, 3]
    assert got["decode2.conv.weight"] == [r[0], r[1], 3, 3] == [16, 48, 3, 3]
    assert got["decode1.conv.weight"] == [9, r[0], 3, 3] == [9, 16, 3, 3]
    decoder = cbl(96, 48) + cbl(48, 48) + cbl(48, 16) + cbl(16, 9)
    assert decoder == 70_779
    assert m.parameter_counts() == {"rgb_encoder": 528_096, "x_encoder": 0, "decoder": 70_779}
    # teacher decoder by the same formula (cross-check of the manifest number)
    i = OFFICIAL_INF
    assert cbl(r[3] + i[3], r[2] + i[2]) + cbl(r[2] + i[2], r[1] + i[1]) + cbl(r[1] + i[1], r[0] + i[0]) \
        + cbl(r[0] + i[0], 9) == 134_427
    # the paper's encoder sizes: 0.60 M teacher, ~0.5 M student
    assert round((528_096 + 73_752) / 1e6, 2) == 0.60


def test_student_ignores_x():
    torch.manual_seed(0)
    m = MFNet(5, 0).eval()
    rgb = torch.rand(1, 3, 16, 16)
    assert torch.equal(m(rgb), m(rgb, torch.rand(1, 7, 3, 3)))


# ---------------------------------------------------------------------------------------------
# forward


def test_forward_equals_the_official_computation(teacher, official_sd):
    torch.manual_seed(1)
    image = torch.rand(2, 4, 32, 48)
    with torch.no_grad():
        want = ref_mfnet(official_sd, image)
        got = teacher(image[:, :3], image[:, 3:])
        assert torch.allclose(teacher.forward_official(image), got)
    assert got.shape == (2, 9, 32, 48)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_odd_size_is_replicate_padded_then_cropped(teacher, official_sd):
    torch.manual_seed(2)
    image = torch.rand(1, 4, 17, 35)
    padded = F.pad(image, (0, 48 - 35, 0, 32 - 17), mode="replicate")
    with torch.no_grad():
        want = ref_mfnet(official_sd, padded)[..., :17, :35]
        got = teacher(image[:, :3], image[:, 3:])
    assert got.shape == (1, 9, 17, 35)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("x_channels", [0, 1, 3])
@pytest.mark.parametrize("hw", [(1, 1), (15, 17), (31, 33), (16, 48)])
def test_logits_shape_at_any_size(x_channels, hw):
    m = MFNet(4, x_channels).eval()
    rgb = torch.rand(1, 3, *hw)
    x = torch.rand(1, x_channels, *hw) if x_channels else None
    with torch.no_grad():
        assert m(rgb, x).shape == (1, 4, *hw)


def test_golden_logits_pass_through_bn_and_leaky_relu():
    """Zero convolutions everywhere but decode1's bias: every pixel's logits are then
    LeakyReLU_0.2(BN(bias)), worked out by hand."""
    m = MFNet(3, 1).eval()
    with torch.no_grad():
        for k, v in m.state_dict().items():
            v.zero_()
            if k.endswith(("bn.weight", "running_var")):
                v.fill_(1.0)
        sd = m.state_dict()
        sd["decode1.conv.bias"].copy_(torch.tensor([-1.0, 0.0, 2.0]))
        sd["decode1.bn.running_mean"].fill_(0.5)
        sd["decode1.bn.running_var"].fill_(4.0)
        sd["decode1.bn.bias"].fill_(0.1)
        # (b - 0.5) / 2 + 0.1 = -0.65, -0.15, 0.85; LeakyReLU(0.2) -> -0.13, -0.03, 0.85
        out = m(torch.rand(2, 3, 7, 9), torch.rand(2, 1, 7, 9))
    want = torch.tensor([-0.13, -0.03, 0.85]).view(1, 3, 1, 1).expand(2, 3, 7, 9)
    assert torch.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("x_channels", [1, 0])
def test_every_parameter_gets_a_gradient(x_channels):
    torch.manual_seed(3)
    m = MFNet(9, x_channels).train()
    rgb = torch.rand(2, 3, 32, 48)
    x = torch.rand(2, x_channels, 32, 48) if x_channels else None
    loss = F.cross_entropy(m(rgb, x), torch.randint(0, 9, (2, 32, 48)))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("conv.bias"):
            # a bias right before a training-mode BN is cancelled by the batch mean: its
            # gradient is zero up to rounding (the official layers keep it; the checkpoint has it)
            assert p.grad.abs().max() < 1e-4, name
        else:
            assert p.grad.abs().sum() > 0, name


def test_batchnorm_without_counter_still_tracks_statistics():
    m = MFNet(2, 0).train()
    bn = m.conv1_rgb.bn
    assert bn.num_batches_tracked is None and bn.momentum == 0.1
    rgb = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        pre = m.conv1_rgb.conv(rgb)
        m(rgb)
    assert torch.allclose(bn.running_mean, 0.1 * pre.mean(dim=(0, 2, 3)), atol=1e-6)
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))


# ---------------------------------------------------------------------------------------------
# feature taps

TEACHER_TAPS = {"rgb1": (16, 32, 48), "rgb2": (48, 16, 24), "rgb3": (48, 8, 12), "rgb4": (96, 4, 6),
                "rgb5": (96, 2, 3), "fused": (132, 2, 3), "decoder": (32, 16, 24)}
STUDENT_TAPS = {**TEACHER_TAPS, "fused": (96, 2, 3), "decoder": (16, 16, 24)}


@pytest.mark.parametrize("x_channels, want", [(1, TEACHER_TAPS), (0, STUDENT_TAPS)])
@pytest.mark.parametrize("hw", [(32, 48), (17, 33)])  # 17 x 33 is padded to 32 x 48
def test_forward_hooks_on_feature_taps(x_channels, want, hw):
    m = MFNet(9, x_channels).eval()
    assert set(m.feature_taps) == set(want)
    seen = {}
    handles = [m.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape)))
        for name, path in m.feature_taps.items()]
    try:
        with torch.no_grad():
            m(torch.rand(2, 3, *hw), torch.rand(2, x_channels, *hw) if x_channels else None)
    finally:
        for h in handles:
            h.remove()
    assert seen == {k: (2, *v) for k, v in want.items()}
    assert {k: c for k, (c, _) in m.feature_channels.items()} == {k: v[0] for k, v in want.items()}
    assert {k: 32 // s for k, (_, s) in m.feature_channels.items()} == {k: v[1] for k, v in want.items()}


def test_feature_taps_helper_keeps_the_graph():
    m = MFNet(9, 0).train()
    with FeatureTaps(m, ["rgb4", "decoder"]) as taps:
        m(torch.rand(2, 3, 32, 48))
    assert taps.features["rgb4"].requires_grad
    taps.features["rgb4"].sum().backward()
    assert m.conv1_rgb.conv.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# the official RGB-thermal PNGs


def write_bgra(path: Path, rgbt: np.ndarray) -> None:
    assert cv2.imwrite(str(path), rgbt[..., [2, 1, 0, 3]])  # cv2 writes B, G, R, A


def test_read_rgbt_png_channel_order(tmp_path):
    rgbt = np.zeros((3, 5, 4), np.uint8)
    rgbt[...] = (30, 20, 10, 200)  # R, G, B, thermal
    rgbt[1, 2] = (255, 0, 128, 7)
    path = tmp_path / "00001D.png"
    write_bgra(path, rgbt)
    rgb, thermal = read_rgbt_png(path)
    assert rgb.dtype == thermal.dtype == torch.float32
    assert rgb.shape == (3, 3, 5) and thermal.shape == (1, 3, 5)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([30, 20, 10]) / 255.0)
    assert torch.allclose(thermal[:, 0, 0], torch.tensor([200]) / 255.0)
    assert torch.allclose(rgb[:, 1, 2], torch.tensor([255, 0, 128]) / 255.0)
    assert torch.allclose(thermal[:, 1, 2], torch.tensor([7]) / 255.0)


def test_read_rgbt_png_matches_the_official_pil_reader(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgbt = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    path = tmp_path / "img.png"
    write_bgra(path, rgbt)
    official = np.asarray(Image.open(path), dtype=np.float32).transpose(2, 0, 1) / 255.0  # MF_dataset
    rgb, thermal = read_rgbt_png(path)
    assert torch.equal(torch.cat((rgb, thermal)), torch.from_numpy(official))
    assert np.array_equal(np.asarray(Image.open(path)), rgbt)


def test_read_rgbt_png_errors(tmp_path):
    three = tmp_path / "rgb.png"
    cv2.imwrite(str(three), np.zeros((4, 4, 3), np.uint8))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.zeros((4, 4, 4), np.uint16))
    good = tmp_path / "good.png"
    write_bgra(good, np.zeros((4, 4, 4), np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-20])
    for path, words in ((tmp_path / "missing.png", "not found"), (three, "4 channel"), (deep, "uint8"),
                        (cut, "truncated")):
        with pytest.raises(DataError, match=words) as e:
            read_rgbt_png(path)
        assert str(path) in str(e.value)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_load_official_formats(tmp_path, official_sd):
    # legacy (pre-1.6, as the 2018 checkpoint) pickle, with DataParallel prefixes
    legacy = tmp_path / "final.pth"
    torch.save({f"module.{k}": v for k, v in official_sd.items()}, legacy, _use_new_zipfile_serialization=False)
    # a newer save: wrapped, with BN counters
    wrapped = tmp_path / "wrapped.pth"
    counters = {k.replace("running_mean", "num_batches_tracked"): torch.tensor(3)
                for k in official_sd if k.endswith("running_mean")}
    torch.save({"state_dict": {**official_sd, **counters}}, wrapped)
    paths = [legacy, wrapped]
    try:
        from safetensors.torch import save_file
        paths.append(tmp_path / "final.safetensors")
        save_file(official_sd, str(paths[-1]))
    except ImportError:
        pass
    for path in paths:
        m = load_official(MFNet(9, 1), path)
        assert all(torch.equal(v, official_sd[k]) for k, v in m.state_dict().items()), path
    m = create_model("mfnet", 9, 1, weights=legacy)
    assert torch.equal(m.decode1.conv.weight, official_sd["decode1.conv.weight"])


def test_load_official_mismatch_names_the_file(tmp_path, official_sd):
    path = tmp_path / "final.pth"
    torch.save(official_sd, path)
    with pytest.raises(DataError, match=r"decode1\.conv\.weight") as e:
        load_official(MFNet(2, 1), path)  # other class count
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match=r"conv1_inf\.conv\.weight"):
        load_official(MFNet(9, 3), path)  # normals teacher, thermal checkpoint
    with pytest.raises(DataError, match="unexpected"):
        load_official(MFNet(9, 0), path)  # the student has no X branch


def test_load_official_corrupt_files(tmp_path, official_sd):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    good = tmp_path / "good.pth"
    torch.save(official_sd, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1000])
    optim = tmp_path / "tmp.optim"
    torch.save({"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}, optim)
    nan = tmp_path / "nan.pth"
    torch.save({**official_sd, "decode2.bn.weight": torch.full((32,), float("nan"))}, nan)
    for path in (junk, cut, optim, nan, tmp_path / "missing.pth", tmp_path):
        with pytest.raises(DataError) as e:
            load_official(MFNet(9, 1), path)
        assert str(path) in str(e.value) and isinstance(e.value, LixError)


# ---------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize("kw, key", [(dict(n_classes=0, x_channels=1), "n_classes"),
                                     (dict(n_classes=True, x_channels=1), "n_classes"),
                                     (dict(n_classes=9, x_channels=-1), "x_channels"),
                                     (dict(n_classes=9, x_channels=1.0), "x_channels")])
def test_bad_constructor_arguments(kw, key):
    with pytest.raises(ConfigError) as e:
        MFNet(**kw)
    assert e.value.key == key


def test_bad_inputs():
    t, s = MFNet(3, 1).eval(), MFNet(3, 0).eval()
    rgb = torch.rand(1, 3, 16, 16)
    cases = [(t, (rgb, None), "needs x"), (t, (rgb, torch.rand(1, 3, 16, 16)), "x must be"),
             (t, (rgb, torch.rand(1, 1, 8, 16)), "x must be"), (s, (torch.rand(1, 4, 16, 16),), "rgb must be"),
             (s, (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8),), "floating"),
             (s, (torch.rand(1, 3, 0, 16),), "empty")]
    for model, args, words in cases:
        with pytest.raises(ValueError, match=words):
            model(*args)
    with pytest.raises(ValueError, match="4, H, W"):
        t.forward_official(torch.rand(1, 3, 16, 16))
    with pytest.raises(TypeError):
        load_official(torch.nn.Linear(1, 1), "x.pth")
