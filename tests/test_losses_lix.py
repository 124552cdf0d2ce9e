"""The paper's own methods: DWLD (lix/losses/dwld.py), ARFD (lix/losses/arfd.py), the consistency
measures (lix/losses/cka.py) and the registered ``dwld`` / ``arfd`` / ``lix``
(lix/distill/methods/).

Golden values are recomputed here in float64 numpy (per-pixel Python loops for DKD/DWLD, Gram
matrices for CKA, explicit pairwise loops for the kernel regression), never with the modules'
helpers. DWLD is per pixel, so "ignored pixels contribute nothing" is tested by changing the
logits there; ARFD is a per-image feature-structure loss that does not read the label (tested as
"the target does not matter"). ARFD's aligners (1×1 conv, BN, ReLU) make the registered method
non-zero for a student equal to the teacher, so its zero is tested on the pure function with an
aligned student equal to the teacher.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lix.distill import DISTILLERS, DistillBatch, TapSpec, create_distiller
from lix.losses import arfd as arfd_mod
from lix.losses import cka as cka_mod
from lix.losses.dwc import dwc_objective
from lix.losses.dwld import DWLDHead, dwld_loss, dwld_terms
from lix.models import create_model
from lix.models.taps import FeatureTaps
from pipeline.errors import ConfigError

C = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: intra-op threads only add overhead on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def npy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def logits_batch(seed=0, n=2, c=C, h=6, w=7, scale=3.0, n_ignore=5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n, h, w), generator=g)
    y.view(-1)[torch.randperm(n * h * w, generator=g)[:n_ignore]] = 255
    return s, t, y


# --------------------------------------------------------------------------- numpy references
def np_dwld(s, t, y, weights, alpha=1.0, T=4.0, terms="generalized"):
    """Per-pixel loop: T² (α·binary KL of the target class + Σ_{k≠y} w_k g_k), mean over labelled
    pixels. ``weights``: a number or an (N, C, H, W) array."""
    s, t, y = npy(s), npy(t), y.numpy()
    n, c, h, w = s.shape
    total, count = 0.0, 0
    for i in range(n):
        for a in range(h):
            for b in range(w):
                lab = y[i, a, b]
                if lab == 255:
                    continue
                p, q = np_softmax(t[i, :, a, b] / T), np_softmax(s[i, :, a, b] / T)
                bt, bs = np.array([p[lab], 1 - p[lab]]), np.array([q[lab], 1 - q[lab]])
                tc = float(np.sum(bt * np.log(bt / bs)))
                others = [k for k in range(c) if k != lab]
                ph = np_softmax(t[i, others, a, b] / T)
                qh = np_softmax(s[i, others, a, b] / T)
                nc = 0.0
                for j, k in enumerate(others):
                    wk = weights if np.isscalar(weights) else weights[i, k, a, b]
                    term = ph[j] * math.log(ph[j] / qh[j])
                    if terms == "generalized":
                        term += qh[j] - ph[j]
                    nc += wk * term
                total += T * T * (alpha * tc + nc)
                count += 1
    return total / max(count, 1)


def np_gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC-based CKA with Gram matrices: HSIC(K, L) = tr(K H L H) / (n − 1)²."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    hm = np.eye(n) - np.ones((n, n)) / n

    def hsic(a, b):
        return np.trace(a @ hm @ b @ hm) / (n - 1) ** 2

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def np_nadaraya_watson(x: np.ndarray, kernel: str, bandwidth: float = 1.0, rule: str = "rms",
                       sigma: float | None = None) -> np.ndarray:
    """x (n, d): every row replaced by Σ_j K(x_i, x_j) x_j / Σ_j K(x_i, x_j). σ = ``sigma`` when
    given, else ``bandwidth`` × (rule "rms": the RMS pairwise distance; "median": the lower median
    distance over the ordered pairs i != j)."""
    n = x.shape[0]
    if kernel == "none":
        return x
    sq = [[float(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)]
    dist = [[math.sqrt(v) for v in row] for row in sq]
    if sigma is None and rule == "rms":
        sigma = bandwidth * math.sqrt(sum(map(sum, sq)) / (n * n))
    elif sigma is None:  # the lower median (torch.median's)
        d = sorted(dist[i][j] for i in range(n) for j in range(n) if i != j)
        sigma = bandwidth * d[(len(d) - 1) // 2]
    out = np.zeros_like(x)
    for i in range(n):
        ks = []
        for j in range(n):
            if kernel == "laplace":
                ks.append(math.exp(-dist[i][j] / sigma))
            elif kernel == "gaussian":
                ks.append(math.exp(-sq[i][j] / (2 * sigma * sigma)))
            else:  # linear: 1 + cosine
                ks.append(1.0 + float(x[i] @ x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
        ks = np.array(ks)
        out[i] = (ks[:, None] * x).sum(0) / ks.sum()
    return out


def np_perplexity(x: np.ndarray, kernel: str, sigma: float) -> float:
    """Mean over the rows of exp(entropy) of the normalised kernel weights (self included)."""
    n = x.shape[0]
    out = []
    for i in range(n):
        d = np.array([np.linalg.norm(x[i] - x[j]) for j in range(n)])
        logits = -d / sigma if kernel == "laplace" else -d ** 2 / (2 * sigma * sigma)
        w = np.exp(logits - logits.max())
        w /= w.sum()
        out.append(-(w * np.log(np.maximum(w, 1e-300))).sum())
    return float(np.exp(np.mean(out)))


def pixels(x: torch.Tensor, i: int) -> np.ndarray:
    """Image i of (N, C, h, w) as (h·w, C) float64."""
    return npy(x[i]).reshape(x.shape[1], -1).T


# --------------------------------------------------------------------------- CKA and the other measures
def test_cka_of_a_map_with_itself_is_one():
    x = torch.randn(3, 40, 7, dtype=torch.float64)
    assert torch.allclose(cka_mod.linear_cka(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cka_mod.cka_loss(x, x), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 6, generator=g, dtype=torch.float64)
    y = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    ref = cka_mod.linear_cka(x, y)
    assert torch.allclose(cka_mod.linear_cka(x @ q, y), ref, atol=1e-12)
    assert torch.allclose(cka_mod.linear_cka(3.7 * x, 0.2 * y), ref, atol=1e-12)
    # ... but not to a general invertible map
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert not torch.allclose(cka_mod.linear_cka(x @ a, y), ref, atol=1e-3)


def test_cka_agrees_with_the_gram_matrix_hsic_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 11, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 11, 3, generator=g, dtype=torch.float64) + 0.5 * x[:, :, :3]
    got = cka_mod.linear_cka(x, y)
    for i in range(2):
        assert got[i].item() == pytest.approx(np_gram_cka(npy(x[i]), npy(y[i])), abs=1e-12)
    # float32 stays close as well, also under the trainer's bf16 autocast (computed with it off)
    assert torch.allclose(cka_mod.linear_cka(x.float(), y.float()).double(), got, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(cka_mod.linear_cka(x.float(), y.float()).double(), got, atol=1e-5)


def test_other_consistency_measures_golden_and_zero_when_equal():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    for i in range(2):
        a, b = npy(x[i]), npy(y[i])
        cos = np.mean([a[p] @ b[p] / (np.linalg.norm(a[p]) * np.linalg.norm(b[p])) for p in range(9)])
        euc = np.mean([np.linalg.norm(a[p] - b[p]) for p in range(9)]) / 2.0
        pea = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert cka_mod.consistency_loss(x, y, "cosine")[i].item() == pytest.approx(1 - cos, abs=1e-10)
        assert cka_mod.consistency_loss(x, y, "euclidean")[i].item() == pytest.approx(euc, abs=1e-10)
        assert cka_mod.consistency_loss(x, y, "pearson")[i].item() == pytest.approx(1 - pea, abs=1e-10)
    for m in cka_mod.CONSISTENCY:
        assert torch.allclose(cka_mod.consistency_loss(x, x, m), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    with pytest.raises(ValueError, match="equal channel counts"):
        cka_mod.cosine_loss(x, y[:, :, :3])


# --------------------------------------------------------------------------- kernel regression
@pytest.mark.parametrize("kernel", ["laplace", "gaussian", "linear"])
@pytest.mark.parametrize("rule", ["rms", "median"])
def test_kernel_regression_golden(kernel, rule):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    for chunk in (None, 3):
        got = arfd_mod.recalibrate(x, kernel, bandwidth=0.7, chunk=chunk, exact=True, bandwidth_rule=rule)
        for i in range(2):
            ref = np_nadaraya_watson(npy(x[i]), kernel, 0.7, rule)
            assert np.allclose(npy(got[i]), ref, atol=1e-9), (kernel, rule, chunk)


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
def test_perplexity_bandwidth_smooths_each_pixel_over_the_target_count(kernel):
    """The default rule: σ per image such that the kernel weights (self included) have the target
    perplexity on average (to 2 %), checked in numpy over every pixel (the calibration samples 64
    of them; here n = 40, so all), and the recalibration is the Nadaraya–Watson mean with that σ."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 40, 16, generator=g, dtype=torch.float64) * 3.0
    for target in (4.0, 8.0):
        sigma = arfd_mod.perplexity_bandwidth(x, target, kernel)
        for i in range(2):
            assert np_perplexity(npy(x[i]), kernel, sigma[i].item()) == pytest.approx(target, rel=0.02)
    got = arfd_mod.recalibrate(x, kernel, chunk=None, exact=True)  # the default: perplexity 8
    sigma = arfd_mod.perplexity_bandwidth(x, 8.0, kernel)
    for i in range(2):
        assert np.allclose(npy(got[i]), np_nadaraya_watson(npy(x[i]), kernel, sigma=sigma[i].item()), atol=1e-9)
    # scale-free: features ×10 give σ ×10 (Laplace) and the same recalibrated map ×10
    torch.testing.assert_close(arfd_mod.recalibrate(10 * x, kernel, chunk=None, exact=True), 10 * got)


