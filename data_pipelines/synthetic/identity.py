"""Appearance of one synthetic person: a frozen bag of numbers drawn from a seeded stream.

Units (see README.md for the full table):

* World units: the frame spans x, y in [-1, 1] (x right, y up); 1 world unit = half the frame side.
* Head units: the head is an ellipsoid with semi-axes (1, ``head_height``, ``head_depth``) in head
  units; 1 head unit = ``head_scale`` world units. Face features are placed in head units on the
  front of that ellipsoid: u = head x (right), v = head y (up), origin at the head centre.
* Colours: RGB floats in [0, 1].

``make_identity(seed, k)`` is a pure function of (seed, k): it seeds
``np.random.default_rng(np.random.SeedSequence([seed, STREAM_IDENTITY, k]))``, a stream that no
other part of the generator touches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

STREAM_IDENTITY = 1  # SeedSequence tag of the identity stream (audio = 2, motion = 3)

HAIR_STYLES = ("short", "long", "bob", "curly", "buzz")

Color = tuple[float, float, float]

# Palettes (RGB in [0, 1]); colours are interpolated/jittered around these anchors.
_SKIN = np.array([[0.98, 0.86, 0.76], [0.93, 0.76, 0.62], [0.80, 0.60, 0.45],
                  [0.62, 0.43, 0.30], [0.42, 0.28, 0.19]])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.28, 0.14],
                  [0.80, 0.64, 0.36], [0.62, 0.24, 0.10], [0.62, 0.62, 0.62], [0.18, 0.16, 0.22]])
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.40, 0.65], [0.25, 0.45, 0.25],
                  [0.45, 0.35, 0.15], [0.40, 0.45, 0.50]])


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance parameters of one synthetic person (head units unless stated)."""

    index: int
    # --- head and body (world units / ratios)
    head_scale: float       # head half-width in world units (frame half-side = 1), ~0.44-0.50
    head_height: float      # ellipsoid y semi-axis / x semi-axis, ~1.22-1.36
    head_depth: float       # ellipsoid z semi-axis / x semi-axis, ~0.95-1.05
    head_y: float           # head centre height in world units at zero translation, ~0.12-0.18
    neck_width: float       # neck half-width in head units, ~0.50-0.62
    # --- eyes (head units; u, v on the front of the head)
    eye_sep: float          # |u| of each eye centre, ~0.36-0.42
    eye_y: float            # v of the eye centres, ~0.0-0.08
    eye_width: float        # eye half-width (corner to centre), ~0.18-0.22
    eye_upper: float        # upper-lid height above the corner line, eyes open, 0.36-0.42 eye_width
    eye_lower: float        # lower-lid depth below the corner line, 0.25-0.29 eye_width
    iris_radius: float      # ~0.075-0.092
    # --- brows
    brow_y: float           # brow base height above the eye centre, ~0.20-0.27
    brow_arch: float        # extra height at the arch, ~0.02-0.06
    brow_inner: float       # |u| of the inner brow end, ~0.12-0.18
    brow_outer: float       # |u| of the outer brow end, ~0.58-0.66
    brow_thickness: float   # full thickness at the inner end, ~0.045-0.085
    # --- nose, mouth
    nose_y: float           # v of the nose tip, ~-0.38 to -0.30
    nose_size: float        # height of the nose bump (normal perturbation), ~0.10-0.20
    nose_width: float       # ~0.10-0.14
    mouth_y: float          # v of the lip line, ~-0.70 to -0.62
    mouth_width: float      # mouth half-width at rest, ~0.26-0.34
    lip_upper: float        # upper-lip thickness, ~0.045-0.065
    lip_lower: float        # lower-lip thickness, ~0.060-0.085
    # --- hair
    hair_style: int         # index into HAIR_STYLES
    hairline: float         # hairline height as a fraction of head_height at the forehead centre
    fringe: float           # how far a side fringe lowers the hairline (fraction of head_height)
    fringe_side: float      # u centre of the fringe, +-0.5
    # --- colours, RGB in [0, 1]
    skin: Color
    lip: Color
    hair: Color
    brow: Color
    iris: Color
    clothes: Color
    bg_top: Color
    bg_bottom: Color
    blush: float            # cheek redness, 0..0.35
    # --- lighting (unit vector in world coordinates, pointing towards the light)
    light: Color
    # --- voice (used by the audio model)
    voice_f0: float         # mean fundamental frequency in Hz, 95..230

    @property
    def hair_style_name(self) -> str:
        return HAIR_STYLES[self.hair_style]


