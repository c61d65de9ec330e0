"""The 2D toy densities of the FFJORD paper, each a seeded generator ``(n, rng) -> (n, 2)``.

Definitions follow Grathwohl et al. (2019), ``lib/toy_data.py`` of the FFJORD code, so
likelihoods are comparable with figures computed on the same sets.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets as skd


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    """Swiss roll, (x, z) of scikit-learn's 3D roll with noise 1, divided by 5."""
    return skd.make_swiss_roll(n, noise=1.0, random_state=_seed(rng))[0][:, [0, 2]] / 5.0


def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles (noise 0.1), scaled by 2 and shifted by (-1, -0.2)."""
    x = skd.make_moons(n, noise=0.1, random_state=_seed(rng))[0]
    return x * 2 + np.array([-1.0, -0.2])


def circles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two concentric circles (factor 0.5, noise 0.08), scaled by 3."""
    return skd.make_circles(n, factor=0.5, noise=0.08, random_state=_seed(rng))[0] * 3


def rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four concentric circles of radii 3, 2.25, 1.5, 0.75 with N(0, 0.08^2) noise."""
    counts = [n - 3 * (n // 4)] + [n // 4] * 3
    parts = []
    for radius, count in zip((0.25, 0.5, 0.75, 1.0), counts):
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
        parts.append(np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius)
    x = np.concatenate(parts) * 3.0
    return rng.permutation(x) + rng.normal(scale=0.08, size=x.shape)


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight N(c, 0.5^2) blobs with centres at radius 4 every 45 degrees, divided by 1.414."""
    angles = np.arange(8) * np.pi / 4
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = rng.normal(scale=0.5, size=(n, 2)) + centres[rng.integers(8, size=n)]
    return x / 1.414


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five curved arms: radial/tangential noise 0.3/0.1, rotated by 0.25 * exp(radius)."""
    classes, per_class = 5, n // 5
    arms = np.linspace(0, 2 * np.pi, classes, endpoint=False)
    features = rng.normal(size=(n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    labels = np.concatenate(
        [np.repeat(np.arange(classes), per_class), rng.integers(classes, size=n - classes * per_class)]
    )
    angles = arms[labels] + 0.25 * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = np.stack(
        [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos], axis=1
    )
    return 2 * rng.permutation(rotated)


def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved spirals of 1.5 turns with uniform and N(0, 0.1^2) noise."""
    half = n // 2
    t = np.sqrt(rng.random((n - half, 1))) * 540 * (2 * np.pi) / 360
    arm = np.hstack(
        [-np.cos(t) * t + rng.random((n - half, 1)) * 0.5, np.sin(t) * t + rng.random((n - half, 1)) * 0.5]
    )
    x = np.vstack([arm, -arm[:half]]) / 3
    return x + rng.normal(size=x.shape) * 0.1


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform density on the dark squares of a 4x4 checkerboard over [-4, 4]^2."""
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


TOYS = {
    "moons": moons,
    "swissroll": swissroll,
    "circles": circles,
    "rings": rings,
    "8gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
}