def test_median_pairwise_distance_bandwidth():
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    got = arfd_mod.median_pairwise_distance(x)
    for i in range(2):
        a = npy(x[i])
        d = sorted(np.linalg.norm(a[p] - a[q]) for p in range(11) for q in range(11) if p != q)
        assert got[i].item() == pytest.approx(d[(len(d) - 1) // 2], rel=1e-12)  # the lower median


def test_rms_pairwise_distance_bandwidth():
    x = torch.randn(2, 13, 4, dtype=torch.float64)
    got = arfd_mod.rms_pairwise_distance(x)
    for i in range(2):
        a = npy(x[i])
        d2 = np.mean([[np.sum((a[p] - a[q]) ** 2) for q in range(13)] for p in range(13)])
        assert got[i].item() == pytest.approx(math.sqrt(d2), rel=1e-12)


@pytest.mark.parametrize("kernel", ["laplace", "gaussian", "linear"])
def test_kernel_regression_chunked_equals_unchunked(kernel):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 37, 6, generator=g, requires_grad=True)
    w = torch.randn(2, 37, 6, generator=g)
    for exact, tol in ((True, 1e-6), (False, 1e-4)):  # the default expansion rounds per block
        outs, grads = [], []
        for chunk in (None, 5, 16, 37):
            out = arfd_mod.recalibrate(x, kernel, 1.0, chunk, exact=exact)
            (gx,) = torch.autograd.grad((out * w).sum(), x)
            outs.append(out.detach())
            grads.append(gx)
        for o, gx in zip(outs[1:], grads[1:]):
            assert torch.allclose(o, outs[0], atol=tol, rtol=0)
            assert torch.allclose(gx, grads[0], atol=tol, rtol=0)
        # separate queries/keys/values too (the student-on-teacher reading)
        q = torch.randn(2, 9, 6, generator=g)
        a = arfd_mod.kernel_regression(q, x.detach(), w, kernel, 1.3, chunk=None, exact=exact)
        b = arfd_mod.kernel_regression(q, x.detach(), w, kernel, 1.3, chunk=4, exact=exact)
        assert torch.allclose(a, b, atol=tol, rtol=0)
    # the fast default agrees with the exact distances
    fast, exact_ = (arfd_mod.recalibrate(x.detach(), kernel, 1.0, 16, exact=e) for e in (False, True))
    assert torch.allclose(fast, exact_, atol=1e-4, rtol=0)


_MEMORY_SCRIPT = textwrap.dedent("""
    import re, sys, torch
    torch.set_num_threads(1)
    from lix.losses.arfd import arfd_stage_loss

    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\\s+(\\d+)", f.read()).group(1))  # kB

    def peak(h, w, chunk, d=16):
        g = torch.Generator().manual_seed(0)
        s = torch.randn(1, d, h, w, generator=g, requires_grad=True)
        t = torch.randn(1, d, h, w, generator=g)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        before = status("VmRSS")
        arfd_stage_loss(s, t, kernel="laplace", chunk=chunk, max_pixels=None).backward()
        return status("VmHWM") - before

    for chunk in (256, None):
        peak(32, 64, chunk)  # warm-up: lazy imports, thread pools, checkpoint machinery
        print(chunk, peak(32, 32, chunk), peak(32, 64, chunk))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_arfd_peak_memory_is_linear_in_the_pixel_count():
    """Forward + backward of one ARFD stage (Laplace kernel regression of both maps, CKA) at
    1024 and 2048 pixels, in a fresh process. Measure: the peak resident set size (VmHWM, reset
    through /proc/self/clear_refs before each run) minus the resident size before the run, with
    glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_) so that every large tensor is
    its own mapping, returned to the system when freed: the RSS then follows the live tensor bytes
    (torch CPU tensors are invisible to tracemalloc, and the profiler's memory events are not a
    reliable timeline). Chunked (checkpointed, 256 queries a block): at most 2.5× for 2× the
    pixels. Control: unchunked, the same measure sees the (HW)² kernel matrices (about 4×)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable here")
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split()[0]: tuple(int(v) for v in line.split()[1:]) for line in res.stdout.strip().splitlines()}
    small, large = rows["256"]
    assert small > 0 and large <= 2.5 * small, rows
    u_small, u_large = rows["None"]
    assert u_large >= 3.0 * u_small, rows  # the measure does see quadratic memory
    assert large < u_large / 4, rows


