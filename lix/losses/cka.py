"""Feature-consistency measures of ARFD (LIX, Sect. III-C; Table V): linear CKA (the default),
cosine, Euclidean and Pearson, each as a *loss* per image (0 = consistent).

All functions take per-image pixel sets ``x`` (N, n, d1) and ``y`` (N, n, d2): N images, n = h*w
pixels (the samples), d channels (the features); they return (N,) tensors. Half-precision inputs
are computed in float32 with autocast off (float64 stays float64).

**Linear CKA** (Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019, arXiv:1905.00414; HSIC of Gretton et al. 2005). With X, Y centred over the pixels
(column means removed), the feature-space form is

    CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)

which equals HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) with the Gram matrices K = X Xᵀ,
L = Y Yᵀ and HSIC(K, L) = tr(K H L H) / (n − 1)² (H the centring matrix; the (n − 1)² cancels).
The feature-space form needs O(n·d + d²) memory instead of the O(n²) of the Gram form. CKA is
1 for X = Y, invariant to orthogonal transforms and isotropic scaling of either side (not to
general invertible linear maps), and lies in [0, 1]. ``cka_loss`` = 1 − CKA.

The other three of Table V need d1 = d2 (ARFD's aligner maps the student to the teacher's
channels first). Our definitions (the paper names the measures only):

* ``cosine``: 1 − the mean over pixels of the cosine similarity of the two feature vectors.
* ``euclidean``: the mean over pixels of the Euclidean distance ||x_i − y_i||₂, divided by
  sqrt(d) (a per-channel RMS error, so its scale does not grow with the channel count).
* ``pearson``: 1 − Pearson's correlation of the flattened (n·d) feature maps of an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lix.losses._common import as_float, full_precision

EPS = 1e-12
CONSISTENCY = ("cka", "cosine", "euclidean", "pearson")


def _check(x: torch.Tensor, y: torch.Tensor, same_dim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"expected (N, n, d) pixel sets with equal N and n, got {tuple(x.shape)} and {tuple(y.shape)}")
    if same_dim and x.shape[2] != y.shape[2]:
        raise ValueError(f"this measure needs equal channel counts, got {x.shape[2]} and {y.shape[2]}")
    return as_float(x), as_float(y)


@full_precision
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA per image, feature-space form. x (N, n, d1), y (N, n, d2) -> (N,) in [0, 1]
    (0 where either side is constant over the pixels)."""
    x, y = _check(x, y, same_dim=False)
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    cross = torch.linalg.matrix_norm(y.transpose(1, 2) @ x) ** 2       # ||Yᵀ X||_F²
    xx = torch.linalg.matrix_norm(x.transpose(1, 2) @ x)                # ||Xᵀ X||_F
    yy = torch.linalg.matrix_norm(y.transpose(1, 2) @ y)
    return cross / (xx * yy).clamp_min(EPS)


def cka_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − linear CKA per image: (N, n, d1), (N, n, d2) -> (N,)."""
    return 1.0 - linear_cka(x, y)


@full_precision
def cosine_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − mean over pixels of cos(x_i, y_i): (N, n, d), (N, n, d) -> (N,) in [0, 2]."""
    x, y = _check(x, y, same_dim=True)
    return 1.0 - F.cosine_similarity(x, y, dim=2, eps=1e-8).mean(dim=1)


@full_precision
def euclidean_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ||x_i − y_i||₂ / sqrt(d): (N, n, d), (N, n, d) -> (N,), same units as
    the features."""
    x, y = _check(x, y, same_dim=True)
    d2 = ((x - y) ** 2).sum(dim=2)
    # sqrt with a floor so that the gradient at x_i = y_i is 0, not NaN
    return torch.sqrt(d2 + EPS).mean(dim=1) / x.shape[2] ** 0.5


@full_precision
def pearson_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − Pearson correlation of the flattened maps: (N, n, d), (N, n, d) -> (N,) in [0, 2]."""
    x, y = _check(x, y, same_dim=True)
    xf = x.flatten(1) - x.flatten(1).mean(dim=1, keepdim=True)
    yf = y.flatten(1) - y.flatten(1).mean(dim=1, keepdim=True)
    r = (xf * yf).sum(dim=1) / (xf.norm(dim=1) * yf.norm(dim=1)).clamp_min(EPS)
    return 1.0 - r


_LOSSES = {"cka": cka_loss, "cosine": cosine_loss, "euclidean": euclidean_loss, "pearson": pearson_loss}


def consistency_loss(x: torch.Tensor, y: torch.Tensor, measure: str = "cka") -> torch.Tensor:
    """The named measure's loss per image (N,). ``measure``: one of :data:`CONSISTENCY`."""
    if measure not in _LOSSES:
        raise ValueError(f"consistency must be one of {CONSISTENCY}, got {measure!r}")
    return _LOSSES[measure](x, y)
