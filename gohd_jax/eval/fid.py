"""Frechet Inception Distance: feature statistics in float64 and the distance, as pytorch-fid
(mseitzer/pytorch-fid ``fid_score.py``) computes them.

Protocol (what makes a number comparable with published FID):

1. **Images**: RGB, float in [0, 1], any size, fed to ``models.inception_fid.FIDInceptionV3``
   (the TF-2015 FID Inception weights, ``interop.inception_weights.load_fid_inception``). The
   network resizes to 299x299 with torch's bilinear ``align_corners=False`` rule **without**
   antialiasing (also when shrinking), then maps to [-1, 1] by ``2x - 1``. Frames saved as 8-bit
   files should be read back as uint8 / 255, as pytorch-fid's loader does.
2. **Features**: the 2048-d output of the final average pool (``pool_3``), float32 on device.
3. **Statistics, float64**: pytorch-fid copies the features into a float64 array before
   ``mu = mean`` and ``sigma = np.cov(rowvar=False)`` (unbiased, divided by N - 1).
   ``FrechetStats`` gives the same numbers from streamed batches (count, sum and sum of outer
   products in float64, shifted by the first batch's mean to avoid cancellation), so a whole
   video set never has to be held in memory. ``activation_statistics`` is the direct form.
4. **Distance** (``frechet_distance``):
   d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2)), with
   ``scipy.linalg.sqrtm`` of the (non-symmetric) product. If the square root has non-finite
   entries, eps·I (eps = 1e-6) is added to both covariances and the root retried. If it comes
   out complex, the imaginary parts of its diagonal must be within 1e-3 of zero (else
   ``ValueError("Imaginary component <max |imag|>")``) and the real part is kept.

**Fewer samples than dimensions** (N <= 2048, e.g. a handful of test clips): each covariance has
rank <= N - 1, the product sigma1·sigma2 is singular, and its square root is that of a matrix
with (numerically) zero and slightly negative eigenvalues: scipy returns a finite but complex
root whose imaginary parts are rounding noise, which the check above accepts. The distance is
still defined and computed the same way, but it is strongly biased upwards at small N (FID's
bias falls roughly as 1/N) and not comparable across different N; published FIDs use 10k-50k
samples. The ``fid_inception`` oracle checks both regimes: ``fd_*`` is 64 samples of 2048-d
(rank-deficient, complex sqrtm, ``fd_sqrtm_is_complex`` = 1), ``fd_small_*`` 256 samples of 64-d
(full rank, real root). A 2048x2048 ``sqrtm`` takes ~20 s on two CPU cores.

scipy note: pytorch-fid calls ``sqrtm(..., disp=False)``; scipy >= 1.18 dropped ``disp`` (its
new ``sqrtm`` returns the same root), so ``matrix_sqrt`` passes it only where it exists.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from pathlib import Path

import numpy as np
from scipy import linalg

__all__ = ["FrechetStats", "FrechetParts", "activation_statistics", "frechet_distance",
           "fid_from_features", "fid_from_stats", "matrix_sqrt", "save_stats", "load_stats",
           "IMAG_ATOL"]

IMAG_ATOL = 1e-3  # pytorch-fid's tolerance on the imaginary part of sqrtm's diagonal


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def _as_rows(features) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x.astype(np.float64)


def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """features [N,D] (any float dtype) -> (mu [D], sigma [D,D]) in float64, exactly as
    pytorch-fid's ``calculate_activation_statistics``: the features upcast to float64, then
    ``np.mean(axis=0)`` and ``np.cov(rowvar=False)`` (divided by N - 1)."""
    x = _as_rows(features)
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


class FrechetStats:
    """Streaming mean and covariance of feature rows, in float64.

    ``stats.add(batch)`` with batch [B,D] (float32 features from the network, numpy or JAX);
    ``stats.mean()`` [D] and ``stats.cov()`` [D,D] equal ``np.mean`` and ``np.cov(rowvar=False)``
    of all rows added (to float64 rounding). Internally: ``count``, the shift K (the first batch's
    mean), ``sum`` = Σ(x - K) [D] and ``sum_outer`` = Σ(x - K)(x - K)^T [D,D], all float64; the
    shift keeps the outer-product sums free of cancellation when |mean| >> std.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.sum_outer: np.ndarray | None = None

    def add(self, features) -> "FrechetStats":
        """Adds rows [B,D] (B may be 0). Returns self."""
        x = _as_rows(features)
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, the statistics {self.dim}")
        if x.shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sum = np.zeros(self.dim)
            self.sum_outer = np.zeros((self.dim, self.dim))
        c = x - self.shift
        self.count += x.shape[0]
        self.sum += c.sum(axis=0)
        self.sum_outer += c.T @ c
        return self

    def merge(self, other: "FrechetStats") -> "FrechetStats":
        """Adds another accumulator's rows (e.g. from another host). Returns self."""
        if other.count == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim} and {self.dim} dimensions")
        if self.count == 0:
            self.dim, self.count = other.dim, other.count
            self.shift, self.sum = other.shift.copy(), other.sum.copy()
            self.sum_outer = other.sum_outer.copy()
            return self
        d = other.shift - self.shift  # re-centre the other's sums on our shift
        s = other.sum + other.count * d
        self.sum_outer += (other.sum_outer + np.outer(other.sum, d) + np.outer(d, other.sum)
                           + other.count * np.outer(d, d))
        self.sum += s
        self.count += other.count
        return self

    def mean(self) -> np.ndarray:
        """[D] float64 mean of all rows."""
        if self.count == 0:
            raise ValueError("no features added")
        return self.shift + self.sum / self.count

    def cov(self) -> np.ndarray:
        """[D,D] float64 unbiased covariance (divided by count - 1), as np.cov(rowvar=False)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        c = self.sum / self.count
        return (self.sum_outer - self.count * np.outer(c, c)) / (self.count - 1)

    @property
    def rank_deficient(self) -> bool:
        """True when there are no more samples than dimensions (the covariance is singular)."""
        return self.count <= (self.dim or 0)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], cov [D,D]), float64."""
        return self.mean(), self.cov()


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes ``mu`` and ``sigma`` to an .npz with pytorch-fid's keys (``mu``, ``sigma``)."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads (mu, sigma) from a pytorch-fid statistics .npz (keys ``mu``, ``sigma``)."""
    with np.load(path) as z:
        return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)


