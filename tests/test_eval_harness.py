"""gohd-eval's plumbing: cross-clip batching, pairing, crops, image quality, report files."""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from gohd_jax.eval import clips as clip_io
from gohd_jax.eval.batching import DeviceBatcher
from gohd_jax.eval.image_quality import clip_quality
from gohd_jax.eval.pairs import pairs_from_dirs, pairs_from_manifest, real_only
from gohd_jax.eval.report_files import write_reports


def test_batcher_gathers_items_across_clips_in_fixed_batches():
    calls = []

    def apply(params, x):
        calls.append(x.shape)  # traced once per shape
        return {"y": x.sum(axis=1) * params["w"], "first": x[:, 0]}

    b = DeviceBatcher(apply, {"w": np.float32(2.0)}, batch_size=4, devices=jax.local_devices()[:1])
    done = {}
    rng = np.random.default_rng(0)
    items = {k: rng.normal(size=(n, 3)).astype(np.float32) for k, n in (("a", 3), ("b", 6), ("c", 1), ("d", 0))}
    for k, x in items.items():
        b.add(k, x, lambda out, k=k: done.__setitem__(k, out))
    assert set(done) == {"a", "d"}  # 3 + 6 + 1 items: two full batches ran, the last of b and c wait
    b.flush()
    assert done["d"] is None
    for k in ("a", "b", "c"):
        np.testing.assert_allclose(done[k]["y"], items[k].sum(1) * 2, rtol=1e-6)
        np.testing.assert_array_equal(done[k]["first"], items[k][:, 0])
    assert calls == [(4, 3)]  # one compile: the last batch was padded
    assert b.items_run == 10
    # over all local devices (8 fake CPU devices in the tests): a multiple of their count, sharded
    n = jax.local_device_count()
    sharded = DeviceBatcher(apply, {"w": np.float32(2.0)}, batch_size=3)
    assert sharded.batch_size == -(-3 // n) * n
    got = {}
    sharded.add("x", items["b"], lambda out: got.update(out))
    sharded.flush()
    np.testing.assert_allclose(got["y"], items["b"].sum(1) * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="already queued"):
        b.add("e", items["a"], lambda out: None)
        b.add("e", items["a"], lambda out: None)


def test_resize_bilinear_matches_half_pixel_interpolation():
    img = np.arange(4 * 6, dtype=np.float32).reshape(4, 6, 1)  # value = 6 * row + col
    out = clip_io.resize_bilinear(img, 2, 3)
    # half-pixel centres: output (i, j) samples input (2i + 0.5, 2j + 0.5), a linear function
    expect = np.array([[6 * (2 * i + 0.5) + (2 * j + 0.5) for j in range(3)] for i in range(2)], np.float32)
    np.testing.assert_allclose(out[..., 0], expect, rtol=1e-6)
    up = clip_io.resize_bilinear(np.array([[0, 255]], np.uint8)[..., None], 1, 4)[0, :, 0]
    np.testing.assert_array_equal(up, [0, 64, 191, 255])  # x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)


def test_syncnet_crops_follow_the_run_pipeline_window():
    t, h, w = 15, 200, 240
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:, 60:140, 80:160] = 200  # the face box (80, 60, 160, 140): s = 40, centre (120, 100)
    boxes = np.tile([80.0, 60.0, 160.0, 140.0], (t, 1))
    boxes[7] += 30  # one outlier: the 13-frame median filter removes it
    crops = clip_io.syncnet_crops(frames, boxes)
    assert crops.shape == (t, 224, 224, 3)
    np.testing.assert_array_equal(crops[7], crops[6])
    # rows [cy - s, cy + 1.8 s) = [60, 172), cols [cx - 1.4 s, cx + 1.4 s) = [64, 176): the box's
    # top edge is the crop's first row; its left edge at (80 - 64) / 112 of the width
    c = crops[0, :, :, 0].astype(int)
    assert c[0, 112] == 200 and c[5, 5] == 0
    col = np.argmax(c[50] > 100)
    assert abs(col - 16 / 112 * 224) <= 1
    row = np.argmax(c[:, 112] < 100)
    assert abs(row - 80 / 112 * 224) <= 1


def test_syncnet_crops_pad_with_110_outside_the_frame():
    frames = np.full((1, 100, 100, 3), 7, np.uint8)
    crops = clip_io.syncnet_crops(frames, np.array([[0.0, 0.0, 40.0, 40.0]]))
    assert crops[0, 0, 0, 0] == 110 and crops[0, 112, 112, 0] == 7


