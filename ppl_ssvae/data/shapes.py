"""Images with known generative factors, for the betaVAE disentanglement score.

The π-VAE paper (Berkhahn et al., sec. 4) scores representations with the betaVAE
metric (Higgins et al., 2017) on Small-NORB, whose factors (category, elevation,
azimuth, lighting) are known for every image. Small-NORB cannot be fetched offline, so
this module ships a procedural stand-in in the spirit of dSprites: white shapes on black,
rendered with numpy from five discrete factors (shape, scale, rotation, x, y).

Two pieces:

* :class:`FactorImages` — any image set whose rows carry discrete factor values. It
  answers the two questions the metric asks, "draw factor values" and "show me an image
  with these factor values", by looking images up (a random one when several share the
  values, e.g. Small-NORB's toy instances). The Small-NORB loader builds one, too.
* :class:`Shapes` — renders the full factor grid once (a couple of seconds) and is a
  :class:`FactorImages`; :func:`load_shapes` turns it into a labelled
  :class:`~ppl_ssvae.data.datasets.Dataset` for training.

Example:
    >>> import numpy as np
    >>> shapes = Shapes(num_positions=4)
    >>> rng = np.random.default_rng(0)
    >>> f = shapes.sample_factors(5, rng)
    >>> shapes.sample_observations(f, rng).shape
    (5, 1024)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from .dataset import Dataset

SHAPE_NAMES = ("square", "ellipse", "triangle")
SHAPE_FACTORS = ("shape", "scale", "rotation", "x", "y")


class FactorImages:
    """Flattened images with discrete generative factors, sampled the betaVAE way.

    Factor ``k`` takes the values ``0 .. factor_sizes[k] - 1``. Every combination of
    values must occur at least once, because the metric draws each factor independently
    and uniformly (Higgins et al., 2017, "sample v ~ p(v)") and then asks for an image
    with exactly those values. Images sharing all values (Small-NORB's five toy instances
    per category) are drawn uniformly, i.e. the extra factor is marginalised out as in
    disentanglement_lib's split state space.

    Args:
        images: (N, D) float32 array, one flattened image per row.
        factors: (N, K) integer factor values of each row.
        factor_names: K names, in column order.
        factor_sizes: number of values of each factor; defaults to ``max + 1`` per column.
        image_shape: shape of one image, for display and CNNs.
    """

    def __init__(
        self,
        images: np.ndarray,
        factors: np.ndarray,
        factor_names: Sequence[str],
        factor_sizes: Sequence[int] | None = None,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        images = np.asarray(images)
        factors = np.asarray(factors)
        if images.ndim != 2 or factors.ndim != 2 or len(images) != len(factors):
            raise UserError(
                f"FactorImages needs images (N, D) and factors (N, K) with the same N; got "
                f"{images.shape} and {factors.shape}: flatten the images, one row per image"
            )
        if factors.shape[1] != len(factor_names):
            raise UserError(
                f"{factors.shape[1]} factor columns but {len(factor_names)} factor_names; "
                "give one name per column"
            )
        if factor_sizes is None:
            factor_sizes = factors.max(0) + 1 if len(factors) else [1] * len(factor_names)
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != factors.shape[1] or factors.min(initial=0) < 0 or (factors >= sizes).any():
            raise UserError(
                f"factor values must lie in 0 .. size-1 for sizes {sizes}; "
                "re-code the factors as integer ids"
            )
        codes = np.ravel_multi_index(factors.T.astype(np.int64), sizes)
        order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[order]
        self._order = order
        present = len(np.unique(codes))
        if present != int(np.prod(sizes)):
            raise UserError(
                f"only {present} of the {int(np.prod(sizes))} factor combinations {sizes} have "
                "an image; the betaVAE score needs every combination (drop or merge factors)"
            )
        self.images = images
        self.factors = factors.astype(np.int64)
        self.factor_names = tuple(factor_names)
        self.factor_sizes = sizes
        self.image_shape = image_shape

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, split: str = "test", factors: Sequence[str] | None = None
    ) -> FactorImages:
        """The images of one split of a dataset whose ``extra`` holds its factors.

        Works for any loader that stores ``factor_names``, ``factor_sizes`` and
        ``factors_train``/``factors_test`` (Small-NORB does). ``factors`` defaults to
        ``extra["metric_factors"]`` (Small-NORB: category, elevation, azimuth, lighting,
        as in the paper's App. A.4), else all factors; the others (Small-NORB's toy
        instance) are marginalised out. For shapes, use ``extra["factor_images"]``:
        a split holds only part of the grid.
        """
        if split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got {split!r}")
        names = tuple(dataset.extra.get("factor_names", ()))
        if not names:
            raise UserError(
                f"dataset {dataset.name!r} has no known factors (extra['factor_names'])"
            )
        if factors is None:
            factors = tuple(dataset.extra.get("metric_factors", names))
        unknown = [f for f in factors if f not in names]
        if unknown or not factors:
            raise UserError(
                f"unknown factor(s) {unknown or list(factors)}; choose from {', '.join(names)}"
            )
        columns = [names.index(f) for f in factors]
        sizes = [dataset.extra["factor_sizes"][c] for c in columns]
        x = dataset.x_train if split == "train" else dataset.x_test
        values = dataset.extra[f"factors_{split}"][:, columns]
        return cls(x, values, tuple(factors), sizes, dataset.image_shape)

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` factor rows, each factor uniform and independent: (n, K) int64."""
        return np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1)

    def sample_observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One image per factor row: (n, D), a uniformly chosen one where several match."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise UserError(f"factors must have shape (n, {self.num_factors}); got {factors.shape}")
        codes = np.ravel_multi_index(factors.T.astype(np.int64), self.factor_sizes)
        start = np.searchsorted(self._sorted_codes, codes, side="left")
        count = np.searchsorted(self._sorted_codes, codes, side="right") - start
        # count >= 1 everywhere: the constructor checked that every combination exists.
        pick = start + (rng.random(len(codes)) * count).astype(np.int64)
        return self.images[self._order[pick]]