def test_arfd_chunking_does_not_keep_the_kernel_matrix_for_backward():
    """A deterministic complement: the bytes autograd keeps between forward and backward
    (saved-tensor hooks) grow linearly with chunking and quadratically without."""

    def saved_bytes(n, chunk):
        x = torch.randn(1, n, 8, requires_grad=True)
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = arfd_mod.recalibrate(x, "laplace", 1.0, chunk)
        out.sum().backward()
        return sum(seen.values())

    assert saved_bytes(1024, 128) <= 2.5 * saved_bytes(512, 128)
    assert saved_bytes(1024, None) >= 3.5 * saved_bytes(512, None)


# --------------------------------------------------------------------------- ARFD
def test_arfd_stage_golden_recalibration_then_cka():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 4, 5, generator=g, dtype=torch.float64) + 0.5 * torch.cat([s, s[:, :1]], 1)
    for kernel in ("laplace", "gaussian", "none"):
        for rule in ("rms", "median"):
            got = arfd_mod.arfd_stage_loss(s, t, kernel=kernel, bandwidth=1.0, consistency="cka", chunk=7,
                                           exact=True, bandwidth_rule=rule)
            ref = np.mean([1 - np_gram_cka(np_nadaraya_watson(pixels(s, i), kernel, 1.0, rule),
                                           np_nadaraya_watson(pixels(t, i), kernel, 1.0, rule))
                           for i in range(2)])
            assert got.item() == pytest.approx(ref, abs=1e-9), (kernel, rule)
        if kernel == "none":
            continue
        got = arfd_mod.arfd_stage_loss(s, t, kernel=kernel, consistency="cka", chunk=7, exact=True)  # perplexity 8
        sig_s = arfd_mod.perplexity_bandwidth(arfd_mod._pixels(s), 8.0, kernel)
        sig_t = arfd_mod.perplexity_bandwidth(arfd_mod._pixels(t), 8.0, kernel)
        ref = np.mean([1 - np_gram_cka(np_nadaraya_watson(pixels(s, i), kernel, sigma=sig_s[i].item()),
                                       np_nadaraya_watson(pixels(t, i), kernel, sigma=sig_t[i].item()))
                       for i in range(2)])
        assert got.item() == pytest.approx(ref, abs=1e-9), (kernel, "perplexity")


@pytest.mark.parametrize("kernel", arfd_mod.KERNELS)
@pytest.mark.parametrize("consistency", cka_mod.CONSISTENCY)
def test_arfd_zero_when_the_aligned_student_equals_the_teacher(kernel, consistency):
    t = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    loss = arfd_mod.arfd_stage_loss(t.clone(), t, kernel=kernel, consistency=consistency, chunk=8)
    assert abs(loss.item()) < 1e-5


def test_arfd_pools_the_larger_map_and_caps_the_pixel_count():
    s, t = torch.randn(1, 3, 12, 16), torch.randn(1, 3, 6, 8)
    a, b = arfd_mod.match_sizes(s, t, max_pixels=None)
    assert a.shape[-2:] == b.shape[-2:] == (6, 8)
    assert torch.allclose(a, F.avg_pool2d(s, 2))
    a, b = arfd_mod.match_sizes(s, s, max_pixels=20)
    assert a.shape[-2:] == b.shape[-2:] == (3, 4)  # factor 3 gives 4 x 6 = 24 > 20; factor 4: 3 x 4


def spec_for(channels, n_classes=C):
    return TapSpec({t: (cs, 4) for t, (cs, _) in channels.items()}, {t: (ct, 4) for t, (_, ct) in channels.items()},
                   tuple(channels), n_classes)


