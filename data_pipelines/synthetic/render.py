"""Anti-aliased procedural renderer of a synthetic talking head, and the controls it implies.

Model. The head is an ellipsoid with semi-axes (1, head_height, head_depth) in head units, scaled by
``head_scale * (1 + tz)`` world units, rotated by R = Rz(roll) Ry(yaw) Rx(pitch) and moved by
(tx, ty). Every pixel casts an orthographic ray along -z; the front hit, rotated back into head
coordinates, gives texture coordinates (u, v) = (head x, head y) on which the face is drawn as
implicit shapes (eyes, irises, lids, brows, nostrils, lips, mouth interior, teeth, hairline). The
surface normal (with a procedural nose bump) gives Lambert + specular shading. A second, larger
ellipsoid behind the head gives the hair volume; a neck and shoulders sit below.

Coordinates. World: x right, y up, z towards the camera; the frame covers [-1, 1]^2. Pixel (row i,
col j) of a P x P frame has its centre at x = (2j + 1)/P - 1, y = 1 - (2i + 1)/P.

Anti-aliasing. Each shape is an implicit function d (negative inside); its pixel coverage is the
box-filter estimate clip(0.5 - d / |grad_px d|, 0, 1), with the gradient taken by central differences
on the pixel grid, so every shape is anti-aliased at any size. Thin lines (lashes, lip seam) use the
exact 1-D box overlap of the line's width with the pixel.

Descriptor layout: see ``EXP_*``, ``PITCH`` ... ``GAZE_V`` below and README.md.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipelines.controls import controls_from_landmarks  # noqa: F401  (re-exported)
from data_pipelines.synthetic.identity import Identity

# ----------------------------------------------------------------------------- descriptor layout
DESCRIPTOR_DIM = 72
CONTROL_DIM = 21
EXP_JAW = 0          # jaw opening, 0 = lips together, 1 = open vowel /a/, range [0, 2]
EXP_WIDTH = 1        # mouth width (spread +, narrow -), range [-1.5, 1.5]
EXP_ROUND = 2        # lip rounding / protrusion (/u/, /o/), range [0, 2]
EXP_SMILE = 3        # smile (corners up +, down -), range [-1, 2]
EXP_BROW_RAISE = 4   # brow raise (+ up, - down), range [-1.5, 2]
EXP_BROW_FURROW = 5  # brow furrow (inner brows down and together), range [0, 1.5]
EXP_EYELID = 6       # eyelid closure, 0 = open, 1 = closed (blink), range [0, 1]
NUM_EXPRESSION_DRIVERS = 7
PITCH, YAW, ROLL = 64, 65, 66
TX, TY, TZ = 67, 68, 69
GAZE_H, GAZE_V = 70, 71

LASH = 0.012          # lash-line thickness in head units; also the lid-landmark offset (EAR floor)
_SCLERA = (0.94, 0.93, 0.90)
_LASH_COLOR = (0.07, 0.05, 0.05)
_MOUTH_INSIDE = (0.24, 0.07, 0.08)
_TONGUE = (0.66, 0.30, 0.30)
_TEETH = (0.95, 0.93, 0.86)
_HAIR_VOLUME = {  # style -> (semi-axes as multiples of (1, hb, hc), centre offset (0, *hb, abs))
    0: ((1.07, 0.90, 1.05), (0.0, 0.20, -0.04)),   # short
    1: ((1.24, 1.75, 0.95), (0.0, -0.50, -0.30)),  # long
    2: ((1.22, 1.10, 1.00), (0.0, -0.02, -0.12)),  # bob
    3: ((1.40, 1.18, 1.15), (0.0, 0.22, -0.08)),   # curly
}
_HAIR_SIDE_DROP = {0: 0.35, 1: 1.15, 2: 1.0, 3: 0.75, 4: 0.3}


def neutral_descriptor() -> np.ndarray:
    """float32 [72] zeros: frontal head, relaxed closed mouth, open eyes looking at the camera."""
    return np.zeros(DESCRIPTOR_DIM, np.float32)


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch), float64 [3,3], mapping head to world coordinates.

    Positive pitch turns the nose down, positive yaw turns the nose to the image's right, positive
    roll turns the top of the head to the image's left (counter-clockwise on screen).
    """
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cr, sr = math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ----------------------------------------------------------------------------- per-frame geometry
@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Everything the renderer and the landmark code need for one (identity, descriptor)."""

    R: np.ndarray          # [3,3] head -> world
    cx: float              # head centre, world
    cy: float
    s: float               # world units per head unit
    hb: float              # head y semi-axis (head units)
    hc: float              # head z semi-axis
    # expression drivers (clipped)
    jaw: float
    width: float
    rnd: float
    smile: float
    brow_raise: float
    brow_furrow: float
    closure: float
    # eyes
    iris_du: float         # iris offset from the eye centre (head units), + = head's +u
    iris_dv: float
    # mouth (head units, relative to (0, mouth_y), before the smile curve)
    mw: float              # outer half-width
    oh: float              # opening height
    iw: float              # opening half-width
    ul: float              # upper-lip thickness
    ll: float              # lower-lip thickness
    curve: float           # corner lift at |x| = mw (smile)
    brow_pts: np.ndarray   # [5,2] (|u|, v) of one brow, inner -> outer (mirror for the other side)
    brow_th: np.ndarray    # [5] brow thickness at those points


def _geometry(ident: Identity, d: np.ndarray) -> _Geometry:
    d = np.asarray(d, np.float64)
    if d.shape != (DESCRIPTOR_DIM,):
        raise ValueError(f"descriptor must have shape ({DESCRIPTOR_DIM},), got {d.shape}")
    d = np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)  # a broken model output renders neutral
    pitch, yaw, roll = (float(np.clip(d[i], -1.2, 1.2)) for i in (PITCH, YAW, ROLL))
    R = rotation_matrix(pitch, yaw, roll)
    tz = float(np.clip(d[TZ], -0.5, 0.5))
    s = ident.head_scale * (1.0 + tz)
    jaw = float(np.clip(d[EXP_JAW], 0.0, 2.0))
    width = float(np.clip(d[EXP_WIDTH], -1.5, 1.5))
    rnd = float(np.clip(d[EXP_ROUND], 0.0, 2.0))
    smile = float(np.clip(d[EXP_SMILE], -1.0, 2.0))
    raise_ = float(np.clip(d[EXP_BROW_RAISE], -1.5, 2.0))
    furrow = float(np.clip(d[EXP_BROW_FURROW], 0.0, 1.5))
    closure = float(np.clip(d[EXP_EYELID], 0.0, 1.0))

    # Gaze (camera frame) -> direction in head coordinates -> iris offset on the face plane.
    gh, gv = float(d[GAZE_H]), float(d[GAZE_V])
    g_world = np.array([-math.sin(gh) * math.cos(gv), math.sin(gv), math.cos(gh) * math.cos(gv)])
    g_head = R.T @ g_world
    lat = math.hypot(g_head[0], g_head[1])
    limit = math.sin(0.7)
    k = min(1.0, limit / lat) if lat > 1e-9 else 1.0
    eyeball = 1.1 * ident.eye_width
    iris_du, iris_dv = eyeball * k * g_head[0], 0.85 * eyeball * k * g_head[1]

    # Mouth.
    sm_pos = max(smile, 0.0)
    mw = ident.mouth_width * (1 + 0.16 * width + 0.12 * sm_pos) / (1 + 0.35 * rnd)
    mw = max(mw, 0.4 * ident.mouth_width)
    oh = 0.24 * jaw + 0.05 * rnd * min(1.0, 4 * jaw)
    iw = mw * (0.92 - 0.45 * rnd / (1 + rnd))
    ul = ident.lip_upper * (1 + 0.4 * rnd) * (1 - 0.15 * sm_pos)
    ll = ident.lip_lower * (1 + 0.3 * rnd) * (1 - 0.15 * sm_pos)
    curve = 0.065 * smile

    # Brow: 5 points inner -> outer on the image-right brow (u > 0); the other is its mirror.
    kk = np.linspace(0.0, 1.0, 5)
    bu = ident.brow_inner + (ident.brow_outer - ident.brow_inner) * kk
    arch = np.clip(1 - ((kk - 0.55) / 0.6) ** 2, 0, None)
    bv = ident.eye_y + ident.brow_y + ident.brow_arch * arch - 0.02 * kk
    bv = bv + 0.085 * raise_ * (0.8 + 0.4 * (1 - kk))
    bv = bv - 0.05 * furrow * (1 - kk) ** 1.5 - 0.015 * furrow
    bu = bu - 0.035 * furrow * (1 - kk)
    th = ident.brow_thickness * (1 - 0.55 * kk)
    return _Geometry(R=R, cx=float(d[TX]), cy=ident.head_y + float(d[TY]), s=s, hb=ident.head_height,
                     hc=ident.head_depth, jaw=jaw, width=width, rnd=rnd, smile=smile, brow_raise=raise_,
                     brow_furrow=furrow, closure=closure, iris_du=float(iris_du), iris_dv=float(iris_dv),
                     mw=mw, oh=oh, iw=iw, ul=ul, ll=ll, curve=curve,
                     brow_pts=np.stack([bu, bv], -1), brow_th=th)


def _lids(ident: Identity, closure: float, t):
    """Upper and lower lid heights relative to the eye centre at eye coordinate t in [-1, 1].

    t = (u - eye centre u) / eye_width. Both lids are parabolas through the eye corners; at closure 1
    the upper lid meets the (slightly raised) lower lid.
    """
    q = 1.0 - t * t
    lower = -ident.eye_lower * (1 - 0.15 * closure)
    upper = ident.eye_upper * (1 - closure) + lower * closure
    return upper * q, lower * q


def _mouth_contours(ident: Identity, g: _Geometry, x):
    """Outer upper and lower lip contours (y relative to the lip line, before the smile curve)."""
    q = np.clip(1.0 - (x / g.mw) ** 2, 0.0, 1.0)
    top = g.ul * np.sqrt(q) * (1 - 0.22 * np.exp(-(x / 0.045) ** 2))
    bot = -g.oh * np.sqrt(q) - g.ll * q ** 0.6
    return top, bot


# ----------------------------------------------------------------------------- landmarks, controls
def _surface_z(ident: Identity, u, v):
    return ident.head_depth * np.sqrt(np.clip(1.0 - u * u - (v / ident.head_height) ** 2, 1e-6, None))


def face_landmarks(identity: Identity, descriptor: np.ndarray) -> np.ndarray:
    """68 iBUG-layout landmarks of the rendered face, float64 [68,2] in world coordinates (x right, y up).

    Index groups follow the 68-point iBUG layout: 0-16 jaw (the head silhouette from the image-left
    side through the chin), 17-21 image-left brow (outer -> inner), 22-26 image-right brow (inner ->
    outer), 27-30 nose bridge, 31-35 nose base, 36-41 image-left eye, 42-47 image-right eye, 48-59
    outer lips, 60-67 inner lips. Lid points sit on the lash line (LASH/2 outside the lid edge), as
    a detector would place them. Convert with ``landmarks_to_pixels``.
    """
    ident = identity
    g = _geometry(ident, descriptor)
    pts = []  # head-surface (u, v) points, in iBUG order after the jaw
    # Brows 17-26.
    bu, bv = g.brow_pts[:, 0], g.brow_pts[:, 1]
    pts += [(-bu[k], bv[k]) for k in range(4, -1, -1)]
    pts += [(bu[k], bv[k]) for k in range(5)]
    # Nose 27-35.
    ey, nt, nwf = ident.eye_y, ident.nose_y, ident.nose_width / 0.12
    pts += [(0.0, ey + 0.02 + (nt - ey - 0.02) * f) for f in (0.0, 1 / 3, 2 / 3, 1.0)]
    pts += [(-0.11 * nwf, nt - 0.04), (-0.055 * nwf, nt - 0.06), (0.0, nt - 0.07),
            (0.055 * nwf, nt - 0.06), (0.11 * nwf, nt - 0.04)]
    # Eyes 36-47: corner, two upper, corner, two lower (clockwise in the image).
    ew, ex = ident.eye_width, ident.eye_sep
    for sgn, ts in ((-1, (-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3)), (1, (-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3))):
        for i, t in enumerate(ts):
            up, lo = _lids(ident, g.closure, t)
            if i in (1, 2):
                y = up + LASH / 2
            elif i in (4, 5):
                y = lo - LASH / 2
            else:
                y = 0.0
            pts.append((sgn * ex + t * ew, ey + y))
    # Lips 48-67 (mouth coordinates x, y relative to (0, mouth_y), then the smile curve).
    xs_out = np.array([-1, -0.62, -0.25, 0, 0.25, 0.62, 1, 0.62, 0.25, 0, -0.25, -0.62]) * g.mw
    top, bot = _mouth_contours(ident, g, xs_out)
    ys_out = np.where(np.arange(12) <= 6, top, bot)
    ys_out[[0, 6]] = 0.0
    xs_in = np.array([-1, -0.5, 0, 0.5, 1, 0.5, 0, -0.5]) * g.iw
    half = g.oh / 2
    rim = half * np.sqrt(np.clip(1 - (xs_in / max(g.iw, 1e-6)) ** 2, 0, None))
    ys_in = np.where(np.arange(8) <= 4, -half + rim, -half - rim)
    for x, y in zip(np.concatenate([xs_out, xs_in]), np.concatenate([ys_out, ys_in])):
        pts.append((x, ident.mouth_y + y + g.curve * (x / g.mw) ** 2))
    uv = np.array(pts, np.float64)
    xyz = np.stack([uv[:, 0], uv[:, 1], _surface_z(ident, uv[:, 0], uv[:, 1])], -1)
    face_xy = (xyz @ g.R.T)[:, :2] * g.s + np.array([g.cx, g.cy])

    # Jaw 0-16: the head silhouette (a projected ellipse), from the head's left through the chin.
    Q = _silhouette_form(g.R, (1.0, g.hb, g.hc))
    roll = math.atan2(g.R[1, 0], g.R[0, 0])
    phi = math.pi + math.pi * np.arange(17) / 16 + roll
    dirs = np.stack([np.cos(phi), np.sin(phi)], -1)
    r = 1.0 / np.sqrt(np.einsum("ni,ij,nj->n", dirs, Q, dirs))
    jaw_xy = dirs * (r * g.s)[:, None] + np.array([g.cx, g.cy])
    return np.concatenate([jaw_xy, face_xy], 0)


def landmarks_to_pixels(landmarks: np.ndarray, size: int) -> np.ndarray:
    """World landmarks [...,2] (x right, y up) -> pixel coordinates (col, row) of a size x size frame.

    (0, 0) is the centre of the top-left pixel; rows grow downwards (the usual detector convention).
    """
    lm = np.asarray(landmarks, np.float64)
    col = (lm[..., 0] + 1.0) * (size / 2.0) - 0.5
    row = (1.0 - lm[..., 1]) * (size / 2.0) - 0.5
    return np.stack([col, row], -1)


def controls_from_descriptor(identity: Identity, descriptor: np.ndarray) -> np.ndarray:
    """Controls float32 [21] (blink ratio, 20 brow features) of the face this descriptor renders."""
    return controls_from_landmarks(landmarks_to_pixels(face_landmarks(identity, descriptor), 2))


# ----------------------------------------------------------------------------- raster helpers
def _pixel_gradient(d: np.ndarray) -> np.ndarray:
    """|grad d| per pixel by central differences (one-sided at the borders); d is [h,w], h, w >= 2."""
    gx = np.empty_like(d)
    gy = np.empty_like(d)
    gx[:, 1:-1] = d[:, 2:] - d[:, :-2]
    gx[:, 1:-1] *= 0.5
    gx[:, 0] = d[:, 1] - d[:, 0]
    gx[:, -1] = d[:, -1] - d[:, -2]
    gy[1:-1] = d[2:] - d[:-2]
    gy[1:-1] *= 0.5
    gy[0] = d[1] - d[0]
    gy[-1] = d[-1] - d[-2]
    return np.sqrt(gx * gx + gy * gy)


def _cov(d: np.ndarray) -> np.ndarray:
    """Pixel coverage in [0, 1] of the region d < 0 (box filter, distance from the local gradient)."""
    g = np.maximum(_pixel_gradient(d), 1e-9)
    return np.clip(0.5 - d / g, 0.0, 1.0)


def _line_cov(s: np.ndarray, half_width) -> np.ndarray:
    """Coverage of the band |s| < half_width (s: smooth signed field across a line; half_width a
    scalar or per-pixel array in the units of s), by the exact 1-D box overlap with the pixel."""
    g = np.maximum(_pixel_gradient(s), 1e-9)
    dpx = np.abs(s) / g
    hpx = half_width / g
    return np.clip(np.minimum(dpx + 0.5, hpx) - np.maximum(dpx - 0.5, -hpx), 0.0, 1.0)


def _smoothstep(e0: float, e1: float, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _over(img: np.ndarray, cov: np.ndarray, color) -> None:
    """In place: img [3,h,w] <- img + cov * (color - img); color is an RGB triple or [3,h,w]."""
    c = np.asarray(color, np.float32)
    if c.ndim == 1:
        c = c[:, None, None]
    img += cov[None] * (c - img)


def _box(mask: np.ndarray, margin: int = 2):
    """Slices of the bounding box of ``mask`` grown by ``margin`` (at least 3 px a side), or None."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    h, w = mask.shape
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)
    if r1 - r0 < 3 or c1 - c0 < 3:
        return None
    return slice(r0, r1), slice(c0, c1)


