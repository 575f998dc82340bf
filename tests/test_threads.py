"""onnxruntime's CPU thread pool: defaults per provider, --threads, no spinning."""

import onnxruntime as ort
import pytest

from edge.model.backends.onnxruntime import CPU, CUDA, TENSORRT, OnnxRuntimeBackend, set_cpu_threads
from edge.cli import main

SPIN = "session.intra_op.allow_spinning"


def configured(providers, threads):
    options = ort.SessionOptions()
    set_cpu_threads(options, providers, threads)
    try:
        spinning = options.get_session_config_entry(SPIN)
    except Exception:  # onnxruntime raises its own Fail type when the entry was never set
        spinning = None
    return options.intra_op_num_threads, spinning


def test_cpu_provider_keeps_onnxruntime_defaults():
    assert configured([CPU], None) == (0, None)


@pytest.mark.parametrize("first", [CUDA, (TENSORRT, {"trt_fp16_enable": "True"})])
def test_gpu_provider_gets_one_thread_that_does_not_spin(first):
    assert configured([first, CPU], None) == (1, "0")


@pytest.mark.parametrize("providers", [[CPU], [CUDA, CPU]])
def test_threads_option_sizes_the_pool_without_spinning(providers):
    assert configured(providers, 3) == (3, "0")


def test_threads_must_be_positive(photo_onnx, capsys):
    """Checked once, with the other flags (edge.settings), before the model loads."""
    from edge.cli import main

    assert main(["--model", str(photo_onnx), "--image", "x.jpg", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads must be at least 1, not 0" in err


def test_session_runs_with_the_threads_asked_for(photo_onnx, photos):
    import numpy as np

    from edge.model.preprocess import resize_and_crop

    backend = OnnxRuntimeBackend(photo_onnx, device="cpu", threads=1)
    assert backend.session.get_session_options().intra_op_num_threads == 1
    batch = resize_and_crop(np.ascontiguousarray(photos["chelsea"][..., ::-1]), 256, 224)[None]
    assert backend.run(batch).shape == (1, len(photos))


def test_cli_threads_zero_is_a_usage_error(photo_onnx, photo_dir, capsys):
    code = main(["--model", str(photo_onnx), "--image", str(photo_dir / "chelsea.jpg"), "--threads", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--threads" in err
