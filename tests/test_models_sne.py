"""ResNet (torchvision layout) and SNE-RoadSeg teacher/student: names, shapes, counts, forward.

Golden values come from outside the code under test: the JSON manifests in
tests/fixtures/reference (torchvision's and the official SNE-RoadSeg state dicts), the official
``filters`` table and decoder wiring (hlwang1124/SNE-RoadSeg models/networks.py), the parameter
counts of the paper's network, and shapes worked out by hand. Big depths are only built on the
meta device (no memory); forward / gradient tests use depth 18 at tiny sizes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lix.models import create_model
from lix.models.resnet import ResNet, load_pretrained, read_state_dict
from lix.models.sne_roadseg import SNERoadSeg
from lix.models.taps import FeatureTaps, resolve_taps
from pipeline.errors import ConfigError, DataError, LixError

REF = Path(__file__).parent / "fixtures" / "reference"
DEPTHS = (18, 34, 50, 101, 152)
# the official `filters` per depth (models/networks.py, RoadSeg.__init__)
OFFICIAL_FILTERS = {18: [64, 64, 128, 256, 512], 34: [64, 64, 128, 256, 512],
                    50: [64, 256, 512, 1024, 2048], 101: [64, 256, 512, 1024, 2048],
                    152: [64, 256, 512, 1024, 2048]}


def manifest(name: str) -> dict[str, list[int]]:
    return json.loads((REF / name).read_text())


def tv_manifest(depth: int) -> dict[str, list[int]]:
    return manifest(f"torchvision_resnet{depth}_state_dict.json")


def shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def n_params(shape_map: dict[str, list[int]]) -> int:
    return sum(math.prod(s) for k, s in shape_map.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def random_state_dict(shape_map: dict[str, list[int]], device="cpu", seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shape_map.items():
        if device == "meta":
            out[k] = torch.empty(s, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else None)
        elif k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.05
    return out


def official_decoder(filters: list[int], n_classes: int) -> dict[str, list[int]]:
    """The decoder's state-dict shapes as RoadSeg.__init__ spells them, in its order."""
    out: dict[str, list[int]] = {}

    def bn(prefix, c):
        out.update({f"{prefix}.weight": [c], f"{prefix}.bias": [c], f"{prefix}.running_mean": [c],
                    f"{prefix}.running_var": [c], f"{prefix}.num_batches_tracked": []})

    def nested(name, cin, c):
        out[f"{name}.conv1.weight"], out[f"{name}.conv1.bias"] = [c, cin, 3, 3], [c]
        bn(f"{name}.bn1", c)
        out[f"{name}.conv2.weight"], out[f"{name}.conv2.bias"] = [c, c, 3, 3], [c]
        bn(f"{name}.bn2", c)

    def up(name, cin, c):
        out[f"{name}.conv1.weight"], out[f"{name}.conv1.bias"] = [c, cin, 3, 3], [c]
        bn(f"{name}.bn1", c)

    f = filters
    for name, cin, c in [("conv1_1", f[0] * 2, f[0]), ("conv2_1", f[1] * 2, f[1]), ("conv3_1", f[2] * 2, f[2]),
                         ("conv4_1", f[3] * 2, f[3]), ("conv1_2", f[0] * 3, f[0]), ("conv2_2", f[1] * 3, f[1]),
                         ("conv3_2", f[2] * 3, f[2]), ("conv1_3", f[0] * 4, f[0]), ("conv2_3", f[1] * 4, f[1]),
                         ("conv1_4", f[0] * 5, f[0])]:
        nested(name, cin, c)
    for name, cin, c in [("up2_0", f[1], f[0]), ("up2_1", f[1], f[0]), ("up2_2", f[1], f[0]), ("up2_3", f[1], f[0]),
                         ("up3_0", f[2], f[1]), ("up3_1", f[2], f[1]), ("up3_2", f[2], f[1]),
                         ("up4_0", f[3], f[2]), ("up4_1", f[3], f[2]), ("up5_0", f[4], f[3]),
                         ("final", f[0], n_classes)]:
        up(name, cin, c)
    return out


