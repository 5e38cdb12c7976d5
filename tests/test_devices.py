"""Device selection for workers: parsing, what each device serves, ONNX Runtime providers, and run contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens import devices
from convlens.errors import BadInput
from convlens.methods import RunContext
from convlens.models.onnx import runtime_session

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def no_device_chosen():
    """Every test starts and ends as the embedded server runs: no device chosen."""
    devices.use(None)
    yield
    devices.use(None)


def relu_onnx() -> bytes:
    """A one-node ONNX model (Relu on 1x3x4x4), serialised."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["out"])],
        "relu",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def refusal(call, *args, **kwargs) -> BadInput:
    with pytest.raises(BadInput) as caught:
        call(*args, **kwargs)
    assert caught.value.field == "device"
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("text", "device"),
    [
        ("cpu", "cpu"),
        ("cuda", "cuda:0"),
        ("cuda:0", "cuda:0"),
        ("cuda:7", "cuda:7"),
        ("cuda:127", "cuda:127"),
    ],
)
def test_parse_device_accepts_cpu_and_cuda_n(text, device):
    assert devices.parse_device(text) == device


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (0, "got a number"),
        (1.5, "got a number"),
        (True, "got a boolean"),
        (None, "got null"),
        (["cuda:0"], "got a list"),
        ({"device": "cpu"}, "got an object"),
        ("", "is empty"),
        ("cuda:" + "0" * 40, "45 characters long"),
        ("cuda:١", "plain ASCII"),
        ("ｃｕｄａ:0", "plain ASCII"),
        ("cuda:99999999999999999999", "at most 127"),
        ("cuda:128", "at most 127"),
        ("cuda:-1", "0 or more"),
        (" cpu", "spaces"),
        ("cuda:0\n", "spaces"),
        ("cuda: 0", "not a device"),
        ("cuda:01", "without leading zeros"),
        ("CUDA:0", "lower case"),
        ("gpu", "not a device"),
        ("any", "not a device"),
        ("mps", "not a device"),
        ("cuda:", "not a device"),
    ],
)
def test_parse_device_refuses_what_is_not_a_device(value, said):
    error = refusal(devices.parse_device, value)
    assert said in error.reason
    # The cap applies before anything is echoed back.
    assert len(error.reason) < 200


@pytest.mark.parametrize("value", ["any", "cpu", "gpu"])
def test_parse_device_class_accepts_the_classes(value):
    assert devices.parse_device_class(value) == value


def test_parse_device_class_defaults_to_any():
    assert devices.parse_device_class(None) == "any"
    assert devices.DEVICE_CLASSES[0] == "any"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (1, "got a number"),
        (False, "got a boolean"),
        (["gpu"], "got a list"),
        ({}, "got an object"),
        ("", "not a device class"),
        ("g" * 33, "33 characters long"),
        ("cuda:0", "use gpu"),
        ("cuda", "use gpu"),
        ("GPU", "not a device class"),
        (" gpu", "not a device class"),
        ("ｇｐｕ", "not a device class"),
    ],
)
def test_parse_device_class_refuses_other_values(value, said):
    assert said in refusal(devices.parse_device_class, value).reason


def test_each_device_serves_its_own_class_before_any():
    assert devices.device_class("cpu") == "cpu"
    assert devices.device_class("cuda:3") == "gpu"
    assert devices.classes_served("cpu") == ["cpu", "any"]
    assert devices.classes_served("cuda:0") == ["gpu", "any"]
    assert devices.classes_served("cuda") == ["gpu", "any"]
    refusal(devices.classes_served, "gpu")


def test_check_available_with_explicit_counts_and_providers():
    both = [CUDA, CPU]
    devices.check_available("cpu", cuda_count=0, providers=[CPU])
    devices.check_available("cuda:1", cuda_count=2, providers=both)
    assert (
        "torch sees 2 CUDA device(s), cuda:0 to cuda:1"
        in refusal(devices.check_available, "cuda:2", cuda_count=2, providers=both).reason
    )
    assert (
        "torch sees no CUDA device"
        in refusal(devices.check_available, "cuda:0", cuda_count=0, providers=both).reason
    )
    assert (
        "install onnxruntime-gpu"
        in refusal(
            devices.check_available, "cuda:0", cuda_count=1, providers=["AzureExecutionProvider", CPU]
        ).reason
    )
    refusal(devices.check_available, "gpu", cuda_count=1, providers=both)


