"""Shared fixtures: the real default model files, an app, and a real server on 127.0.0.1."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from convlens import testing
from local import FORWARD_ONLY, REPO, start_serve

pytest_plugins = ["no_skips_in_ci", "redis_fixtures"]

MODELS_DIR = REPO / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The checkout's models/ with the default model written in all three formats (as `make run` does)."""
    from convlens.models.default import ensure_default_models

    ensure_default_models(MODELS_DIR, log=lambda message: print(message, file=sys.stderr))
    return MODELS_DIR


@pytest.fixture(scope="module")
def default_model(models_dir: Path):
    """The default model (EfficientNet-Lite0, ONNX), loaded once per test module."""
    from convlens.models.default import DEFAULT_MODEL_ID
    from convlens.models.store import ModelStore

    return ModelStore([models_dir]).get(DEFAULT_MODEL_ID)


@pytest.fixture
def frames_by_seed(convlens_run, tiny_model, sample_image):
    """``frames_by_seed(method, params, seeds=(5, 6))``: the frames of ``method`` on the tiny model run with
    the first seed and with the second, having asserted that a second run with the first seed repeats them."""
    import numpy as np

    from convlens.events import Frame
    from convlens.testing import of_type

    def run(method, params: dict, seeds: tuple[int, int] = (5, 6)) -> tuple[list, list]:
        first, again, other = (
            of_type(convlens_run(method, tiny_model, sample_image, seed=seed, **params), Frame)
            for seed in (seeds[0], *seeds)
        )
        assert all(np.array_equal(a.pixels(), b.pixels()) for a, b in zip(first, again, strict=True))
        return first, other

    return run


@pytest.fixture
def run_diverging(sample_image):
    """``run_diverging(method, params, after=n, match=regex, logits=False)``: the events ``method`` yields on
    the tiny model whose forward passes, after the first ``n``, multiply its activations (``logits``: its
    logits) by infinity, until it stops; asserts it stops with a ``BadInput`` naming ``params.lr`` and
    matching ``match``, having shown only finite metrics and no ``Result``."""
    from convlens.errors import BadInput
    from convlens.events import Metrics, Result
    from convlens.runner import iterate, prepare_run
    from convlens.testing import make_tiny_model, of_type

    def run(method, params: dict, *, after: int, match: str, logits: bool = False) -> list:
        model = make_tiny_model()
        honest_forward = model.forward
        calls = []

        def forward_going_to_infinity(images, layers=(), **kw):
            calls.append(1)
            result = honest_forward(images, layers, **kw)
            if len(calls) > after:
                if logits:
                    result.logits = result.logits * math.inf
                else:
                    result.activations = {
                        name: value * math.inf for name, value in result.activations.items()
                    }
            return result

        model.forward = forward_going_to_infinity
        ctx = prepare_run(method, model, sample_image, params, seed=0)
        events = []
        with pytest.raises(BadInput, match=match) as error:
            events.extend(iterate(method, ctx))
        assert error.value.field == "params.lr"
        assert all(math.isfinite(value) for m in of_type(events, Metrics) for value in m.values.values())
        assert not of_type(events, Result)
        return events

    return run


@pytest.fixture(scope="session")
def resnet18_with_statistics():
    """A seeded random ResNet-18 (eval) whose BatchNorms have non-trivial statistics.

    Untrained BatchNorm is nearly the identity, which would let a conv's output pass for
    its BatchNorm's and hide BatchNorm folding; these statistics make such mistakes show.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)
    return module.eval()


@pytest.fixture(scope="session")
def pixel_space():
    """``pixel_space(net, mean, std)``: ``net`` taking [0, 1] pixels, normalised as ``Model.normalise`` does, so
    an oracle such as Captum sees what convlens sees. An ``nn.Module`` (Captum hooks its submodules)."""
    import torch
    from torch import nn

    class PixelSpace(nn.Module):
        def __init__(self, net: nn.Module, mean, std) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net((images - self.mean) / self.std)

    return lambda net, mean, std: PixelSpace(net, mean, std).eval()


@pytest.fixture(scope="session")
def export_three_formats():
    """``export(module, directory, size)`` writes ``resnet18.pt2`` (torch.export), ``.onnx`` (dynamo) and ``.pt`` (traced).

    A batch of 2 in the example input, with a dynamic batch dimension: with 1, torch.export fixes it.
    """
    import torch

    def export(module, directory: Path, size: int, stem: str = "resnet18") -> None:
        example = torch.rand(2, 3, size, size)
        batch = {0: torch.export.Dim("batch", min=1)}
        program = torch.export.export(module, (example,), dynamic_shapes=(batch,))
        torch.export.save(program, str(directory / f"{stem}.pt2"))
        torch.onnx.export(
            module,
            (example,),
            str(directory / f"{stem}.onnx"),
            dynamo=True,
            dynamic_shapes=(batch,),
            verbose=False,
        )
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(module, (example,)), str(directory / f"{stem}.pt"))

    return export


@pytest.fixture(scope="session")
def app_config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from convlens.config import Config

    return Config(models_dirs=[models_dir], data_dir=tmp_path_factory.mktemp("convlens-data"))


@pytest.fixture(scope="session")
def app(app_config):
    from convlens.app import create_app

    app = create_app(app_config)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def forward_only_model(app, monkeypatch):
    """The app also offers ``FORWARD_ONLY`` (tests/local.py): the tiny model without gradients, for the rest of
    the test."""
    from convlens.testing import make_tiny_model

    model = make_tiny_model()
    model.__class__ = type(
        "ForwardOnly", (type(model),), {"capabilities": property(lambda self: frozenset())}
    )
    jobs = app.extensions["convlens"].jobs
    installed = jobs.get_model
    monkeypatch.setattr(jobs, "get_model", lambda name: model if name == FORWARD_ONLY else installed(name))


@pytest.fixture
def extra_methods(app, monkeypatch):
    """``add(method)``: the app's server also offers ``method`` (a ``convlens.methods.Method``) for the rest of
    the test."""
    jobs = app.extensions["convlens"].jobs
    added = {}
    installed = jobs.get_method
    monkeypatch.setattr(jobs, "get_method", lambda name: added.get(name) or installed(name))
    return lambda method: added.setdefault(method.name, method)


@pytest.fixture
def socket_client(app, client):
    socketio = app.extensions["socketio"]
    sio = socketio.test_client(app, flask_test_client=client)
    yield sio
    if sio.is_connected():
        sio.disconnect()


@pytest.fixture(scope="session")
def start_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Starts ``python -m convlens serve`` subprocesses on free ports: ``start_server(env={...})`` → base URL."""
    processes: list[subprocess.Popen] = []

    def start(env: dict[str, str] | None = None) -> str:
        served = start_serve(models_dir, tmp_path_factory.mktemp("live-data"), env)
        processes.append(served.process)
        return served.url

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def live_server(start_server) -> str:
    """One real server on 127.0.0.1 for the session; its base URL."""
    return start_server()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Chromium, found as `make browser` finds it; without one the tests skip, and under CI=true fail."""
    chromium = testing.find_chromium()
    if chromium is None:
        named = os.environ.get("CONVLENS_CHROMIUM")
        where = (
            f"CONVLENS_CHROMIUM={named!r}" if named else " or ".join(testing.CHROMIUM_NAMES) + " on the PATH"
        )
        pytest.skip(f"no Chromium ({where}): `make browser` installs Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package `playwright` is missing: pip install playwright", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(testing.CHROMIUM_ARGS))
        yield browser
        browser.close()
