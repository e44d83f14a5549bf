"""``gohd-preprocess --runner NAME``: the same per-video work as the local driver, as an Apache Beam
pipeline (DirectRunner here; Dataflow, Flink or Spark on a cluster).

The pipeline::

    videos (listed at launch) -> Reshuffle (fan-out) -> ProcessVideos (a DoFn: per worker, the face
    models and estimators load once in ``setup``; per video, ``preprocess.process_video`` writes
    the records to a worker-local temporary file, ``BeamOutput`` copies them to the output and
    writes the marker last) -> ToList -> FinishRun (manifest.json from every finished video's
    marker, and report-beam.json, merged from all workers)

Same records and manifest as the local driver for the same videos and settings (one function does
the work). A video that raises is a counted skip (reason ``error``, not committed, so a rerun
tries it again), never a failed pipeline; a worker killed mid-video leaves a file without a
marker, which no manifest lists, and the runner's retry (or a rerun) redoes the video; a rerun
over the same output skips finished videos. Progress across machines: Beam counters
(``gohd-preprocess`` namespace: videos, frames, clips, skipped) in the runner's UI.

Outputs, videos and weights may be any path Beam's ``FileSystems`` reads (local, ``gs://``...):
workers copy remote videos and weights to local temporary files first (PyAV, dlib and the
estimators read local files).
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines.video import preprocess as pp
from data_pipelines.video.decode import VIDEO_EXTENSIONS
from data_pipelines.video.output import MARKER_SUFFIX, VIDEOS, Output

log = logging.getLogger(__name__)

REPORT = "report-beam.json"
NAMESPACE = "gohd-preprocess"
_CHUNK = 16 << 20


def _is_remote(path: str) -> bool:
    return "://" in str(path)


class BeamOutput(Output):
    """The output root through ``FileSystems``: local paths and ``gs://`` alike. Writes go to a
    unique temporary name and are renamed into place."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        if not _is_remote(self.root):  # object stores have no folders to make
            Path(self.root, VIDEOS).mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> str:
        return FileSystems.join(self.root, name)

    def read(self, name):
        path = self._path(name)
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return f.read()

    def _write_stream(self, name: str, fill) -> None:
        tmp = self._path(f"{name}.{uuid.uuid4().hex[:12]}.tmp")
        with FileSystems.create(tmp, compression_type="uncompressed") as f:
            fill(f)
        final = self._path(name)
        try:
            FileSystems.rename([tmp], [final])  # replaces the old file on local disks and GCS
        except Exception:  # a filesystem whose rename refuses an existing destination
            FileSystems.delete([final])
            FileSystems.rename([tmp], [final])

    def write(self, name, data):
        self._write_stream(name, lambda f: f.write(data))

    def size(self, name):
        result = FileSystems.match([self._path(name)])[0].metadata_list
        return result[0].size_in_bytes if result else None

    def put(self, local, name):
        with open(local, "rb") as src:
            self._write_stream(name, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def markers(self):
        found = FileSystems.match([self._path(f"{VIDEOS}/*{MARKER_SUFFIX}")])[0].metadata_list
        return [m.path.rsplit("/", 1)[-1] for m in found]


def list_videos(sources: list[str]) -> list[str]:
    """``preprocess.list_videos`` for local sources; remote folders (``gs://bucket/raw/``) are listed
    through ``FileSystems`` (recursively, by extension) and remote list files read through it."""
    local = [s for s in sources if not _is_remote(s)]
    out = pp.list_videos(local) if local else []
    for src in sources:
        if not _is_remote(src):
            continue
        if src.endswith((".txt", ".lst")):
            with FileSystems.open(src, compression_type="uncompressed") as f:
                base = src.rsplit("/", 1)[0]
                for line in f.read().decode().splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        out.append(line if _is_remote(line) or line.startswith("/") else f"{base}/{line}")
        elif src.lower().endswith(tuple(VIDEO_EXTENSIONS)):
            out.append(src)
        else:
            found = FileSystems.match([src.rstrip("/") + "/**"])[0].metadata_list
            out += [m.path for m in found if Path(m.path).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(dict.fromkeys(out))


def localize(path: str | None, work: Path) -> str | None:
    """A local copy of a remote file (in ``work``), or the path itself when it is local."""
    if path is None or not _is_remote(path):
        return path
    dest = Path(work) / f"{uuid.uuid4().hex[:8]}-{path.rsplit('/', 1)[-1]}"
    with FileSystems.open(path, compression_type="uncompressed") as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f, _CHUNK)
    return str(dest)


def load_models_from_files(landmarks: str | None, deep3d: str, l2cs: str, lm3d: str | None, batch_size: int,
                           work: Path):
    """(FaceModels, Estimators) from weight files (local or remote); what the CLI's workers load."""
    from data_pipelines.video.estimate import Estimators, find_lm3d
    from data_pipelines.video.faces import FaceModels

    if deep3d and not lm3d and not _is_remote(deep3d):
        lm3d = find_lm3d(deep3d)
    faces = FaceModels(localize(landmarks, work))
    est = Estimators.from_files(localize(deep3d, work), localize(l2cs, work), localize(lm3d, work), batch_size)
    return faces, est


class ProcessVideos(beam.DoFn):
    """path -> the video's marker (``process_video``'s return, plus ``already_done``)."""

    def __init__(self, out: str, cfg: pp.PreprocessConfig, load_models):
        self.out, self.cfg, self.load_models = out, cfg, load_models
        self.videos = beam.metrics.Metrics.counter(NAMESPACE, "videos")
        self.frames = beam.metrics.Metrics.counter(NAMESPACE, "frames")
        self.clips = beam.metrics.Metrics.counter(NAMESPACE, "clips")
        self.skipped = beam.metrics.Metrics.counter(NAMESPACE, "skipped")

    def setup(self):
        self.work = Path(tempfile.mkdtemp(prefix="gohd-preprocess-"))
        self.output = BeamOutput(self.out)
        self.faces, self.estimators = self.load_models(work=self.work)

    def process(self, path: str):
        key = pp.video_key(path)
        m = self.output.done(key)
        if m is not None:
            yield {**m, "already_done": True, "key": key}
            return
        try:
            local = localize(path, self.work)
        except Exception as e:  # an unreadable remote video: a counted skip, as inside process_video
            log.exception("skipping %s: cannot copy it to the worker", path)
            local, m = None, pp.error_marker(path, e)
        if local is not None:
            try:
                m = pp.process_video(local, self.output, self.faces, self.estimators, self.cfg, work=self.work,
                                     source=path)
            finally:
                if local != path:
                    Path(local).unlink(missing_ok=True)
        self.videos.inc()
        self.frames.inc(m["num_video_frames"])
        self.clips.inc(m["num_records"])
        self.skipped.inc(len(m["skipped"]))
        log.info("%s: %d clips, %d frames in %.1f s%s", pp._name(path), m["num_records"], m["num_video_frames"],
                 m["wall_seconds"], f" (skipped: {m['skipped'][0]['reason']})" if m["skipped"] else "")
        yield {**m, "already_done": False, "key": key}

    def teardown(self):
        shutil.rmtree(getattr(self, "work", ""), ignore_errors=True)


class FinishRun(beam.DoFn):
    """Every video's marker (one list) -> manifest.json and report-beam.json; yields the report."""

    def __init__(self, out: str, plan: dict, head: dict, launched_at: float):
        self.out, self.plan, self.head, self.launched_at = out, plan, head, launched_at

    def process(self, markers: list[dict]):
        output = BeamOutput(self.out)
        known = {m["key"]: _strip(m) for m in markers if m.get("committed", True)}
        new = [m for m in markers if not m["already_done"]]
        errors = [s for m in new if not m["committed"] for s in m["skipped"]]
        manifest = output.write_manifest(self.plan, known=known, errors=errors)
        report = pp.run_report(new, time.time() - self.launched_at, manifest, **self.head,
                               videos_already_done=len(markers) - len(new))
        output.write_json(REPORT, report)
        yield report


class VideoRecords(beam.DoFn):
    """path -> (record bytes, offset, the clip's index entry) for each record of the video's
    clips, in order: ``process_video`` into a worker-local folder, read back, deleted. What the TFDS
    builder ``gohd_video`` writes as its examples (TFDS does the output side). Skipped videos give
    nothing and count in the ``skipped`` counter."""

    def __init__(self, cfg: pp.PreprocessConfig, load_models):
        self.cfg, self.load_models = cfg, load_models
        self.videos = beam.metrics.Metrics.counter(NAMESPACE, "videos")
        self.skipped = beam.metrics.Metrics.counter(NAMESPACE, "skipped")

    def setup(self):
        self.work = Path(tempfile.mkdtemp(prefix="gohd-tfds-"))
        self.faces, self.estimators = self.load_models(work=self.work)

    def process(self, path: str):
        from array_record.python.array_record_module import ArrayRecordReader

        from data_pipelines.video.output import LocalOutput

        folder = Path(tempfile.mkdtemp(dir=self.work))
        local = localize(path, self.work)
        try:
            m = pp.process_video(local, LocalOutput(folder), self.faces, self.estimators, self.cfg, source=path)
            self.videos.inc()
            if not m["num_records"]:
                self.skipped.inc()
                log.warning("skipping %s: %s", path, m["skipped"])
                return
            reader = ArrayRecordReader(str(folder / m["file"]))
            try:
                for entry in m["records"]:
                    first, n = entry["first_record"], entry["record_count"]
                    for offset, rec in enumerate(reader.read(list(range(first, first + n)))):
                        yield rec, offset, entry
            finally:
                reader.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if local != path:
                Path(local).unlink(missing_ok=True)

    def teardown(self):
        shutil.rmtree(getattr(self, "work", ""), ignore_errors=True)


def _strip(marker: dict) -> dict:
    return {k: v for k, v in marker.items() if k not in ("already_done", "key", "committed")}


def build(pipeline: beam.Pipeline, videos: list[str], out: str, cfg: pp.PreprocessConfig, load_models,
          launched_at: float | None = None):
    """Adds the preprocessing to ``pipeline``; returns the PCollection of the one report."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = pipeline.options.view_as(StandardOptions).runner or "DirectRunner"
    head = {"driver": f"beam ({runner})", "shard_index": 0, "num_shards": 1,
            "videos_in_list": len(videos), "videos_this_shard": len(videos)}
    return (pipeline
            | "ListVideos" >> beam.Create(videos)
            | "FanOut" >> beam.Reshuffle()
            | "ProcessVideos" >> beam.ParDo(ProcessVideos(out, cfg, load_models))
            | "Gather" >> beam.combiners.ToList()
            | "FinishRun" >> beam.ParDo(FinishRun(out, pp.plan_of(cfg), head, launched_at or time.time())))


def run(videos: list[str], out: str, cfg: pp.PreprocessConfig, load_models, runner: str,
        pipeline_args: list[str] = ()) -> dict:
    """Runs the pipeline with ``runner`` (``direct`` = DirectRunner) and Beam's ``pipeline_args``
    (``--direct_num_workers=2``, ``--project=... --region=...``); returns the report."""
    output = BeamOutput(out)
    output.check_plan(pp.plan_of(cfg))  # a rerun with other settings is refused before any work
    name = {"direct": "DirectRunner", "dataflow": "DataflowRunner", "flink": "FlinkRunner",
            "spark": "SparkRunner", "prism": "PrismRunner"}.get(runner.lower(), runner)
    options = PipelineOptions([f"--runner={name}", *pipeline_args])
    launched = time.time()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, videos, out, cfg, load_models, launched)
    result = pipeline.run()
    result.wait_until_finish()
    report = output.read_json(REPORT)
    if report is None:
        raise RuntimeError(f"the pipeline finished but wrote no {REPORT} in {out}")
    try:  # the workers' counters, as the runner summed them
        counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))["counters"]
        report["counters"] = {c.key.metric.name: c.committed for c in counters}
    except (NotImplementedError, AttributeError, KeyError):
        pass  # a runner without metrics
    return report


def cli_load_models(args) -> functools.partial:
    return functools.partial(load_models_from_files, args.landmarks, args.deep3d, args.l2cs, args.lm3d,
                             args.batch_size)


__all__ = ["BeamOutput", "ProcessVideos", "FinishRun", "VideoRecords", "build", "run", "list_videos", "localize",
           "load_models_from_files", "cli_load_models", "REPORT"]