def test_arfd_distiller_golden_with_its_aligners():
    """The registered method: per tap the student's map Conv1×1 -> BN (batch statistics) ->
    ReLU, the teacher's map standardised per channel -> ReLU, both recalibrated (Laplace, the
    perplexity bandwidth) -> 1 − CKA, averaged over the taps; recomputed in numpy from the
    parameters (the bandwidth is checked on its own in the perplexity test)."""
    channels = {"a": (3, 4), "b": (2, 2)}
    torch.manual_seed(0)
    d = DISTILLERS["arfd"](spec_for(channels), chunk=5, exact_distances=True)
    g = torch.Generator().manual_seed(7)
    sf = {k: torch.randn(2, cs, 3, 4, generator=g) for k, (cs, _) in channels.items()}
    tf = {k: torch.randn(2, ct, 3, 4, generator=g) for k, (_, ct) in channels.items()}
    got = d(DistillBatch(torch.zeros(2, C, 6, 8), torch.zeros(2, C, 6, 8), torch.zeros(2, 6, 8, dtype=torch.long),
                         sf, tf))
    assert set(got) == {"arfd"}
    ref = 0.0
    for k in channels:
        conv, bn = d.arfd.aligners[k][0], d.arfd.aligners[k][1]
        assert conv.bias is None
        z = np.einsum("oc,nchw->nohw", npy(conv.weight)[:, :, 0, 0], npy(sf[k]))
        mu, var = z.mean(axis=(0, 2, 3), keepdims=True), z.var(axis=(0, 2, 3), keepdims=True)
        z = (z - mu) / np.sqrt(var + bn.eps) * npy(bn.weight)[None, :, None, None] + npy(bn.bias)[None, :, None, None]
        z = np.maximum(z, 0)
        t = npy(tf[k])
        t = np.maximum((t - t.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(t.var(axis=(0, 2, 3), keepdims=True)
                                                                            + 1e-5), 0)
        ps, pt = z.reshape(2, z.shape[1], -1).transpose(0, 2, 1), t.reshape(2, t.shape[1], -1).transpose(0, 2, 1)
        sig_s = arfd_mod.perplexity_bandwidth(torch.from_numpy(ps.copy()), 8.0)
        sig_t = arfd_mod.perplexity_bandwidth(torch.from_numpy(pt.copy()), 8.0)
        for i in range(2):
            xs = np_nadaraya_watson(ps[i], "laplace", sigma=sig_s[i].item())
            xt = np_nadaraya_watson(pt[i], "laplace", sigma=sig_t[i].item())
            ref += (1 - np_gram_cka(xs, xt)) / 2 / len(channels)
    assert got["arfd"].item() == pytest.approx(ref, abs=1e-5)


def test_arfd_does_not_read_the_target():
    channels = {"a": (3, 4)}
    torch.manual_seed(0)
    d = DISTILLERS["arfd"](spec_for(channels))
    sf, tf = {"a": torch.randn(2, 3, 4, 4)}, {"a": torch.randn(2, 4, 4, 4)}
    z = torch.zeros(2, C, 8, 8)
    a = d(DistillBatch(z, z, torch.zeros(2, 8, 8, dtype=torch.long), sf, tf))["arfd"]
    b = d(DistillBatch(z, z, torch.full((2, 8, 8), 255), sf, tf))["arfd"]
    assert a.item() == b.item()


def test_table_v_grid_runs_and_reaches_the_aligners():
    channels = {"a": (3, 4)}
    g = torch.Generator().manual_seed(8)
    sf, tf = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 4, 4, 5, generator=g)
    z = torch.zeros(2, C, 8, 10)
    for kernel in arfd_mod.KERNELS:
        for consistency in cka_mod.CONSISTENCY:
            torch.manual_seed(0)
            d = DISTILLERS["lix"](spec_for(channels), kernel=kernel, consistency=consistency, controller="fixed")
            s = sf.clone().requires_grad_(True)
            out = d(DistillBatch(z, z, torch.zeros(2, 8, 10, dtype=torch.long), {"a": s}, {"a": tf}))
            assert torch.isfinite(out["arfd"]), (kernel, consistency)
            out["arfd"].backward()
            conv = d.arfd.aligners["a"][0]
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, (kernel, consistency)
            assert s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- DWLD
@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0, 8.0, 10.0])
def test_dwld_fixed_beta_equals_numpy_per_pixel_dkd(beta):
    s, t, y = logits_batch(seed=int(beta))
    head = DWLDHead(C, controller="fixed", beta=beta, alpha=0.7, temperature=2.5)
    got = head(s, t, y)
    assert got.item() == pytest.approx(np_dwld(s, t, y, beta, alpha=0.7, T=2.5), rel=1e-10)
    # both per-class forms sum to DKD's NCKD when every weight is the same
    assert dwld_loss(s, t, y, beta, 0.7, 2.5, ncld_terms="paper").item() == pytest.approx(got.item(), rel=1e-10)


def test_dwld_fixed_equals_the_dkd_baseline():
    from lix.losses.logit import dkd_loss

    s, t, y = logits_batch(seed=11)
    try:
        ref = dkd_loss(s, t, y, alpha=1.0, beta=4.0, temperature=4.0)
    except NotImplementedError:
        pytest.skip("lix/losses/logit.py's dkd_loss is not written yet")
    got = DWLDHead(C, controller="fixed", beta=4.0)(s, t, y)
    assert got.item() == pytest.approx(ref.item(), rel=1e-8)


