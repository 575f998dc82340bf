"""The device's preprocessing against torchvision's eval transform on real photos, in grey levels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from cli_checks import usage_error
from reference import crop_reference, seed_crop, seed_transform

from edge.errors import EdgeError
from edge.model.artifact import ModelSpec
from edge.model.classify import Classifier, ClassifyError
from edge.model.preprocess import (Preprocessor, RoiError, apply_roi, crop_plan, mean_colour, prefilter_kernel,
                                   reduction_block, resize_and_crop, resized_size)

# Bounds measured on these photos (max / mean |difference| in grey levels, share of values off by more than 2).
# Plain cv2.resize INTER_LINEAR + crop is off by up to ~150 levels on the same photos.
MAX_DIFF, MEAN_DIFF, SHARE_OFF_BY_3 = 17, 0.65, 0.03
# HD and 4K frames (block-averaged first, then the fitted filter): the bound on the mean.
HD_MAX_DIFF, HD_MEAN_DIFF = 20, 0.5
# --crop full and letterbox against their torchvision references (tests/reference.py: crop_reference), on the
# photos at their own size, 1280x720 and 4K: measured at most 16 levels and 0.37 mean (benchmarks/bench_crop.py).
CROP_MAX_DIFF, CROP_MEAN_DIFF = 20, 0.5
IMAGENET_FILL = (124, 116, 104)  # the ImageNet mean x 255, rounded: letterbox's borders for a uint8-input model


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


def bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])


@pytest.mark.parametrize("crop", ["full", "letterbox"])
@pytest.mark.parametrize("name,size", [(n, "own") for n in ("astronaut", "chelsea", "coffee", "rocket", "camera",
                                                              "hubble_deep_field", "frame640")]
                         + [(n, "1280x720") for n in ("astronaut", "coffee", "frame640")]
                         + [(n, "3840x2160") for n in ("coffee", "hubble_deep_field")] + [("rocket", "720x1280")])
def test_full_and_letterbox_match_torchvision(crop, name, size, photos):
    """The whole frame squeezed (``Resize((224, 224))``) or fitted (``Resize`` to 224 on the longer side, padded);
    at the photo's own size, or scaled to a camera's (portrait too)."""
    rgb = photos[name] if size == "own" else upscaled(photos[name], *map(int, size.split("x")))
    ours = resize_and_crop(bgr(rgb), 256, 224, crop, IMAGENET_FILL)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    worst, mean, _ = diff_stats(ours, crop_reference(rgb, crop, fill=IMAGENET_FILL))
    assert worst <= CROP_MAX_DIFF and mean <= CROP_MEAN_DIFF, (worst, mean)


def test_center_is_the_default_and_only_the_other_modes_read_the_whole_frame(photos):
    frame = bgr(upscaled(photos["coffee"], 1280, 720))
    spec = ModelSpec(labels=("a",), input_side=224, resize_side=256)
    np.testing.assert_array_equal(Preprocessor(spec)(frame), Preprocessor(spec, "center")(frame))
    assert Preprocessor(spec).crop == "center"
    y0, y1, x0, x1 = crop_plan(720, 1280, 256, 224).region
    assert x1 - x0 < 1280 * 224 / 455 + 20  # center: the middle 224 of 455 resized columns
    for crop in ("full", "letterbox"):
        assert crop_plan(720, 1280, 256, 224, crop).region == (0, 720, 0, 1280)
    with pytest.raises(ValueError, match="unknown crop mode 'wide'"):
        Preprocessor(spec, "wide")


@pytest.mark.parametrize("size,picture,offset", [((1280, 720), (126, 224), (49, 0)), ((720, 1280), (224, 126), (0, 49)),
                                                 ((1000, 560), (125, 224), (49, 0)), ((640, 480), (168, 224), (28, 0))])
def test_letterbox_centres_the_picture_on_the_mean_colour(size, picture, offset, photos):
    """uint8 models: borders are the mean x 255 rounded; float models: exactly 0 after normalising."""
    width, height = size
    frame = bgr(upscaled(photos["astronaut"], width, height))
    plan = crop_plan(height, width, 256, 224, "letterbox")
    assert plan.size == picture and plan.offset == offset
    top, left = offset
    inside = np.zeros((224, 224), bool)
    inside[top:top + picture[0], left:left + picture[1]] = True
    uint8 = Preprocessor(ModelSpec(labels=("a",), input_side=224, resize_side=256), "letterbox")(frame)
    assert mean_colour(ModelSpec(labels=("a",), input_side=224, resize_side=256).mean) == IMAGENET_FILL
    assert (uint8[~inside] == IMAGENET_FILL).all() and uint8[inside].std() > 20
    spec = ModelSpec(labels=("a",), input_side=224, resize_side=256, input_kind="float")
    floats = Preprocessor(spec, "letterbox")(frame)
    assert floats.shape == (3, 224, 224) and floats.flags.c_contiguous
    assert (floats[:, ~inside] == 0.0).all() and floats[:, inside].std() > 0.3


def test_roi_is_a_view_of_the_frame():
    frame = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3).astype(np.uint8)
    region = apply_roi(frame, (600, 10, 40, 100))
    assert region.shape == (100, 40, 3) and np.shares_memory(region, frame)
    np.testing.assert_array_equal(region, frame[10:110, 600:640])
    assert apply_roi(frame, None) is frame and apply_roi(frame, (0, 0, 640, 480)).shape == frame.shape


@pytest.mark.parametrize("roi,message", [
    ((600, 0, 100, 100), "--roi 600,0,100,100 is outside the 640x480 frame (x+w = 700 > 640)"),
    ((0, 400, 641, 81), "--roi 0,400,641,81 is outside the 640x480 frame (x+w = 641 > 640, y+h = 481 > 480)"),
    ((-1, 0, 10, 10), "--roi -1,0,10,10: x and y must be 0 or more, w and h at least 1"),
    ((0, 0, 0, 10), "--roi 0,0,0,10: x and y must be 0 or more, w and h at least 1"),
])
def test_roi_outside_the_frame_is_one_line(roi, message):
    with pytest.raises(RoiError) as caught:
        apply_roi(np.zeros((480, 640, 3), np.uint8), roi)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, EdgeError)


def test_classifier_prepares_only_the_roi_with_its_crop(photos):
    """The model sees the ROI, cropped as --crop says; an ROI outside the frame is a RoiError, not a bad frame."""
    spec = ModelSpec(labels=("a", "b"), input_side=224, resize_side=256)
    classifier = Classifier(None, spec, topk=1, crop="letterbox")  # type: ignore[arg-type]  # prepare needs no model
    frame = bgr(upscaled(photos["coffee"], 1280, 720))
    roi = (320, 0, 640, 720)
    expected = Preprocessor(spec, "letterbox")(np.ascontiguousarray(frame[:, 320:960]))
    np.testing.assert_array_equal(classifier.prepare(frame, roi=roi)[0], expected)
    assert classifier.crop == "letterbox" and classifier.prepare(frame).shape == (1, 224, 224, 3)
    with pytest.raises(RoiError):
        classifier.prepare(frame, roi=(1000, 0, 640, 720))
    with pytest.raises(ClassifyError, match="--crop: unknown crop mode"):
        Classifier(None, spec, crop="wide")  # type: ignore[arg-type]


@pytest.mark.parametrize("argv,needles", [
    (["--crop", "wide"], ["--crop", "invalid choice: 'wide'"]),
    (["--roi", "1,2,3"], ["--roi", "X,Y,W,H", "'1,2,3'"]),
    (["--roi", "a,b,c,d"], ["--roi", "X,Y,W,H"]),
    (["--roi", "0,-1,10,10"], ["--roi", "X,Y,W,H", "0,-1,10,10"]),
    (["--roi", "0,0,10,0"], ["--roi", "at least 1"]),
])
def test_crop_and_roi_usage_errors_are_one_line(argv, needles, capsys):
    from edge.cli import main

    usage_error(main(["--image", "cat.jpg", *argv]), capsys.readouterr().err, "edge-classify", *needles)


def test_crop_and_roi_reach_the_settings_and_the_model(monkeypatch, capsys, tmp_path):
    from edge.cli import build_parser, main
    from edge.settings import settings_from_args

    settings = settings_from_args(build_parser().parse_args(["--camera", "0", "--crop", "full", "--roi", "1,2,30,40"]))
    assert settings.crop == "full" and settings.roi == (1, 2, 30, 40)
    defaults = settings_from_args(build_parser().parse_args(["--camera", "0"]))
    assert defaults.crop == "center" and defaults.roi is None
    opened = {}

    def fake_open(model, **kwargs):
        opened.update(kwargs)
        raise ClassifyError("no model here")

    monkeypatch.setattr(Classifier, "open", staticmethod(fake_open))
    image = tmp_path / "cat.jpg"
    assert cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    code = main(["--model", str(tmp_path / "m.onnx"), "--image", str(image), "--crop", "letterbox"])
    assert code == 2 and opened["crop"] == "letterbox" and "no model here" in capsys.readouterr().err


def test_edge_service_passes_crop_and_roi_through(model_file):
    from edge.service.cli import ServiceError, edge_flags

    flags = edge_flags(model_file, ("--source", "csi://0"), ["--crop", "letterbox", "--roi", "0,0,640,360"])
    assert flags.crop == "letterbox" and flags.roi == (0, 0, 640, 360)
    with pytest.raises(ServiceError, match="--roi"):
        edge_flags(model_file, ("--source", "csi://0"), ["--roi", "0,0,640"])
