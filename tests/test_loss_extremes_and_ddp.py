"""Bugs found by parity runs against the public code (issue 17), each pinned by a test that
failed before the fix:

* DKD's gradient was NaN once the teacher's target logit led the others by more than ~88·T (the
  exp of the branch torch.where discards overflowed: 0·inf in the backward);
* CWKD's likewise when a teacher logit at an ignored pixel was far above the labelled ones;
* DiffKD's projector was a plain 1×1 conv where the official one is conv + BatchNorm2d;
* under DDP the CE was normalised over the global batch but DWLD and ARFD per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lix.distill import DISTILLERS, TapSpec
from lix.losses.logit import cwkd_loss, dkd_loss

ROOT = Path(__file__).resolve().parents[1]


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_dkd_gradient(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, T: float) -> np.ndarray:
    """d/ds of mean_i T²(α TCKD_i + β NCKD_i), rows of (M, C) logits, derived by hand:
    with p = softmax(s/T), b = p_y, q̂ the non-target softmax,
    ∂TCKD/∂(s/T)_y = b_s − b_t, ∂TCKD/∂(s/T)_k = −(b_s − b_t) q̂_s,k (k ≠ y),
    ∂NCKD/∂(s/T)_k = q̂_s,k − q̂_t,k (k ≠ y), 0 at y; chain rule 1/T, times T², mean over M."""
    m, c = s.shape
    grad = np.zeros_like(s)
    for i in range(m):
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        k = y[i]
        others = [j for j in range(c) if j != k]
        qs, qt = np_softmax(s[i, others] / T), np_softmax(t[i, others] / T)
        g = np.zeros(c)
        g[k] = alpha * (ps[k] - pt[k])
        g[others] = -alpha * (ps[k] - pt[k]) * qs + beta * (qs - qt)
        grad[i] = g * T / m  # T² · (1/T)
    return grad


def test_dkd_gradient_is_finite_and_analytic_when_the_teacher_target_logit_dominates():
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 2, 5, 3, 4
    s = torch.randn(n, c, h, w, generator=g)
    t = torch.randn(n, c, h, w, generator=g)
    y = torch.randint(0, c, (n, h, w), generator=g)
    # the teacher's target logit 400 above every other one: at T = 4 the non-target log-ratio is 100 > 88
    t = t.scatter(1, y[:, None], t.amax(1, keepdim=True) + 400.0)
    s.requires_grad_(True)
    loss = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    sv = s.detach().permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
    tv = t.permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
    ref = np_dkd_gradient(sv, tv, y.reshape(-1).numpy(), 1.0, 8.0, 4.0)
    got = s.grad.permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
    assert np.allclose(got, ref, atol=1e-6)


def test_cwkd_gradient_is_finite_with_extreme_logits_at_ignored_pixels():
    g = torch.Generator().manual_seed(1)
    n, c, h, w = 2, 4, 3, 5
    s = torch.randn(n, c, h, w, generator=g)
    t = torch.randn(n, c, h, w, generator=g)
    y = torch.randint(0, c, (n, h, w), generator=g)
    y[:, 0, :2] = 255
    ignored = (y == 255)[:, None].expand(n, c, h, w)
    t_far = torch.where(ignored, torch.full_like(t, 1000.0), t)   # far above the labelled ones
    s_far = torch.where(ignored, torch.full_like(s, -1000.0), s)
    a = s_far.clone().requires_grad_(True)
    loss = cwkd_loss(a, t_far, y, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    # ignored pixels have no effect: the same value and gradient as with ordinary logits there
    b = s.clone().requires_grad_(True)
    ref = cwkd_loss(b, t, y, temperature=4.0)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert (a.grad[ignored] == 0).all()


def test_diffkd_projector_is_conv_plus_batchnorm_as_official_and_the_plain_conv_is_kept_as_an_option():
    spec = TapSpec({"decoder": (16, 2)}, {"decoder": (16, 2)}, ("decoder",), 5)
    official = DISTILLERS["diffkd"](spec)
    proj = official.proj["decoder"]
    assert isinstance(proj, nn.Sequential) and isinstance(proj[0], nn.Conv2d) and isinstance(proj[1], nn.BatchNorm2d)
    assert proj[0].kernel_size == (1, 1) and proj[1].num_features == proj[0].out_channels == 8  # latent = Ct // 2
    plain = DISTILLERS["diffkd"](spec, projector="conv")
    assert isinstance(plain.proj["decoder"], nn.Conv2d)
    with pytest.raises(ValueError, match="projector"):
        DISTILLERS["diffkd"](spec, projector="mlp")


# --------------------------------------------------------------------------- DDP normalisation
DDP_SCRIPT = r"""
import sys
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from lix.losses.dwld import DWLDHead
from lix.losses.arfd import arfd_loss

def run(rows, world):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 6, 7), generator=g)
    y[0, :5] = 255          # image 0 has few labelled pixels, image 1 some, image 2 all
    y[1, :, :3] = 255
    fs = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    ft = torch.randn(3, 6, 5, 6, generator=g, dtype=torch.float64)
    s, t, y, fs, ft = s[rows], t[rows], y[rows], fs[rows], ft[rows]
    torch.manual_seed(0)
    head = DWLDHead(5, controller="dwc", dwc_training="adversarial").double()
    s, fs = s.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    a = head(s, t, y, world_size=world)
    b = arfd_loss([fs], [ft], chunk=None, exact=True, world_size=world)
    (a + b).backward()
    grads = [p.grad.detach().clone() for p in head.parameters()]
    return {"a": a.detach(), "b": b.detach(), "grads": grads, "gs": s.grad, "gf": fs.grad}

out = sys.argv[1]
if sys.argv[2] == "one":
    torch.save(run(slice(0, 3), 1), out)
else:
    dist.init_process_group("gloo")
    r = dist.get_rank()
    res = run(slice(0, 2) if r == 0 else slice(2, 3), 2)   # 2 images on rank 0, 1 on rank 1
    for x in (res["a"], res["b"], *res["grads"]):
        dist.all_reduce(x)
        x /= 2                                          # as DDP averages gradients; the logged mean
    torch.save(res, f"{out}.{r}")
    dist.destroy_process_group()
"""


def test_dwld_and_arfd_under_two_gloo_processes_equal_one_process(tmp_path):
    """Ranks with different numbers of images and of labelled pixels. Each rank's term is
    W · (its sum) / (the global count), so averaged over the ranks (as DDP averages gradients)
    the value and the controller's gradients equal one process over the whole batch, and each
    rank's gradient with respect to its own inputs is W times the one-process gradient (DDP's
    1/W brings it back once it reaches the shared network)."""
    script = tmp_path / "ddp_losses.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), "one", str(ROOT)], **run)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "two.pt"), "two", str(ROOT)], **run)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"two.pt.{r}", weights_only=True) for r in (0, 1)]
    for key in ("a", "b"):  # DWLD, ARFD
        assert ranks[0][key].item() == pytest.approx(a[key].item(), rel=1e-10), key
    assert len(a["grads"]) == len(ranks[0]["grads"]) > 0
    for g1, g2 in zip(a["grads"], ranks[0]["grads"]):  # the controller's parameters
        torch.testing.assert_close(g2, g1, rtol=1e-9, atol=1e-12)
    for key in ("gs", "gf"):  # student logits, student features
        torch.testing.assert_close(torch.cat([ranks[0][key], ranks[1][key]]), 2 * a[key], rtol=1e-9, atol=1e-12)