def _inside(shape: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in the shape's own frame, lie in a shape of circumradius r."""
    if shape == 0:  # square with corners on the circle
        return np.maximum(np.abs(u), np.abs(v)) <= r / np.sqrt(2)
    if shape == 1:  # 2:1 ellipse, so that rotation is visible (a disc would hide it)
        return (u / r) ** 2 + (2 * v / r) ** 2 <= 1
    # equilateral triangle, apex up: inside all three edges at distance r/2 from the centre
    inside = np.ones(u.shape, dtype=bool)
    for angle in (np.pi / 2 * 3, np.pi / 6, np.pi / 6 * 5):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= r / 2
    return inside


class Shapes(FactorImages):
    """Procedural shapes with five known discrete factors (a numpy dSprites).

    Factors, in column order: ``shape`` (square, ellipse, triangle), ``scale``
    (circumradius 0.14–0.24 of the image width), ``rotation`` (``num_rotations`` steps in
    [0°, 90°), so no two steps coincide for any of the three shapes), ``x`` and ``y``
    (centre in [0.26, 0.74] of the width/height, so the largest shape stays inside).
    Each pixel is the covered fraction of a ``supersample``² sub-pixel grid, so
    sub-pixel moves and small rotations still change the image. Rendering has no
    randomness: the same arguments give the same images.

    Args:
        image_size: height and width in pixels.
        num_scales: values of the scale factor; the grid has
            ``3 * num_scales * num_rotations * num_positions**2`` images.
        num_rotations: values of the rotation factor.
        num_positions: values of each position factor (x and y).
        supersample: sub-pixels per pixel side (anti-aliasing).
    """

    def __init__(
        self,
        image_size: int = 32,
        num_scales: int = 4,
        num_rotations: int = 6,
        num_positions: int = 6,
        supersample: int = 4,
    ) -> None:
        for name, value in [
            ("image_size", image_size),
            ("num_scales", num_scales),
            ("num_rotations", num_rotations),
            ("num_positions", num_positions),
            ("supersample", supersample),
        ]:
            if int(value) != value or value < 1:
                raise UserError(f"Shapes: {name} must be a positive integer, got {value!r}")
        self.scales = np.linspace(0.14, 0.24, num_scales) if num_scales > 1 else np.array([0.19])
        self.rotations = np.arange(num_rotations) * (np.pi / 2 / num_rotations)
        self.positions = (
            np.linspace(0.26, 0.74, num_positions) if num_positions > 1 else np.array([0.5])
        )
        sizes = (len(SHAPE_NAMES), num_scales, num_rotations, num_positions, num_positions)
        grid = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
        images = self.render(grid, image_size, supersample)
        super().__init__(
            images.reshape(len(grid), -1), grid, SHAPE_FACTORS, sizes, (image_size, image_size)
        )

    def render(self, factors: np.ndarray, image_size: int, supersample: int = 4) -> np.ndarray:
        """Draw images of the given factor rows: (n, image_size, image_size) float32 in [0, 1]."""
        factors = np.asarray(factors, dtype=np.int64)
        s = image_size * supersample
        # sub-pixel centres in [0, 1]; rows are y, columns are x
        coords = (np.arange(s) + 0.5) / s
        out = np.empty((len(factors), image_size, image_size), dtype=np.float32)
        for shape in range(len(SHAPE_NAMES)):
            rows = np.flatnonzero(factors[:, 0] == shape)
            # chunks keep the (chunk, s, s) temporaries around 10 MB each
            for chunk in np.array_split(rows, max(1, len(rows) // 128)):
                if len(chunk) == 0:
                    continue
                f = factors[chunk]
                r = self.scales[f[:, 1]][:, None, None]
                theta = self.rotations[f[:, 2]][:, None, None]
                dx = coords[None, None, :] - self.positions[f[:, 3]][:, None, None]
                # image rows grow downwards; flip so that positive angles turn anticlockwise
                dy = self.positions[f[:, 4]][:, None, None] - coords[None, :, None]
                u = np.cos(theta) * dx + np.sin(theta) * dy
                v = -np.sin(theta) * dx + np.cos(theta) * dy
                covered = _inside(shape, u, v, r).astype(np.float32)
                blocks = covered.reshape(len(chunk), image_size, supersample, image_size, -1)
                out[chunk] = blocks.mean(axis=(2, 4))
        return out


def load_shapes(
    data_dir: str | Path | None = None,
    *,
    label: str = "shape",
    image_size: int = 32,
    test_size: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The full :class:`Shapes` grid (2592 images of 32x32) as a labelled dataset.

    ``data_dir`` is ignored (nothing is read from disk); it is there so every loader has
    the same signature. ``y`` is one chosen factor (``label``); all factors live in
    ``extra``: ``factor_names``, ``factor_sizes``, ``factors_train``/``factors_test``
    (one row per image) and ``factor_images`` (the :class:`Shapes` object, for
    :func:`ppl_ssvae.evaluation.metrics.beta_vae_score`). The train/test split is stratified by the
    label and fixed by ``seed``.
    """
    if label not in SHAPE_FACTORS:
        raise UserError(f"unknown shapes label {label!r}; choose one of {', '.join(SHAPE_FACTORS)}")
    if not 0 < test_size < 1:
        raise UserError(f"test_size must be a fraction in (0, 1), got {test_size}")
    shapes = Shapes(image_size=image_size)
    column = SHAPE_FACTORS.index(label)
    y = shapes.factors[:, column]
    rng = np.random.default_rng(seed)
    # stratified: the same share of every label value goes to the test split
    test = np.zeros(len(y), dtype=bool)
    for value in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == value))
        test[rows[: int(round(test_size * len(rows)))]] = True
    train = np.flatnonzero(~test)
    test = np.flatnonzero(test)
    train, test = rng.permutation(train), rng.permutation(test)
    names = (
        list(SHAPE_NAMES)
        if label == "shape"
        else [str(v) for v in range(shapes.factor_sizes[column])]
    )
    return Dataset(
        name="shapes",
        x_train=shapes.images[train],
        y_train=y[train],
        x_test=shapes.images[test],
        y_test=y[test],
        class_names=names,
        image_shape=shapes.image_shape,
        support="unit",
        default_validation_size=len(train) // 10,
        source="ppl_ssvae.data.shapes (procedural)",
        extra={
            "factor_names": shapes.factor_names,
            "factor_sizes": shapes.factor_sizes,
            "factors_train": shapes.factors[train],
            "factors_test": shapes.factors[test],
            "factor_images": shapes,
        },
    )
