"""The device's preprocessing against torchvision's eval transform on real photos, in grey levels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from reference import seed_crop, seed_transform

from edge.model.artifact import ModelSpec
from edge.model.preprocess import Preprocessor, crop_plan, prefilter_kernel, reduction_block, resize_and_crop, resized_size

# Bounds measured on these photos (max / mean |difference| in grey levels, share of values off by more than 2).
# Plain cv2.resize INTER_LINEAR + crop is off by up to ~150 levels on the same photos.
MAX_DIFF, MEAN_DIFF, SHARE_OFF_BY_3 = 17, 0.65, 0.03
# HD and 4K frames (block-averaged first, then the fitted filter): the bound on the mean.
HD_MAX_DIFF, HD_MEAN_DIFF = 20, 0.5


torchvision_crop = seed_crop


def diff_stats(ours: np.ndarray, reference: np.ndarray):
    d = np.abs(ours.astype(int) - reference.astype(int))
    return d.max(), d.mean(), (d > 2).mean()


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
                                  "frame640"])
def test_matches_torchvision_resize_and_center_crop(name, photos):
    rgb = photos[name]
    ours = resize_and_crop(np.ascontiguousarray(rgb[..., ::-1]), 256, 224)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    worst, mean, share = diff_stats(ours, torchvision_crop(rgb))
    assert worst <= MAX_DIFF and mean <= MEAN_DIFF and share <= SHARE_OFF_BY_3, (worst, mean, share)


def upscaled(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """A real photo at a camera's or a phone's size (bicubic, so edges stay sharp)."""
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080), (3840, 2160), (3024, 4032)])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "hubble_deep_field"])
def test_hd_and_4k_frames_match_torchvision(name, width, height, photos):
    """Large frames go through the block average; the result stays within half a grey level of torchvision."""
    rgb = upscaled(photos[name], width, height)
    ours = resize_and_crop(np.ascontiguousarray(rgb[..., ::-1]), 256, 224)
    worst, mean, _ = diff_stats(ours, torchvision_crop(rgb))
    assert worst <= HD_MAX_DIFF and mean <= HD_MEAN_DIFF, (worst, mean)


def test_block_average_rounding_is_taken_back(photos):
    """Each 2x2 halving rounds halves up; without the correction a 4K frame comes out ~0.25 level too bright."""
    rgb = upscaled(photos["hubble_deep_field"], 3840, 2160)
    assert crop_plan(2160, 3840, 256, 224).block == 4
    ours = resize_and_crop(np.ascontiguousarray(rgb[..., ::-1]), 256, 224)
    signed = (ours.astype(float) - torchvision_crop(rgb).astype(float)).mean()
    assert abs(signed) < 0.08, signed


def test_block_is_a_power_of_two_that_leaves_the_filter_two_to_four_times_to_shrink():
    assert [reduction_block(s) for s in (1.0, 2.5, 3.99, 4.0, 4.2, 8.4, 15.9, 16.0)] == [1, 1, 1, 2, 2, 4, 4, 8]


def test_prefilter_with_blocks_keeps_flat_areas_flat():
    for scale, block in ((4.2, 2), (8.4375, 4), (11.8, 4)):
        kernel = prefilter_kernel(scale, block)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and len(kernel) <= 2 * int(np.ceil(scale / block)) + 3
    flat = np.full((2160, 3840, 3), 37, np.uint8)
    assert (resize_and_crop(flat, 256, 224) == 37).all()


def test_naive_opencv_resize_would_fail_these_bounds(photos):
    """The bounds above are tight enough to catch the usual shortcut."""
    rgb = photos["coffee"]
    h, w = resized_size(*rgb.shape[:2], 256)
    naive = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    worst, mean, _ = diff_stats(naive[top:top + 224, left:left + 224], torchvision_crop(rgb))
    assert worst > MAX_DIFF or mean > MEAN_DIFF


@pytest.mark.parametrize("size", [(100, 150), (224, 224), (300, 120), (257, 1000)])
def test_small_and_odd_sizes(size, photos):
    """Images smaller than the resize are enlarged (plain bilinear, as PIL does), odd aspect ratios cropped."""
    h, w = size
    rgb = cv2.resize(photos["astronaut"], (w, h), interpolation=cv2.INTER_AREA)
    ours = resize_and_crop(np.ascontiguousarray(rgb[..., ::-1]), 256, 224)
    worst, mean, _ = diff_stats(ours, torchvision_crop(rgb))
    assert mean <= 1.0 and worst <= 24, (worst, mean)


def test_inception_sizes(photos):
    rgb = photos["rocket"]
    ours = resize_and_crop(np.ascontiguousarray(rgb[..., ::-1]), 342, 299)
    worst, mean, _ = diff_stats(ours, torchvision_crop(rgb, 342, 299))
    assert ours.shape == (299, 299, 3) and worst <= MAX_DIFF and mean <= MEAN_DIFF


def test_prefilter_is_exact_at_scale_two_and_sums_to_one():
    np.testing.assert_allclose(prefilter_kernel(2.0), [0, 0.25, 0.5, 0.25, 0], atol=1e-6)
    for scale in (1.17, 1.5625, 1.877, 3.3):
        assert prefilter_kernel(scale).sum() == pytest.approx(1.0, abs=1e-5)
    assert len(prefilter_kernel(0.7)) == 1  # enlarging: no prefilter


def test_plan_touches_only_the_crop_region():
    plan = crop_plan(1080, 1920, 256, 224)
    y0, y1, x0, x1 = plan.region
    # 224/256 of the height, and the middle 224 of 455 resized columns, plus a few pixels of filter reach.
    assert y1 - y0 < 1080 * 224 / 256 + 20 and x1 - x0 < 1920 * 224 / 455 + 20


def test_gray_and_bgra_frames_become_three_channels(photos):
    spec = ModelSpec(labels=("a", "b"), input_side=224, resize_side=256)
    gray = photos["camera"][..., 0]
    bgra = cv2.cvtColor(np.ascontiguousarray(photos["chelsea"][..., ::-1]), cv2.COLOR_BGR2BGRA)
    prep = Preprocessor(spec)
    assert prep(gray).shape == prep(bgra).shape == (224, 224, 3)
    with pytest.raises(ValueError):
        prep(np.zeros((10, 10, 2), np.uint8))


def test_float_input_is_torchvision_to_tensor_and_normalize(photos):
    import torch

    spec = ModelSpec(labels=("a",), input_side=224, resize_side=256, input_kind="float")
    rgb = photos["chelsea"]
    ours = Preprocessor(spec)(np.ascontiguousarray(rgb[..., ::-1]))
    assert spec.mean == tuple(seed_transform().transforms[-1].mean)  # the artifact's default is the seed's
    reference = seed_transform()(Image.fromarray(rgb))
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    # One grey level is 1/(255*0.225) ~ 0.017 after normalisation; the mean stays within a fraction of one.
    diff = np.abs(ours - reference.numpy())
    assert diff.mean() < 0.65 * 0.0175 and isinstance(reference, torch.Tensor)
