"""``convlens new-plugin NAME``: a new plugin's distribution, ready to ``pip install -e`` and test.

It writes ``pyproject.toml`` (the ``convlens`` entry point, the ``Framework :: convlens`` classifier, a range on
the running convlens), ``src/<package>/__init__.py`` with one working method, ``tests/test_<package>.py`` using
the fixtures of :mod:`convlens.testing`, and a ``README.md``. It never writes into a folder that has files.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import BadInput

MAX_NAME_LENGTH = 64
# PEP 508's distribution name, ASCII only; a package name is made from it, so it must not start with a digit.
NAME_PATTERN = re.compile(r"[A-Za-z]([A-Za-z0-9._-]*[A-Za-z0-9])?")
ENTRY_POINT_GROUP = "convlens"

PYPROJECT = Template("""\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "0.1.0"
description = "A convlens plugin: $title."
readme = "README.md"
requires-python = ">=3.10"
classifiers = ["Framework :: convlens"]
dependencies = ["$requirement", "numpy", "torch"]

# The whole registration: convlens loads every entry point in the "convlens" group.
[project.entry-points.convlens]
$entry_point = "$package"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
""")

PACKAGE = Template('''\
"""$name: one convlens method, the mean over channels of a layer's activation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from convlens import hookimpl
from convlens.events import Event, Frame, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Layer

# The model formats this plugin was tried on; convlens lists it at GET /api/plugins.
CONVLENS_SUPPORTS = {"formats": ["export", "onnx", "torchscript"]}


def channel_mean(activation: torch.Tensor) -> torch.Tensor:
    """The mean over channels of a CxHxW activation, HxW, stretched to [0, 1] (zeros when flat)."""
    mean = activation.float().mean(dim=0)
    low, high = mean.min(), mean.max()
    return (mean - low) / (high - low) if high > low else torch.zeros_like(mean)


def run_channel_mean(ctx: RunContext) -> Iterator[Event]:
    layer = ctx.params["layer"] or ctx.model.suggest_layer()
    picture = ctx.model_input()
    yield Frame(to_image(picture), step=0, label="input")
    yield Progress(1, 2)
    with torch.no_grad():
        activation = ctx.model.forward(picture, [layer]).activations[layer][0]
    if activation.ndim != 3:
        raise ValueError(f"layer {layer!r} has no channels x height x width activation")
    mean = channel_mean(activation).cpu().numpy()
    yield Frame(mean, step=1, label="channel mean")
    yield Progress(2, 2)
    yield Result(
        images={"channel_mean": mean},
        arrays={"channel_mean": mean},
        data={"layer": layer},
    )


$constant = Method(
    name="$method",
    title="$title",
    topic="$title",
    run=run_channel_mean,
    params=(Layer("layer", help="The layer to average; empty: the suggested layer."),),
    needs=frozenset({"layers"}),
    description="The mean over channels of a layer's activation, stretched to [0, 1].",
)


@hookimpl
def register_methods() -> list[Method]:
    return [$constant]
''')

TEST = Template('''\
"""The plugin's method, run as the server runs it, with convlens' pytest fixtures."""

import numpy as np
from convlens.events import Frame, Progress, Result
from convlens.testing import of_type

METHOD = "$method"


def test_the_map_is_the_stretched_layer_mean(convlens_run, tiny_model, sample_image):
    events = convlens_run(METHOD, tiny_model, sample_image, layer="conv2")
    result = events[-1]
    assert isinstance(result, Result) and result.data == {"layer": "conv2"}
    mean = result.arrays["channel_mean"]
    assert mean.shape == (32, 32)  # conv2 has stride 2 on the tiny model's 64x64 input
    assert mean.min() == 0.0 and mean.max() == 1.0
    assert [f.label for f in of_type(events, Frame)] == ["input", "channel mean"]
    assert [p.step for p in of_type(events, Progress)] == [1, 2]


def test_the_map_follows_the_picture(convlens_run, tiny_model, sample_image):
    mirror = np.ascontiguousarray(sample_image[:, ::-1])
    mean = convlens_run(METHOD, tiny_model, sample_image, layer="conv1")[-1]
    mirrored = convlens_run(METHOD, tiny_model, mirror, layer="conv1")[-1]
    # conv1 sees the picture itself, so mirroring it changes the map; a constant would not.
    assert not np.allclose(mean.arrays["channel_mean"], mirrored.arrays["channel_mean"])
''')

README = Template("""\
# $name

A convlens plugin. It adds one method, **$title** (`$method`): the
mean over channels of one layer's activation for the image, stretched to [0, 1].

```sh
pip install -e .                      # into convlens' environment
convlens methods | grep $method       # listed; restart `convlens serve` to see it in the browser
pytest                                # its tests, with convlens' fixtures (convlens_run, tiny_model, sample_image)
```

- `src/$package/__init__.py`: the method (a generator yielding `Frame`, `Progress` and a `Result`) and the
  `register_methods` hook; `CONVLENS_SUPPORTS` names the model formats it was tried on.
- `pyproject.toml`: the entry point `$entry_point = "$package"` in the `convlens` group is the whole
  registration; `$requirement` is the convlens range it was written for.
""")


def package_name(name: str) -> str:
    """The import name of the distribution ``name`` (``my-lens`` → ``my_lens``), or ``BadInput("name", ...)``."""
    if len(name) > MAX_NAME_LENGTH:
        raise BadInput("name", f"at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not NAME_PATTERN.fullmatch(name):
        raise BadInput(
            "name",
            f"{name!r} is not a distribution name: ASCII letters, digits, '-', '_' and '.', "
            "starting with a letter and ending with a letter or digit",
        )
    package = re.sub(r"[-_.]+", "_", name).lower()
    if keyword.iskeyword(package):
        raise BadInput("name", f"{package!r} is a Python keyword, not a package name")
    return package


def convlens_requirement(version: str) -> str:
    """A range around ``version``: the same minor release before 1.0 (``0.1.0`` → ``>=0.1,<0.2``), else major."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:2]] + [0, 0]
    major, minor = parts[0], parts[1]
    if major == 0:
        return f"convlens>=0.{minor},<0.{minor + 1}"
    return f"convlens>={major}.{minor},<{major + 1}"


def check_free(package: str) -> None:
    """Refuse a package that would shadow an importable module or an installed plugin's entry point name."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        raise BadInput("name", f"{package!r} is already an importable module: the plugin would shadow it")
    if package in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP).names:
        raise BadInput("name", f"a convlens plugin called {package!r} is already installed")


def write_plugin(name: str, out: Path | None = None) -> Path:
    """Write the new plugin ``name`` into ``out`` (default ``./name``), which must be missing or empty."""
    package = package_name(name)
    check_free(package)
    out = Path(out) if out is not None else Path.cwd() / name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput("out", f"{out} exists and is not an empty folder; nothing was written")
    from . import __version__

    fields = {
        "name": name,
        "package": package,
        "entry_point": package,
        "method": f"{package}_channel_mean",
        "constant": f"{package.upper()}_CHANNEL_MEAN",
        "title": f"{name} channel mean",
        "requirement": convlens_requirement(__version__),
    }
    files = {
        Path("pyproject.toml"): PYPROJECT,
        Path("src", package, "__init__.py"): PACKAGE,
        Path("tests", f"test_{package}.py"): TEST,
        Path("README.md"): README,
    }
    for relative, template in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(fields), encoding="utf-8")
    return out
