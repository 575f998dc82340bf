"""onnxruntime version awareness: provider options each version accepts, and the node placement report."""

import pytest

from edge.model.backends import onnxruntime as ort_backend

from .conftest import run


@pytest.mark.parametrize("version, timing_cache", [("1.10.0", False), ("1.11.1", False), ("1.14.1", False),
                                                   ("1.15.0", True), ("1.17.1+cu118", True), ("1.20.0rc1", True)])
def test_tensorrt_options_are_only_those_the_version_knows(version, timing_cache, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    options = ort_backend.tensorrt_options(bundle.models["fp16_uint8"], version)
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert ("trt_timing_cache_enable" in options) is timing_cache
    assert set(options.values()) - {"True"} <= {options["trt_engine_cache_path"]}  # no bools, no other values


def test_cuda_stays_after_tensorrt_so_the_uint8_cast_stays_on_the_gpu(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    chosen = ort_backend.choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider"], "auto", bundle.models["fp16_uint8"], "1.10.0")
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_nodes_are_counted_by_provider_from_a_profile():
    events = [{"cat": "Session", "name": "model_run", "args": {}},
              {"cat": "Node", "name": "Cast_0_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "Cast_0_fence_before", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "TRTKernel_graph_0_kernel_time",
               "args": {"provider": "TensorrtExecutionProvider"}},
              {"cat": "Node", "name": "Cast_0_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "Add_1_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
              {"cat": "Node", "name": "no_provider_kernel_time", "args": {}}]
    assert ort_backend.count_nodes_by_provider(events) == {"CUDAExecutionProvider": 2,
                                                           "TensorrtExecutionProvider": 1}
    assert ort_backend.count_nodes_by_provider({"not": "a list"}) == {}


def test_verbose_run_reports_where_the_nodes_ran(bundle):
    done = run("edge-classify", "-v", "--model", bundle.models["fp16_uint8"], "--image", bundle.photos / "coffee.jpg")
    assert done.code == 0, done.err
    placement = [line for line in done.err.splitlines() if "node placement" in line]
    assert len(placement) == 1 and "CPUExecutionProvider" in placement[0], done.err