def _silhouette_form(R: np.ndarray, axes) -> np.ndarray:
    """2x2 Q such that the orthographic silhouette of the rotated ellipsoid is p^T Q p = 1."""
    D = np.diag(1.0 / np.asarray(axes, np.float64) ** 2)
    M = R.T[:, :2]          # head coords of a world (x, y, 0) point
    n = R.T[:, 2]           # head coords of the world z axis
    alpha = n @ D @ n
    b = M.T @ D @ n
    return M.T @ D @ M - np.outer(b, b) / alpha


def _raycast(X: np.ndarray, Y: np.ndarray, R: np.ndarray, axes, offset=(0.0, 0.0, 0.0)):
    """Front hit of orthographic rays with an ellipsoid (head coordinates, centred at ``offset``).

    X, Y: [h,w] pixel centres in head units relative to the head centre. Returns g [h,w] (< 0 inside
    the silhouette; an implicit function smooth across it), q [3,h,w] the front surface point relative
    to the ellipsoid centre (rays that miss get the nearest silhouette point), n [3,h,w] unit normals.
    """
    inv = [1.0 / float(a) ** 2 for a in axes]
    m = [float(R[0, k]) * X + float(R[1, k]) * Y - float(offset[k]) for k in range(3)]
    n = [float(R[2, k]) for k in range(3)]
    alpha = sum(n[k] * n[k] * inv[k] for k in range(3))
    beta = 2.0 * (m[0] * (n[0] * inv[0]) + m[1] * (n[1] * inv[1]) + m[2] * (n[2] * inv[2]))
    gamma = m[0] * m[0] * inv[0] + m[1] * m[1] * inv[1] + m[2] * m[2] * inv[2] - 1.0
    g = gamma - beta * beta * (0.25 / alpha)
    z = (np.sqrt(np.maximum(-4.0 * alpha * g, 0.0)) - beta) * (0.5 / alpha)
    q = np.stack([m[k] + z * n[k] for k in range(3)])
    nrm = q * np.array(inv, np.float32)[:, None, None]
    nrm /= np.maximum(np.sqrt((nrm * nrm).sum(0)), 1e-9)
    return g, q, nrm