@pytest.mark.parametrize("terms", ["generalized", "paper"])
def test_dwld_per_logit_weights_golden(terms):
    s, t, y = logits_batch(seed=12)
    w = 1 + 9 * torch.rand(s.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = dwld_loss(s, t, y, w, alpha=1.3, temperature=3.0, ncld_terms=terms)
    assert got.item() == pytest.approx(np_dwld(s, t, y, npy(w), alpha=1.3, T=3.0, terms=terms), rel=1e-10)


def np_controller(head: DWLDHead, s, t, y) -> np.ndarray:
    """The DWC in numpy from its parameters: inputs (student softmax, confidence) -> 3 layers of
    per-pixel matrix products -> β_min + (β_max − β_min)·σ(h + logit((β − β_min)/(β_max − β_min)))."""
    ctrl = head.controller
    ws = [(npy(m.weight)[:, :, 0, 0], npy(m.bias)) for m in ctrl.mlp if isinstance(m, nn.Conv2d)]
    s, y = npy(s), y.numpy()
    n, c, h, w = s.shape
    out = np.zeros((n, c, h, w))
    b0 = math.log((head.beta - 1.0) / (10.0 - head.beta))
    for i in range(n):
        for a in range(h):
            for b in range(w):
                p = np_softmax(s[i, :, a, b])
                lab = 0 if y[i, a, b] == 255 else y[i, a, b]
                v = np.concatenate([p, [p[lab]]])
                for j, (wt, bias) in enumerate(ws):
                    v = wt @ v + bias
                    if j < 2:
                        v = np.maximum(v, 0)
                out[i, :, a, b] = 1 + 9 / (1 + np.exp(-(v + b0)))
    return out


def test_dwld_with_the_controller_golden():
    s, t, y = logits_batch(seed=13)
    torch.manual_seed(0)
    head = DWLDHead(C).double()
    w = np_controller(head, s, t, y)
    assert np.allclose(npy(head.weights(s, t, y)), w, atol=1e-10)
    assert (w > 1).all() and (w < 10).all()
    assert head(s, t, y).item() == pytest.approx(np_dwld(s, t, y, w), rel=1e-9)


@pytest.mark.parametrize("controller", ["fixed", "dwc"])
def test_dwld_zero_when_student_equals_teacher(controller):
    s, t, y = logits_batch(seed=14)
    torch.manual_seed(0)
    head = DWLDHead(C, controller=controller).double()
    assert abs(head(t.clone(), t, y).item()) < 1e-12


@pytest.mark.parametrize("controller", ["fixed", "dwc"])
def test_dwld_ignored_pixels_contribute_nothing(controller):
    s, t, y = logits_batch(seed=15, n_ignore=20)
    torch.manual_seed(0)
    head = DWLDHead(C, controller=controller).double()
    ign = (y == 255).unsqueeze(1).expand_as(s)
    s2, t2 = s.clone(), t.clone()
    s2[ign] = 50 * torch.randn(int(ign.sum()), dtype=torch.float64)
    t2[ign] = -30.0
    s2.requires_grad_(True)
    a = head(s, t, y).item()
    b = head(s2, t2, y)
    assert b.item() == pytest.approx(a, rel=1e-12)
    b.backward()
    assert s2.grad[ign].abs().max() == 0 and s2.grad[~ign].abs().sum() > 0
    # no labelled pixel at all: zero, still differentiable
    z = head(s2, t2, torch.full_like(y, 255))
    assert z.item() == 0.0 and z.requires_grad


def test_dwc_objective_maximiser_is_the_closed_form():
    """J's gradient vanishes at logit(u_k) = b₀ + (r_k − r̄)/τ on every valid non-target logit."""
    s, t, y = logits_batch(seed=16)
    _tc, gk, gt, valid = dwld_terms(s, t, y)
    b0, tau = math.log(7 / 2), 0.5
    nt = (~gt).double()
    r = gk / ((gk * nt).sum(1, keepdim=True) / (C - 1) + 1e-6)
    r_bar = (r * nt).sum(1, keepdim=True) / (C - 1)
    x = (b0 + (r - r_bar) / tau).requires_grad_(True)
    (gx,) = torch.autograd.grad(dwc_objective(x, gk, gt, valid, b0, tau), x)
    sel = (~gt) & valid.unsqueeze(1)
    assert gx[sel].abs().max() < 1e-12
    x2 = (x.detach() + 0.3).requires_grad_(True)
    (gx2,) = torch.autograd.grad(dwc_objective(x2, gk, gt, valid, b0, tau), x2)
    assert gx2[sel].abs().min() > 0 and (gx2[sel] < 0).all()  # above the optimum: pushed back down


# ---- the controller on a small learning problem: confusable classes, a student being trained
D_IN = 8


def synthetic_problem(seed: int):
    """Labels; student inputs = class embeddings + noise, with classes 1~2 and 3~4 confusable;
    teacher logits that also put mass on the confusable partner; a band of ignored pixels."""
    g = torch.Generator().manual_seed(1000)
    emb = torch.randn(C, D_IN, generator=g)
    emb[2] = emb[1] + 0.3 * torch.randn(D_IN, generator=g)
    emb[4] = emb[3] + 0.3 * torch.randn(D_IN, generator=g)
    a = 6 * torch.eye(C)
    a[1, 2] = a[2, 1] = 4.0
    a[3, 4] = a[4, 3] = 3.0
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (2, 12, 12), generator=g)
    x = emb[y].permute(0, 3, 1, 2) + 0.8 * torch.randn(2, D_IN, 12, 12, generator=g)
    t = a[y].permute(0, 3, 1, 2) + 0.5 * torch.randn(2, C, 12, 12, generator=g)
    y[:, 0, :3] = 255
    return x, t, y


def train_controller(steps: int, lr: float, **hyper):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(D_IN, 16, 1), nn.ReLU(), nn.Conv2d(16, C, 1))
    head = DWLDHead(C, **hyper)
    opt = torch.optim.Adam([*student.parameters(), *head.parameters()], lr=lr)
    values = []
    for it in range(steps):
        x, t, y = synthetic_problem(it % 8)
        s = student(x)
        lookahead = hyper.get("dwc_training") == "lookahead"
        term = head(s, t, y, student_forward=tiny_student_forward(student, x) if lookahead else None)
        values.append(term.item())
        opt.zero_grad()
        (F.cross_entropy(s, y, ignore_index=255) + term).backward()
        opt.step()
    x, t, y = synthetic_problem(100)
    with torch.no_grad():
        w = head.weights(student(x), t, y)
    nontarget = (~F.one_hot(y.clamp(max=C - 1), C).permute(0, 3, 1, 2).bool()) & (y != 255).unsqueeze(1)
    return w, y, nontarget, values


def near(w: torch.Tensor, bound: float, span: float = 9.0) -> float:
    return float(((w - bound).abs() < 0.01 * span).double().mean())


def test_dwc_adversarial_training_does_not_collapse():
    w, y, nt, values = train_controller(150, 1e-2)
    assert min(values) >= 0.0 and all(math.isfinite(v) for v in values)
    ww = w[nt]
    assert near(ww, 1.0) + near(ww, 10.0) < 0.9, "weights pinned to a bound"
    assert ww.std() > 0.15, "weights constant"  # 0.35-0.45 over torch seeds 0-3
    assert (ww > 1).all() and (ww < 10).all()
    # informative: where the label is 1, its confusable partner 2 gets more weight than class 0
    # (by 0.4-1.2 over torch seeds 0-3); likewise 4 where the label is 3
    m = y == 1
    assert w[:, 2][m].mean() > w[:, 0][m].mean() + 0.2
    m = y == 3
    assert w[:, 4][m].mean() > w[:, 0][m].mean() + 0.2


def test_dwc_trained_by_the_loss_it_weights_collapses():
    """The pitfall this implementation avoids: the naive scheme pins every weight to β_min, and
    with the paper's signed per-class terms it drives the loss below zero."""
    w, _y, nt, values = train_controller(150, 0.05, dwc_training="joint")
    assert near(w[nt], 1.0) > 0.9 and min(values) >= 0.0
    _w, _y, _nt, values = train_controller(150, 0.05, dwc_training="joint", ncld_terms="paper")
    assert min(values) < 0.0


