"""Oracle weight rebuilding (interop/oracle_weights.py) and the gohd-parity checker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from tests.conftest import require_shared

DEMO = {"tensors": [
    {"name": "w", "shape": [2, 3], "dtype": "float32", "mean": 0.0, "std": 1.0},
    {"name": "b", "shape": [3], "dtype": "float32", "mean": 1.0, "std": 0.02},
    {"name": "n", "shape": [], "dtype": "int64", "mean": 0, "std": 0.0},
]}
DEMO_SHA = "dee3fef34c83b361d835c8a6471ba8e6985c0ad52a7966c5f6d507a73cda083b"
AUDIO2EXP_SHA = "70706cf84c75a2128bab02e32653524e4e6cdb5c66d426e9bf878d73e4408995"


# ----------------------------------------------------------------------------- weights

def test_splitmix64():
    assert ow.splitmix64(0) == 0xE220A8397B1DCDAF
    xs = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert ow.splitmix64(xs).tolist() == [ow.splitmix64(int(x)) for x in xs]


def test_demo_manifest_checksum_and_values():
    sd = ow.make_state_dict(DEMO)  # no seed field: seed 1
    assert list(sd) == ["w", "b", "n"]
    assert sd["w"].dtype == np.float32 and sd["n"].dtype == np.int64 and sd["n"].shape == ()
    assert sd["w"][0].tolist() == [0.9224963188171387, -1.2954665422439575, 0.6960462331771851]
    assert ow.checksum(sd) == DEMO_SHA
    assert ow.checksum(ow.make_state_dict(DEMO, seed=1)) == DEMO_SHA


def test_seed_is_honoured():
    sd1, sd2 = ow.make_state_dict(DEMO, seed=1), ow.make_state_dict(DEMO, seed=2)
    assert not np.array_equal(sd1["w"], sd2["w"])
    assert ow.checksum(sd2) != DEMO_SHA
    with_field = ow.make_state_dict({**DEMO, "seed": 2})  # the manifest's own seed
    assert ow.checksum(with_field) == ow.checksum(sd2)


def test_values_constants_and_statistics():
    manifest = {"seed": 5, "tensors": [
        {"name": "k", "shape": [2, 2], "dtype": "float32", "mean": 0.0, "std": 0.0,
         "values": [0.25, 0.5, 0.75, 1.0], "rule": "architecture constant copied verbatim"},
        {"name": "big", "shape": [400, 500], "dtype": "float32", "mean": -0.3, "std": 0.05},
        {"name": "t", "shape": [1], "dtype": "int64", "mean": 7, "std": 0.0},
    ]}
    sd = ow.make_state_dict(manifest)
    np.testing.assert_array_equal(sd["k"], [[0.25, 0.5], [0.75, 1.0]])
    assert sd["t"].tolist() == [7]
    big = sd["big"].astype(np.float64)
    assert abs(big.mean() + 0.3) < 1e-3 and abs(big.std() - 0.05) < 1e-3
    half = 0.05 * np.sqrt(3)  # uniform on mean +- std*sqrt(3)
    assert big.min() >= -0.3 - half - 1e-6 and big.max() <= -0.3 + half + 1e-6


def test_audio2exp_manifest_checksum():
    manifest = ow.load_manifest(require_shared("reference", "audio2exp", "manifest.json"))
    assert len(manifest["tensors"]) == 100
    assert ow.checksum(ow.make_state_dict(manifest)) == AUDIO2EXP_SHA


def test_bad_manifests(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"tensors": [{"name": "x", "shape": [2]}]}))
    for name, match in [("a.json", "not valid JSON"), ("b.json", "lacks 'dtype'"),
                        ("none.json", "no such manifest")]:
        with pytest.raises(ow.ManifestError, match=match):
            ow.load_manifest(tmp_path / name)


# ----------------------------------------------------------------------------- gohd-parity

def _run(capsys, *argv):
    code = parity.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [json.loads(s) for s in out.splitlines() if s.strip()]
    return code, lines, err


AUDIO_OUTPUTS = {"wav_cropped", "wav_preemphasized", "mel_wav2lip", "mel_basis_wav2lip",
                 "indiv_mels", "diffusion_cond", "wav_rms_normalized", "mel_audioconfig",
                 "mel_basis_audioconfig", "diffusion_cond_audioconfig_100hz"}


def test_parity_audio_features_passes(capsys):
    ref = require_shared("reference", "audio_features")
    code, lines, err = _run(capsys, ref)
    assert code == 0, err
    assert {ln["array"] for ln in lines} == AUDIO_OUTPUTS and len(lines) == len(AUDIO_OUTPUTS)
    for ln in lines:
        assert set(ln) >= {"oracle", "array", "shape", "max_rel", "mean_rel", "tol", "pass"}
        assert ln["oracle"] == "audio_features" and ln["pass"] is True
        assert ln["max_rel"] <= ln["tol"] == 1e-4
    assert "pass" in err


def _copy_io(src, dst, **changes):
    dst.mkdir()
    with np.load(src / "io.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(dst / "io.npz", **arrays)
    return dst


def test_parity_tampered_output_fails(tmp_path, capsys):
    ref = require_shared("reference", "audio_features")
    with np.load(ref / "io.npz") as z:
        mel = z["mel_wav2lip"].copy()
    mel[100, 7] += 1e-3 * np.abs(mel).max()  # 1e-3 relative: ten times the tolerance
    bad = _copy_io(ref, tmp_path / "renamed_folder", mel_wav2lip=mel)
    code, lines, err = _run(capsys, bad)
    assert code == 1
    by_name = {ln["array"]: ln for ln in lines}
    assert by_name["mel_wav2lip"]["pass"] is False
    assert by_name["mel_wav2lip"]["max_rel"] == pytest.approx(1e-3, rel=1e-2)
    assert all(ln["pass"] for n, ln in by_name.items() if n != "mel_wav2lip")
    assert "mel_wav2lip" in err and "FAIL" in err


def test_parity_reads_its_input_from_io_npz(tmp_path, capsys):
    """A folder with another (3 s) input: the arrays that are exact oracle slices pass."""
    ref = require_shared("reference", "audio_features")
    with np.load(ref / "io.npz") as z:
        full = {k: z[k] for k in z.files}
    n = 75 * 640  # 3 s = 75 frames, a whole number of frames
    short = {"wav_16k": full["wav_16k"][:n],
             "wav_cropped": full["wav_cropped"][:n],
             "wav_preemphasized": full["wav_preemphasized"][:n],  # causal filter: exact prefix
             "mel_basis_wav2lip": full["mel_basis_wav2lip"],
             "mel_basis_audioconfig": full["mel_basis_audioconfig"]}
    folder = tmp_path / "short"
    folder.mkdir()
    np.savez(folder / "io.npz", **short)
    code, lines, err = _run(capsys, folder)
    assert code == 0, err
    assert {ln["array"] for ln in lines} == set(short) - {"wav_16k"}

    # The mel rows whose STFT window lies inside the 3 s are the oracle's rows, bit for bit.
    port = parity.REGISTRY["audio_features"].checker({"wav_16k": short["wav_16k"]}, None, None)
    assert port["mel_wav2lip"].shape == (1 + n // 200, 80)
    inner = (n - 400) // 200 + 1  # rows r with 200 r + 400 <= n
    np.testing.assert_array_equal(port["mel_wav2lip"][:inner], full["mel_wav2lip"][:inner])
    assert port["indiv_mels"].shape == (75, 80, 16)
    np.testing.assert_array_equal(port["indiv_mels"][:60], full["indiv_mels"][:60])

    # The same short input against the full-length expected array: a shape failure, exit 1.
    _copy_io(ref, tmp_path / "mixed", wav_16k=short["wav_16k"])
    code, lines, err = _run(capsys, tmp_path / "mixed")
    assert code == 1
    cropped = next(ln for ln in lines if ln["array"] == "wav_cropped")
    assert cropped["pass"] is False and "shape" in cropped["error"]


def test_parity_bad_folders(tmp_path, capsys):
    code, lines, err = _run(capsys, tmp_path / "does_not_exist")
    assert code == 2 and not lines and "does_not_exist" in err and "no such folder" in err
    assert len(err.strip().splitlines()) == 1

    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, tmp_path / "empty")
    assert code == 2 and "io.npz" in err

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "io.npz").write_bytes(b"not a zip")
    code, _, err = _run(capsys, tmp_path / "junk")
    assert code == 2 and "not a readable .npz" in err

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    np.savez(unknown / "io.npz", foo=np.zeros(3, np.float32))
    code, _, err = _run(capsys, unknown)
    assert code == 2 and "matches no" in err

    badman = tmp_path / "badman"
    badman.mkdir()
    np.savez(badman / "io.npz", foo=np.zeros(3, np.float32))
    (badman / "manifest.json").write_text("{\"tensors\": 3}")
    code, _, err = _run(capsys, badman)
    assert code == 2 and "malformed manifest" in err
    assert "Traceback" not in err


def test_every_shared_oracle_is_ported():
    assert [k for k, s in parity.REGISTRY.items() if s.checker is None] == []


def test_parity_recognised_but_not_ported(tmp_path, capsys, monkeypatch):
    """A declared kind without a port says so (exit 2) and checks nothing."""
    monkeypatch.setitem(parity._MODULES, "toy.Pending", "toy_pending")
    parity.declare("toy_pending", "test-only kind without a port", ("x",))
    try:
        folder = tmp_path / "pending"
        folder.mkdir()
        np.savez(folder / "io.npz", x=np.zeros(2, np.float32), y=np.zeros(2, np.float32))
        (folder / "manifest.json").write_text(json.dumps(
            {"format": "gohd-oracle-manifest-v1", "seed": 1, "module": "toy.Pending",
             "tensors": [{"name": "w", "shape": [2], "dtype": "float32", "mean": 0.0, "std": 1.0,
                          "rule": "measured torch init"}]}))
        code, lines, err = _run(capsys, folder)
    finally:
        parity.REGISTRY.pop("toy_pending")
    assert code == 2 and not lines
    assert "'toy_pending'" in err and "not implemented yet" in err


@pytest.fixture
def toy_kind(monkeypatch):
    """A throw-away weighted oracle kind: y = x @ W (W from the manifest), float32 and float64."""
    monkeypatch.setitem(parity._MODULES, "toy.Linear", "toy")
    parity.declare("toy", "test-only linear layer", ("x",))

    def checker(io, sd, fp64):
        w = sd["w"]
        return parity.PortOutputs(float32={"y": io["x"] @ w},
                                  float64={"y": io["x"].astype(np.float64) @ w.astype(np.float64)})

    parity.register("toy")(checker)
    yield
    parity.REGISTRY.pop("toy")


def test_parity_uses_the_manifest_seed(tmp_path, capsys, toy_kind):
    manifest = {"format": "gohd-oracle-manifest-v1", "seed": 7, "module": "toy.Linear",
                "tensors": [{"name": "w", "shape": [4, 3], "dtype": "float32", "mean": 0.0,
                             "std": 1.0, "rule": "measured torch init"}]}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    folder = tmp_path / "toy_seed7"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    w7 = ow.make_state_dict(manifest, seed=7)["w"]
    np.savez(folder / "io.npz", x=x, y=x @ w7)
    np.savez(folder / "io_fp64.npz", y=x.astype(np.float64) @ w7.astype(np.float64))
    code, lines, err = _run(capsys, folder)
    assert code == 0, err
    assert [(ln["array"], ln["ref"]) for ln in lines] == [("y", "io.npz"), ("y", "io_fp64.npz")]
    assert lines[1]["tol"] == 1e-8
    assert "seed 7" in err

    w1 = ow.make_state_dict(manifest, seed=1)["w"]  # what a checker ignoring the seed would use
    np.savez(folder / "io.npz", x=x, y=x @ w1)
    np.savez(folder / "io_fp64.npz", y=x.astype(np.float64) @ w1.astype(np.float64))
    code, lines, _ = _run(capsys, folder)
    assert code == 1 and lines[0]["pass"] is False and lines[1]["pass"] is False


def test_float64_decides_where_io_fp64_holds_the_array(tmp_path, capsys, toy_kind):
    """reference/README.md: where torch's own float32 result is off (here by 1e-3), the float64
    comparison decides; the float32 line is reported, marked as not deciding. A float64 miss fails."""
    manifest = {"format": "gohd-oracle-manifest-v1", "seed": 1, "module": "toy.Linear",
                "tensors": [{"name": "w", "shape": [4, 3], "dtype": "float32", "mean": 0.0,
                             "std": 1.0, "rule": "measured torch init"}]}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    folder = tmp_path / "toy_fp64"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    w = ow.make_state_dict(manifest, seed=1)["w"]
    exact = x.astype(np.float64) @ w.astype(np.float64)
    np.savez(folder / "io.npz", x=x, y=((x @ w) * (1 + 1e-3)).astype(np.float32))
    np.savez(folder / "io_fp64.npz", y=exact)
    code, lines, err = _run(capsys, folder)
    assert code == 0, err
    assert lines[0]["pass"] is False and lines[0]["decides"] is False and lines[1]["pass"] is True
    np.savez(folder / "io_fp64.npz", y=exact * (1 + 1e-6))
    code, lines, err = _run(capsys, folder)
    assert code == 1 and "y (float64)" in err


def test_compare_rules():
    ref = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100)
    assert parity.compare(ref + 5e-5, ref, parity.FLOAT32)["pass"] is True
    assert parity.compare(ref + 2e-4, ref, parity.FLOAT32)["pass"] is False
    nan = ref.copy()
    nan[0, 0] = np.nan
    res = parity.compare(nan, ref, parity.FLOAT32)
    assert res["pass"] is False and res["max_rel"] is None
    ints = np.arange(6, dtype=np.int64)
    assert parity.rule_for("x", "i", ints) is parity.EXACT
    assert parity.compare(ints, ints, parity.EXACT)["pass"] is True
    assert parity.compare(ints + (ints == 5), ints, parity.EXACT)["pass"] is False
    zeros = np.zeros(4, np.float32)
    assert parity.compare(zeros + 1e-5, zeros, parity.FLOAT32)["pass"] is True  # absolute

    # Warped-image rule: a few large pixel errors pass, a broad small error does not.
    img = np.random.default_rng(1).uniform(-1, 1, (2, 3, 128, 128)).astype(np.float32)
    assert parity.rule_for("animator", "rgb_256", img) is parity.WARPED_FLOAT32
    assert parity.rule_for("animator", "rgb_64", img) is parity.FLOAT32
    spikes = img.copy()
    spikes[0, 0, 5, 5] += 0.01
    assert parity.compare(spikes, img, parity.FLOAT32)["pass"] is False
    assert parity.compare(spikes, img, parity.WARPED_FLOAT32)["pass"] is True
    assert parity.compare(img + 1e-4, img, parity.WARPED_FLOAT32)["pass"] is False  # mean 1e-4


def test_console_script_help_and_usage():
    res = subprocess.run([sys.executable, "-m", "gohd_jax.interop.parity", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "exit status" in res.stdout and "REF_DIR" in res.stdout
    res = subprocess.run([sys.executable, "-m", "gohd_jax.interop.parity"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "at least one oracle folder" in res.stderr


def test_parity_does_not_trust_folder_names(tmp_path, capsys):
    """An audio_features oracle under another name is still recognised from its content."""
    ref = require_shared("reference", "audio_features")
    dst = tmp_path / "animator"  # misleading name
    shutil.copytree(ref, dst)
    code, lines, _ = _run(capsys, dst)
    assert code == 0 and {ln["oracle"] for ln in lines} == {"audio_features"}
