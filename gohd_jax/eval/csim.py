"""CSIM: identity similarity between a source face and generated frames, with ArcFace.

Protocol (as talking-head papers compute it with insightface; see
``research/eval_metrics.md`` §1.4 of the shared folder):

1. **Five points per face**, in insightface's order as seen in the image: left eye centre, right
   eye centre, nose tip, left mouth corner, right mouth corner (pixels, (x, y)). From a detector
   that gives them (RetinaFace/SCRFD ``kps``), or from 68-point landmarks with
   ``five_points_from_68`` (eye centres = mean of each eye's 6 points, nose tip = point 30,
   mouth corners = points 48 and 54; 0-based iBUG indices).
2. **Alignment** (``align_face``): the similarity transform (rotation, uniform scale,
   translation; least squares, Umeyama 1991, as skimage's ``SimilarityTransform.estimate``)
   taking the five points onto ``ARCFACE_TEMPLATE_112``, then an affine warp of the image to
   112 x 112 with bilinear sampling and black (0) outside the image, as insightface's
   ``face_align.norm_crop`` (``cv2.warpAffine(img, M, (112, 112), borderValue=0.0)``). The warp
   here samples at exact float64 positions and rounds to the nearest level; OpenCV quantises
   positions to 1/32 pixel and uses fixed-point weights, so a crop can differ from OpenCV's by
   about one level at some pixels (far below what moves an embedding).
3. **Embedding** (``embed``): RGB crops (insightface's ``swapRB=True`` turns cv2's BGR into RGB,
   so the network sees RGB; our images are RGB already), ``(pixel - 127.5) / 127.5``, the iresnet
   (``gohd_jax.models.arcface``; weights from ``w600k_r50.onnx``, ``glintr100.onnx`` or an
   arcface_torch ``backbone.pth`` via ``gohd_jax.interop.arcface_weights.load_arcface``) ->
   512-d embeddings (not normalised).
4. **CSIM** (``csim``): cosine similarity of the source face's embedding with each generated
   frame's, ``cos(a, b) = a.b / (|a| |b|)`` (insightface's ``compute_sim``), averaged over frames.
   Values in [-1, 1]; 1 for the same image. Numbers are comparable only across the same weights
   (r50 vs r100 differ) and the same alignment.

Shapes: images uint8 [H,W,3] RGB; points float [5,2] (x, y) pixels; faces uint8 [B,112,112,3];
embeddings float32 [B,512].
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["ARCFACE_TEMPLATE_112", "FACE_SIZE", "similarity_transform", "alignment_matrix",
           "align_face", "align_faces", "five_points_from_68", "network_input", "embed", "csim", "cosine_similarity"]

FACE_SIZE = 112
# insightface's ``arcface_dst``: where the five points land in the 112 x 112 crop, (x, y) pixels:
# left eye, right eye, nose tip, left mouth corner, right mouth corner (as seen in the image).
# The values are float32 there; kept as those float32 numbers here.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def similarity_transform(src5, dst5) -> np.ndarray:
    """The least-squares similarity (proper rotation, never a reflection; uniform scale;
    translation) taking ``src5`` [N,2] onto ``dst5`` [N,2] (N >= 2, pixels): a 3x3 float64
    homogeneous matrix ``T`` with ``dst ~ T @ [x, y, 1]``. Umeyama's closed form, the estimate of
    skimage's ``SimilarityTransform`` (which insightface uses), including its handling of
    collinear points. Raises ``ValueError`` when all points coincide."""
    src = np.asarray(src5, np.float64)
    dst = np.asarray(dst5, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"similarity_transform wants two [N,2] point sets (N >= 2), got "
                         f"{src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)  # [2,2] cross-covariance, dst x src
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1.0
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise ValueError("similarity_transform: the points are all equal (no transform)")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) <= 0:
        rot = u @ np.diag([1.0, -1.0]) @ vt
    elif rank == 1:
        rot = u @ vt
    else:
        rot = u @ np.diag(sign) @ vt
    scale = float(sig @ sign) / float((s ** 2).sum(1).mean())
    out = np.eye(3)
    out[:2, :2] = scale * rot
    out[:2, 2] = mu_d - scale * rot @ mu_s
    return out


def alignment_matrix(five_points, size: int = FACE_SIZE) -> np.ndarray:
    """The 2x3 matrix taking image pixels (x, y, 1) to the ``size`` x ``size`` crop
    (insightface's ``estimate_norm``; ``size`` a multiple of 112, the template scaled by it)."""
    pts = np.asarray(five_points, np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"five_points must be [5,2] (x, y), got shape {pts.shape}")
    if size % FACE_SIZE:
        raise ValueError(f"size must be a multiple of {FACE_SIZE}, got {size}")
    dst = ARCFACE_TEMPLATE_112.astype(np.float64) * (size / FACE_SIZE)
    return similarity_transform(pts, dst)[:2]


def _warp_affine(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine(image, m, (size, size), INTER_LINEAR, BORDER_CONSTANT 0)`` in float64:
    output pixel (u, v) samples the image at ``inverse(m) @ (u, v, 1)`` bilinearly, with
    neighbours outside the image counting as 0. [H,W,C] -> [size,size,C] float64."""
    h, w = image.shape[:2]
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    v, u = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64),
                       indexing="ij")
    sx = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    sy = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    img = image.astype(np.float64)

    def tap(yy, xx):
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        val = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return np.where(ok[..., None], val, 0.0)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def align_face(image, five_points, size: int = FACE_SIZE) -> np.ndarray:
    """insightface's ``norm_crop``: image [H,W,3] (uint8 RGB, or float) and its five points [5,2]
    (x, y) -> the aligned face [size,size,3] (uint8 for a uint8 image, rounded to nearest; float32
    otherwise), points on ``ARCFACE_TEMPLATE_112``, black outside the image."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"align_face wants an image [H,W,3], got shape {img.shape}")
    out = _warp_affine(img, alignment_matrix(five_points, size), size)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def align_faces(images, five_points, size: int = FACE_SIZE) -> np.ndarray:
    """``align_face`` over frames: images [T,H,W,3], points [T,5,2] -> faces [T,size,size,3]."""
    images, pts = np.asarray(images), np.asarray(five_points)
    if images.ndim != 4 or pts.shape != (images.shape[0], 5, 2):
        raise ValueError(f"align_faces wants images [T,H,W,3] and points [T,5,2], got "
                         f"{images.shape} and {pts.shape}")
    return np.stack([align_face(im, p, size) for im, p in zip(images, pts)])


def five_points_from_68(landmarks) -> np.ndarray:
    """68-point iBUG landmarks [..., 68, 2] (x, y; 0-based: eyes 36-41 and 42-47, nose tip 30,
    mouth corners 48 and 54) -> insightface's five points [..., 5, 2]: eye centres (mean of 6
    points each; 36-41 is the eye on the image's left), nose tip, left and right mouth corner."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"five_points_from_68 wants landmarks [..., 68, 2], got {lm.shape}")
    return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :],
                     lm[..., 48, :], lm[..., 54, :]], axis=-2)


def network_input(faces: jax.Array) -> jax.Array:
    """Aligned RGB faces, 0..255 -> the network's input ``(x - 127.5) / 127.5``, float32."""
    return (faces.astype(jnp.float32) - 127.5) / 127.5


@partial(jax.jit, static_argnums=0)
def _embed_batch(graphdef, state, faces: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(network_input(faces))


def embed(model, faces, batch_size: int = 32) -> np.ndarray:
    """ArcFace embeddings of aligned faces: ``model`` an ``IResNet``; faces [B,112,112,3] RGB
    pixels (uint8, or floats in 0..255) -> float32 [B,512]. Runs jitted on fixed batches of
    ``batch_size`` (the last one zero-padded, also when B < batch_size), so every call of a
    model compiles one shape."""
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(f"embed wants aligned faces [B,{FACE_SIZE},{FACE_SIZE},3], got "
                         f"{faces.shape}")
    n = faces.shape[0]
    if n == 0:
        return np.zeros((0, model.config.num_features), np.float32)
    batch = int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    graphdef, state = nnx.split(model)
    dtype = np.uint8 if faces.dtype == np.uint8 else np.float32
    out = []
    for start in range(0, n, batch):
        chunk = faces[start:start + batch].astype(dtype)
        pad = batch - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], dtype)])
        out.append(np.asarray(_embed_batch(graphdef, state, jnp.asarray(chunk)))[:batch - pad])
    return np.concatenate(out).astype(np.float32)


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine similarity of [..., D] arrays (broadcast), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def csim(source_emb, generated_embs) -> tuple[np.ndarray, float]:
    """CSIM: source embedding [512] (or [1,512], or [T,512] paired frame by frame) against the
    generated frames' embeddings [T,512] -> (per-frame cosine [T] float64, their mean)."""
    src = np.asarray(source_emb, np.float64)
    gen = np.asarray(generated_embs, np.float64)
    if gen.ndim != 2 or src.shape[-1] != gen.shape[-1] or src.ndim > 2 or (
            src.ndim == 2 and src.shape[0] not in (1, gen.shape[0])):
        raise ValueError(f"csim wants a source embedding [D] / [1,D] / [T,D] and generated "
                         f"embeddings [T,D], got {src.shape} and {gen.shape}")
    per_frame = cosine_similarity(src, gen)
    return per_frame, float(per_frame.mean()) if per_frame.size else float("nan")
