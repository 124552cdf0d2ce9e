"""The cheaper distillation step of issue 21 equals the reference path it replaced.

Every rewrite keeps its reference (``*_reference`` functions, and ``LIX_REFERENCE_LOSSES=1``
for the whole step); each test compares the rewrite with the reference, never with itself:
loss values and gradients (student parameters, the DWC and the aligners) to float32 tolerance
(rtol 1e-5, atol 1e-6 unless a test says why otherwise) on random inputs at two sizes, one with
ignored (255) pixels; the data path bitwise, for the same seed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distill_utils import N_CLASSES, fake_batches, tiny_pair

from lix.data import AugmentConfig, _photometric, apply_geometry, apply_geometry_reference, augment, draw_geometry
from lix.distill import create_distiller
from lix.distill.train import StudentWithDistiller
from lix.inputs import Inputs
from lix.losses import arfd as arfd_mod
from lix.losses import logit
from lix.losses.decoupled import ncld_tangent
from lix.losses.dwc import (
    dwc_objective,
    dwc_objective_reference,
    lookahead_objective,
    lookahead_objective_reference,
    lookahead_weight_gradient,
    lookahead_weight_gradient_reference,
)
from lix.losses.dwld import dwld_terms, dwld_terms_reference

RTOL, ATOL = 1e-5, 1e-6
# float64: the same formulas, so agreement to float64 rounding
TOL = {torch.float32: (RTOL, ATOL), torch.float64: (1e-9, 1e-12)}
# per-pixel maps of T²-scaled KL terms in float32: their summands (T² = 16 times log-probabilities
# down to about −10) cancel, so two orders of summation differ by up to ~2e-5 absolute
MAP_ATOL32 = 2e-5
SIZES = [(2, 6, 8, 12, False), (3, 10, 16, 20, True)]  # (N, C, H, W, with ignored pixels)
DTYPES = [torch.float32, torch.float64]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float | None = None, atol: float | None = None) -> None:
    r, t = TOL.get(b.dtype, (RTOL, ATOL))
    torch.testing.assert_close(a, b, rtol=r if rtol is None else rtol, atol=t if atol is None else atol)


def logits(n: int, c: int, h: int, w: int, ignored: bool, seed: int = 0, scale: float = 3.0,
           dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, (n, h, w), generator=g)
    if ignored:
        y[:, : h // 4] = 255
        y[0, -1, -1] = 255
    return s, t, y


def value_and_grad(fn, s: torch.Tensor, *args, upstream: torch.Tensor | None = None, **kw):
    x = s.clone().requires_grad_(True)
    out = fn(x, *args, **kw)
    (out if upstream is None else (out * upstream).sum()).backward()
    return out.detach(), x.grad


# --------------------------------------------------------------------------- logit losses
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "wsld"])
@pytest.mark.parametrize("size", SIZES)
def test_logit_losses_equal_their_reference(name, size, dtype):
    n, c, h, w, ignored = size
    s, t, y = logits(n, c, h, w, ignored, seed=1, dtype=dtype)
    fast, ref = getattr(logit, f"{name}_loss"), getattr(logit, f"{name}_loss_reference")
    for kw in ({}, {"temperature": 4.0} if name in ("kd", "dkd", "wsld") else {"tau": 2.0}):
        v1, g1 = value_and_grad(fast, s, t, y, **kw)
        v2, g2 = value_and_grad(ref, s, t, y, **kw)
        close(v1, v2)
        close(g1, g2)
        if ignored:  # no gradient at an ignored pixel
            assert torch.all(g1[(y == 255).unsqueeze(1).expand_as(g1)] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_per_pixel_maps_equal_their_reference(size, dtype):
    n, c, h, w, ignored = size
    s, t, y = logits(n, c, h, w, ignored, seed=2, dtype=dtype)
    atol = MAP_ATOL32 if dtype == torch.float32 else None
    up = torch.rand(n, h, w, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    close(*[value_and_grad(f, s, t, y, upstream=up)[1] for f in (logit.kd_map, logit.kd_map_reference)])
    close(logit.kd_map(s, t, y), logit.kd_map_reference(s, t, y), atol=atol)
    for a, b in zip(logit.dkd_terms(s, t, y), logit.dkd_terms_reference(s, t, y)):
        close(a, b, atol=atol)


def test_the_reference_switch_selects_the_reference(monkeypatch):
    s, t, y = logits(2, 5, 6, 7, True, seed=4)
    monkeypatch.setenv("LIX_REFERENCE_LOSSES", "1")
    assert torch.equal(logit.dkd_loss(s, t, y), logit.dkd_loss_reference(s, t, y))
    assert all(torch.equal(a, b) for a, b in zip(dwld_terms(s, t, y), dwld_terms_reference(s, t, y)))


def test_extreme_logits_stay_finite_and_equal():
    """A teacher sure of the target (its tempered logit 75 above the rest) and a student sure of
    another class: the −inf mask of the rewrite and eq. 11's −1000 of the reference agree."""
    s, t, y = logits(2, 6, 5, 7, True, seed=5)
    t = t.scatter(1, y.clamp(max=5).unsqueeze(1), 300.0)
    s = s.scatter(1, ((y.clamp(max=5) + 1) % 6).unsqueeze(1), 200.0)
    for fast, ref in ((logit.dkd_loss, logit.dkd_loss_reference),):
        v1, g1 = value_and_grad(fast, s, t, y)
        v2, g2 = value_and_grad(ref, s, t, y)
        assert torch.isfinite(v1) and torch.isfinite(g1).all()
        close(v1, v2)
        close(g1, g2)