@pytest.mark.parametrize("inputs", ["softmax", "softmax_conf", "teacher_softmax_conf"])
def test_gradients_reach_the_student_and_the_controller(inputs):
    s, t, y = logits_batch(seed=17)
    s = s.float().requires_grad_(True)
    torch.manual_seed(0)
    head = DWLDHead(C, dwc_inputs=inputs)
    assert head.controller.mlp[0].in_channels == {"softmax": C, "softmax_conf": C + 1,
                                                   "teacher_softmax_conf": C + 1}[inputs]
    head(s, t.float(), y).backward()
    assert s.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- registered methods, real models
@pytest.fixture(scope="module")
def mfnet_pair():
    torch.manual_seed(0)
    return create_model("mfnet", C, 0), create_model("mfnet", C, 1).eval()


def real_batch(student, teacher, taps, h=16, w=32):
    g = torch.Generator().manual_seed(1)
    rgb, x = torch.rand(2, 3, h, w, generator=g), torch.rand(2, teacher.x_channels, h, w, generator=g)
    with FeatureTaps(student, taps) as ts:
        ls = student(rgb)
    with torch.no_grad(), FeatureTaps(teacher, taps, detach=True) as tt:
        lt = teacher(rgb, x)
    target = torch.randint(0, C, (2, h, w), generator=g)
    target[:, :2] = 255
    # what the distillation trainer passes for the lookahead controller: the student re-run with
    # other parameters on the same input
    return DistillBatch(ls, lt, target, dict(ts.features), dict(tt.features),
                        student_forward=tiny_student_forward(student, rgb))


def test_registered_as_ours():
    for name in ("dwld", "arfd", "lix"):
        assert DISTILLERS[name].kind == "ours" and "2403.08215" in DISTILLERS[name].reference
    assert DISTILLERS["lix"].terms == {"dwld": 1.0, "arfd": 1.0}
    assert DISTILLERS["dwld"].taps == () and DISTILLERS["arfd"].taps is None and DISTILLERS["lix"].taps is None


@pytest.mark.parametrize("name", ["dwld", "arfd", "lix"])
def test_create_distiller_with_tiny_mfnet(name, mfnet_pair):
    student, teacher = mfnet_pair
    student.zero_grad()
    d = create_distiller(name, student, teacher)
    assert d.spec.taps == (() if name == "dwld" else ("rgb4", "fused", "decoder"))
    b = real_batch(student, teacher, d.spec.taps)
    b.student_logits.retain_grad()
    out = d(b)
    assert set(out) == set(d.loss_weights)
    loss = sum(d.loss_weights[k] * v for k, v in out.items())
    assert torch.isfinite(loss) and all(v.item() >= 0 for v in out.values())
    loss.backward()
    assert student.decode2.conv.weight.grad.abs().sum() > 0
    if name != "arfd":
        assert b.student_logits.grad.abs().sum() > 0
    for pname, p in d.named_parameters():  # the DWC and every aligner
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    if name != "dwld":
        assert d.arfd.aligners["fused"][0].weight.shape == (132, 96, 1, 1)
        assert d.arfd.aligners["decoder"][0].weight.shape == (32, 16, 1, 1)


def test_lix_hyper_parameters_and_weights(mfnet_pair):
    student, teacher = mfnet_pair
    d = create_distiller("lix", student, teacher, taps=["decoder"], w_dwld=2.0, w_arfd=0.5, kernel="gaussian",
                         consistency="pearson", controller="fixed", beta=2.0, max_pixels=None)
    assert d.loss_weights == {"dwld": 2.0, "arfd": 0.5} and d.spec.taps == ("decoder",)
    assert d.arfd.kernel == "gaussian" and d.arfd.consistency == "pearson" and d.arfd.max_pixels is None
    assert d.dwld.controller is None and d.dwld.beta == 2.0
    for name, hyper, key in [("lix", {"kernel": "rbf"}, "kernel"), ("arfd", {"consistency": "mse"}, "consistency"),
                             ("dwld", {"controller": "mlp"}, "controller"), ("lix", {"beta": 12.0}, "beta"),
                             ("dwld", {"dwc_inputs": "logits"}, "dwc_inputs"), ("arfd", {"chunk": 0}, "chunk"),
                             ("dwld", {"dwc_tau": 0.0}, "dwc_tau"), ("lix", {"bandwidth": -1.0}, "bandwidth"),
                             ("arfd", {"max_pixels": 0}, "max_pixels")]:
        with pytest.raises(ConfigError, match=rf"distill\.hyper\.{name}\.{key}:"):
            create_distiller(name, student, teacher, **hyper)


def test_sne_roadseg_default_taps():
    torch.manual_seed(0)
    student = create_model("sne_roadseg", C, 0, depth=18)
    teacher = create_model("sne_roadseg", C, 1, depth=18).eval()
    d = create_distiller("lix", student, teacher)
    assert d.spec.taps == ("layer1", "layer2", "layer3", "layer4", "decoder")
    out = d(real_batch(student, teacher, d.spec.taps, h=32, w=32))
    assert all(torch.isfinite(v) for v in out.values())


# --------------------------------------------------------------------------- the real trainer
@pytest.mark.parametrize("name", ["dwld", "arfd", "lix"])
def test_two_trainer_steps(name):
    try:
        import distill_utils as utils
    except ImportError:
        utils = pytest.importorskip("tests.distill_utils", reason="tests/distill_utils.py not written yet")
    steps = utils.two_trainer_steps(name)
    assert len(steps) == 2
    assert all(math.isfinite(v) and v >= 0 for step in steps for v in step.values())


def test_fast_distances_keep_gradients_finite_on_duplicate_pixels():
    """The default distance expansion on maps with repeated and all-zero pixels (as a ReLU'd
    aligner produces): the Laplace kernel's sqrt must not turn the rounding at d ~ 0 into
    inf/NaN gradients."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 8, 6, 7, generator=g).relu()
    s[:, :, :3] = 0.0  # a block of identical (zero) pixels
    s[:, :, 4] = s[:, :, 5]  # duplicated rows
    s.requires_grad_(True)
    t = torch.randn(2, 8, 6, 7, generator=g)
    for kernel in ("laplace", "gaussian"):
        loss = arfd_mod.arfd_stage_loss(s, t, kernel=kernel, chunk=5)
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), kernel


# --------------------------------------------------------------------------- recalibration keeps the signal
def region_map(layout: str, seed: int, h: int = 24, w: int = 32, d: int = 16) -> torch.Tensor:
    """(1, h·w, d) features: 4 regions (quadrants or vertical stripes), each a random non-negative
    prototype, plus noise (std 0.3) per pixel."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    lab = (yy >= h // 2).long() * 2 + (xx >= w // 2).long() if layout == "quadrants" else (xx // 4) % 4
    protos = torch.relu(torch.randn(4, d, generator=g)) * 2
    return (protos[lab] + 0.3 * torch.randn(h, w, d, generator=g)).reshape(1, h * w, d)