def test_check_available_on_this_machine_follows_torch_and_onnx_runtime():
    import onnxruntime

    usable = torch.cuda.device_count() > 0 and CUDA in onnxruntime.get_available_providers()
    if usable:
        devices.check_available("cuda:0")
    else:
        refusal(devices.check_available, "cuda:0")
    # No machine has this many GPUs.
    assert "not available" in refusal(devices.check_available, "cuda:127").reason


def test_ort_providers_by_device():
    both = [CUDA, CPU]
    assert devices.ort_providers(None, both) == [CUDA, CPU]
    assert devices.ort_providers(None, ["AzureExecutionProvider", CPU]) == [CPU]
    assert devices.ort_providers("cpu", both) == [CPU]
    assert devices.ort_providers("cuda:2", both) == [(CUDA, {"device_id": 2}), CPU]
    assert devices.ort_providers("cuda", both) == [(CUDA, {"device_id": 0}), CPU]
    assert "install onnxruntime-gpu" in refusal(devices.ort_providers, "cuda:0", [CPU]).reason
    refusal(devices.ort_providers, "gpu", both)


def test_a_session_after_use_cpu_runs_on_the_cpu_provider_only():
    devices.use("cpu")
    assert devices.current() == "cpu"
    assert devices.torch_device() == torch.device("cpu")
    session = runtime_session(relu_onnx(), threads=1)
    assert session.get_providers() == [CPU]
    pixels = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    np.testing.assert_array_equal(session.run(None, {"image": pixels})[0], np.maximum(pixels, 0))


def test_use_none_restores_the_embedded_servers_providers():
    import onnxruntime

    devices.use("cpu")
    devices.use(None)
    assert devices.current() is None
    assert devices.torch_device() == torch.device("cpu")
    expected = [CUDA, CPU] if CUDA in onnxruntime.get_available_providers() else [CPU]
    assert runtime_session(relu_onnx(), threads=1).get_providers() == expected


def test_a_session_on_a_cuda_device_needs_onnx_runtimes_cuda_provider(monkeypatch):
    import onnxruntime

    # As a worker started on cuda:0 has it; set directly, as use() refuses a GPU this machine may not have.
    monkeypatch.setattr(devices, "_current", "cuda:0")
    if CUDA in onnxruntime.get_available_providers():
        assert runtime_session(relu_onnx(), threads=1).get_providers()[0] == CUDA
    else:
        assert "install onnxruntime-gpu" in refusal(runtime_session, relu_onnx(), threads=1).reason


def test_use_refuses_a_device_it_cannot_use_and_keeps_the_old_one():
    import onnxruntime

    devices.use("cpu")
    refusal(devices.use, "gpu")
    refusal(devices.use, "cuda:127")
    assert devices.current() == "cpu"
    usable = torch.cuda.device_count() > 0 and CUDA in onnxruntime.get_available_providers()
    if usable:
        devices.use("cuda")
        assert devices.current() == "cuda:0"
        assert devices.torch_device() == torch.device("cuda:0")
    else:
        refusal(devices.use, "cuda")
        assert devices.current() == "cpu"


def test_run_context_device_defaults_to_cpu_and_model_input_is_on_it(tiny_model, sample_image):
    from convlens.images import to_tensor

    image = sample_image.astype(np.float32) / 255
    ctx = RunContext(model=tiny_model, image=image, params={})
    assert ctx.device == "cpu"
    tensor = ctx.model_input()
    assert tensor.device == torch.device("cpu")
    assert torch.equal(tensor, to_tensor(image, tiny_model.input_size))


def test_run_context_takes_the_process_device(tiny_model, sample_image, monkeypatch):
    image = sample_image.astype(np.float32) / 255
    monkeypatch.setattr(devices, "_current", "cuda:0")
    assert RunContext(model=tiny_model, image=image, params={}).device == "cuda:0"
    assert RunContext(model=tiny_model, image=image, params={}, device="cpu").device == "cpu"


def test_model_input_is_moved_to_the_context_device(tiny_model, sample_image):
    # "meta" is a real torch device every machine has: a tensor there has a shape but no storage.
    image = sample_image.astype(np.float32) / 255
    tensor = RunContext(model=tiny_model, image=image, params={}, device="meta").model_input((8, 8))
    assert tensor.device.type == "meta"
    assert tuple(tensor.shape) == (1, 3, 8, 8)