def _grid(size: int):
    c = ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(np.float32)
    return c, -c  # x per column, y per row


def _background(ident: Identity, size: int) -> np.ndarray:
    """[3,P,P] float32 vertical gradient with a soft vignette."""
    x, y = _grid(size)
    t = ((y + 1.0) * 0.5)[:, None]
    top = np.asarray(ident.bg_top, np.float32)[:, None, None]
    bot = np.asarray(ident.bg_bottom, np.float32)[:, None, None]
    vign = 1.0 - 0.12 * (x[None, :] ** 2 + y[:, None] ** 2)
    return ((bot + (top - bot) * t[None]) * vign[None]).astype(np.float32)


# ----------------------------------------------------------------------------- the renderer
def _shade(nrm: np.ndarray, R: np.ndarray, light, ambient: float, diffuse: float, spec: float,
           power: float) -> tuple[np.ndarray, np.ndarray]:
    """Lambert + Blinn specular for head-coordinate normals [3,h,w]; returns (shade, highlight)."""
    L = np.asarray(light, np.float64)
    H = L + np.array([0.0, 0.0, 1.0])
    H /= np.linalg.norm(H)
    Lh, Hh = R.T @ L, R.T @ H
    ndl = nrm[0] * float(Lh[0]) + nrm[1] * float(Lh[1]) + nrm[2] * float(Lh[2])
    ndh = nrm[0] * float(Hh[0]) + nrm[1] * float(Hh[1]) + nrm[2] * float(Hh[2])
    shade = ambient + diffuse * np.maximum(ndl, 0.0)
    hi = spec * np.maximum(ndh, 0.0) ** power
    return shade, hi