def test_recalibration_keeps_unrelated_maps_apart_and_related_maps_close():
    """With the default bandwidth (perplexity 8: each pixel smoothed over about 8 pixels), recalibration
    keeps most of a structured map's variance, and under every measure of Table V unrelated maps
    stay about as far apart as without recalibration (no collapse toward zero loss) while related
    maps stay close."""
    teacher = region_map("quadrants", 1)
    related = teacher + 0.3 * torch.randn(teacher.shape, generator=torch.Generator().manual_seed(3))
    unrelated = region_map("stripes", 2)
    rec = arfd_mod.recalibrate  # laplace, perplexity 8: the defaults
    assert arfd_mod.variance_kept(teacher, rec(teacher)).item() > 0.6
    for measure in cka_mod.CONSISTENCY:
        raw = cka_mod.consistency_loss(unrelated, teacher, measure).item()
        far = cka_mod.consistency_loss(rec(unrelated), rec(teacher), measure).item()
        near = cka_mod.consistency_loss(rec(related), rec(teacher), measure).item()
        assert far >= 0.75 * raw, (measure, far, raw)
        assert near <= 0.25 * far, (measure, near, far)


def test_a_global_bandwidth_washes_the_maps_out():
    """Why the default is local: with σ = the RMS (or median) pairwise distance every pixel is
    averaged with most of the image, the maps come out close to their mean (little variance
    kept) and the distance between unrelated maps shrinks (Euclidean to about half)."""
    teacher, unrelated = region_map("quadrants", 1), region_map("stripes", 2)
    for rule in ("rms", "median"):
        rec = lambda x: arfd_mod.recalibrate(x, bandwidth_rule=rule)  # noqa: E731
        assert arfd_mod.variance_kept(teacher, rec(teacher)).item() < 0.2, rule
        raw = cka_mod.consistency_loss(unrelated, teacher, "euclidean").item()
        assert cka_mod.consistency_loss(rec(unrelated), rec(teacher), "euclidean").item() < 0.6 * raw, rule


def test_variance_kept_golden():
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    y = 0.5 * x + 1.0
    got = arfd_mod.variance_kept(x, y)
    for i in range(2):
        assert got[i].item() == pytest.approx(0.25, rel=1e-12)


def test_arfd_reports_the_variance_kept_per_tap_and_averages_over_taps():
    channels = {"a": (3, 4), "b": (2, 2)}
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(9)
    sf = {k: torch.randn(2, cs, 4, 5, generator=g) for k, (cs, _) in channels.items()}
    tf = {k: torch.randn(2, ct, 4, 5, generator=g) for k, (_, ct) in channels.items()}
    z = torch.zeros(2, C, 8, 10)
    batch = DistillBatch(z, z, torch.zeros(2, 8, 10, dtype=torch.long), sf, tf)
    mean = DISTILLERS["arfd"](spec_for(channels))
    torch.manual_seed(0)
    total = DISTILLERS["arfd"](spec_for(channels), reduction="sum")
    total.load_state_dict(mean.state_dict())
    assert mean(batch)["arfd"].item() == pytest.approx(total(batch)["arfd"].item() / 2, rel=1e-6)
    diag = mean.diagnostics()
    assert set(diag) == {f"arfd.kept.{t}.{side}" for t in channels for side in ("student", "teacher")}
    assert all(0.0 <= v.item() <= 1.0 + 1e-6 for v in diag.values())


# --------------------------------------------------------------------------- the DWC's signals (issue 17)
def test_confidence_controller_weights_are_the_closed_form():
    """w = β_min + (β_max − β_min)·(1 − c), c the student's softmax probability of the true class,
    the same for every non-target logit of a pixel; the loss is DWLD with those weights."""
    s, t, y = logits_batch(seed=21)
    head = DWLDHead(C, controller="confidence", beta_min=1.0, beta_max=10.0, temperature=2.0)
    z = np.moveaxis(npy(s), 1, -1)                              # (N, H, W, C)
    p = np.exp(z - z.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)                            # softmax at T = 1
    lab = np.where(y.numpy() == 255, 0, y.numpy())
    conf = np.take_along_axis(p, lab[..., None], axis=-1)[..., 0]
    ref_w = np.broadcast_to((1.0 + 9.0 * (1.0 - conf))[:, None], npy(s).shape)
    got_w = head.weights(s, t, y)
    assert np.allclose(npy(got_w), ref_w, atol=1e-12)
    assert head(s, t, y).item() == pytest.approx(np_dwld(s, t, y, ref_w, T=2.0), rel=1e-9)
    assert list(head.parameters()) == []  # parameter-free


def test_weight_statistics_golden():
    from lix.losses.dwld import weight_statistics

    g = torch.Generator().manual_seed(3)
    w = 1.0 + 9.0 * torch.rand(2, C, 3, 4, generator=g, dtype=torch.float64)
    w[0, 1, 0, 0] = 1.0  # at β_min
    y = torch.randint(0, C, (2, 3, 4), generator=g)
    y[1, 2, 3] = 255
    gt = F.one_hot(y.clamp(max=C - 1), C).permute(0, 3, 1, 2).bool() & (y != 255).unsqueeze(1)
    got = weight_statistics(w, gt, y != 255, 1.0, 10.0)
    per_mean, per_std, vals = [], [], []
    for i in range(2):
        for a in range(3):
            for b in range(4):
                if y[i, a, b] == 255:
                    continue
                ws = np.array([w[i, k, a, b].item() for k in range(C) if k != y[i, a, b]])
                per_mean.append(ws.mean())
                per_std.append(ws.std())
                vals.extend(ws)
    vals = np.array(vals)
    assert got["w_mean"].item() == pytest.approx(np.mean(per_mean), rel=1e-9)
    assert got["w_std_class"].item() == pytest.approx(np.mean(per_std), rel=1e-9)
    assert got["w_std_pixel"].item() == pytest.approx(np.std(per_mean), rel=1e-9)
    assert got["w_at_bound"].item() == pytest.approx(np.mean((vals <= 1.09) | (vals >= 9.91)), rel=1e-9)


