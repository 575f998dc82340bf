"""csi:// with --csi-resize: nvvidconv scales to the model's resize size in the Jetson's video hardware.

Nothing here can run the pipeline (no Jetson, and pip's OpenCV has no GStreamer); the pipeline text
and the sizes it asks for are what we can hold to the contract.
"""

import pytest

from edge.cli import main
from edge.model.preprocess import resized_size
from edge.sources.capture import SourceError, csi_pipeline, hardware_size, parse_source

PLAIN = ("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1, "
         "format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
         "appsink drop=1 max-buffers=1 sync=false")


def test_without_resize_the_pipeline_is_unchanged():
    assert csi_pipeline(0, None, None, None) == PLAIN


@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080), (3840, 2160), (1080, 1920)])
def test_hardware_scales_to_what_torchvision_resize_gives(width, height):
    out_w, out_h = hardware_size(width, height, 256)
    assert (out_h, out_w) == resized_size(height, width, 256)
    text = csi_pipeline(1, width, height, 60, resize=256)
    assert f"sensor-id=1 ! video/x-raw(memory:NVMM), width={width}, height={height}, framerate=60/1" in text
    assert f"nvvidconv interpolation-method=2 ! video/x-raw, width={out_w}, height={out_h}, format=BGRx" in text
    assert text.endswith("appsink drop=1 max-buffers=1 sync=false")


def test_never_enlarges():
    assert hardware_size(320, 240, 256) == (320, 240)


@pytest.mark.parametrize("kwargs", [{"camera": 0}, {"source": "rtsp://camera.local/stream"}])
def test_other_sources_refuse_csi_resize(kwargs):
    with pytest.raises(SourceError, match="--csi-resize"):
        parse_source(csi_resize=256, **kwargs)


def test_cli_csi_resize_with_a_usb_camera_is_a_usage_error(photo_onnx, capsys):
    code = main(["--model", str(photo_onnx), "--camera", "0", "--csi-resize"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--csi-resize" in err
