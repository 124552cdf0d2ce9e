"""CREStereo (Li et al., CVPR 2022) in PyTorch: our implementation of the published
architecture, with parameter names and shapes of the public PyTorch conversion of the
official weights (``crestereo_eth3d.pth``), so such a checkpoint loads with ``strict=True``.

Pieces: a RAFT-style shared encoder at stride 4 (instance norm), whose left output is also
split into the GRU's hidden state and context; a 1/4, 1/8, 1/16 feature pyramid; LoFTR-style
linear self-attention (with sine positional encoding) and cross-attention at 1/16; adaptive
group correlation (AGCL: four channel groups, learned search offsets at 1/16 and 1/8,
alternating 1x9 and 3x3 windows); a SepConvGRU update block with convex upsampling; a cascade
1/16 -> 1/8 -> 1/4.

Flow convention inside the network: optical flow from left to right, so the x component is
minus the disparity. ``forward`` returns positive disparity in pixels, (N, 2, H, W) (use
channel 0).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- encoder
class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm; the shortcut is always a 1x1 projection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1, self.norm2, self.norm3 = (nn.InstanceNorm2d(planes) for _ in range(3))
        self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.downsample(x) + y)


class BasicEncoder(nn.Module):
    """Stride-4 feature encoder: 7x7/2 conv, three residual stages (64, 96/2, 128), 1x1 to 256."""

    def __init__(self, output_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, 1), ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, 2), ResidualBlock(96, 96, 1))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, 1), ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(128, output_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


# ----------------------------------------------------------------------------- attention
class LinearAttention(nn.Module):
    """Linear attention with the elu+1 feature map (Katharopoulos et al.), as in LoFTR."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, q, k, v):  # (N, L, heads, dim)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        length = v.shape[1]
        v = v / length  # keeps fp16 from overflowing
        kv = torch.einsum("nshd,nshv->nhdv", k, v)
        z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


class LoFTREncoderLayer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8):
        super().__init__()
        self.nhead, self.dim = nhead, d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.attention = LinearAttention()
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.ReLU(True),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, source):  # (N, L, C), (N, S, C)
        n = x.shape[0]
        q = self.q_proj(x).view(n, -1, self.nhead, self.dim)
        k = self.k_proj(source).view(n, -1, self.nhead, self.dim)
        v = self.v_proj(source).view(n, -1, self.nhead, self.dim)
        message = self.norm1(self.merge(self.attention(q, k, v).reshape(n, -1, self.nhead * self.dim)))
        message = self.norm2(self.mlp(torch.cat([x, message], dim=2)))
        return x + message


class LocalFeatureTransformer(nn.Module):
    """A stack of 'self' or 'cross' LoFTR layers over two token sequences."""

    def __init__(self, d_model: int, nhead: int, layer_names: list[str]):
        super().__init__()
        self.layer_names = layer_names
        layer = LoFTREncoderLayer(d_model, nhead)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in layer_names)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, feat0, feat1):
        # Sequential, as in CREStereo (megvii-research/CREStereo nets/attention/transformer.py and
        # the PyTorch port): in a 'cross' layer feat1 attends to the feat0 *already updated* by the
        # same layer, not to the old one. The public weights were trained with this order.
        for layer, name in zip(self.layers, self.layer_names):
            if name == "self":
                feat0 = layer(feat0, feat0)
                feat1 = layer(feat1, feat1)
            else:
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
        return feat0, feat1


def pe_log_factor(d_model: int) -> float:
    """The exponent factor of CREStereo's positional encoding: frequencies are exp(k * factor).

    CREStereo (megvii-research/CREStereo nets/attention/position_encoding.py; the PyTorch port's
    ``temp_bug_fix=False`` branch) writes ``-math.log(10000.0) / d_model // 2``. By Python's
    precedence that is ``(-log(10000) / d_model) // 2``, a floor division of a small negative
    number: -1.0 for every d_model > log(10000) / 2 ~ 4.6, so the frequencies are exp(-k) for
    k = 0, 2, 4, ... LoFTR later corrected it to ``-log(10000) / (d_model // 2)`` (zju3dv/LoFTR
    issue 41), but the public CREStereo weights were trained with the uncorrected factor, so the
    features they expect are the ones it gives; we keep it.
    """
    return (-math.log(10000.0) / d_model) // 2