def _render(ident: Identity, descriptor: np.ndarray, size: int, bg: np.ndarray) -> np.ndarray:
    g = _geometry(ident, descriptor)
    R, s, hb, hc = g.R, g.s, g.hb, g.hc
    xw, yw = _grid(size)
    img = bg.copy()
    X = np.broadcast_to((xw[None, :] - g.cx) / s, (size, size))
    Y = np.broadcast_to((yw[:, None] - g.cy) / s, (size, size))
    light = ident.light
    hair = np.asarray(ident.hair, np.float32)
    skin = np.asarray(ident.skin, np.float32)
    yaw = math.atan2(-R[2, 0], math.hypot(R[2, 1], R[2, 2]))

    # Hair volume behind the head.
    if ident.hair_style in _HAIR_VOLUME:
        (ax, ay, az), (ox, oy, oz) = _HAIR_VOLUME[ident.hair_style]
        axes, off = (ax, ay * hb, az * hc), (ox, oy * hb, oz)
        Q = _silhouette_form(R, axes)
        r_max = 1.0 / math.sqrt(max(np.linalg.eigvalsh(Q)[0], 1e-9))
        c = R @ np.asarray(off)
        box = _box((np.abs(X - c[0]) < r_max + 0.05) & (np.abs(Y - c[1]) < r_max + 0.05))
        if box is not None:
            gh, _, nh = _raycast(X[box], Y[box], R, axes, off)
            cov = _cov(gh)
            sh, hi = _shade(nh, R, light, 0.35, 0.55, 0.18, 12.0)
            col = hair[:, None, None] * (0.8 * sh)[None] + hi[None]
            _over(img[:, box[0], box[1]], cov, col)

    # Neck and shoulders (world coordinates; the body follows the head's translation partly).
    x2, y2 = xw[None, :], yw[:, None]
    nw = ident.neck_width * s
    nx = g.cx * 0.9 + 0.25 * s * math.sin(yaw)
    top = g.cy - 0.2 * s
    d_neck = np.maximum(np.abs(x2 - nx) - nw, y2 - top)
    tnx = np.clip((x2 - nx) / nw, -1, 1)
    neck_shade = (0.55 + 0.3 * np.sqrt(1 - 0.7 * tnx * tnx)) * (
        0.75 + 0.25 * _smoothstep(g.cy - s * hb * 0.7, g.cy - s * (hb + 0.6), y2))
    _over(img, _cov(d_neck), skin[:, None, None] * neck_shade[None])
    bx = 0.8 * g.cx
    t0 = g.cy - s * (hb + 0.38)
    rx, ry = 2.6 * s, 1.3 * s
    ex_, ey_ = (x2 - bx) / rx, (y2 - (t0 - ry)) / ry
    d_torso = ex_ * ex_ + ey_ * ey_ - 1.0
    nz = np.sqrt(np.clip(1 - ex_ * ex_ - ey_ * ey_, 0.0, 1.0))
    lx, ly, lz = (float(c) for c in light)
    torso_shade = 0.45 + 0.55 * np.clip(ex_ * lx + ey_ * ly + nz * lz, 0, 1)
    clothes = np.asarray(ident.clothes, np.float32)[:, None, None] * torso_shade[None]
    cx_, cy_ = (x2 - bx) / (1.35 * nw), (y2 - t0 - 0.05 * s) / (0.42 * s)
    collar = _cov(np.maximum(cx_ * cx_ + cy_ * cy_ - 1.0, d_torso))
    col = clothes + collar[None] * (skin[:, None, None] * neck_shade[None] * 0.92 - clothes)
    _over(img, _cov(d_torso), col)

    # Head: silhouette from the analytic projected ellipse, then the face inside its bounding box.
    Q = _silhouette_form(R, (1.0, hb, hc))
    g_full = float(Q[0, 0]) * X * X + float(2 * Q[0, 1]) * X * Y + float(Q[1, 1]) * Y * Y - 1.0
    box = _box(g_full < 0.35)
    if box is None:
        return img
    Xb, Yb = X[box], Y[box]
    gh, q, nrm = _raycast(Xb, Yb, R, (1.0, hb, hc))
    cov_head = _cov(gh)
    u, v = q[0], q[1]
    A = np.empty((3,) + u.shape, np.float32)
    A[:] = skin[:, None, None]
    _paint_face(A, ident, g, u, v, nrm)
    _paint_hair_cap(A, ident, g, q, hair)
    sh, hi = _shade(nrm, R, light, 0.42, 0.62, 0.10, 16.0)
    head = A * sh[None] + hi[None]
    _paint_catchlights(head, ident, g, u, v)
    _over(img[:, box[0], box[1]], cov_head, head)
    return img


