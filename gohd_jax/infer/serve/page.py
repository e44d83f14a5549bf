"""The Gradio page and API of ``gohd serve`` (one event, ``api_name="animate"``).

``build_page(service, examples)`` returns the ``gr.Blocks``: a portrait (upload, or one of the
example portraits), speech (upload or record), every control of ``gohd animate`` and a button;
the result is the mp4 (with its audio) playing in the page, with a download button. The same
event is the HTTP API ``/animate``: its inputs in ``INPUTS`` order (portrait and audio files
first, every control after them with its default), its output the mp4.

Bad input shows its cause in the page (``gr.Error``: no face, unreadable file, too long, busy),
never a stack trace; a silent audio renders an idle clip and shows a warning.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from gohd_jax.infer.serve.batcher import Busy  # noqa: E402
from gohd_jax.infer.serve.service import DDPM_STEPS, AnimateService, Progress, Request, RequestError  # noqa: E402

log = logging.getLogger("gohd.serve")

__all__ = ["build_page", "INPUTS", "request_from"]

POSES = ("generated", "still", "from a video")
GAZES = ("generated", "forward", "left", "right", "angles", "from a video")
# The API's inputs, in order, with their defaults (gohd animate's).
INPUTS = ("portrait", "audio", "pose", "pose_reference", "gaze", "gaze_pitch", "gaze_yaw", "gaze_reference",
          "blink", "pose_scale", "exp_scale", "sampler", "steps", "seed", "precision")


def request_from(portrait, audio, pose="generated", pose_reference=None, gaze="generated", gaze_pitch=0.0,
                 gaze_yaw=0.0, gaze_reference=None, blink="on", pose_scale=1.0, exp_scale=1.0, sampler="ddpm",
                 steps=DDPM_STEPS, seed=0, precision="auto") -> Request:
    """The page's values -> a ``Request`` (``gohd animate``'s control strings); raises RequestError."""
    if pose not in POSES:
        raise RequestError(f"pose {pose!r}: use one of {', '.join(POSES)}")
    if gaze not in GAZES:
        raise RequestError(f"gaze {gaze!r}: use one of {', '.join(GAZES)}")
    if pose == "from a video":
        if not pose_reference:
            raise RequestError("pose from a video: upload the pose reference (a video or a gohd describe .npz)")
        pose = str(pose_reference)
    if gaze == "from a video":
        if not gaze_reference:
            raise RequestError("gaze from a video: upload the gaze reference (a video or a gohd describe .npz)")
        gaze = str(gaze_reference)
    elif gaze == "angles":
        gaze = f"{float(gaze_pitch or 0.0)!r},{float(gaze_yaw or 0.0)!r}"
    if blink not in ("on", "off"):
        raise RequestError(f"blink {blink!r}: use on or off")
    try:
        return Request(image=portrait, audio=audio, pose=pose, gaze=gaze, blink=blink,
                       pose_scale=float(pose_scale), exp_scale=float(exp_scale), sampler=str(sampler),
                       steps=int(steps if steps is not None else DDPM_STEPS), seed=int(seed or 0),
                       precision=str(precision))
    except (TypeError, ValueError) as e:
        raise RequestError(f"a number control: {e}") from None


def build_page(service: AnimateService, examples: list[str] | None = None) -> gr.Blocks:
    """The page over ``service`` (see the module docstring); ``examples``: portrait paths offered
    under the upload."""

    # the reference files default to None in the signature: Gradio then makes them optional in the API
    def animate(portrait, audio, pose, pose_reference=None, gaze="generated", gaze_pitch=0.0, gaze_yaw=0.0,
                gaze_reference=None, blink="on", pose_scale=1.0, exp_scale=1.0, sampler="ddpm", steps=DDPM_STEPS,
                seed=0, precision="auto", progress=gr.Progress()):
        state = Progress()
        shown: list[str] = []

        def on_wait(p: Progress, position: int) -> None:
            for w in p.warnings[len(shown):]:
                gr.Warning(w)
                shown.append(w)
            if p.stage == "queued":
                progress(0.0, desc=f"queued ({position} ahead)" if position > 0 else "queued: waiting for a batch")
            elif p.total and p.frames:
                progress((p.frames, p.total), desc=f"{p.stage}: frames", unit="frames")
            else:
                progress(0.0, desc=p.stage)

        progress(0.0, desc="preparing: face crop, descriptors, audio features")
        try:
            request = request_from(portrait, audio, pose, pose_reference, gaze, gaze_pitch, gaze_yaw,
                                   gaze_reference, blink, pose_scale, exp_scale, sampler, steps, seed, precision)
            path, frames = service.animate(request, state, on_wait=on_wait)
        except RequestError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Busy as e:
            raise gr.Error(f"the server is busy ({e}): try again in a minute", print_exception=False) from None
        except Exception as e:  # never a stack trace in the page; the log has it
            log.exception("request failed")
            raise gr.Error(f"rendering failed: {type(e).__name__}: {e}", print_exception=False) from None
        for w in state.warnings[len(shown):]:
            gr.Warning(w)
        log.info("served %s: %d frames", path.name, frames)
        return str(path)

    with gr.Blocks(title="GoHD-JAX", analytics_enabled=False,
                   delete_cache=(600, int(service.options.keep_outputs_s))) as page:
        gr.Markdown("## GoHD-JAX: a portrait and speech in, a talking-head video out\n"
                    "Upload a portrait and speech (or record it), set the controls, press **Animate**. "
                    "Requests from everyone using this server are rendered together in batches.")
        with gr.Row():
            with gr.Column():  # what to animate, and the button
                portrait = gr.Image(type="filepath", label="Portrait", sources=["upload"], elem_id="portrait",
                                    height=256)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[portrait], label="Example portraits")
                audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="Speech", format=None,
                                 elem_id="speech")
                button = gr.Button("Animate", variant="primary", elem_id="animate")
            with gr.Column():  # the result, and how it moves
                video = gr.Video(label="Result", elem_id="result", buttons=["download"], autoplay=False, height=320)
                with gr.Accordion("Controls", open=True):
                    with gr.Row():
                        pose = gr.Radio(list(POSES), value="generated", label="Head pose", elem_id="pose")
                        blink = gr.Radio(["on", "off"], value="on", label="Blinks", elem_id="blink")
                    gaze = gr.Radio(list(GAZES), value="generated", label="Gaze", elem_id="gaze")
                    with gr.Row():
                        gaze_pitch = gr.Number(0.0, label="Gaze pitch (rad, for angles)", elem_id="gaze_pitch")
                        gaze_yaw = gr.Number(0.0, label="Gaze yaw (rad, for angles)", elem_id="gaze_yaw")
                    with gr.Accordion("Reference videos (for pose or gaze from a video)", open=False):
                        with gr.Row():
                            pose_reference = gr.File(label="Pose reference (video or gohd describe .npz)",
                                                     type="filepath", elem_id="pose_reference", height=120)
                            gaze_reference = gr.File(label="Gaze reference (video or gohd describe .npz)",
                                                     type="filepath", elem_id="gaze_reference", height=120)
                    with gr.Row():
                        pose_scale = gr.Slider(0.0, 3.0, value=1.0, step=0.05, label="Pose scale",
                                               elem_id="pose_scale")
                        exp_scale = gr.Slider(0.0, 3.0, value=1.0, step=0.05, label="Expression scale",
                                              elem_id="exp_scale")
                    with gr.Row():
                        sampler = gr.Radio(["ddpm", "ddim"], value="ddpm", label="Pose/gaze sampler",
                                           elem_id="sampler")
                        steps = gr.Slider(1, DDPM_STEPS, value=DDPM_STEPS, step=1, label="DDIM steps",
                                          elem_id="steps")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                        precision = gr.Radio(["auto", "float32", "bfloat16"], value="auto", label="Precision",
                                             elem_id="precision")
        inputs = [portrait, audio, pose, pose_reference, gaze, gaze_pitch, gaze_yaw, gaze_reference, blink,
                  pose_scale, exp_scale, sampler, steps, seed, precision]
        button.click(animate, inputs=inputs, outputs=video, api_name="animate",
                     concurrency_limit=service.options.max_queue + service.options.max_batch_clips)
    return page