# --------------------------------------------------------------------------- DWLD
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("terms", ["generalized", "paper"])
@pytest.mark.parametrize("size", SIZES)
def test_dwld_terms_and_their_gradient_equal_the_reference(terms, size, dtype):
    n, c, h, w, ignored = size
    s, t, y = logits(n, c, h, w, ignored, seed=6, dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    up_tcld = torch.rand(n, h, w, generator=gen, dtype=torch.float64).to(dtype)
    up_g = torch.rand(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    out = []
    for fn in (dwld_terms, dwld_terms_reference):
        x = s.clone().requires_grad_(True)
        tcld, g, gt, valid = fn(x, t, y, 4.0, 255, terms)
        ((tcld * up_tcld).sum() + (g * up_g).sum()).backward()
        out.append((tcld.detach(), g.detach(), gt, valid, x.grad))
    (tc1, g1, gt1, v1, d1), (tc2, g2, gt2, v2, d2) = out
    close(tc1, tc2, atol=MAP_ATOL32 / 16 if dtype == torch.float32 else None)  # not × T² here
    close(g1, g2)
    close(d1, d2)
    assert torch.equal(gt1, gt2) and torch.equal(v1, v2)


def test_ncld_tangent_equals_forward_mode_of_the_reference():
    s, t, y = logits(2, 7, 6, 9, True, seed=8)
    lab = torch.where(y == 255, torch.zeros_like(y), y)
    tangent = torch.randn(s.shape, generator=torch.Generator().manual_seed(9))
    for terms in ("generalized", "paper"):
        _, golden = torch.func.jvp(lambda z: dwld_terms_reference(z, t, y, 4.0, 255, terms)[1], (s,), (tangent,))
        close(ncld_tangent(s, t, lab, tangent, 4.0, terms == "generalized"), golden)


def _objective_pair(fast, ref, *args, **kw):
    x = args[0]
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    va, vb = fast(a, *args[1:], **kw), ref(b, *args[1:], **kw)
    va.backward()
    vb.backward()
    close(va.detach(), vb.detach())
    close(a.grad, b.grad)


@pytest.mark.parametrize("size", SIZES)
def test_controller_objectives_equal_their_reference(size):
    n, c, h, w, ignored = size
    s, t, y = logits(n, c, h, w, ignored, seed=10)
    _tc, g, gt, valid = dwld_terms_reference(s, t, y)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, c, h, w, generator=gen) * 2
    meta = torch.randn(n, c, h, w, generator=gen)
    b0, tau = math.log(7 / 2), 0.7
    _objective_pair(lookahead_objective, lookahead_objective_reference, x, meta, gt, valid, b0, tau)
    _objective_pair(dwc_objective, dwc_objective_reference, x, g, gt, valid, b0, tau)


def _student_forward(student, x):
    """What StudentWithDistiller._student_forward builds: params -> logits, buffers copied."""
    def forward(params):
        state = {**{n: b.clone() for n, b in student.named_buffers()}, **params}
        return torch.func.functional_call(student, state, (x,))

    forward.params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    return forward


@pytest.mark.parametrize("terms", ["generalized", "paper"])
def test_lookahead_meta_gradient_by_forward_mode_equals_the_second_order_reference(terms):
    """MFNet (BatchNorm with batch statistics, max pooling, LeakyReLU, nearest upsampling), ignored
    pixels: the forward-mode meta-gradient against the reference's double backward, each on the
    terms of its own path. atol 1e-9: the meta-gradient's entries are ~1e-7 (η·λ·T²/n)."""
    student, _teacher = tiny_pair()
    student.train()
    b = fake_batches(1, batch=2, h=32, w=48)[0]
    x = b["rgb"].float() / 255
    y = b["label"].long()
    t = torch.randn(2, N_CLASSES, 32, 48, generator=torch.Generator().manual_seed(12)) * 2
    w = 1 + 9 * torch.rand(2, N_CLASSES, 32, 48, generator=torch.Generator().manual_seed(13))
    fwd = _student_forward(student, x)
    s = student(x)
    tc, g, _gt, valid = dwld_terms(s, t, y, 4.0, 255, terms)
    got = lookahead_weight_gradient(s, y, w, tc, g, valid, fwd, 0.01, 1.0, 4.0, 0.7, 255, t, terms)
    s = student(x)
    tc, g, _gt, valid = dwld_terms_reference(s, t, y, 4.0, 255, terms)
    golden = lookahead_weight_gradient_reference(s, y, w, tc, g, valid, fwd, 0.01, 1.0, 4.0, 0.7, 255)
    assert golden.abs().max() > 0
    close(got, golden, atol=1e-9)
    # the reference formula on the rewritten terms (their backward differentiated once more)
    s = student(x)
    tc, g, _gt, valid = dwld_terms(s, t, y, 4.0, 255, terms)
    close(lookahead_weight_gradient_reference(s, y, w, tc, g, valid, fwd, 0.01, 1.0, 4.0, 0.7, 255), golden,
          atol=1e-9)


# --------------------------------------------------------------------------- ARFD
def _pixels(n: int, m: int, d: int, seed: int) -> torch.Tensor:
    x = torch.relu(torch.randn(n, m, d, generator=torch.Generator().manual_seed(seed)))
    x[:, 3] = 0.0  # two identical pixels: a zero distance off the diagonal
    x[:, 5] = 0.0
    return x


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("shape", [(2, 30, 8), (3, 97, 20)])
def test_recalibration_equals_the_reference(kernel, shape, monkeypatch):
    x = _pixels(*shape, seed=14)
    up = torch.randn(shape, generator=torch.Generator().manual_seed(15))
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("LIX_REFERENCE_LOSSES", mode)
        sigma = arfd_mod.perplexity_bandwidth(x, 4.0, kernel)
        v, gr = value_and_grad(lambda z: arfd_mod.kernel_regression(z, z, z, kernel, sigma), x, upstream=up)
        with torch.no_grad():
            v_ng = arfd_mod.recalibrate(x, kernel, bandwidth_k=4.0)
        out[mode] = (sigma, v, gr, v_ng)
    for a, b in zip(out["0"], out["1"]):
        close(a, b)


def test_variance_kept_equals_the_reference():
    before = _pixels(3, 120, 16, seed=17).transpose(1, 2).contiguous().transpose(1, 2) * 4 + 1  # a (N, n, d) view
    after = _pixels(3, 120, 16, seed=18)
    close(arfd_mod.variance_kept(before, after), arfd_mod.variance_kept_reference(before, after))
    close(arfd_mod.variance_kept(before.double(), after.double()),
          arfd_mod.variance_kept_reference(before.double(), after.double()))


def test_perplexity_bandwidth_equals_the_reference_on_feature_maps():
    x = _pixels(4, 200, 32, seed=16) * 5
    for kernel in ("laplace", "gaussian"):
        close(arfd_mod.perplexity_bandwidth(x, 8.0, kernel), arfd_mod.perplexity_bandwidth_reference(x, 8.0, kernel))


# --------------------------------------------------------------------------- the whole step
def _step(method: str, hyper: dict, batch: dict, reference: bool, monkeypatch) -> tuple[dict, dict]:
    """Loss terms and every gradient of one StudentWithDistiller forward + backward."""
    monkeypatch.setenv("LIX_REFERENCE_LOSSES", "1" if reference else "0")
    student, teacher = tiny_pair()
    distiller = create_distiller(method, student, teacher, **hyper)
    module = StudentWithDistiller(student, distiller, teacher, Inputs(None), Inputs("depth")).train()
    assert module.channels_last is not reference
    out = module(batch)
    out["loss"].backward()
    return ({k: v.detach() for k, v in out.items()},
            {n: p.grad for n, p in module.named_parameters() if p.grad is not None})


STEP_CASES = [("lix", {}), ("lix", {"dwc_training": "adversarial", "ncld_terms": "paper"}),
              ("dwld", {"dwc_training": "joint"}), ("dwld", {"controller": "confidence"}),
              ("arfd", {"kernel": "gaussian"}), ("kd", {}), ("dkd", {}), ("cwkd", {}), ("dist", {}), ("wsld", {})]


@pytest.mark.parametrize("method,hyper", STEP_CASES)
@pytest.mark.parametrize("hw", [(32, 48), (48, 64)])
def test_distillation_step_equals_the_reference_step(method, hyper, hw, monkeypatch):
    """Teacher in channels_last and every rewritten loss against the NCHW teacher and the
    references: the terms (diagnostics included), and the gradients of the student's and the
    distiller's parameters. Labels with ignored rows (fake_batches). Gradients: rtol 1e-5 and an
    atol of 1e-5 × the tensor's largest entry: a weight's gradient sums ~10⁴ float32 products of
    either sign (the first convolution's over every pixel), so an entry that is small next to the
    others carries its tensor's rounding (measured: up to 2.3e-6 on a tensor whose largest entry
    is 0.4); the inputs of that sum differ at ~1e-7."""
    from lix.data import to_device

    batch = to_device(fake_batches(1, batch=2, h=hw[0], w=hw[1], seed=hw[0])[0], "cpu")
    new_terms, new_grads = _step(method, hyper, batch, False, monkeypatch)
    ref_terms, ref_grads = _step(method, hyper, batch, True, monkeypatch)
    assert new_terms.keys() == ref_terms.keys() and new_grads.keys() == ref_grads.keys()
    for k in ref_terms:
        close(new_terms[k], ref_terms[k])
    for k in ref_grads:
        close(new_grads[k], ref_grads[k], atol=max(ATOL, 1e-5 * ref_grads[k].abs().max().item()))


def test_teacher_outputs_in_channels_last_equal_nchw():
    student, teacher = tiny_pair()
    distiller = create_distiller("arfd", student, teacher)
    batch = {"rgb": torch.rand(2, 3, 32, 48), "depth": torch.rand(2, 1, 32, 48) * 50 + 2,
             "depth_valid": torch.ones(2, 1, 32, 48, dtype=torch.bool)}
    ref = StudentWithDistiller(student, distiller, copy.deepcopy(teacher), Inputs(None), Inputs("depth"),
                               channels_last=False).teacher_outputs(batch)
    new = StudentWithDistiller(student, distiller, teacher, Inputs(None), Inputs("depth"),
                               channels_last=True).teacher_outputs(batch)
    assert next(teacher.parameters()).dim() != 4 or teacher.conv1_rgb.conv.weight.is_contiguous(
        memory_format=torch.channels_last)
    close(new[0], ref[0])
    assert new[0].is_contiguous() and all(v.is_contiguous() for v in new[1].values())
    for k in ref[1]:
        close(new[1][k], ref[1][k])


# --------------------------------------------------------------------------- data
def _raw_sample(h: int, w: int, seed: int) -> dict:
    """An item as ShardDataset.raw returns it: HWC-stored rgb and normals seen as CHW views."""
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).permute(2, 0, 1),
            "label": torch.randint(0, 256, (h, w), generator=g, dtype=torch.uint8),
            "depth": torch.rand(1, h, w, generator=g) * 80,
            "depth_valid": torch.rand(h, w, generator=g) > 0.2,
            "normals": F.normalize(torch.randn(h, w, 3, generator=g), dim=2).half().permute(2, 0, 1),
            "normal_valid": torch.rand(h, w, generator=g) > 0.3,
            "K": torch.tensor([[200.0, 0.0, w / 2], [0.0, 200.0, h / 2], [0.0, 0.0, 1.0]]), "id": "x"}


