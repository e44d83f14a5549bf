"""syncnet_python's SyncNet (``SyncNetV2``), its weight converter, and the LSE-D / LSE-C procedure."""

from __future__ import annotations

import io as _io
import json

import numpy as np
import pytest
from flax import nnx
from scipy import signal

from gohd_jax.eval import lse
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from gohd_jax.interop import syncnet_v2_weights as sw
from gohd_jax.models.syncnet_v2 import SyncNetV2
from tests.conftest import require_shared

OUTPUTS = {f"{s}_{k}" for s in ("aud", "lip") for k in ("cnn_3", "cnn_7", "cnn_17", "cnn_out", "emb")}
OUTPUTS |= {"lip_feat"} | {f"lse_{k}" for k in (
    "mfcc", "cct", "im_feat", "cc_feat", "dists", "mdist", "min_dist", "minidx", "median", "conf",
    "offset", "framewise_conf")}


@pytest.fixture(scope="module")
def state_dict():
    man = ow.load_manifest(require_shared("reference", "syncnet", "manifest.json"))
    return ow.make_state_dict(man, ow.manifest_seed(man))


def test_converter_is_strict_and_reads_the_file_torch_free(state_dict, tmp_path):
    from tests.test_torch_checkpoint import state_dict as torch_state_dict
    from tests.test_torch_checkpoint import tensor, torch_save_legacy

    names = sw.state_dict_names()
    # The manifest is S().state_dict(): our names plus BatchNorm's num_batches_tracked.
    assert sorted(names) == sorted(k for k in state_dict if not k.endswith("num_batches_tracked"))
    # syncnet_v2.model as an old torch (legacy format, no num_batches_tracked) would have saved it.
    path = tmp_path / "syncnet_v2.model"
    path.write_bytes(torch_save_legacy(torch_state_dict(**{k: tensor(state_dict[k]) for k in names})))
    model = sw.load_syncnet_v2(path)
    np.testing.assert_array_equal(np.asarray(model.lip_convs[0].weight[...]),
                                  state_dict["netcnnlip.0.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.aud_convs[5].weight[...]),
                                  state_dict["netcnnaud.18.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.fclip.fc3.kernel[...]), state_dict["netfclip.3.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.fcaud.bn1.var[...]), state_dict["netfcaud.1.running_var"])
    # A missing or an unknown entry is an error; num_batches_tracked (the manifest has it) is not.
    with pytest.raises(KeyError, match="lacks 'netcnnlip.15.running_var'"):
        sw.syncnet_v2_from_state_dict({k: v for k, v in state_dict.items() if k != "netcnnlip.15.running_var"})
    with pytest.raises(KeyError, match="unused state-dict entries: \\['netfclip.5.weight'\\]"):
        sw.syncnet_v2_from_state_dict({**state_dict, "netfclip.5.weight": np.zeros((3, 3), np.float32)})
    bad = dict(state_dict, **{"netcnnaud.18.weight": np.zeros((512, 256, 4, 5), np.float32)})
    with pytest.raises(ValueError, match="netcnnaud.18.weight: shape"):
        sw.syncnet_v2_from_state_dict(bad)


@pytest.mark.slow
def test_parity():
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(require_shared("reference", "syncnet"), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue()
    assert {d["array"] for d in lines} == OUTPUTS and all(d["pass"] for d in lines)


def _torch_like_scores(im, cc, vshift):
    """calc_pdist + evaluate's arithmetic in numpy (float64), for comparison."""
    n, win = len(im), 2 * vshift + 1
    ccp = np.pad(cc, ((vshift, vshift), (0, 0)))
    dists = np.stack([np.linalg.norm(im[i] - ccp[i:i + win] + 1e-6, axis=1) for i in range(n)])
    mdist = dists.mean(0)
    minidx = int(np.argmin(mdist))
    median = np.sort(mdist)[vshift]
    return dists, mdist, minidx, median, signal.medfilt(median - dists[:, minidx], 9)


@pytest.mark.parametrize("shift", [-3, 0, 4])
def test_distances_find_a_planted_offset(shift):
    """Video window i carries the audio feature of window i - shift -> offset == shift."""
    rng = np.random.default_rng(shift + 10)
    n, d, vshift = 30, 16, 6
    cc = rng.normal(size=(n, d)).astype(np.float32)
    im = rng.normal(size=(n, d)).astype(np.float32)
    for i in range(n):
        if 0 <= i - shift < n:
            im[i] = cc[i - shift] + 0.01 * rng.normal(size=d)
    s = lse.sync_distances(im, cc, vshift=vshift)
    assert int(s["offset"]) == shift and int(s["minidx"]) == vshift - shift
    dists, mdist, minidx, median, framewise = _torch_like_scores(im.astype(np.float64), cc.astype(np.float64),
                                                                 vshift)
    np.testing.assert_allclose(s["dists"], dists, rtol=1e-5)
    np.testing.assert_allclose(s["mdist"], mdist, rtol=1e-5)
    assert int(s["minidx"]) == minidx
    np.testing.assert_allclose(s["min_dist"], mdist[minidx], rtol=1e-5)
    np.testing.assert_allclose(s["conf"], median - mdist[minidx], rtol=1e-4)
    np.testing.assert_allclose(s["framewise_conf"], framewise, rtol=1e-4, atol=1e-5)


class _PatternNet(nnx.Module):
    """A stand-in for SyncNetV2 with the same two methods: the lip 'embedding' is whether each of
    the 5 frames is bright in its last channel (BGR's red), the audio one whether each group of
    4 MFCC frames starts with a loud frame (c0 = log energy > 0)."""

    def embed_lip(self, x):
        return (x[:, :, 0, 0, 2] > 127).astype(np.float32)  # [B,5]

    def embed_audio(self, m):
        return (m[:, 0, ::4, 0] > 0).astype(np.float32)  # [B,5]


def _pattern_clip(shift: int, t: int = 40, extra_audio: int = 0):
    """Audio frame j (640 samples) starts with a 30 ms tone where pattern[j] (its last 10 ms are
    silent, so the pre-emphasis does not carry the tone into the next frame's first MFCC frame);
    video frame j is bright (red in RGB) where pattern[j - shift]: the video lags the audio by
    ``shift`` frames."""
    rng = np.random.default_rng(3)
    pattern = rng.random(t + 40) < 0.5
    tone = np.where(np.arange(640) < 480, 0.5 * np.sin(2 * np.pi * 440 * np.arange(640) / 16000), 0.0)
    tone = tone.astype(np.float32)
    audio = np.concatenate([tone if pattern[j] else np.zeros(640, np.float32) for j in range(t + extra_audio)])
    frames = np.zeros((t, 224, 224, 3), np.uint8)
    for j in range(t):
        if 0 <= j - shift and pattern[j - shift]:
            frames[j, ..., 0] = 255
    return frames, audio


@pytest.mark.parametrize("shift,batch_size", [(2, 8), (-1, 20)])
def test_lse_scores_recovers_a_known_offset(shift, batch_size):
    frames, audio = _pattern_clip(shift, extra_audio=3)
    res = lse.lse_scores(_PatternNet(), frames, audio, vshift=5, batch_size=batch_size)
    assert res.num_windows == 35 and res.dists.shape == (35, 11) and res.mfcc.shape[0] == 13
    assert res.offset == shift and res.minidx == 5 - shift
    assert res.lse_d == pytest.approx(float(res.mdist.min())) and res.lse_c > 0.5
    # Windows are gathered as evaluate does: frames i..i+4, MFCC frames 4i..4i+19.
    np.testing.assert_array_equal(res.im_feat, (frames[np.arange(35)[:, None] + np.arange(5), 0, 0, 0] > 127))
    np.testing.assert_array_equal(res.mfcc, lse.mfcc(lse.audio_int16(audio)))
    # Frames given as BGR are used as they are: the red channel is then not where the net looks.
    bgr = lse.lse_scores(_PatternNet(), frames, audio, vshift=5, channel_order="bgr")
    assert not bgr.im_feat.any()


def test_lse_rejects_bad_input():
    net = _PatternNet()
    frames, audio = _pattern_clip(0, t=6)
    assert lse.lse_scores(net, frames, audio).num_windows == 1  # 6 frames: evaluate's minimum
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse.lse_scores(net, frames[:5], audio)
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse.lse_scores(net, frames, audio[:640 * 5 + 639])  # audio for 5 frames only
    with pytest.raises(ValueError, match=r"face crops \[T, 224, 224, 3\]"):
        lse.lse_scores(net, np.zeros((10, 112, 112, 3), np.uint8), audio)
    with pytest.raises(TypeError, match="uint8"):
        lse.lse_scores(net, frames.astype(np.float32) / 255, audio)
    with pytest.raises(TypeError, match="int16 or float"):
        lse.lse_scores(net, frames, audio.astype(np.int32))
    with pytest.raises(ValueError, match="channel_order"):
        lse.lse_scores(net, frames, audio, channel_order="rgba")
    assert lse.audio_int16(np.array([1.0, -1.0, 0.5, 2e-5], np.float32)).tolist() == [32767, -32768, 16384, 1]


def test_model_rejects_wrong_window_shapes():
    model = nnx.eval_shape(lambda: SyncNetV2(rngs=nnx.Rngs(0)))  # the checks come before any compute
    with pytest.raises(ValueError, match=r"\[B,5,224,224,3\]"):
        model.embed_lip(np.zeros((1, 4, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B,13,20,1\]"):
        model.embed_audio(np.zeros((1, 13, 16, 1), np.float32))
