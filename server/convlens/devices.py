"""Which device a process computes on: ``cpu`` or ``cuda:N`` for torch and ONNX Runtime alike.

A worker is told its device once at start (:func:`use`); a job asks only for a device class
(:data:`DEVICE_CLASSES`), and a worker takes the classes :func:`classes_served` names. The embedded server
chooses no device (``None``) and keeps its old behaviour: torch on the CPU, ONNX Runtime on CUDA where its CUDA
provider is installed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import BadInput

if TYPE_CHECKING:
    import torch

DEVICE_CLASSES = ("any", "cpu", "gpu")
"""What a job request's ``device`` field may ask for; ``any`` is the default."""

MAX_TEXT = 32
"""The longest device text read; anything longer is refused before it is parsed or echoed."""

MAX_CUDA_INDEX = 127
"""torch keeps a device index in a signed byte: ``torch.device("cuda:128")`` silently becomes ``cuda:-128``."""

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

_CUDA = re.compile(r"cuda:([0-9]+)")
_WRITTEN_AS = "a device is written cpu, cuda or cuda:N (N the GPU's number, from 0)"

_current: str | None = None


def parse_device(text: object) -> str:
    """``cpu`` or ``cuda:N`` from what a user wrote (``cuda`` means ``cuda:0``); ``BadInput`` naming
    ``device`` otherwise."""
    if not isinstance(text, str):
        raise BadInput("device", f"expected a string such as cpu or cuda:0, got {_json_type(text)}")
    if not text:
        raise BadInput("device", f"is empty; {_WRITTEN_AS}")
    if len(text) > MAX_TEXT:
        raise BadInput("device", f"is {len(text)} characters long; {_WRITTEN_AS}")
    if text in ("cpu", "cuda"):
        return "cpu" if text == "cpu" else "cuda:0"
    if text in DEVICE_CLASSES:
        raise BadInput("device", f"{text!r} is a class a job asks for, not a device; {_WRITTEN_AS}")
    if not text.isascii():
        raise BadInput("device", f"{text!r} has characters other than plain ASCII; {_WRITTEN_AS}")
    if text != text.strip():
        raise BadInput("device", f"{text!r} has spaces around it; {_WRITTEN_AS}")
    match = _CUDA.fullmatch(text)
    if match is None:
        if text.lower() in ("cpu", "cuda") or _CUDA.fullmatch(text.lower()):
            raise BadInput("device", f"{text!r}: write it in lower case ({text.lower()})")
        if text.startswith("cuda:-"):
            raise BadInput("device", f"{text!r}: a GPU's number is 0 or more")
        raise BadInput("device", f"{text!r} is not a device; {_WRITTEN_AS}")
    digits = match.group(1)
    if len(digits) > 1 and digits.startswith("0"):
        raise BadInput(
            "device", f"{text!r}: write the GPU's number without leading zeros (cuda:{int(digits)})"
        )
    index = int(digits)
    if index > MAX_CUDA_INDEX:
        raise BadInput("device", f"{text!r}: a GPU's number is at most {MAX_CUDA_INDEX}")
    return f"cuda:{index}"


def parse_device_class(value: object) -> str:
    """The device class a job asks for: ``any`` when not given, else one of :data:`DEVICE_CLASSES`."""
    if value is None:
        return "any"
    if not isinstance(value, str):
        raise BadInput("device", f"expected one of {', '.join(DEVICE_CLASSES)}, got {_json_type(value)}")
    if value in DEVICE_CLASSES:
        return value
    if len(value) > MAX_TEXT:
        raise BadInput(
            "device", f"is {len(value)} characters long; expected one of {', '.join(DEVICE_CLASSES)}"
        )
    if value == "cuda" or value.startswith("cuda:"):
        raise BadInput(
            "device",
            f"a job asks for a class of device ({', '.join(DEVICE_CLASSES)}), not {value!r}; use gpu",
        )
    raise BadInput("device", f"{value!r} is not a device class; expected one of {', '.join(DEVICE_CLASSES)}")


def device_class(device: str) -> str:
    """``cpu`` for ``cpu``, ``gpu`` for ``cuda:N``."""
    return "cpu" if parse_device(device) == "cpu" else "gpu"


def classes_served(device: str) -> list[str]:
    """The job classes a worker on ``device`` takes, the one it prefers first."""
    return [device_class(device), "any"]


def check_available(device: str, cuda_count: int | None = None, providers: list[str] | None = None) -> None:
    """``BadInput`` naming ``device`` when this process cannot compute on it with both torch and ONNX Runtime.

    ``cuda_count`` defaults to ``torch.cuda.device_count()``, ``providers`` to ONNX Runtime's available ones.
    """
    device = parse_device(device)
    if device == "cpu":
        return
    index = _index(device)
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count()
    if index >= cuda_count:
        seen = (
            "no CUDA device"
            if cuda_count == 0
            else f"{cuda_count} CUDA device(s), cuda:0 to cuda:{cuda_count - 1}"
        )
        raise BadInput("device", f"{device} is not available: torch sees {seen}")
    _require_cuda_provider(device, providers)


def ort_providers(device: str | None, available: list[str] | None = None) -> list:
    """The execution providers an ONNX Runtime session on ``device`` is given, in order of preference.

    ``None`` (no device chosen) puts CUDA first where its provider is installed, then the CPU.
    """
    if device is None:
        available = _ort_available() if available is None else available
        return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]
    device = parse_device(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    _require_cuda_provider(device, available)
    return [(CUDA_PROVIDER, {"device_id": _index(device)}), CPU_PROVIDER]


def use(device: str | None) -> None:
    """Make ``device`` this process's device (``None``: none chosen); for ``cuda:N`` also torch's current one.

    ``BadInput`` naming ``device``, and nothing changed, when it is not a device or cannot be used here.
    """
    global _current
    if device is None:
        _current = None
        return
    device = parse_device(device)
    if device != "cpu":
        import torch

        check_available(device)
        torch.cuda.set_device(_index(device))
    _current = device


def current() -> str | None:
    """The device :func:`use` chose, or ``None``."""
    return _current


def torch_device() -> torch.device:
    """The torch device to compute on: the chosen one, else the CPU."""
    import torch

    return torch.device(_current or "cpu")


def _index(device: str) -> int:
    return int(device.split(":", 1)[1])


def _ort_available() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _require_cuda_provider(device: str, providers: list[str] | None) -> None:
    providers = _ort_available() if providers is None else providers
    if CUDA_PROVIDER not in providers:
        raise BadInput(
            "device",
            f"{device} is not available: ONNX Runtime has no {CUDA_PROVIDER} (it has {', '.join(providers) or 'none'}); "
            "install onnxruntime-gpu",
        )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