def _rgb(c) -> np.ndarray:
    """An RGB triple as a float32 [3,1,1] array (broadcasts against [3,h,w])."""
    return np.asarray(c, np.float32).reshape(3, 1, 1)


def _paint_face(A: np.ndarray, ident: Identity, g: _Geometry, u, v, nrm) -> None:
    """Paints the face albedo into A [3,h,w] and bends the normals [3,h,w] for the nose (in place).

    u, v: [h,w] head-surface coordinates of the pixels. Each feature works inside its own bounding box.
    """
    au = np.abs(u)
    skin = np.asarray(ident.skin, np.float32)
    ey, ex = ident.eye_y, ident.eye_sep

    # Cheek blush and eye-socket darkening (smooth, no edges).
    cheek_v = ident.nose_y + 0.02 + 0.05 * max(g.smile, 0.0)
    blush = ident.blush * np.exp(-((au - 0.52) ** 2 + (v - cheek_v) ** 2) / 0.03)
    _over(A, blush, skin * np.array([1.0, 0.72, 0.72], np.float32))
    A *= (1.0 - 0.10 * np.exp(-(((au - ex) / 0.3) ** 2 + ((v - ey - 0.03) / 0.13) ** 2)))[None]

    box = _box((au < 0.32) & (v > ident.nose_y - 0.2) & (v < ey + 0.15))
    if box is not None:
        _paint_nose(A[:, box[0], box[1]], nrm[:, box[0], box[1]], ident, u[box], v[box])
    bu, bv = g.brow_pts[:, 0], g.brow_pts[:, 1]
    box = _box((au < bu.max() + 0.08) & (au > bu.min() - 0.08) & (np.abs(v - bv.mean()) < 0.22))
    if box is not None:
        _paint_brows(A[:, box[0], box[1]], ident, g, au[box], v[box])
    if g.smile > 0.05:
        box = _box((au < g.mw + 0.15) & (v > ident.mouth_y - 0.1) & (v < ident.nose_y + 0.05))
        if box is not None:
            _paint_folds(A[:, box[0], box[1]], ident, g, au[box], v[box])
    box = _box((np.abs(au - ex) < ident.eye_width + 0.1) & (np.abs(v - ey) < 0.22))
    if box is not None:
        _paint_eyes(A[:, box[0], box[1]], ident, g, u[box], v[box])
    reach = 0.5 * g.oh + g.ll + g.ul + 0.14
    box = _box((au < g.mw + 0.12) & (np.abs(v - ident.mouth_y + 0.5 * g.oh) < reach))
    if box is not None:
        _paint_mouth(A[:, box[0], box[1]], ident, g, u[box], v[box])