def _color(c) -> Color:
    c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> np.ndarray:
    """A random blend of two neighbouring palette rows plus a little jitter."""
    i = rng.integers(0, len(palette))
    j = min(len(palette) - 1, i + 1)
    w = rng.uniform(0.0, 1.0)
    return (1 - w) * palette[i] + w * palette[j] + rng.normal(0.0, jitter, 3)


def make_identity(seed: int, identity_index: int) -> Identity:
    """Draws the appearance of identity ``identity_index`` for dataset seed ``seed``.

    Deterministic: the same (seed, identity_index) gives the same Identity on every call.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_IDENTITY, int(identity_index)]))
    u = rng.uniform

    skin = np.clip(_pick(rng, _SKIN, 0.015), 0.15, 1.0)
    lip = skin * np.array([0.86, 0.55, 0.55]) + np.array([0.06, 0.0, 0.02]) + rng.normal(0, 0.02, 3)
    hair = _pick(rng, _HAIR, 0.02)
    brow = np.minimum(0.6 * hair + 0.4 * skin * 0.3, skin * 0.5)  # always darker than the skin
    iris = _pick(rng, _IRIS, 0.03)
    clothes = rng.uniform(0.1, 0.85, 3)
    # Background: a muted colour, lighter at the top, not too close to the skin tone.
    for _ in range(8):
        bg = rng.uniform(0.15, 0.85, 3)
        if np.abs(bg - skin).sum() > 0.45:
            break
    bg_top = bg * u(1.0, 1.25)
    bg_bottom = bg * u(0.6, 0.85)
    style = int(rng.integers(0, len(HAIR_STYLES)))
    hairline = u(0.56, 0.66) if style != 4 else u(0.64, 0.70)
    fringe = u(0.0, 0.35) if style in (0, 2) and u() < 0.6 else 0.0
    eye_width = u(0.18, 0.22)
    light = np.array([u(-0.55, 0.55), u(0.35, 0.7), 1.0])
    light /= np.linalg.norm(light)

    return Identity(
        index=int(identity_index),
        head_scale=u(0.44, 0.50), head_height=u(1.22, 1.36), head_depth=u(0.95, 1.05),
        head_y=u(0.12, 0.18), neck_width=u(0.50, 0.62),
        eye_sep=u(0.36, 0.42), eye_y=u(0.0, 0.08), eye_width=eye_width,
        eye_upper=eye_width * u(0.36, 0.42), eye_lower=eye_width * u(0.25, 0.29), iris_radius=u(0.075, 0.092),
        brow_y=u(0.20, 0.27), brow_arch=u(0.02, 0.06), brow_inner=u(0.12, 0.18),
        brow_outer=u(0.58, 0.66), brow_thickness=u(0.045, 0.085),
        nose_y=u(-0.38, -0.30), nose_size=u(0.10, 0.20), nose_width=u(0.10, 0.14),
        mouth_y=u(-0.70, -0.62), mouth_width=u(0.26, 0.34),
        lip_upper=u(0.045, 0.065), lip_lower=u(0.060, 0.085),
        hair_style=style, hairline=hairline, fringe=fringe, fringe_side=float(rng.choice([-0.5, 0.5])),
        skin=_color(skin), lip=_color(lip), hair=_color(hair), brow=_color(brow), iris=_color(iris),
        clothes=_color(clothes), bg_top=_color(bg_top), bg_bottom=_color(bg_bottom),
        blush=u(0.0, 0.35), light=(float(light[0]), float(light[1]), float(light[2])),
        voice_f0=u(95.0, 230.0),
    )