# --------------------------------------------------------------------------------------------
# Distance
# --------------------------------------------------------------------------------------------

_SQRTM_HAS_DISP = "disp" in inspect.signature(linalg.sqrtm).parameters


def matrix_sqrt(a: np.ndarray, quiet: bool = True) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)``; the root may be complex, and non-finite for a badly singular
    ``a``. ``quiet``: pytorch-fid's ``disp=False`` (passed where scipy still has it; newer scipy's
    "Matrix is singular" ``LinAlgWarning`` is silenced instead). The eps retry is not quiet, as
    there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if quiet:
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
        if _SQRTM_HAS_DISP:
            out = linalg.sqrtm(a, disp=not quiet)
            return out[0] if quiet else out
        return linalg.sqrtm(a)


@dataclasses.dataclass(frozen=True)
class FrechetParts:
    """The terms of one Frechet distance (float64 scalars).

    fid = mean_term + trace_sigma1 + trace_sigma2 - 2·tr_covmean; ``sqrtm_is_complex``: the root
    came out complex (its real part was kept); ``max_imag``: the largest |imaginary part| of the
    root (0 if real); ``eps_offset``: the eps·I retry was needed."""
    fid: float
    mean_term: float
    trace_sigma1: float
    trace_sigma2: float
    tr_covmean: float
    sqrtm_is_complex: bool
    max_imag: float
    eps_offset: bool


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, *, return_parts: bool = False):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid's
    ``calculate_frechet_distance``: mu [D], sigma [D,D] (float64) -> float.

    ``return_parts=True`` returns ``(fid, FrechetParts)``. Raises ``ValueError`` on mismatched
    shapes, and ``ValueError("Imaginary component m")`` when the root's diagonal has an
    imaginary part above 1e-3.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")

    diff = mu1 - mu2
    covmean = matrix_sqrt(sigma1.dot(sigma2))
    retried = False
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of "
                      f"cov estimates", RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = matrix_sqrt((sigma1 + offset).dot(sigma2 + offset), quiet=False)
        retried = True

    is_complex = bool(np.iscomplexobj(covmean))
    max_imag = 0.0
    if is_complex:
        max_imag = float(np.max(np.abs(covmean.imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise ValueError(f"Imaginary component {max_imag}")
        covmean = covmean.real

    tr_covmean = float(np.trace(covmean))
    mean_term, tr1, tr2 = float(diff.dot(diff)), float(np.trace(sigma1)), float(np.trace(sigma2))
    fid = mean_term + tr1 + tr2 - 2 * tr_covmean
    if return_parts:
        return fid, FrechetParts(fid, mean_term, tr1, tr2, tr_covmean, is_complex, max_imag, retried)
    return fid


def fid_from_stats(a: FrechetStats, b: FrechetStats, eps: float = 1e-6) -> float:
    """FID between two accumulated feature sets (warns when either has N <= D samples)."""
    for name, s in (("first", a), ("second", b)):
        if s.rank_deficient:
            warnings.warn(f"the {name} set has {s.count} samples for {s.dim} dimensions: its "
                          f"covariance is rank-deficient and the FID is biased (see "
                          f"gohd_jax.eval.fid)", RuntimeWarning, stacklevel=2)
    mu1, s1 = a.statistics()
    mu2, s2 = b.statistics()
    return frechet_distance(mu1, s1, mu2, s2, eps)


def fid_from_features(a, b, eps: float = 1e-6) -> float:
    """FID between two feature sets a [N1,D] and b [N2,D] (pool features of
    ``FIDInceptionV3``); float64 statistics as pytorch-fid."""
    return fid_from_stats(FrechetStats().add(a), FrechetStats().add(b), eps)