def official_names(depth: int, x_channels: int, n_classes: int) -> dict[str, list[int]]:
    """Official state dict implied by the torchvision manifest + RoadSeg's naming."""
    tv = {k: v for k, v in tv_manifest(depth).items() if not k.startswith("fc.")}
    out: dict[str, list[int]] = {}
    if x_channels:
        for k, v in tv.items():
            out[f"encoder_another_{k}"] = [64, x_channels, 7, 7] if k == "conv1.weight" else v
    out.update({f"encoder_rgb_{k}": v for k, v in tv.items()})
    out.update(official_decoder(OFFICIAL_FILTERS[depth], n_classes))
    return out


def rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """Equal up to rtol of b's magnitude (freshly initialised nets in eval mode give tiny logits)."""
    return a.shape == b.shape and bool((a - b).abs().max() <= rtol * b.abs().max())


def on_batch_stats(model):
    """A copy whose BN layers normalise with batch statistics, so a freshly initialised net has
    unit-scale activations everywhere (with untrained running statistics, eval-mode activations
    can shrink to nothing or blow up, and comparisons of logits prove little)."""
    return copy.deepcopy(model).train()


def build_meta(**kw):
    with torch.device("meta"):
        return create_model("sne_roadseg", **kw)


@pytest.fixture(scope="module")
def resnet18_ckpt(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_state_dict(tv_manifest(18), seed=1)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(sd, path)
    return path, sd


# ---------------------------------------------------------------------------------------------
# ResNet


@pytest.mark.parametrize("depth", DEPTHS)
def test_resnet_matches_torchvision_manifest_and_loads_strict(depth):
    ref = tv_manifest(depth)
    with torch.device("meta"):
        net = ResNet(depth)
    assert list(shapes(net).items()) == list(ref.items())
    net.load_state_dict(random_state_dict(ref, device="meta"), strict=True)  # names + shapes, no memory


@pytest.mark.parametrize("depth, channels", [(18, [64, 64, 128, 256, 512]), (50, [64, 256, 512, 1024, 2048])])
def test_resnet_strict_load_of_manifest_tensors_then_forward(depth, channels):
    torch.manual_seed(0)
    net = ResNet(depth)
    sd = random_state_dict(tv_manifest(depth), seed=depth)
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
    net.eval()
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 64))
        logits = net.classify(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, (2, 4, 8, 16, 32))]
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_load_pretrained_torch_and_safetensors(resnet18_ckpt, tmp_path):
    from safetensors.torch import save_file

    path, sd = resnet18_ckpt
    net = load_pretrained(ResNet(18), path)
    assert all(torch.equal(v, sd[k]) for k, v in net.state_dict().items())
    st = tmp_path / "resnet18.safetensors"
    save_file(sd, str(st))
    net2 = load_pretrained(ResNet(18), st)
    assert torch.equal(net2.fc.weight, sd["fc.weight"])
    wrapped = tmp_path / "wrapped.pth"  # {'state_dict': {'module.xxx': ...}} as DataParallel saves it
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    assert torch.equal(load_pretrained(ResNet(18), wrapped).conv1.weight, sd["conv1.weight"])


