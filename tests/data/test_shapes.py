import numpy as np
import pytest

from ppl_ssvae.data import load
from ppl_ssvae.data.shapes import SHAPE_FACTORS, FactorImages, Shapes
from ppl_ssvae.errors import UserError


@pytest.fixture(scope="module")
def small_shapes():
    return Shapes(image_size=16, num_scales=2, num_rotations=3, num_positions=3)


def test_render_is_deterministic_and_in_unit_range(small_shapes):
    again = Shapes(image_size=16, num_scales=2, num_rotations=3, num_positions=3)
    assert np.array_equal(small_shapes.images, again.images)
    assert small_shapes.images.shape == (3 * 2 * 3 * 3 * 3, 256)
    assert small_shapes.images.dtype == np.float32
    assert small_shapes.images.min() == 0.0 and small_shapes.images.max() == 1.0
    # the covered area matches the shape's geometric area, so nothing is clipped
    r = small_shapes.scales[small_shapes.factors[:, 1]]
    area = np.array([2.0, np.pi / 2, 3 * np.sqrt(3) / 4])[small_shapes.factors[:, 0]] * r**2
    assert np.allclose(small_shapes.images.sum(1) / 256, area, rtol=0.15)  # 16 px: coarse


@pytest.mark.parametrize("column", range(len(SHAPE_FACTORS)))
def test_every_factor_changes_the_image(small_shapes, column):
    base = np.array([[1, 1, 1, 1, 1]])
    changed = base.copy()
    changed[0, column] = 0
    a, b = small_shapes.render(np.concatenate([base, changed]), image_size=16)
    assert np.abs(a - b).sum() > 1.0
    # the rendered grid agrees with render() on the same factors
    rng = np.random.default_rng(0)
    assert np.array_equal(small_shapes.sample_observations(base, rng)[0], a.reshape(-1))


def test_all_grid_images_are_distinct(small_shapes):
    assert len(np.unique(small_shapes.images.round(5), axis=0)) == len(small_shapes.images)


def test_sampling_is_seeded_and_shows_the_asked_factors(small_shapes):
    f1 = small_shapes.sample_factors(50, np.random.default_rng(3))
    f2 = small_shapes.sample_factors(50, np.random.default_rng(3))
    assert np.array_equal(f1, f2) and f1.shape == (50, 5)
    assert (f1 < np.array(small_shapes.factor_sizes)).all()
    x = small_shapes.sample_observations(f1, np.random.default_rng(0))
    rows = [np.flatnonzero((small_shapes.images == xi).all(1))[0] for xi in x]
    assert np.array_equal(small_shapes.factors[rows], f1)


def test_factor_images_draws_among_matching_rows():
    # two images per factor value (like Small-NORB's toy instances): both get drawn
    factors = np.array([[0], [0], [1], [1]])
    images = np.arange(4, dtype=np.float32)[:, None]
    data = FactorImages(images, factors, ["f"])
    x = data.sample_observations(np.zeros((200, 1), int), np.random.default_rng(0))
    assert set(x.ravel().tolist()) == {0.0, 1.0}


def test_factor_images_rejects_bad_input():
    with pytest.raises(UserError, match="every combination"):
        FactorImages(np.zeros((2, 3)), np.array([[0, 0], [1, 1]]), ["a", "b"])
    with pytest.raises(UserError, match="one name per column"):
        FactorImages(np.zeros((2, 3)), np.array([[0], [1]]), ["a", "b"])
    with pytest.raises(UserError, match="0 .. size-1"):
        FactorImages(np.zeros((2, 3)), np.array([[0], [2]]), ["a"], [2])
    with pytest.raises(UserError, match="image_size"):
        Shapes(image_size=0)


def test_load_shapes_dataset():
    ds = load("shapes")
    assert ds.name == "shapes" and ds.image_shape == (32, 32) and ds.class_names[0] == "square"
    assert len(ds.x_train) + len(ds.x_test) == 2592 and ds.x_train.shape[1] == 1024
    assert np.array_equal(ds.y_train, ds.extra["factors_train"][:, 0])
    assert np.bincount(ds.y_test).tolist() == [173] * 3  # stratified 20 %
    assert ds.extra["factor_names"] == SHAPE_FACTORS
    grid = ds.extra["factor_images"]
    rows = [np.flatnonzero((grid.images == xi).all(1))[0] for xi in ds.x_test[:20]]
    assert np.array_equal(grid.factors[rows], ds.extra["factors_test"][:20])
    again = load("shapes")
    assert np.array_equal(ds.x_train, again.x_train)


def test_load_shapes_label_choice():
    from ppl_ssvae.data.shapes import load_shapes

    ds = load_shapes(label="rotation")
    assert ds.num_classes == 6 and np.array_equal(ds.y_train, ds.extra["factors_train"][:, 2])
    with pytest.raises(UserError, match="choose one of"):
        load_shapes(label="colour")
