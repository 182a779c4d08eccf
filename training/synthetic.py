"""Procedural clouds composited over real imagery, with exact labels.

Why: the teacher's pseudo-labels miss thin cloud at 10 m and flag snow and bright ground as
cloud; synthetic clouds teach the student what a cloud over *any* surface looks like, with a
label we know exactly, and add volume.

A cloud field is fractal (power-law spectrum) noise, thresholded to a coverage and softened
into an opacity ``alpha`` in [0, 1]. Thick clouds are nearly opaque with sharp edges; thin
clouds/haze are semi-transparent with soft edges and a bluer spectrum. The cloud colour is a
plausible top-of-atmosphere reflectance in all four bands (red, green, blue, nir): bright and
almost flat for thick cloud, blue-shifted for haze, with a brightness texture. An optional
shadow (the field shifted and used to darken the ground) is labelled clear, as in the Cloud Mask
Catalogue. All arrays are ``C x H x W`` in model channel order (red, green, blue, nir).
"""

from __future__ import annotations

import numpy as np

#: label ramp: opacity below LABEL_LO is clear, above LABEL_HI fully cloud, linear in between
LABEL_LO = 0.05
LABEL_HI = 0.20


def fractal_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ``1 / f**beta`` (bigger beta = smoother)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) / f ** (beta / 2.0)
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=shape)
    return ((noise - noise.mean()) / (noise.std() + 1e-9)).astype(np.float32)


def cloud_opacity(
    shape: tuple[int, int], thin: bool, rng: np.random.Generator, coverage: float | None = None
) -> np.ndarray:
    """Opacity ``alpha`` (H x W, 0..1) of one cloud field covering about ``coverage`` of it."""
    noise = fractal_noise(shape, rng.uniform(2.0, 3.2), rng)
    coverage = rng.uniform(0.05, 0.85) if coverage is None else coverage
    level = np.quantile(noise, 1.0 - coverage)
    softness = rng.uniform(0.6, 1.5) if thin else rng.uniform(0.1, 0.5)
    alpha = np.clip((noise - level) / softness, 0.0, 1.0)
    max_opacity = rng.uniform(0.15, 0.6) if thin else rng.uniform(0.85, 1.0)
    return (alpha * max_opacity).astype(np.float32)


def cloud_colour(thin: bool, rng: np.random.Generator) -> np.ndarray:
    """Reflectance of the cloud top in (red, green, blue, nir)."""
    if thin:
        b = rng.uniform(0.15, 0.5)
        factors = [1.0, rng.uniform(1.0, 1.08), rng.uniform(1.05, 1.25), rng.uniform(0.75, 1.0)]
    else:
        b = rng.uniform(0.35, 0.9)
        factors = [1.0, rng.uniform(0.98, 1.04), rng.uniform(1.0, 1.12), rng.uniform(0.88, 1.08)]
    return (b * np.asarray(factors, dtype=np.float32)).reshape(4, 1, 1)


def label_from_opacity(alpha: np.ndarray) -> np.ndarray:
    """Cloud target in [0, 1] from opacity (generous, like the On Cloud N labels)."""
    return np.clip((alpha - LABEL_LO) / (LABEL_HI - LABEL_LO), 0.0, 1.0).astype(np.float32)


def composite_clouds(
    reflectance: np.ndarray,
    rng: np.random.Generator,
    thin_probability: float = 0.5,
    shadow_probability: float = 0.5,
    max_reflectance: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Composite one random cloud field (and maybe its shadow) over ``reflectance``.

    Returns ``(new reflectance C x H x W float32, cloud target H x W float32 in [0, 1])``.
    """
    _, h, w = reflectance.shape
    thin = rng.random() < thin_probability
    alpha = cloud_opacity((h, w), thin, rng)
    ground = reflectance.astype(np.float32, copy=True)
    if rng.random() < shadow_probability:
        dy, dx = rng.integers(-40, 41, size=2)
        shadow = np.roll(alpha, (int(dy), int(dx)), axis=(0, 1))
        strength = rng.uniform(0.2, 0.5) if thin else rng.uniform(0.4, 0.75)
        ground *= 1.0 - strength * shadow / max(float(alpha.max()), 1e-6)
    texture = 1.0 + 0.12 * fractal_noise((h, w), rng.uniform(1.5, 2.5), rng)
    cloud = cloud_colour(thin, rng) * np.clip(texture, 0.6, 1.3)
    out = (1.0 - alpha) * ground + alpha * cloud
    return np.clip(out, 0.0, max_reflectance).astype(np.float32), label_from_opacity(alpha)