def test_image_quality_psnr_and_l1_by_hand():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    q = clip_quality(a, b)
    mse = ((a / 255.0 - b / 255.0) ** 2).mean(axis=(1, 2, 3))
    assert q["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)
    assert q["l1"] == pytest.approx(np.abs(a.astype(int) - b).mean(), rel=1e-5)
    assert 0.5 < q["ssim"] < 1.0 and q["frames"] == 5 and not q["resized"]
    same = clip_quality(a, a)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["psnr"] == 100.0 and same["l1"] == 0.0


def test_pairs_by_file_name_and_from_a_manifest(tmp_path):
    gen, real, src = (tmp_path / d for d in ("gen", "real", "src"))
    for d in (gen, real, src):
        d.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (gen / name).write_bytes(b"")
    for name in ("a.avi", "c.mp4"):
        (real / name).write_bytes(b"")
    (src / "b.png").write_bytes(b"")
    pairs = pairs_from_dirs(gen, real, src)
    assert [(p.name, p.real and p.real.name, p.source and p.source.name) for p in pairs] == [
        ("a", "a.avi", None), ("b", None, "b.png")]
    assert [p.name for p in real_only(real, pairs)] == ["c.mp4"]
    manifest = tmp_path / "jobs.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["image", "audio", "out"], ["src/b.png", "x.wav", "gen/a.mp4"]])
    (p,) = pairs_from_manifest(manifest, real)
    assert p.generated == gen / "a.mp4" and p.source == src / "b.png" and p.real == real / "a.avi"
    with pytest.raises(FileNotFoundError, match="no videos"):
        pairs_from_dirs(src)


def test_reports_are_written_with_nulls_and_skips(tmp_path):
    report = {"summary": {"fid": 12.5, "lse_c": 7.1, "lse_d": 6.9, "csim": None, "psnr": None, "ssim": None},
              "counts": {"clips": 2, "clips_scored": 1, "clips_skipped": 1, "frames_read": 50,
                         "fid_generated_frames": 50, "fid_real_frames": 60},
              "settings": {"fid_on": "frames", "fid_every": 1}, "seconds": 3.0,
              "clips": [{"name": "a", "frames": 50, "lse_c": 7.1, "lse_d": 6.9, "lse_offset": 1,
                         "csim_error": "no source portrait"},
                        {"name": "b", "error": "no face: no face found in 10 frames"}]}
    paths = write_reports(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["summary"]["csim"] is None
    md = paths["md"].read_text()
    assert "| 12.500 | 7.100 | 6.900 | n/a | n/a | n/a |" in md
    assert "- b: no face" in md and "csim: no source portrait" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert rows[0]["lse_offset"] == "1" and rows[1]["error"].startswith("no face")


class _Faces:
    """dlib's interface with a fixed face: the middle half of the frame, 68 points on a grid in it."""

    def detect(self, img):
        h, w = img.shape[:2]
        return (w / 4, h / 4, 3 * w / 4, 3 * h / 4)

    def landmarks(self, img, box):
        l, t, r, b = box
        i = np.arange(68)
        return np.stack([l + (i % 9) / 8 * (r - l), t + (i // 9) / 7 * (b - t)], axis=1)


def _fake_networks():
    """Small NNX stand-ins with the metric networks' methods (features = channel means)."""
    from flax import nnx

    from gohd_jax.eval.networks import ArcFaceEmbedder, InceptionFeatures, Networks, SyncNetScorer

    class Net(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(np.ones(3, np.float32))

        def embed_lip(self, x):  # [B,5,224,224,3]
            return x.mean(axis=(1, 2, 3)) * self.w[...]

        def embed_audio(self, x):  # [B,13,20,1]
            return x.mean(axis=(2, 3))[:, :3] * self.w[...]

        def __call__(self, x):  # [B,S,S,3]
            return x.mean(axis=(1, 2)) * self.w[...] + x.std(axis=(1, 2))

    return Networks(syncnet=SyncNetScorer(Net(), 4), inception=InceptionFeatures(Net(), 4),
                    arcface=ArcFaceEmbedder(Net(), 4))


def test_runner_with_stand_in_networks_fid_on_faces(tmp_path):
    """The run's plumbing on two short clips (stand-in networks and face finder): every row
    finishes, FID counts the sampled face crops on both sides, self-comparison gives PSNR 100
    and FID 0, LSE and CSIM are computed from the batched items."""
    from gohd_jax.eval.pairs import pairs_from_dirs
    from gohd_jax.eval.runner import EvalSettings, Evaluator
    from gohd_jax.infer.mp4 import Mp4Writer

    rng = np.random.default_rng(0)
    (tmp_path / "gen").mkdir()
    for name, n in (("a", 12), ("b", 9)):
        frames = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        w = Mp4Writer(tmp_path / "gen" / f"{name}.mp4", 64, audio=rng.uniform(-0.3, 0.3, n * 640).astype(np.float32))
        w.write(frames)
        w.close()
    pairs = pairs_from_dirs(tmp_path / "gen", tmp_path / "gen")
    ev = Evaluator(_fake_networks(), _Faces(), EvalSettings(fid_on="faces", fid_every=2), progress=False)
    report = ev.run(pairs)
    assert report["counts"]["fid_generated_frames"] == 6 + 5 == report["counts"]["fid_real_frames"]
    s = report["summary"]
    assert abs(s["fid"]) < 1e-6 and s["psnr"] == 100.0
    for row in report["clips"]:
        assert "error" not in row and row["csim_reference"] == "real video's first frame"
        assert np.isfinite([row["lse_c"], row["lse_d"], row["csim"]]).all() and -1 <= row["csim"] <= 1
    assert [r["name"] for r in report["clips"]] == ["a", "b"]
