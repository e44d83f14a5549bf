"""The data command-line tools, as a user runs them."""

from __future__ import annotations

import json

from data_pipelines import cli as data_cli
from data_pipelines.synthetic import cli as synth_cli


def test_gohd_synth_then_gohd_data(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["--out", str(out), "--clips", "3", "--seconds", "1", "--size", "32", "--seed", "5",
            "--clips-per-shard", "2", "--workers", "0"]
    assert synth_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "clips       3 in 2 shards" in printed and "identities  2" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["seed"] == 5 and manifest["num_frames"] == 3 * 25
    first = (out / "clips-00000-of-00002.array_record").stat().st_mtime_ns
    assert synth_cli.main(args) == 0  # rerun: resumes, nothing rewritten
    assert (out / "clips-00000-of-00002.array_record").stat().st_mtime_ns == first

    assert data_cli.main(["info", str(out)]) == 0
    assert "frames      75" in capsys.readouterr().out
    assert data_cli.main(["verify", str(out)]) == 0
    assert "3 clips checked, 0 bad records, 0 bad shards" in capsys.readouterr().out
    assert data_cli.main(["sample", str(out), "--stage", "expression", "--window", "10", "--split", "all",
                          "--batch-size", "2"]) == 0
    assert "mel_windows" in capsys.readouterr().out


def test_clear_errors_for_bad_arguments(tmp_path, capsys):
    assert synth_cli.main(["--out", str(tmp_path), "--size", "8"]) == 2
    assert "--size must be in [32, 256]" in capsys.readouterr().err
    assert data_cli.main(["info", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    out = tmp_path / "s"
    assert synth_cli.main(["--out", str(out), "--clips", "1", "--seconds", "1", "--size", "32",
                           "--workers", "0"]) == 0
    assert synth_cli.main(["--out", str(out), "--clips", "1", "--seconds", "1", "--size", "48",
                           "--workers", "0"]) == 1
    assert "other settings" in capsys.readouterr().err