@pytest.mark.parametrize("size,crop", [((48, 160), (48, 80)), ((90, 160), (90, 64)), ((48, 160), None)])
def test_augmentation_is_bitwise_the_reference(size, crop):
    """Rescale (down: padding; up), crop, flip: every map and K identical, for many draws; the
    whole augment (photometric included) equals the reference geometry + photometric for the same
    seed, i.e. the same random draws in the same order."""
    cfg = AugmentConfig(crop=crop)
    for seed in range(40):
        s = _raw_sample(*size, seed)
        geom = draw_geometry(np.random.default_rng(seed), size, cfg)
        a, b = apply_geometry(s, geom), apply_geometry_reference(s, geom)
        for k in ("rgb", "label", "depth", "depth_valid", "normals", "normal_valid", "K"):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (seed, k)
        rng = np.random.default_rng([seed, 1])
        got = augment(s, rng, cfg)
        rng_ref = np.random.default_rng([seed, 1])
        ref = apply_geometry_reference(s, draw_geometry(rng_ref, size, cfg))
        ref_rgb = (_photometric(ref["rgb"], rng_ref, cfg) * 255.0).round_().to(torch.uint8)
        assert torch.equal(got["rgb"], ref_rgb) and torch.equal(got["label"], ref["label"])
        assert rng.bit_generator.state == rng_ref.bit_generator.state  # the same draws consumed
