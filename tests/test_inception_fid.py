"""FID: the Inception-v3 port (pytorch-fid's FID weights), its converter, the torch bilinear
resize, and the float64 Frechet distance."""

from __future__ import annotations

import io as _io
import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from gohd_jax.eval import fid
from gohd_jax.interop import inception_weights as iw
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from gohd_jax.models.inception_fid import resize_bilinear
from tests.conftest import require_shared

ORACLE_OUTPUTS = {
    "block0_input", "block0", "block1", "block2", "block3_out", "pool_features",
    "fd_mu1", "fd_mu2", "fd_sigma1_diag", "fd_sigma2_diag", "fd_sigma1_block64",
    "fd_sigma2_block64", "fd_trace_sigma1", "fd_trace_sigma2", "fd_tr_covmean",
    "fd_sqrtm_is_complex", "fid", "fd_small_mu1", "fd_small_mu2", "fd_small_sigma1",
    "fd_small_sigma2", "fd_small_tr_covmean", "fd_small_fid"}


def _state_dict():
    man = ow.load_manifest(require_shared("reference", "fid_inception", "manifest.json"))
    return ow.make_state_dict(man, ow.manifest_seed(man))


# --------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------

def test_converter_is_strict_on_the_official_names():
    sd = _state_dict()
    assert sd["fc.weight"].shape == (1008, 2048)
    model = iw.fid_inception_from_state_dict(sd)
    np.testing.assert_array_equal(np.asarray(model.Conv2d_1a_3x3.weight[...]),
                                  sd["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.Mixed_7c.branch3x3dbl_3b.bn.var[...]),
                                  sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"])
    np.testing.assert_array_equal(np.asarray(model.Mixed_6e.branch7x7dbl_5.weight[...]),
                                  sd["Mixed_6e.branch7x7dbl_5.conv.weight"].transpose(2, 3, 1, 0))
    # Re-copies into the same model (cheap): a missing or an extra name raises, fc.* and
    # num_batches_tracked are dropped, a DataParallel prefix is stripped.
    missing = {k: v for k, v in sd.items() if k != "Mixed_6a.branch3x3.bn.running_var"}
    with pytest.raises(KeyError, match="lacks 'Mixed_6a.branch3x3.bn.running_var'"):
        iw.load_state_dict(model, missing)
    with pytest.raises(KeyError, match="unused state-dict entries"):
        iw.load_state_dict(model, {**sd, "AuxLogits.fc.weight": np.zeros((1008, 768), np.float32)})
    with pytest.raises(ValueError, match="fc.weight"):
        iw.load_state_dict(model, {**sd, "fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match="Conv2d_2a_3x3.conv.weight"):
        iw.load_state_dict(model, {**sd, "Conv2d_2a_3x3.conv.weight": np.zeros((32, 32, 1, 1),
                                                                              np.float32)})
    no_fc = {f"module.{k}": v for k, v in sd.items() if not k.startswith("fc.")
             and not k.endswith("num_batches_tracked")}
    iw.load_state_dict(model, no_fc)


# --------------------------------------------------------------------------------------------
# Resize: F.interpolate(mode='bilinear', align_corners=False), no antialias
# --------------------------------------------------------------------------------------------

def _numpy_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent float64 reference of torch's align_corners=False bilinear: [H,W] -> [h,w]."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx = axis(img.shape[1], out_w)
    fy, fx = fy[:, None], fx[None, :]
    return ((1 - fy) * ((1 - fx) * img[y0][:, x0] + fx * img[y0][:, x1])
            + fy * ((1 - fx) * img[y1][:, x0] + fx * img[y1][:, x1]))


def test_resize_by_hand():
    x = jnp.asarray(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, :, :, None])
    up = np.asarray(resize_bilinear(x, (4, 4)))[0, :, :, 0]
    # src = (d + 0.5)/2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (-> index 1, w 0.25 -> clamped tap).
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5],
                                    [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]], atol=1e-7)
    # Halving without antialias = mean of each 2x2 block (src = 0.5, 2.5); 4 -> 1 reads only
    # the two middle pixels of each axis (src = 1.5), not the whole image.
    z = np.arange(16, dtype=np.float32).reshape(4, 4)
    down = np.asarray(resize_bilinear(jnp.asarray(z[None, :, :, None]), (2, 2)))[0, :, :, 0]
    np.testing.assert_allclose(down, [[2.5, 4.5], [10.5, 12.5]], atol=1e-6)
    one = np.asarray(resize_bilinear(jnp.asarray(z[None, :, :, None]), (1, 1)))[0, 0, 0, 0]
    np.testing.assert_allclose(one, z[1:3, 1:3].mean(), atol=1e-6)
    assert resize_bilinear(x, (2, 2)) is x  # same size: identity