def test_load_pretrained_errors_name_the_file(resnet18_ckpt, tmp_path):
    path, sd = resnet18_ckpt
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(DataError, match="nope.*not found") as e:
        load_pretrained(ResNet(18), missing)
    assert e.value.path == missing

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="corrupt.pth.*not a readable weights file"):
        load_pretrained(ResNet(18), corrupt)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: 100_000])
    with pytest.raises(DataError, match="truncated.pth"):
        load_pretrained(ResNet(18), truncated)

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="bad.safetensors"):
        load_pretrained(ResNet(18), bad_st)

    with pytest.raises(DataError, match=r"resnet18-random.pth: does not match ResNet-34 \(\d+ missing"):
        with torch.device("meta"):
            net34 = ResNet(34)
        load_pretrained(net34, path)

    reshaped = dict(sd, **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    odd = tmp_path / "fc10.pth"
    torch.save(reshaped, odd)
    with pytest.raises(DataError, match=r"fc10.pth: .*wrong shape: fc.weight \(10, 512\) != \(1000, 512\)"):
        load_pretrained(ResNet(18), odd)

    not_sd = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(DataError, match="list.pth: expected a non-empty state dict"):
        read_state_dict(not_sd)


def test_resnet_bad_depth():
    with pytest.raises(ConfigError, match="depth"):
        ResNet(42)


# ---------------------------------------------------------------------------------------------
# SNE-RoadSeg: names, shapes, counts


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("x_channels", [1, 3, 0])
def test_every_depth_has_official_names_and_shapes(depth, x_channels):
    model = build_meta(n_classes=2, x_channels=x_channels, depth=depth)
    assert list(shapes(model).items()) == list(official_names(depth, x_channels, 2).items())
    if x_channels == 0:
        assert not any(k.startswith("encoder_another") for k in model.state_dict())
        assert not any(n.startswith("encoder_another") for n, _ in model.named_modules())


@pytest.mark.parametrize("kind, x_channels", [("depth", 1), ("normals", 3)])
def test_depth152_matches_official_manifest_exactly_and_loads_strict(kind, x_channels):
    ref = manifest(f"sne_roadseg152_{kind}_state_dict.json")
    assert ref["final.conv1.weight"][0] == 2  # the KITTI-road checkpoints: 2 classes
    model = build_meta(n_classes=2, x_channels=x_channels, depth=152)
    assert list(shapes(model).items()) == list(ref.items())  # names, shapes and order
    model.load_state_dict(random_state_dict(ref, device="meta"), strict=True)
    # the manifest agrees with what the official naming implies from torchvision's resnet152
    assert ref == official_names(152, x_channels, 2)


def test_parameter_counts_depth152():
    teacher = build_meta(n_classes=2, x_channels=1, depth=152)
    sd = shapes(teacher)
    enc = n_params({k: v for k, v in sd.items() if k.startswith("encoder_")})
    rgb = n_params({k: v for k, v in sd.items() if k.startswith("encoder_rgb_")})
    dec = n_params({k: v for k, v in sd.items() if not k.startswith("encoder_")})
    assert (round(enc / 1e6, 2), round(rgb / 1e6, 2), round(dec / 1e6, 2)) == (116.28, 58.14, 85.04)
    assert (enc, rgb, dec) == (116_281_344, 58_143_808, 85_037_190)
    # trainable parameters = state-dict parameters (no frozen or hidden ones)
    assert sum(p.numel() for p in teacher.parameters() if p.requires_grad) == enc + dec
    student = build_meta(n_classes=2, x_channels=0, depth=152)
    assert sum(p.numel() for p in student.parameters()) == rgb + dec


def test_bad_arguments_raise_config_error():
    for kw, key in [(dict(depth=42), "depth"), (dict(x_channels=2), "x_channels"), (dict(n_classes=0), "n_classes"),
                    (dict(init_type="orthogonal"), "init_type")]:
        args = dict(n_classes=2, x_channels=1, depth=18) | kw
        with pytest.raises(ConfigError) as e:
            build_meta(**args)
        assert e.value.key == key
    with pytest.raises(LixError, match="unknown model"):
        create_model("no_such_model", 2)


# ---------------------------------------------------------------------------------------------
# SNE-RoadSeg: pretrained initialisation


def test_pretrained_init_follows_official_code(resnet18_ckpt, caplog):
    path, sd = resnet18_ckpt
    with caplog.at_level(logging.WARNING, logger="lix.models.sne_roadseg"):
        keep = SNERoadSeg(2, x_channels=1, depth=18, pretrained=path, reset_encoder_bn=False)
        normals = SNERoadSeg(2, x_channels=3, depth=18, pretrained=str(path))
    assert caplog.records == []  # weights given: nothing to warn about
    w = sd["conv1.weight"]
    # depth conv1 = mean of the RGB filters
    assert torch.allclose(keep.encoder_another_conv1.weight, ((w[:, 0] + w[:, 1] + w[:, 2]) / 3)[:, None], atol=1e-7)
    assert torch.equal(keep.encoder_rgb_conv1.weight, w)
    assert torch.equal(normals.encoder_another_conv1.weight, w)
    for prefix in ("encoder_rgb_", "encoder_another_"):
        assert torch.equal(keep.state_dict()[f"{prefix}layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
        assert torch.equal(keep.state_dict()[f"{prefix}layer1.0.bn1.weight"], sd["layer1.0.bn1.weight"])
    # official init_net: encoder BN affine re-drawn N(1, 0.02) / 0, running statistics kept
    bn = normals.encoder_rgb_layer2[0].bn2
    assert torch.equal(bn.running_mean, sd["layer2.0.bn2.running_mean"])
    assert torch.equal(bn.bias, torch.zeros(128)) and (bn.weight - 1).abs().max() < 0.15
    assert not torch.equal(bn.weight, sd["layer2.0.bn2.weight"])
    # decoder, as the official training runs init_net (--init_type kaiming): He-normal fan_in,
    # zero biases, BN ~ N(1, 0.02)
    c = keep.conv2_2.conv1
    assert abs(c.weight.std().item() / math.sqrt(2.0 / (c.in_channels * 9)) - 1) < 0.05
    assert torch.equal(c.bias, torch.zeros_like(c.bias))
    b = keep.up3_1.bn1
    assert torch.equal(b.bias, torch.zeros_like(b.bias)) and 0.005 < b.weight.std() < 0.05
    assert abs(b.weight.mean() - 1) < 0.01
    xav = SNERoadSeg(2, x_channels=1, depth=18, pretrained=path, init_type="xavier").conv2_2.conv1
    assert abs(xav.weight.std().item() / (0.02 * math.sqrt(2.0 / (c.in_channels * 9 + c.out_channels * 9))) - 1) < 0.05


def test_no_weights_logs_one_message(caplog):
    with caplog.at_level(logging.INFO, logger="lix.models.sne_roadseg"):
        build_meta(n_classes=2, x_channels=1, depth=50)
    msgs = [r for r in caplog.records if r.name == "lix.models.sne_roadseg"]
    assert len(msgs) == 1 and "randomly initialised" in msgs[0].getMessage()


def test_pretrained_errors_name_the_file(resnet18_ckpt, tmp_path):
    path, _ = resnet18_ckpt
    with pytest.raises(DataError, match="not found"):
        SNERoadSeg(2, x_channels=1, depth=18, pretrained=tmp_path / "missing.pth")
    with pytest.raises(DataError, match="resnet18-random.pth: does not match ResNet-34"):
        with torch.device("meta"):
            SNERoadSeg(2, x_channels=1, depth=34, pretrained=path)


def test_whole_network_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(3)
    src = SNERoadSeg(2, x_channels=3, depth=18)
    path = tmp_path / "latest_net_RoadSeg.pth"
    torch.save(src.state_dict(), path)
    dst = SNERoadSeg(2, x_channels=3, depth=18).load_checkpoint(path)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    wrong = r"wrong shape: encoder_another_conv1.weight \(64, 3, 7, 7\) != \(64, 1, 7, 7\)"
    with pytest.raises(DataError, match=r"latest_net_RoadSeg.pth: does not match .*depth teacher.*" + wrong):
        SNERoadSeg(2, x_channels=1, depth=18).load_checkpoint(path)
    with pytest.raises(DataError, match=r"unexpected: encoder_another_"):
        SNERoadSeg(2, x_channels=0, depth=18).load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# SNE-RoadSeg: forward


@pytest.fixture(scope="module")
def teacher18():
    torch.manual_seed(0)
    return SNERoadSeg(3, x_channels=1, depth=18)


@pytest.mark.parametrize("size", [(50, 70), (64, 96), (20, 33)])
def test_logits_have_input_size(teacher18, size):
    student = create_model("sne_roadseg", n_classes=3, x_channels=0, depth=18).eval()
    rgb, x = torch.rand(1, 3, *size), torch.rand(1, 1, *size)
    with torch.no_grad():
        assert teacher18.eval()(rgb, x).shape == (1, 3, *size)
        assert student(rgb).shape == (1, 3, *size)
        assert student(rgb, x).shape == (1, 3, *size)  # the student ignores x


def test_padding_is_replicate_bottom_right_and_cropped(teacher18):
    torch.manual_seed(1)
    rgb, x = torch.rand(1, 3, 50, 70), torch.rand(1, 1, 50, 70)
    rows, cols = torch.arange(64).clamp(max=49), torch.arange(96).clamp(max=69)  # replicate by hand
    m = on_batch_stats(teacher18)
    with torch.no_grad():
        full = m(rgb[:, :, rows][..., cols], x[:, :, rows][..., cols])
        assert (full > 0).float().mean() > 0.2
        assert rel_close(m(rgb, x), full[..., :50, :70])
        zero_padded = m(F.pad(rgb, (0, 26, 0, 14)), F.pad(x, (0, 26, 0, 14)))
        assert not rel_close(m(rgb, x), zero_padded[..., :50, :70], rtol=1e-3)


def test_final_layer_is_upsample_conv_bn_relu(teacher18):
    m = teacher18.eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    assert out.min() >= 0  # ReLU on the logits, as the official final layer
    assert [type(c).__name__ for c in (m.final.up, m.final.conv1, m.final.bn1, m.final.activation)] == \
        ["Upsample", "Conv2d", "BatchNorm2d", "ReLU"]
    assert m.final.up.scale_factor == 2 and m.final.up.mode == "bilinear" and m.final.up.align_corners


def test_fusion_adds_x_stream_into_rgb_stream(teacher18):
    """Taps see rgb-stage + x-stage after every stage; with a silenced X stream the teacher is
    exactly the student carrying the same RGB and decoder weights."""
    m = on_batch_stats(teacher18)
    seen = {}
    paths = ["fuse1", "fuse3", "fuse5", "encoder_rgb_relu", "encoder_another_relu",
             "encoder_rgb_layer2", "encoder_another_layer2", "encoder_rgb_layer4", "encoder_another_layer4"]
    hooks = [m.get_submodule(p).register_forward_hook(lambda _m, _i, o, p=p: seen.__setitem__(p, o.clone()))
             for p in paths]
    for p in ("encoder_rgb_layer3", "encoder_another_layer3"):  # what each stream continues from
        hooks.append(m.get_submodule(p).register_forward_pre_hook(
            lambda _m, i, p=p: seen.__setitem__(p + ":in", i[0].clone())))
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    for h in hooks:
        h.remove()
    for fuse, a, b in [("fuse1", "encoder_rgb_relu", "encoder_another_relu"),
                       ("fuse3", "encoder_rgb_layer2", "encoder_another_layer2"),
                       ("fuse5", "encoder_rgb_layer4", "encoder_another_layer4")]:
        assert rel_close(seen[fuse], seen[a] + seen[b])
    assert torch.equal(seen["encoder_rgb_layer3:in"], seen["fuse3"])  # RGB goes on from the sum
    assert torch.equal(seen["encoder_another_layer3:in"], seen["encoder_another_layer2"])  # X from itself

    student = SNERoadSeg(3, x_channels=0, depth=18).train()
    missing, unexpected = student.load_state_dict(m.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("encoder_another_") for k in unexpected)
    silenced = SNERoadSeg(3, x_channels=1, depth=18).train()
    silenced.load_state_dict(m.state_dict())
    with torch.no_grad():
        for name, mod in silenced.named_modules():
            if name.startswith("encoder_another_") and isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.zero_()
                mod.bias.zero_()
        rgb = torch.rand(2, 3, 64, 64)
        assert rel_close(silenced(rgb, torch.rand(2, 1, 64, 64)), student(rgb))
        assert (student(rgb) > 0).float().mean() > 0.2
        assert not rel_close(m(rgb, torch.rand(2, 1, 64, 64)), student(rgb), rtol=1e-2)


def official_forward(m, rgb, another):
    """RoadSeg.forward transcribed from the official models/networks.py (H, W multiples of 32)."""
    rgb = m.encoder_rgb_relu(m.encoder_rgb_bn1(m.encoder_rgb_conv1(rgb)))
    another = m.encoder_another_relu(m.encoder_another_bn1(m.encoder_another_conv1(another)))
    rgb = rgb + another
    x1_0 = rgb
    rgb, another = m.encoder_rgb_maxpool(rgb), m.encoder_another_maxpool(another)
    rgb, another = m.encoder_rgb_layer1(rgb), m.encoder_another_layer1(another)
    rgb = rgb + another
    x2_0 = rgb
    rgb, another = m.encoder_rgb_layer2(rgb), m.encoder_another_layer2(another)
    rgb = rgb + another
    x3_0 = rgb
    rgb, another = m.encoder_rgb_layer3(rgb), m.encoder_another_layer3(another)
    rgb = rgb + another
    x4_0 = rgb
    rgb, another = m.encoder_rgb_layer4(rgb), m.encoder_another_layer4(another)
    x5_0 = rgb + another
    c = torch.cat
    x1_1 = m.conv1_1(c([x1_0, m.up2_0(x2_0)], 1))
    x2_1 = m.conv2_1(c([x2_0, m.up3_0(x3_0)], 1))
    x3_1 = m.conv3_1(c([x3_0, m.up4_0(x4_0)], 1))
    x4_1 = m.conv4_1(c([x4_0, m.up5_0(x5_0)], 1))
    x1_2 = m.conv1_2(c([x1_0, x1_1, m.up2_1(x2_1)], 1))
    x2_2 = m.conv2_2(c([x2_0, x2_1, m.up3_1(x3_1)], 1))
    x3_2 = m.conv3_2(c([x3_0, x3_1, m.up4_1(x4_1)], 1))
    x1_3 = m.conv1_3(c([x1_0, x1_1, x1_2, m.up2_2(x2_2)], 1))
    x2_3 = m.conv2_3(c([x2_0, x2_1, x2_2, m.up3_2(x3_2)], 1))
    x1_4 = m.conv1_4(c([x1_0, x1_1, x1_2, x1_3, m.up2_3(x2_3)], 1))
    return m.final(x1_4)


def test_forward_equals_official_computation(teacher18):
    m = on_batch_stats(teacher18)
    torch.manual_seed(2)
    with torch.no_grad():
        rgb, x = torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96)
        ref = official_forward(m, rgb, x)
        assert (ref > 0).float().mean() > 0.2 and rel_close(m(rgb, x), ref)


@pytest.mark.parametrize("x_channels", [1, 0])
def test_every_parameter_gets_a_gradient(x_channels):
    torch.manual_seed(0)
    model = SNERoadSeg(2, x_channels=x_channels, depth=18).train()
    rgb = torch.rand(2, 3, 64, 64)
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    logits = model(rgb, x if x_channels else None)
    F.cross_entropy(logits, torch.randint(0, 2, (2, 64, 64))).backward()
    for name, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if x_channels:
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_inputs_raise_value_error(teacher18):
    with pytest.raises(ValueError, match="needs x"):
        teacher18(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x must be \(N, 1, H, W\)"):
        teacher18(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x must be"):
        teacher18(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 64))
    with pytest.raises(ValueError, match=r"rgb must be \(N, 3, H, W\)"):
        teacher18(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


# ---------------------------------------------------------------------------------------------
# feature taps


@pytest.mark.parametrize("x_channels", [1, 0])
def test_feature_taps_hookable_with_expected_shapes(x_channels):
    torch.manual_seed(0)
    model = SNERoadSeg(2, x_channels=x_channels, depth=18).eval()
    assert set(model.feature_taps) == {"stem", "layer1", "layer2", "layer3", "layer4", "decoder"}
    got = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, name=name: got.__setitem__(name, tuple(out.shape)))
        for name, path in model.feature_taps.items()]
    with torch.no_grad():
        model(torch.rand(2, 3, 50, 70), torch.rand(2, 1, 50, 70))  # padded to 64 x 96
    for h in hooks:
        h.remove()
    assert got == {"stem": (2, 64, 32, 48), "layer1": (2, 64, 16, 24), "layer2": (2, 128, 8, 12),
                   "layer3": (2, 256, 4, 6), "layer4": (2, 512, 2, 3), "decoder": (2, 64, 32, 48)}
    assert {k: c for k, (c, _) in model.feature_channels.items()} == {k: v[1] for k, v in got.items()}


def test_feature_taps_helper(teacher18):
    m = teacher18.eval()
    assert all(isinstance(mod, torch.nn.Module) for mod in resolve_taps(m).values())
    with FeatureTaps(m, ["layer4", "decoder"]) as taps:
        with torch.no_grad():
            m(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    assert {k: tuple(v.shape) for k, v in taps.features.items()} == {"layer4": (1, 512, 2, 2),
                                                                     "decoder": (1, 64, 32, 32)}
    assert all(not mod._forward_hooks for mod in resolve_taps(m).values())  # removed on exit
    with pytest.raises(ConfigError, match="unknown tap 'layer9'"):
        FeatureTaps(m, ["layer9"])
