"""``gohd-eval``'s outputs: ``report.json`` (everything), ``report.md`` (the table a paper shows, the
per-clip table and the skipped clips), ``report.csv`` (one row per clip).

``report.json``: ``summary`` {fid, lse_c, lse_d, csim, psnr, ssim} (null where not computable),
``counts`` (clips, scored, skipped, frames read, FID sample counts), ``settings``, ``networks``
(the weight files), ``seconds`` and ``clips``: one object per clip with its name, paths, frames,
seconds, ``face_detected`` (the share of the detector's tries that found the face), ``lse_c``, ``lse_d``,
``lse_offset``, ``csim``, ``psnr``, ``ssim``, ``l1``, ``drift`` (clips over a minute) and
``error`` / ``*_error`` where something could not be computed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["write_reports", "CSV_COLUMNS", "format_summary"]

CSV_COLUMNS = ("name", "frames", "seconds", "face_detected", "lse_c", "lse_d", "lse_offset", "csim", "psnr",
               "ssim", "l1", "pose_diversity", "bas", "blink_rate", "gaze_std", "real_pose_diversity",
               "real_blink_rate", "real_gaze_std", "error", "lse_error", "csim_error", "real_error", "generated",
               "real", "source")
_MOTION = (("e_fid", "E-FID", 3), ("p_fid", "P-FID", 4), ("pose_fd", "pose FD", 4), ("bas", "BAS", 3),
           ("pose_diversity", "pose diversity", 4), ("blink_rate", "blinks/min", 1), ("gaze_std", "gaze std", 4))
_SUMMARY = (("fid", "FID", 3), ("lse_c", "LSE-C", 3), ("lse_d", "LSE-D", 3), ("csim", "CSIM", 4),
            ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_summary(report: dict) -> str:
    """The summary as a one-row Markdown table; when the clips were described, a second table of
    the descriptor metrics: the generated clips, then the real videos' own values."""
    s = report["summary"]
    lines = ["| " + " | ".join(label for _, label, _ in _SUMMARY) + " |",
             "|" + "|".join("---:" for _ in _SUMMARY) + "|",
             "| " + " | ".join(_fmt(s.get(k), d) for k, _, d in _SUMMARY) + " |"]
    if "e_fid" in s:
        lines += ["", "| | " + " | ".join(label for _, label, _ in _MOTION) + " |",
                  "|---|" + "|".join("---:" for _ in _MOTION) + "|",
                  "| generated | " + " | ".join(_fmt(s.get(k), d) for k, _, d in _MOTION) + " |",
                  "| real | " + " | ".join(_fmt(s.get("real_" + k), d) for k, _, d in _MOTION) + " |"]
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    c = report["counts"]
    lines = ["# gohd-eval report", "", format_summary(report), "",
             f"{c['clips_scored']} of {c['clips']} clips scored, {c['frames_read']} frames read in "
             f"{report['seconds']:.1f} s."]
    if "fid_generated_frames" in c:
        lines.append(f"FID over {c['fid_generated_frames']} generated and {c['fid_real_frames']} real frames "
                     f"({report['settings']['fid_on']}"
                     + (f", every {report['settings']['fid_every']}th frame)." if report['settings']['fid_every'] > 1
                        else ").") )
    lines += ["", "## Clips", "", "| clip | frames | LSE-C | LSE-D | offset | CSIM | PSNR | SSIM | L1 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["clips"]:
        if "error" in r:
            continue
        lines.append(f"| {r['name']} | {r.get('frames', '')} | {_fmt(r.get('lse_c'))} | {_fmt(r.get('lse_d'))} | "
                     f"{_fmt(r.get('lse_offset'))} | {_fmt(r.get('csim'), 4)} | {_fmt(r.get('psnr'), 2)} | "
                     f"{_fmt(r.get('ssim'), 4)} | {_fmt(r.get('l1'), 2)} |")
    skipped = [r for r in report["clips"] if "error" in r]
    if skipped:
        lines += ["", "## Skipped clips", ""] + [f"- {r['name']}: {r['error']}" for r in skipped]
    notes = [(r["name"], k, r[k]) for r in report["clips"] for k in ("lse_error", "csim_error", "real_error")
             if r.get(k)]
    if notes:
        lines += ["", "## Metrics not computed", ""] + [f"- {n}: {k[:-6]}: {v}" for n, k, v in notes]
    drift = [r for r in report["clips"] if r.get("drift")]
    if drift:
        lines += ["", "## Drift (clips over a minute, per 30 s)", "",
                  "| clip | from (s) | to (s) | CSIM | brightness |", "|---|---:|---:|---:|---:|"]
        for r in drift:
            for seg in r["drift"]:
                lines.append(f"| {r['name']} | {seg['from_s']:.0f} | {seg['to_s']:.0f} | {_fmt(seg['csim'], 4)} | "
                             f"{seg['brightness']:.1f} |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Writes the three files (each via a temporary name, then renamed) -> their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "csv": out / "report.csv"}

    def write(path: Path, fill) -> None:
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "w", newline="") as f:
            fill(f)
        tmp.replace(path)

    write(paths["json"], lambda f: json.dump(report, f, indent=1))
    write(paths["md"], lambda f: f.write(_markdown(report)))

    def fill_csv(f):
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in report["clips"]:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})

    write(paths["csv"], fill_csv)
    return paths