@pytest.mark.parametrize("size", [256, 512, 123])
def test_resize_matches_numpy_reference_up_and_down(size):
    rng = np.random.default_rng(size)
    img = rng.random((2, size, size + 7, 3), dtype=np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(img), (299, 299)))
    want = np.stack([np.stack([_numpy_bilinear(img[b, :, :, c].astype(np.float64), 299, 299)
                               for c in range(3)], -1) for b in range(2)])
    # float32 rounding of the source coordinate (as torch's) moves it by <= ulp(size)/2
    np.testing.assert_allclose(got, want, atol=4e-5, rtol=0)
    if size == 512:  # jax.image.resize antialiases when shrinking: not what pytorch-fid does
        import jax
        aa = np.asarray(jax.image.resize(jnp.asarray(img), (2, 299, 299, 3), "bilinear"))
        assert np.abs(aa - want).max() > 1e-2


def test_resize_matches_torch_on_the_oracle_input():
    z = np.load(require_shared("reference", "fid_inception", "io.npz"))
    img = jnp.asarray(z["img_input"].transpose(0, 2, 3, 1))
    got = 2 * np.asarray(resize_bilinear(img)) - 1
    np.testing.assert_allclose(got, z["block0_input"].transpose(0, 2, 3, 1), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# Statistics and the distance
# --------------------------------------------------------------------------------------------

def test_streaming_stats_equal_np_cov_over_all_rows():
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((203, 24)) * 0.3 + 50.0).astype(np.float32)  # |mean| >> std
    stats = fid.FrechetStats()
    for i in range(0, 203, 37):
        stats.add(rows[i:i + 37])
    stats.add(rows[:0])
    ref = rows.astype(np.float64)
    assert stats.count == 203 and not stats.rank_deficient
    np.testing.assert_allclose(stats.mean(), ref.mean(0), rtol=1e-14, atol=0)
    np.testing.assert_allclose(stats.cov(), np.cov(ref, rowvar=False), rtol=1e-10, atol=1e-14)
    mu, sigma = fid.activation_statistics(rows)
    np.testing.assert_array_equal(sigma, np.cov(ref, rowvar=False))
    # merging accumulators with different shifts gives the same statistics
    a, b = fid.FrechetStats().add(rows[:50]), fid.FrechetStats().add(rows[50:] + 1.0)
    both = np.concatenate([ref[:50], ref[50:] + 1.0])
    a.merge(b)
    np.testing.assert_allclose(a.cov(), np.cov(both, rowvar=False), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a.mean(), both.mean(0), rtol=1e-14)
    with pytest.raises(ValueError, match="dimensions"):
        stats.add(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        fid.FrechetStats().add(rows[:1]).cov()


def test_frechet_distance_identical_and_shifted_gaussians(tmp_path):
    rng = np.random.default_rng(1)
    d = 32
    a = rng.standard_normal((d, d))
    sigma = a @ a.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # same covariance: sqrtm(S S) = S, so the trace terms cancel
    val, parts = fid.frechet_distance(mu1, sigma, mu2, sigma, return_parts=True)
    np.testing.assert_allclose(val, np.sum((mu1 - mu2) ** 2), rtol=1e-9)
    np.testing.assert_allclose(parts.tr_covmean, np.trace(sigma), rtol=1e-9)
    assert not parts.eps_offset
    assert abs(fid.frechet_distance(mu1, sigma, mu1, sigma)) < 1e-9
    feats = rng.standard_normal((300, 16)).astype(np.float32)
    assert abs(fid.fid_from_features(feats, feats)) < 1e-8
    np.testing.assert_allclose(fid.fid_from_features(feats, feats + 0.5), 16 * 0.25, rtol=1e-7)
    fid.save_stats(tmp_path / "s.npz", mu1, sigma)
    m, s = fid.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(s, sigma)
    np.testing.assert_array_equal(m, mu1)


def test_frechet_distance_retry_and_imaginary_check():
    nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])  # no square root: sqrtm gives inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val, parts = fid.frechet_distance(np.zeros(2), nilpotent, np.zeros(2), np.eye(2),
                                          return_parts=True)
    assert parts.eps_offset and np.isfinite(val)
    with pytest.raises(ValueError, match="Imaginary component"):
        fid.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="differ"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        fid.fid_from_features(np.eye(4, 8, dtype=np.float32), np.eye(4, 8, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Oracle parity (the whole network, then a 2048x2048 sqrtm: about a minute and a half on CPU)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_parity_on_the_oracle():
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(require_shared("reference", "fid_inception"), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue()
    assert {d["array"] for d in lines} == ORACLE_OUTPUTS
    assert all(d["pass"] and d["max_rel"] < 1e-5 for d in lines), [
        (d["array"], d["max_rel"]) for d in lines if not d["max_rel"] < 1e-5]