def sine_position_encoding(d_model: int, height: int, width: int, device=None) -> torch.Tensor:
    """CREStereo's 2-D sine encoding, (1, d_model, H, W): channels cycle sin x, cos x, sin y, cos y
    with x, y = 1, 2, ... and frequencies exp(k * pe_log_factor(d_model)), k = 0, 2, 4, ..."""
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, :].expand(height, width)
    div = torch.exp(torch.arange(0, d_model // 2, 2, device=device).float() * pe_log_factor(d_model))
    div = div[:, None, None]
    pe = torch.zeros(d_model, height, width, device=device)
    pe[0::4], pe[1::4] = torch.sin(x * div), torch.cos(x * div)
    pe[2::4], pe[3::4] = torch.sin(y * div), torch.cos(y * div)
    return pe[None]


def _tokens(x):
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _untokens(x, h, w):
    return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- correlation
def coords_grid(n: int, h: int, w: int, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].expand(n, -1, -1, -1)


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` (N, C, H, W) at pixel ``coords`` (N, h, w, 2) in (x, y) order."""
    h, w = img.shape[-2:]
    x, y = coords.split(1, dim=-1)
    grid = torch.cat([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(img, grid, align_corners=True)


def _window(small_patch: bool) -> tuple[int, int]:
    """Search window (ry, rx): 3x3 on 'small patch' iterations, 1x9 on the others."""
    return (1, 1) if small_patch else (0, 4)


class AGCL:
    """Adaptive group correlation between left and right features at one pyramid level.

    Features are split into 4 channel groups; each gives 9 correlations (a 1x9 or 3x3 window
    around the current match), so the output has 36 channels.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, att: LocalFeatureTransformer | None = None):
        self.fmap1, self.fmap2, self.att = fmap1, fmap2, att
        n, _, h, w = fmap1.shape
        self.coords = coords_grid(n, h, w, fmap1.device)

    def __call__(self, flow, extra_offset, small_patch: bool = False, iter_mode: bool = False):
        if iter_mode:
            return self._corr_iter(flow, small_patch)
        return self._corr_offset(flow, extra_offset, small_patch)

    @staticmethod
    def _local(left, right, ry, rx):
        """Correlation of each left pixel with a (2ry+1)x(2rx+1) window of ``right``."""
        h, w = left.shape[-2:]
        right = F.pad(right, (rx, rx, ry, ry), mode="replicate")
        return torch.cat([(left * right[:, :, dy : dy + h, dx : dx + w]).mean(1, keepdim=True)
                          for dy in range(2 * ry + 1) for dx in range(2 * rx + 1)], dim=1)

    def _corr_iter(self, flow, small_patch):
        warped = bilinear_sampler(self.fmap2, (self.coords + flow).permute(0, 2, 3, 1))
        ry, rx = _window(small_patch)
        lefts, rights = self.fmap1.chunk(4, dim=1), warped.chunk(4, dim=1)
        return torch.cat([self._local(lf, rf, ry, rx) for lf, rf in zip(lefts, rights)], dim=1)

    def _corr_offset(self, flow, extra_offset, small_patch):
        left, right = self.fmap1, self.fmap2
        n, c, h, w = left.shape
        if self.att is not None:
            l_tok, r_tok = self.att(_tokens(left), _tokens(right))
            left, right = _untokens(l_tok, h, w), _untokens(r_tok, h, w)
        ry, rx = _window(small_patch)
        ys, xs = torch.meshgrid(torch.arange(-ry, ry + 1, device=left.device),
                                torch.arange(-rx, rx + 1, device=left.device), indexing="ij")
        base = torch.stack([xs, ys], -1).reshape(1, -1, 1, 1, 2).float()  # (1, 9, 1, 1, 2)
        search = base.shape[1]
        offsets = base + extra_offset.reshape(n, search, 2, h, w).permute(0, 1, 3, 4, 2)  # (N, 9, H, W, 2)
        coords = ((self.coords + flow).permute(0, 2, 3, 1)[:, None] + offsets).reshape(n, search * h, w, 2)
        corrs = []
        for lf, rf in zip(left.chunk(4, dim=1), right.chunk(4, dim=1)):
            sampled = bilinear_sampler(rf, coords).reshape(n, c // 4, search, h, w)
            corrs.append((lf[:, :, None] * sampled).mean(1))
        return torch.cat(corrs, dim=1)


# ----------------------------------------------------------------------------- update block
class BasicMotionEncoder(nn.Module):
    def __init__(self, cor_planes: int):
        super().__init__()
        self.convc1 = nn.Conv2d(cor_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow, corr):
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], 1))), flow], 1)


class SepConvGRU(nn.Module):
    """A convolutional GRU applied twice: with 1x5 kernels, then with 5x1 kernels."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 256):
        super().__init__()
        cin = hidden_dim + input_dim
        for name, k, pad in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{name}", nn.Conv2d(cin, hidden_dim, k, padding=pad))

    def forward(self, h, x):
        for name in ("1", "2"):
            hx = torch.cat([h, x], 1)
            z = torch.sigmoid(getattr(self, f"convz{name}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{name}")(hx))
            q = torch.tanh(getattr(self, f"convq{name}")(torch.cat([r * h, x], 1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    def __init__(self, hidden_dim: int = 128, cor_planes: int = 36, mask_size: int = 4):
        super().__init__()
        self.encoder = BasicMotionEncoder(cor_planes)
        self.gru = SepConvGRU(hidden_dim, input_dim=128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, 256)
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, mask_size**2 * 9, 1))

    def forward(self, net, inp, corr, flow):
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], 1))
        return net, 0.25 * self.mask(net), self.flow_head(net)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, rate: int = 4) -> torch.Tensor:
    """(N, 2, H, W) -> (N, 2, rate*H, rate*W): each fine pixel is a softmax-weighted mix of
    its coarse 3x3 neighbourhood (values scaled by ``rate``)."""
    n, _, h, w = flow.shape
    mask = torch.softmax(mask.view(n, 1, 9, rate, rate, h, w), dim=2)
    up = F.unfold(rate * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (mask * up).sum(2).permute(0, 1, 4, 2, 5, 3)
    return up.reshape(n, 2, rate * h, rate * w)


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- the model
class CREStereo(nn.Module):
    def __init__(self, max_disp: int = 192):
        super().__init__()
        self.max_flow = max_disp
        self.hidden_dim = self.context_dim = 128
        self.fnet = BasicEncoder(256)
        self.update_block = BasicUpdateBlock(self.hidden_dim, cor_planes=4 * 9, mask_size=4)
        self.self_att_fn = LocalFeatureTransformer(256, 8, ["self"])
        self.cross_att_fn = LocalFeatureTransformer(256, 8, ["cross"])
        self.search_num = 9
        self.conv_offset_16 = nn.Conv2d(256, self.search_num * 2, 3, padding=1)
        self.conv_offset_8 = nn.Conv2d(256, self.search_num * 2, 3, padding=1)
        self.range_16 = self.range_8 = 1

    def _refine(self, corr_fn, net, inp, flow, offset, iters, iter_mode=False):
        """``iters`` GRU steps at one level; yields (net, up_mask, flow) after each."""
        for itr in range(iters):
            flow = flow.detach()
            corrs = corr_fn(flow, offset, small_patch=itr % 2 == 1, iter_mode=iter_mode)
            net, up_mask, delta = self.update_block(net, inp, corrs, flow)
            flow = flow + delta
            yield net, up_mask, flow

    def forward(self, image1, image2, iters: int = 10, flow_init: torch.Tensor | None = None,
                test_mode: bool = True):
        """image1/2: (N, 3, H, W) float in 0..255, H and W multiples of 8.
        flow_init: a disparity (N, 2, H', W') from a coarser pass. Returns the final disparity
        (N, 2, H, W) in pixels, or every intermediate one when ``test_mode`` is False."""
        image1 = 2 * (image1 / 255.0) - 1.0
        image2 = 2 * (image2 / 255.0) - 1.0
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2], 0)).float().chunk(2, dim=0)
        n = fmap1.shape[0]
        hdim = self.hidden_dim
        net, inp = torch.split(fmap1, [hdim, hdim], dim=1)
        net, inp = torch.tanh(net), F.relu(inp)

        predictions = []
        if flow_init is not None:
            scale = fmap1.shape[2] / flow_init.shape[2]
            flow = -scale * _resize(flow_init, fmap1.shape[2:])
        else:
            fmap1_8, fmap2_8 = F.avg_pool2d(fmap1, 2, 2), F.avg_pool2d(fmap2, 2, 2)
            offset_8 = self.range_8 * (torch.sigmoid(self.conv_offset_8(fmap1_8)) - 0.5) * 2.0
            net_8, inp_8 = F.avg_pool2d(net, 2, 2), F.avg_pool2d(inp, 2, 2)
            fmap1_16, fmap2_16 = F.avg_pool2d(fmap1, 4, 4), F.avg_pool2d(fmap2, 4, 4)
            offset_16 = self.range_16 * (torch.sigmoid(self.conv_offset_16(fmap1_16)) - 0.5) * 2.0
            net_16, inp_16 = F.avg_pool2d(net, 4, 4), F.avg_pool2d(inp, 4, 4)
            h16, w16 = fmap1_16.shape[2:]
            pe = sine_position_encoding(256, h16, w16, fmap1.device)
            t1, t2 = self.self_att_fn(_tokens(fmap1_16 + pe), _tokens(fmap2_16 + pe))
            fmap1_16, fmap2_16 = _untokens(t1, h16, w16), _untokens(t2, h16, w16)

            # 1/16 with cross-attention inside the correlation
            flow_16 = torch.zeros(n, 2, h16, w16, device=fmap1.device)
            corr_16 = AGCL(fmap1_16, fmap2_16, att=self.cross_att_fn)
            flow = 4 * _resize(flow_16, (4 * h16, 4 * w16))  # used as is when iters < 2
            for net_16, up_mask, flow_16 in self._refine(corr_16, net_16, inp_16, flow_16, offset_16, iters // 2):
                flow = convex_upsample(flow_16, up_mask, rate=4)
                predictions.append(-4 * _resize(flow, (4 * flow.shape[2], 4 * flow.shape[3])))
            # The sign flip below is how the published model passes 1/16 to 1/8 (its weights
            # were trained with it), so it is kept for checkpoint compatibility.
            flow_8 = -(fmap1_8.shape[2] / flow.shape[2]) * _resize(flow, fmap1_8.shape[2:])
            corr_8 = AGCL(fmap1_8, fmap2_8)
            flow = 4 * _resize(flow_8, (4 * flow_8.shape[2], 4 * flow_8.shape[3]))  # used as is when iters < 2
            for net_8, up_mask, flow_8 in self._refine(corr_8, net_8, inp_8, flow_8, offset_8, iters // 2):
                flow = convex_upsample(flow_8, up_mask, rate=4)
                predictions.append(-2 * _resize(flow, (2 * flow.shape[2], 2 * flow.shape[3])))
            flow = -(fmap1.shape[2] / flow.shape[2]) * _resize(flow, fmap1.shape[2:])

        corr_4 = AGCL(fmap1, fmap2)
        for net, up_mask, flow in self._refine(corr_4, net, inp, flow, None, iters, iter_mode=True):
            predictions.append(-convex_upsample(flow, up_mask, rate=4))
        return predictions[-1] if test_mode else predictions


@torch.no_grad()
def infer_disparity(model: CREStereo, left: torch.Tensor, right: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The published two-pass recipe on a batch.

    left/right: (N, 3, H, W) float 0..255 (any H, W). Returns disparity (N, H, W) in pixels:
    inputs are padded (replicate) to multiples of 8, a coarse pass runs at half resolution, the
    full-resolution pass starts from its upsampled result, and the padding is cut off again.
    """
    h, w = left.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        left = F.pad(left, (0, pw, 0, ph), mode="replicate")
        right = F.pad(right, (0, pw, 0, ph), mode="replicate")
    half = (left.shape[2] // 2, left.shape[3] // 2)
    coarse = model(_resize(left, half), _resize(right, half), iters=iters, flow_init=None)
    disp = model(left, right, iters=iters, flow_init=coarse)
    return disp[:, 0, :h, :w]