def _paint_nose(A, nrm, ident: Identity, u, v) -> None:
    """Nose: a bump (ridge + tip + alar wings) in the normal field, the shadow under the tip, nostrils."""
    nt, wn, k = ident.nose_y, ident.nose_width, ident.nose_width / 0.12
    dv = v - nt
    sv = np.where(dv > 0, 0.42, 0.07).astype(np.float32)  # long ridge above the tip, short below
    h = ident.nose_size * np.exp(-(u / wn) ** 2 - (dv / sv) ** 2)
    hu = h * (-2.0 * u / (wn * wn))
    hv = h * (-2.0 * dv / (sv * sv))
    for side in (-1.0, 1.0):  # alar wings
        du, dw = u - side * 0.09 * k, v - nt + 0.03
        ha = 0.4 * ident.nose_size * np.exp(-(du / 0.05) ** 2 - (dw / 0.05) ** 2)
        hu += ha * (-2.0 * du / 0.0025)
        hv += ha * (-2.0 * dw / 0.0025)
    nrm[0] -= 0.35 * hu
    nrm[1] -= 0.35 * hv
    nrm /= np.maximum(np.sqrt((nrm * nrm).sum(0)), 1e-9)
    A *= (1.0 - 0.16 * np.exp(-(u / 0.13) ** 2 - ((v - nt + 0.1) / 0.04) ** 2))[None]
    d_nostril = ((np.abs(u) - 0.062 * k) / 0.032) ** 2 + ((v - nt + 0.055) / 0.017) ** 2 - 1.0
    _over(A, 0.75 * _cov(d_nostril), np.asarray(ident.skin, np.float32) * 0.35)


