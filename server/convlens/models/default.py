"""The default model, EfficientNet-Lite0, written out once as ONNX, TorchScript and ``torch.export`` files.

The files are generated from the eager model (:mod:`convlens.models.efficientnet_lite`) on first use rather
than committed. Importing this module is cheap; torch and onnx are imported only when something is written.

Run ``python -m convlens.models.default [MODELS_DIR]`` to write whatever is missing, by default into convlens'
own models folder (``Config.default_models_dir``: the checkout's ``models/``, or installed, the per-user one).
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_MODEL_STEM = "efficientnet_lite0"
DEFAULT_MODEL_ID = f"{DEFAULT_MODEL_STEM}.onnx"
"""The model a fresh server and `convlens run` use when none is named."""
SUFFIXES = ("onnx", "pt", "pt2")
ONNX_OPSET = 17
"""onnx2torch converts opsets up to 17; the dynamo exporter's lowest is 18, so its output is converted down."""

LOCK_NAME = ".convlens-export.lock"
_SECONDS = {"onnx": 10, "pt": 2, "pt2": 5}
"""Rough writing time of each file on two CPU cores, for the first-use message."""


def default_model_files(models_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The default model's file paths in ``models_dir``, keyed by suffix: ``onnx``, ``pt``, ``pt2``."""
    return {suffix: Path(models_dir) / f"{DEFAULT_MODEL_STEM}.{suffix}" for suffix in SUFFIXES}


def ensure_default_models(models_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write the default model files missing from ``models_dir``; return the paths written (empty if none).

    Safe to call from several processes at once: writers take an exclusive lock on ``models_dir/.convlens-export.lock``
    and each file appears whole, by renaming a temporary file in the same directory.
    """
    files = default_model_files(models_dir)
    if all(path.exists() for path in files.values()):
        return []
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with _exclusive_lock(models_dir / LOCK_NAME):
        missing = {suffix: path for suffix, path in files.items() if not path.exists()}
        if not missing:
            return []
        writer = _Writer()
        for suffix, path in missing.items():
            log(f"convlens: writing {path} (first use, takes ~{_SECONDS[suffix]} s)")
            start = time.perf_counter()
            _write_atomically(path, getattr(writer, f"write_{suffix}"))
            log(f"convlens: wrote {path} in {time.perf_counter() - start:.1f} s")
            written.append(path)
    return written


@contextmanager
def _exclusive_lock(lock_path: Path):
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    # The ".tmp" suffix keeps a half-written file out of any "*.onnx"-style scan of the directory.
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class ModuleWriter:
    """A module's ``.pt``, ``.pt2`` and ``.onnx`` files; its ``torch.export`` program (:meth:`_export`) is made once,
    for the last two. The default model's files and ``convlens export``'s (:mod:`convlens.export`) are written so."""

    def __init__(self, module: Any, example: Any) -> None:
        self.module = module
        self.example = example
        self._program: Any = None

    @property
    def program(self) -> Any:
        if self._program is None:
            self._program = self._export()
        return self._program

    def _export(self) -> Any:
        raise NotImplementedError

    def write_pt(self, path: Path) -> None:
        import torch

        # TorchScript is deprecated in favour of torch.export, but it is still a format people bring, so the
        # default model ships in it too; the FutureWarnings would only alarm someone setting up convlens.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(self.module, (self.example,))
            torch.jit.save(traced, str(path))

    def write_pt2(self, path: Path) -> None:
        import torch

        # Through memory: torch.export.save warns about a file name that does not end in ".pt2".
        buffer = io.BytesIO()
        torch.export.save(self.program, buffer)
        path.write_bytes(buffer.getbuffer())

    def write_onnx(self, path: Path) -> None:
        write_onnx_program(self.program, path)


class _Writer(ModuleWriter):
    """The default model, built once for all its files."""

    def __init__(self) -> None:
        import torch

        from .efficientnet_lite import build_efficientnet_lite0

        # Batch 2, not 1: torch.export would specialise a dimension of size 1 to a constant.
        super().__init__(build_efficientnet_lite0(pretrained=True), torch.zeros(2, 3, 224, 224))

    def _export(self) -> Any:
        """The module exported with dynamic batch, height and width."""
        import torch
        from torch.export import Dim

        # torch.export assumes no intermediate size is 1, so the last (stride 32) feature map must be at least
        # 2x2: 33 pixels. The ONNX and TorchScript files have no such floor.
        dims = {0: Dim("batch", min=1), 2: Dim("height", min=33), 3: Dim("width", min=33)}
        return torch.export.export(self.module, (self.example,), dynamic_shapes={"images": dims})


def write_onnx_program(program: Any, path: Path) -> None:
    """An exported program (``torch.export``) as an ONNX file at :data:`ONNX_OPSET`: dynamic axes 0, 2, 3 named
    batch, height, width, each node keeping its module scope (so layers are named as in the .pt/.pt2 files)."""
    import onnx
    import onnxscript.optimizer
    import torch

    # The exporter's optimiser would also fold each BatchNorm into the Conv before it, leaving the
    # convolutions no node, and so no layer, of their own, unlike the .pt and .pt2 files. Only constants are
    # folded here; ONNX Runtime folds the BatchNorms itself when it opens the file, so inference costs the same.
    onnx_program = torch.onnx.export(
        program,
        input_names=["images"],
        output_names=["logits"],
        dynamo=True,
        opset_version=ONNX_OPSET + 1,
        optimize=False,
        verbose=False,
    )
    onnxscript.optimizer.fold_constants(onnx_program.model)
    onnxscript.optimizer.remove_unused_nodes(onnx_program.model)
    proto = _to_opset(onnx_program.model_proto, ONNX_OPSET)
    _name_axes(proto, {0: "batch", 2: "height", 3: "width"})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _to_opset(proto: Any, opset: int) -> Any:
    """``proto`` at default-domain ``opset``, keeping the node metadata (module scopes) the exporter recorded."""
    import onnx
    import onnx.version_converter

    if _default_opset(proto) <= opset:
        return proto
    converted = onnx.version_converter.convert_version(proto, opset)
    # The C++ converter drops every node's metadata_props; node names survive, so copy them back by name.
    metadata = {node.name: node.metadata_props for node in proto.graph.node}
    for node in converted.graph.node:
        if node.name in metadata and not node.metadata_props:
            node.metadata_props.extend(metadata[node.name])
        # It also moves Reduce* axes from input to attribute but leaves opset 18's noop_with_empty_axes behind,
        # which the older schemas reject; its default (0) is what the older operators do.
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        for attribute in [a for a in node.attribute if a.name not in schema.attributes]:
            if attribute.name != "noop_with_empty_axes" or attribute.i != 0:
                raise ValueError(f"cannot convert {node.op_type} node {node.name!r} to opset {opset}")
            node.attribute.remove(attribute)
    converted.metadata_props.extend(proto.metadata_props)
    return converted


def _name_axes(proto: Any, names: dict[int, str]) -> None:
    """Replace the exporter's symbols (``s34``…) for the first input's dynamic axes with ``names`` everywhere,
    inside the shape expressions of intermediate values (``((height - 1)//2) + 1``) too."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[axis].dim_param: name for axis, name in names.items() if dims[axis].dim_param}
    if not renames:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda match: renames[match.group(0)], dim.dim_param)


def _default_opset(proto: Any) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(arg.startswith("-") for arg in args):
        print("usage: python -m convlens.models.default [MODELS_DIR]", file=sys.stderr)
        return 2
    if args:
        models_dir = Path(args[0])
    else:
        from ..config import Config

        models_dir = Config().default_models_dir
    written = ensure_default_models(models_dir)
    if not written:
        print(f"convlens: the default model files are already in {models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