def tiny_student_forward(student: nn.Module, x: torch.Tensor):
    def forward(params):
        return torch.func.functional_call(student, params, (x,))

    forward.params = dict(student.named_parameters())
    return forward


def test_lookahead_weight_gradient_equals_finite_differences():
    """∂CE(θ − η∇θ[CE + λ·DWLD(w)])/∂w, checked entry by entry against central differences of an
    explicit virtual step (first-order autograd only) on a 1×1-conv student, in float64."""
    from lix.losses.dwc import lookahead_weight_gradient

    torch.manual_seed(0)
    x, t, y = synthetic_problem(5)
    x, t = x[:, :, :4, :4].double(), t[:, :, :4, :4].double()
    y = y[:, :4, :4].clone()
    y[0, 0, 0] = 255
    student = nn.Conv2d(D_IN, C, 1).double()
    lr, lam, T = 0.5, 0.7, 2.0
    w = 1.0 + 9.0 * torch.rand(2, C, 4, 4, dtype=torch.float64)

    def meta_ce(weights: torch.Tensor) -> float:
        params = {n: p.detach().clone().requires_grad_(True) for n, p in student.named_parameters()}
        s = torch.func.functional_call(student, params, (x,))
        inner = F.cross_entropy(s, y, ignore_index=255) + lam * dwld_loss(s, t, y, weights, temperature=T)
        grads = torch.autograd.grad(inner, list(params.values()))
        new = {n: p.detach() - lr * gr for (n, p), gr in zip(params.items(), grads)}
        with torch.no_grad():
            return F.cross_entropy(torch.func.functional_call(student, new, (x,)), y, ignore_index=255).item()

    s = student(x)
    tcld, g, _gt, valid = dwld_terms(s, t, y, temperature=T)
    got = lookahead_weight_gradient(s, y, w, tcld, g, valid, tiny_student_forward(student, x), lr, 1.0, T, lam)
    eps = 1e-5
    for idx in [(0, 1, 1, 2), (1, 3, 0, 0), (0, 4, 3, 3), (1, 0, 2, 1)]:
        wp, wm = w.clone(), w.clone()
        wp[idx] += eps
        wm[idx] -= eps
        fd = (meta_ce(wp) - meta_ce(wm)) / (2 * eps)
        assert got[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-10), idx
    assert got[0, :, 0, 0].abs().max().item() == 0.0  # an ignored pixel's weights do not matter


def test_lookahead_head_gives_the_student_dwld_and_the_controller_the_meta_gradient():
    torch.manual_seed(0)
    x, t, y = synthetic_problem(6)
    student = nn.Sequential(nn.Conv2d(D_IN, 16, 1), nn.ReLU(), nn.Conv2d(16, C, 1))
    head = DWLDHead(C, dwc_training="lookahead", lookahead_lr=0.1)
    s = student(x)
    term = head(s, t, y, student_forward=tiny_student_forward(student, x))
    w = head.weights(s.detach(), t, y).detach()
    assert term.item() == pytest.approx(dwld_loss(s, t, y, w).item(), rel=1e-5)  # the value is DWLD
    (gs,) = torch.autograd.grad(term, s, retain_graph=True)
    (ref,) = torch.autograd.grad(dwld_loss(s, t, y, w), s)
    torch.testing.assert_close(gs, ref, rtol=1e-4, atol=1e-7)  # the student sees fixed weights
    term.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    head.eval()  # no virtual step outside training
    for p in head.parameters():
        p.grad = None
    head(student(x), t, y, student_forward=tiny_student_forward(student, x)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.parameters())


def test_lookahead_every_k_steps():
    torch.manual_seed(0)
    x, t, y = synthetic_problem(7)
    student = nn.Conv2d(D_IN, C, 1)
    head = DWLDHead(C, dwc_training="lookahead", lookahead_every=3)
    got = []
    for _ in range(6):
        for p in head.parameters():
            p.grad = None
        head(student(x), t, y, student_forward=tiny_student_forward(student, x)).backward()
        got.append(any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()))
    assert got == [True, False, False, True, False, False]


def test_lookahead_controller_moves_off_the_prior_on_the_learning_problem():
    w, _y, nt, values = train_controller(60, 1e-2, dwc_training="lookahead", lookahead_lr=0.1)
    ww = w[nt]
    assert min(values) >= 0.0
    assert ww.std() > 0.1 and near(ww, 1.0) + near(ww, 10.0) < 0.9


def test_lookahead_without_its_kl_anchor_runs_into_the_bounds():
    """Why the lookahead objective carries the KL anchor: with τ → 0 the learned controller
    follows the meta-gradient into β_min or β_max."""
    w, _y, nt, _values = train_controller(60, 1e-2, dwc_training="lookahead", lookahead_lr=0.1, dwc_tau=1e-4)
    assert near(w[nt], 1.0) + near(w[nt], 10.0) > 0.5


@pytest.mark.parametrize("depth,dropout", [(1, 0.0), (2, 0.0), (3, 0.0), (4, 0.2)])
def test_dwc_depth_and_dropout(depth, dropout):
    head = DWLDHead(C, dwc_depth=depth, dwc_dropout=dropout, dwc_hidden=8)
    convs = [m for m in head.controller.mlp if isinstance(m, nn.Conv2d)]
    drops = [m for m in head.controller.mlp if isinstance(m, nn.Dropout)]
    assert len(convs) == depth and convs[-1].out_channels == C
    assert len(drops) == (depth - 1 if dropout > 0 else 0)
    s, t, y = logits_batch(seed=2)
    head.float()(s.float(), t.float(), y).backward()


def test_teacher_input_variant_replaces_the_students_input():
    s, t, y = logits_batch(seed=4)
    torch.manual_seed(0)
    head = DWLDHead(C, dwc_inputs="teacher_softmax_conf").double()
    assert head.controller.mlp[0].in_channels == C + 1
    a = head.weights(s, t, y)
    b = head.weights(s + torch.randn_like(s), t, y)  # another student, the same teacher
    torch.testing.assert_close(a, b)
