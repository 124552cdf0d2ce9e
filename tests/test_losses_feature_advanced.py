"""MasKD, DiffKD, Af-DCD, PAD and IntRA-KD (lix/losses/feature_advanced.py).

Golden values are recomputed here with numpy and explicit loops (no helper of the module under
test), on tiny tensors with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from distill_utils import two_trainer_steps

from lix.distill import DISTILLERS, DistillBatch, TapSpec, create_distiller
from lix.losses import feature_advanced as fa
from lix.models import create_model
from lix.models.taps import FeatureTaps

METHODS = ("maskd", "diffkd", "afdcd", "pad", "intra_kd")
IGN = 255


def _spec(cs: int, ct: int, n_classes: int = 4, stride: int = 2, tap: str = "decoder") -> TapSpec:
    return TapSpec({tap: (cs, stride)}, {tap: (ct, stride)}, (tap,), n_classes)


def _batch(fs: torch.Tensor, ft: torch.Tensor, target: torch.Tensor, n_classes: int = 4, tap: str = "decoder"):
    n, H, W = target.shape
    g = torch.Generator().manual_seed(7)
    return DistillBatch(torch.randn(n, n_classes, H, W, generator=g), torch.randn(n, n_classes, H, W, generator=g),
                        target, {tap: fs}, {tap: ft})


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _assert_grads(module: torch.nn.Module, skip: tuple[str, ...] = ()):
    for name, p in module.named_parameters():
        if name.startswith(skip) or not p.requires_grad:
            continue
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


# --------------------------------------------------------------------------- registry
def test_all_registered_as_feature_methods():
    for name in METHODS:
        assert name in DISTILLERS
        cls = DISTILLERS[name]
        assert cls.kind == "feature"
        assert "arXiv:" in cls.reference
        assert cls.taps == ("decoder",)
    assert DISTILLERS["maskd"].needs_pretrain and DISTILLERS["diffkd"].needs_pretrain
    assert not DISTILLERS["afdcd"].needs_pretrain and not DISTILLERS["pad"].needs_pretrain


def test_labels_at_pads_with_ignore_then_samples_nearest():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 7, 9))
    out = fa.labels_at(target, (2, 3), stride=4)  # padded to 8 x 12
    expect = np.full((2, 2, 3), IGN)
    t = target.numpy()
    for n in range(2):
        for i in range(2):
            for j in range(3):
                y, x = 4 * i, 4 * j
                if y < 7 and x < 9:
                    expect[n, i, j] = t[n, y, x]
    np.testing.assert_array_equal(out.numpy(), expect)
    # exact multiple: plain strided sampling
    np.testing.assert_array_equal(fa.labels_at(target[:, :6, :8], (3, 4), 2).numpy(), t[:, :6:2, :8:2])


# --------------------------------------------------------------------------- MasKD
def _np_maskd(s, t, tok, eps=1e-5):
    n, c, h, w = s.shape
    T = tok.shape[0]
    total, count = 0.0, 0
    masks = np.zeros((n, T, h, w))
    for i in range(n):
        for k in range(T):
            for y in range(h):
                for x in range(w):
                    masks[i, k, y, x] = _np_sigmoid(sum(tok[k, ch] * t[i, ch, y, x] for ch in range(c)))
            for ch in range(c):
                num = sum((masks[i, k, y, x] * (s[i, ch, y, x] - t[i, ch, y, x])) ** 2
                          for y in range(h) for x in range(w))
                total += num / (masks[i, k].sum() + eps)
                count += 1
    return 0.5 * total / count, masks


def test_maskd_golden():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    tok = torch.randn(3, 3, generator=g)
    expect, masks = _np_maskd(s.double().numpy(), t.double().numpy(), tok.double().numpy())
    got_masks = fa.maskd_masks(t, tok)
    np.testing.assert_allclose(got_masks.numpy(), masks, rtol=1e-5, atol=1e-6)
    assert fa.maskd_loss(s, t, got_masks).item() == pytest.approx(expect, rel=1e-5)


def test_maskd_pretrain_terms_golden():
    g = torch.Generator().manual_seed(2)
    n, T, h, w, K = 2, 3, 3, 4, 4
    masks = torch.rand(n, T, h, w, generator=g)
    logits = torch.randn(n, K, h, w, generator=g)
    target = torch.randint(0, K, (n, h, w), generator=g)
    target[0, 0, :2] = IGN
    m, z, y = masks.double().numpy(), logits.double().numpy(), target.numpy()
    # Dice over ordered token pairs i != j, per image
    dices = []
    for i in range(n):
        for a in range(T):
            for b in range(T):
                if a != b:
                    num = 2 * (m[i, a] * m[i, b]).sum()
                    dices.append(num / ((m[i, a] ** 2).sum() + 1e-12 + (m[i, b] ** 2).sum() + 1e-12))
    assert fa.dice_diversity(masks).item() == pytest.approx(np.mean(dices), rel=1e-5)
    # CE of the mask-weighted logits at stride 1 (no resampling), labelled pixels only
    ces = []
    for i in range(n):
        for yy in range(h):
            for xx in range(w):
                if y[i, yy, xx] == IGN:
                    continue
                zz = m[i, :, yy, xx].sum() * z[i, :, yy, xx]
                ces.append(np.log(np.exp(zz).sum()) - zz[y[i, yy, xx]])
    assert fa.masked_logits_ce(masks, logits, target, stride=1).item() == pytest.approx(np.mean(ces), rel=1e-5)
    # stride 4 with padding (7 x 9 labels, 2 x 3 map): constant masks weight every logit alike
    logits2 = torch.randn(n, K, 7, 9, generator=g)
    target2 = torch.randint(0, K, (n, 7, 9), generator=g)
    const = torch.full((n, T, 2, 3), 0.25)
    zz = 0.75 * logits2.double().numpy()
    ce2 = np.log(np.exp(zz).sum(1)) - np.take_along_axis(zz, target2.numpy()[:, None], 1)[:, 0]
    assert fa.masked_logits_ce(const, logits2, target2, stride=4).item() == pytest.approx(ce2.mean(), rel=1e-5)


def test_maskd_zero_with_identity_connector_and_grads():
    torch.manual_seed(3)
    target = torch.randint(0, 4, (2, 8, 10))
    # equal channels: identity connector, equal maps -> exactly 0
    m = DISTILLERS["maskd"](_spec(5, 5), num_tokens=4)
    f = torch.randn(2, 5, 4, 5)
    assert m(_batch(f.clone().requires_grad_(), f, target))["maskd"].item() == 0.0
    # unequal channels: a 1x1 conv connector, trained by the loss; tokens frozen (no gradient)
    m = DISTILLERS["maskd"](_spec(3, 5), num_tokens=4)
    fs = torch.randn(2, 3, 4, 5, requires_grad=True)
    ft = torch.randn(2, 5, 4, 5)
    loss = m(_batch(fs, ft, target))["maskd"]
    assert loss.item() > 0
    loss.backward()
    assert fs.grad is not None and bool(fs.grad.abs().sum() > 0)
    _assert_grads(m, skip=("tokens",))
    assert all(p.grad is None and not p.requires_grad for p in m.tokens.parameters())
    # label-free distillation: the target does not enter
    other = torch.full_like(target, IGN)
    assert m(_batch(fs, ft, other))["maskd"].item() == pytest.approx(loss.item())


def test_maskd_pretraining_trains_only_tokens_and_ignores_unlabelled_pixels():
    torch.manual_seed(4)
    m = DISTILLERS["maskd"](_spec(3, 5, stride=2), num_tokens=4)
    params = m.pretrain_parameters()
    assert {id(p) for p in params} == {id(p) for p in m.tokens.parameters()}
    ft = {"decoder": torch.randn(2, 5, 4, 5)}
    logits = torch.randn(2, 4, 8, 10)
    target = torch.randint(0, 4, (2, 8, 10))
    target[:, :3] = IGN
    loss = m.pretrain_loss(ft, logits, target)
    loss.backward()
    _assert_grads(m.tokens)
    # the teacher's logits at unlabelled pixels do not matter
    logits2 = logits.clone()
    logits2[:, :, :3] = 100 * torch.randn(2, 4, 3, 10)
    assert m.pretrain_loss(ft, logits2, target).item() == pytest.approx(loss.item(), rel=1e-6)
    m.after_pretrain()
    assert not any(p.requires_grad for p in m.tokens.parameters())


# --------------------------------------------------------------------------- DiffKD
def test_diffkd_schedule_and_ddim_golden():
    assert fa.ddim_refine_timesteps(1000, 5) == [400, 300, 200, 100, 0]
    assert fa.ddim_refine_timesteps(1000, 2) == [250, 0]
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(fa.linear_alphas_cumprod(1000).numpy(), ac, rtol=1e-5)

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, generator=g)

    def eps_model(v, t):
        assert t.shape == (v.shape[0],) and t.dtype == torch.long
        return 0.3 * v + 0.1

    got = fa.ddim_refine(x, eps_model, fa.linear_alphas_cumprod(1000), steps=5).numpy()
    v = x.double().numpy()
    for t in (400, 300, 200, 100, 0):
        eps = 0.3 * v + 0.1
        a_t = ac[t]
        a_prev = ac[t - 100] if t - 100 >= 0 else 1.0
        x0 = (v - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        v = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    np.testing.assert_allclose(got, v, rtol=1e-4, atol=1e-5)

    x0 = torch.randn(2, 3, 4, 4, generator=g)
    noise = torch.randn(2, 3, 4, 4, generator=g)
    tt = torch.tensor([7, 901])
    got = fa.diffusion_noise_loss(lambda a, t: 0.3 * a + 0.1, x0, fa.linear_alphas_cumprod(1000), tt, noise).item()
    err = []
    for i, t in enumerate((7, 901)):
        noisy = math.sqrt(ac[t]) * x0[i].double().numpy() + math.sqrt(1 - ac[t]) * noise[i].double().numpy()
        err.append(((0.3 * noisy + 0.1 - noise[i].double().numpy()) ** 2).ravel())
    assert got == pytest.approx(np.concatenate(err).mean(), rel=1e-5)


def test_diffkd_terms_grads_and_pretraining():
    """No zero property: the student's start is noised at random and the denoiser is learned, so
    equal maps give a positive loss; checked instead: every part gets its gradient.

    The BN biases are perturbed first: at initialisation (bias 0) a BN -> ReLU -> conv -> BN chain
    is invariant to the first BN's scale (ReLU(g x) = g ReLU(x), the second BN removes g), so that
    scale's gradient is exactly 0 until the bias has moved (true of the official modules too)."""
    torch.manual_seed(6)
    m = DISTILLERS["diffkd"](_spec(3, 8), inference_steps=2)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(mod.bias, 0.0, 0.1)
    assert m.ae["decoder"].encoder[0].out_channels == 4  # Ct // 2
    fs = torch.randn(2, 3, 4, 5, requires_grad=True)
    ft = torch.randn(2, 8, 4, 5)
    terms = m(_batch(fs, ft, torch.randint(0, 4, (2, 8, 10))))
    assert set(terms) == {"diffkd", "diffkd_diffusion", "diffkd_ae"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert bool(fs.grad.abs().sum() > 0)
    _assert_grads(m)

    # pre-training: the autoencoder and the denoiser, teacher only; nothing frozen afterwards
    m.zero_grad(set_to_none=True)
    pre = {id(p) for p in m.pretrain_parameters()}
    assert pre == {id(p) for p in list(m.ae.parameters()) + list(m.denoiser.parameters())}
    m.pretrain_loss({"decoder": ft}, torch.randn(2, 4, 8, 10), torch.randint(0, 4, (2, 8, 10))).backward()
    _assert_grads(m.ae)
    _assert_grads(m.denoiser)
    assert all(p.grad is None for p in m.trans.parameters())
    m.after_pretrain()
    assert all(p.requires_grad for p in m.parameters())


# --------------------------------------------------------------------------- Af-DCD
def _np_ctr(p, q, tau, M, pool, patch):
    n, c, H, W = p.shape
    kh, kw = min(pool, H), min(pool, W)
    Hp, Wp = H // kh, W // kw
    pp, qq = np.zeros((n, c, Hp, Wp)), np.zeros((n, c, Hp, Wp))
    for i in range(Hp):
        for j in range(Wp):
            pp[:, :, i, j] = p[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].max(axis=(2, 3))
            qq[:, :, i, j] = q[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].max(axis=(2, 3))
    ph, pw = min(patch, Hp), min(patch, Wp)
    H2, W2 = Hp // ph * ph, Wp // pw * pw
    groups = np.array_split(np.arange(c), min(M, c))
    gmax = max(len(gr) for gr in groups)

    def vec(a, i, g, y, x):
        out = np.zeros(gmax)
        out[:len(groups[g])] = a[i, groups[g], y, x]
        return out

    total = 0.0
    for i in range(n):
        for a in range(H2 // ph):
            for b in range(W2 // pw):
                pos = [(a * ph + u, b * pw + v) for u in range(ph) for v in range(pw)]
                for (y, x) in pos:
                    for g in range(len(groups)):
                        s = vec(pp, i, g, y, x)
                        logits = [-np.abs(s - vec(qq, i, g, y, x)).sum()]
                        for (y2, x2) in pos:
                            for g2 in range(len(groups)):
                                if g2 != g:
                                    logits.append(-np.abs(s - vec(qq, i, g2, y2, x2)).sum())
                        z = np.array(logits) / tau
                        total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[0]
    return total / (H2 * W2) / n


@pytest.mark.parametrize("c, groups, pool, patch, hw", [(6, 3, 2, 2, (8, 8)),   # C divisible by M
                                                        (5, 2, 2, 2, (8, 6)),   # uneven groups
                                                        (4, 16, 4, 4, (6, 9))])  # clamps and crop
def test_afdcd_omni_contrastive_golden(c, groups, pool, patch, hw):
    g = torch.Generator().manual_seed(8)
    p, q = torch.randn(2, c, *hw, generator=g), torch.randn(2, c, *hw, generator=g)
    expect = _np_ctr(p.double().numpy(), q.double().numpy(), 0.5, groups, pool, patch)
    got = fa.omni_contrastive_loss(p, q, tau=0.5, groups=groups, pool_size=pool, patch_size=patch)
    assert got.item() == pytest.approx(expect, rel=1e-5)


def test_afdcd_mimic_mask_and_grads():
    """No zero property (a projector of a randomly masked map, plus an InfoNCE term, which is
    > 0); checked instead: the mimicking term is 0 for equal maps, the masks, the gradients."""
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    assert fa.masked_mimic_loss(a, a).item() == 0.0
    assert fa.masked_mimic_loss(a, b).item() == pytest.approx(((a - b) ** 2).sum().item() / 2, rel=1e-6)
    centre = fa.afdcd_spatial_mask(1, 6, 9, 0.75, random=False)[0, 0]
    expect = np.ones((6, 9))
    expect[2:4, 3:6] = 0
    np.testing.assert_array_equal(centre.numpy(), expect)
    torch.manual_seed(0)
    rnd = fa.afdcd_spatial_mask(4, 50, 50, 0.75)
    assert set(rnd.unique().tolist()) <= {0.0, 1.0} and abs(rnd.mean().item() - 0.25) < 0.03

    torch.manual_seed(10)
    for enhanced in (False, True):
        m = DISTILLERS["afdcd"](_spec(3, 8), enhanced_projector=enhanced, pool_size=2, patch_size=2)
        fs = torch.randn(2, 3, 8, 8, requires_grad=True)
        terms = m(_batch(fs, torch.randn(2, 8, 8, 8), torch.randint(0, 4, (2, 16, 16))))
        assert set(terms) == {"afdcd_fd", "afdcd_ctr"} and all(v.item() > 0 for v in terms.values())
        sum(terms.values()).backward()
        assert bool(fs.grad.abs().sum() > 0)
        _assert_grads(m)


# --------------------------------------------------------------------------- PAD
def test_pad_golden():
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    v = torch.randn(2, 1, 4, 5, generator=g)
    S, T, V = s.double().numpy(), t.double().numpy(), v.double().numpy()
    vals = []
    for i in range(2):
        for y in range(4):
            for x in range(5):
                sq = np.mean([(S[i, c, y, x] - T[i, c, y, x]) ** 2 for c in range(3)])
                vals.append(sq / math.exp(V[i, 0, y, x]) + V[i, 0, y, x])
    assert fa.pad_loss(s, t, v).item() == pytest.approx(np.mean(vals), rel=1e-5)


def test_pad_zero_with_identity_connector_and_grads():
    torch.manual_seed(12)
    target = torch.randint(0, 4, (2, 8, 10))
    m = DISTILLERS["pad"](_spec(5, 5))
    f = torch.randn(2, 5, 4, 5)
    assert m(_batch(f.clone().requires_grad_(), f, target))["pad"].item() == 0.0  # log-variance head starts at 0
    m = DISTILLERS["pad"](_spec(3, 5))
    fs = torch.randn(2, 3, 4, 5, requires_grad=True)
    ft = torch.randn(2, 5, 4, 5)
    loss = m(_batch(fs, ft, target))["pad"]
    # at initialisation (log sigma^2 = 0) it is the plain MSE of the connector's output
    expect = ((m.connectors["decoder"](fs) - ft) ** 2).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    loss.backward()
    assert bool(fs.grad.abs().sum() > 0)
    _assert_grads(m)


# --------------------------------------------------------------------------- IntRA-KD
def _np_intra(fs, ft, lab, n_classes, eps=1e-6):
    per_image = []
    for i in range(fs.shape[0]):
        regions = [k for k in range(n_classes) if (lab[i] == k).any()]
        if len(regions) < 2:
            continue

        def moments(f):
            out = []
            for k in regions:
                vec_mu, vec_var, vec_sk = [], [], []
                for c in range(f.shape[1]):
                    vals = [f[i, c, y, x] for y in range(lab.shape[1]) for x in range(lab.shape[2])
                            if lab[i, y, x] == k]
                    mu = sum(vals) / len(vals)
                    var = sum((v - mu) ** 2 for v in vals) / len(vals)
                    m3 = sum((v - mu) ** 3 for v in vals) / len(vals)
                    vec_mu.append(mu)
                    vec_var.append(var)
                    vec_sk.append(m3 / (var + eps) ** 1.5)
                out.append(np.array(vec_mu + vec_var + vec_sk))
            return out

        ms, mt = moments(fs), moments(ft)
        K = len(regions)
        acc = 0.0
        for a in range(K):
            for b in range(K):
                cs = ms[a] @ ms[b] / (np.linalg.norm(ms[a]) * np.linalg.norm(ms[b]))
                ct = mt[a] @ mt[b] / (np.linalg.norm(mt[a]) * np.linalg.norm(mt[b]))
                acc += (cs - ct) ** 2
        per_image.append(acc / K ** 2)
    return float(np.mean(per_image)) if per_image else 0.0


def test_intra_kd_golden():
    g = torch.Generator().manual_seed(13)
    n, h, w, K = 2, 5, 6, 4
    fs, ft = torch.randn(n, 3, h, w, generator=g), torch.randn(n, 5, h, w, generator=g)  # Cs != Ct
    lab = torch.randint(0, K, (n, h, w), generator=g)
    lab[0, 0] = IGN
    lab[0, 1, 2] = 3
    lab[0][lab[0] == 3] = 2
    lab[0, 4, 5] = 3  # a one-pixel region (variance 0, skewness 0)
    lab[1] = IGN
    lab[1, :2, :3] = 1  # image 2: a single region -> no inter-region affinity, left out
    expect = _np_intra(fs.double().numpy(), ft.double().numpy(), lab.numpy(), K)
    got = fa.intra_kd_loss(fs, ft, lab, K)
    assert expect > 0
    assert got.item() == pytest.approx(expect, rel=1e-5)
    # averaged over the images that have >= 2 regions
    lab2 = lab.clone()
    lab2[1] = lab[0]
    both = fa.intra_kd_loss(torch.cat([fs[:1], fs[:1]]), torch.cat([ft[:1], ft[:1]]), lab2, K)
    assert both.item() == pytest.approx(expect, rel=1e-5)


def test_intra_kd_zero_ignore_and_grads():
    torch.manual_seed(14)
    m = DISTILLERS["intra_kd"](_spec(3, 6, stride=2))
    target = torch.randint(0, 4, (2, 8, 10))
    target[:, :2] = IGN  # rows 0-1 -> feature row 0 unlabelled
    fs = torch.randn(2, 3, 4, 5, requires_grad=True)
    ft = torch.randn(2, 6, 4, 5)
    # equal maps (equal channels) -> 0
    m_eq = DISTILLERS["intra_kd"](_spec(6, 6, stride=2))
    assert m_eq(_batch(ft.clone(), ft, target))["intra_kd"].item() == pytest.approx(0.0, abs=1e-7)
    loss = m(_batch(fs, ft, target))["intra_kd"]
    # features at unlabelled positions take no part
    fs2, ft2 = fs.detach().clone(), ft.clone()
    fs2[:, :, 0] = 50 * torch.randn(2, 3, 5)
    ft2[:, :, 0] = 50 * torch.randn(2, 6, 5)
    assert m(_batch(fs2, ft2, target))["intra_kd"].item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert fs.grad is not None and bool(fs.grad.abs().sum() > 0)
    assert fs.grad[:, :, 0].abs().sum().item() == 0.0
    # no labelled pixel at all: an exact 0 that stays in the graph
    empty = m(_batch(fs, ft, torch.full_like(target, IGN)))["intra_kd"]
    assert empty.item() == 0.0 and empty.requires_grad


# --------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def mfnet_pair():
    torch.manual_seed(0)
    student = create_model("mfnet", 5, 0)
    teacher = create_model("mfnet", 5, 1).eval()
    return student, teacher


@pytest.mark.parametrize("method", METHODS)
def test_create_distiller_on_mfnet_and_forward(mfnet_pair, method):
    student, teacher = mfnet_pair
    d = create_distiller(method, student, teacher)
    assert d.spec.taps == ("decoder",) and d.spec.channels("decoder") == (16, 32)
    torch.manual_seed(1)
    rgb, depth = torch.rand(2, 3, 30, 44), torch.rand(2, 1, 30, 44)  # padded to 32 x 48 inside MFNet
    target = torch.randint(0, 5, (2, 30, 44))
    target[:, :4] = IGN
    with torch.no_grad(), FeatureTaps(teacher, d.spec.taps, detach=True) as tt:
        t_logits = teacher(rgb, depth)
    with FeatureTaps(student, d.spec.taps) as ts:
        s_logits = student(rgb)
    if d.needs_pretrain:
        pre = d.pretrain_loss(dict(tt.features), t_logits, target)
        assert torch.isfinite(pre)
        d.after_pretrain()
    terms = d(DistillBatch(s_logits, t_logits, target, dict(ts.features), dict(tt.features)))
    assert set(terms) == set(d.terms) == set(d.loss_weights)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters())
    student.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", METHODS)
def test_two_trainer_steps(method):
    steps = two_trainer_steps(method)  # finite terms, every trainable part got a gradient
    assert len(steps) == 2 and all(set(DISTILLERS[method].terms) <= set(s) for s in steps)