def _paint_brows(A, ident: Identity, g: _Geometry, au, v) -> None:
    """Both brows at once (through |u|): a stroke through the 5 brow points, tapering outwards."""
    bu, bv, bth = g.brow_pts[:, 0], g.brow_pts[:, 1], g.brow_th
    centre = np.interp(au, bu, bv).astype(np.float32)
    thick = np.interp(au, bu, bth).astype(np.float32)
    mid, half = 0.5 * (bu[0] + bu[-1]), 0.5 * (bu[-1] - bu[0])
    d = np.maximum(np.abs(v - centre) - 0.5 * thick, np.abs(au - mid) - half)
    _over(A, 0.92 * _cov(d), ident.brow)


def _paint_folds(A, ident: Identity, g: _Geometry, au, v) -> None:
    """Nasolabial folds that deepen with a smile (soft lines from the nose wings to the mouth corners)."""
    p0 = np.array([0.16, ident.nose_y - 0.04])
    p1 = np.array([g.mw + 0.04, ident.mouth_y + 0.02 + g.curve])
    dx, dy = p1 - p0
    t = np.clip(((au - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0, 1)
    dist2 = (au - p0[0] - t * dx) ** 2 + (v - p0[1] - t * dy) ** 2
    A *= (1.0 - 0.09 * min(g.smile, 1.5) * np.exp(-dist2 / 0.0004))[None]


def _paint_eyes(A, ident: Identity, g: _Geometry, u, v) -> None:
    """Both eyes at once (coordinates relative to each side's eye centre): aperture between the lids,
    whites shaded under the upper lid, iris with a darker rim, pupil, crease, lower-lid line, lashes."""
    side = np.where(u < 0, -1.0, 1.0).astype(np.float32)
    xe = u - side * ident.eye_sep
    t = xe / ident.eye_width
    ve = v - ident.eye_y
    up, lo = _lids(ident, g.closure, t)
    cov_aperture = _cov(np.maximum(ve - up, lo - ve))
    lid_shadow = (0.72 + 0.28 * np.clip((up - ve) / 0.05, 0, 1))[None]
    ri = ident.iris_radius
    di = np.sqrt((xe - g.iris_du) ** 2 + (ve - g.iris_dv) ** 2)
    eye = _rgb(_SCLERA) * lid_shadow
    iris = _rgb(ident.iris) * (1.0 - 0.5 * _smoothstep(0.55 * ri, ri, di))[None]
    _over(eye, _cov(di - ri), iris * lid_shadow)
    _over(eye, _cov(di - 0.42 * ri), (0.03, 0.03, 0.03))
    _over(A, cov_aperture, eye)
    skin = np.asarray(ident.skin, np.float32)
    fade = 1.0 - _smoothstep(1.0, 1.15, np.abs(t))
    crease = ve - (ident.eye_upper * 1.6 + 0.03) * np.clip(1 - t * t, 0, None) * (1 - 0.4 * g.closure) - 0.01
    _over(A, 0.22 * fade * _line_cov(crease, 0.007), skin * 0.6)
    _over(A, 0.30 * fade * _line_cov(ve - lo + 0.004, 0.004), skin * 0.55)
    outer = np.abs(t) * (side * t > 0)  # lashes thicken towards the outer corner
    lash_half_width = 0.5 * LASH * (1.0 + 0.6 * _smoothstep(0.2, 1.0, outer))
    _over(A, 0.95 * fade * _line_cov(ve - up - 0.5 * LASH, lash_half_width), _LASH_COLOR)


def _paint_mouth(A, ident: Identity, g: _Geometry, x, v) -> None:
    """Lips (upper darker, lower with a highlight and a shadow below), the opening with its dark
    interior, tongue, upper and lower teeth, and the lip seam when the lips are together."""
    y = v - ident.mouth_y - g.curve * (x / g.mw) ** 2   # mouth coordinates, smile curve removed
    top, bot = _mouth_contours(ident, g, x)
    half = 0.5 * g.oh
    upper_part = _smoothstep(-half - 0.02, -half + 0.01, y)
    shine = 0.10 * np.exp(-((y + g.oh + 0.5 * g.ll) / (0.3 * g.ll)) ** 2 - (x / (0.5 * g.mw)) ** 2)
    lip = _rgb(ident.lip) * (1.0 - 0.18 * upper_part)[None] + shine[None]
    A *= (1.0 - 0.13 * np.exp(-((y + g.oh + g.ll + 0.05) / 0.035) ** 2 - (x / (0.6 * g.mw)) ** 2))[None]
    _over(A, _cov(np.maximum(np.maximum(y - top, bot - y), np.abs(x) - g.mw)), lip)

    cov_open = _cov((x / g.iw) ** 2 + ((y + half) / max(half, 0.003)) ** 2 - 1.0)
    inside = np.empty_like(A)
    inside[:] = _rgb(_MOUTH_INSIDE)
    _over(inside, _cov((x / (0.55 * g.iw)) ** 2 + ((y + g.oh - 0.02) / 0.06) ** 2 - 1.0), _TONGUE)
    lower_teeth = _cov(np.maximum(y + g.oh - 0.035, np.abs(x) - 0.6 * g.iw))
    _over(inside, 0.9 * _smoothstep(0.12, 0.2, g.oh) * lower_teeth, _TEETH)
    upper_teeth = _cov(np.maximum(-0.07 - y, np.abs(x) - 0.8 * g.iw))
    _over(inside, upper_teeth, _rgb(_TEETH) * (0.8 + 0.2 * np.clip(-y / 0.03, 0, 1))[None])
    _over(A, cov_open, inside)
    seam = _line_cov(y + half, 0.007) * (1.0 - _smoothstep(0.85, 1.0, np.abs(x) / g.mw)) * (1.0 - cov_open)
    _over(A, seam, np.asarray(ident.lip, np.float32) * 0.45)


def _paint_hair_cap(A: np.ndarray, ident: Identity, g: _Geometry, q: np.ndarray, hair: np.ndarray) -> None:
    """Hair on the head surface above a hairline that drops at the temples, the sides and the back."""
    un, vn, wn = q[0], q[1] / g.hb, q[2] / g.hc
    side_drop = _HAIR_SIDE_DROP[ident.hair_style] * _smoothstep(0.72, 0.95, np.abs(un))
    hl = ident.hairline - 0.3 * un * un - side_drop - 2.5 * np.clip(0.3 - wn, 0.0, None)
    if ident.fringe > 0:
        hl = hl - ident.fringe * np.exp(-((un - ident.fringe_side) / 0.4) ** 2)
    if ident.hair_style == 3:
        hl = hl + 0.025 * np.sin(14.0 * un)
    color = hair if ident.hair_style != 4 else 0.55 * hair + 0.45 * np.asarray(ident.skin, np.float32) * 0.8
    _over(A, _cov(hl - vn), color)


def _paint_catchlights(head: np.ndarray, ident: Identity, g: _Geometry, u, v) -> None:
    """Small specular dots on the irises (after shading)."""
    ri = ident.iris_radius
    au = np.abs(u)
    box = _box((np.abs(au - ident.eye_sep) < ident.eye_width) & (np.abs(v - ident.eye_y) < 0.15))
    if box is None:
        return
    ub, vb = u[box], v[box]
    sg = np.where(ub < 0, -1.0, 1.0).astype(np.float32)
    xe = ub - sg * ident.eye_sep
    ve = vb - ident.eye_y
    up, lo = _lids(ident, g.closure, xe / ident.eye_width)
    ap = _cov(np.maximum(ve - up, lo - ve))
    dc = np.sqrt((xe - g.iris_du + 0.3 * ri) ** 2 + (ve - g.iris_dv - 0.35 * ri) ** 2)
    _over(head[:, box[0], box[1]], 0.85 * ap * _cov(dc - 0.2 * ri), (1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- public API
def render_frame(identity: Identity, descriptor: np.ndarray, size: int) -> np.ndarray:
    """Renders one frame: uint8 [size,size,3] RGB for a float [72] descriptor (any size >= 8)."""
    if int(size) < 8:
        raise ValueError(f"size must be >= 8 px, got {size}")
    img = _render(identity, descriptor, int(size), _background(identity, int(size)))
    return _to_uint8(img)


def render_frames(identity: Identity, descriptors: np.ndarray, size: int) -> np.ndarray:
    """Renders a sequence: uint8 [T,size,size,3] for float descriptors [T,72]."""
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 2 or descriptors.shape[1] != DESCRIPTOR_DIM:
        raise ValueError(f"descriptors must have shape [T,{DESCRIPTOR_DIM}], got {descriptors.shape}")
    size = int(size)
    if size < 8:
        raise ValueError(f"size must be >= 8 px, got {size}")
    bg = _background(identity, size)
    out = np.empty((len(descriptors), size, size, 3), np.uint8)
    for i, d in enumerate(descriptors):
        out[i] = _to_uint8(_render(identity, d, size, bg))
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
