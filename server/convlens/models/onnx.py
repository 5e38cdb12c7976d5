"""ONNX files: gradients and hidden layers through onnx2torch, fast forward-only logits through ONNX Runtime.

onnx2torch turns the graph into a ``torch.fx.GraphModule`` of ordinary torch modules, so autograd reaches the
input and every hidden tensor. Layer names come from the module scopes that ``torch.onnx.export`` (dynamo)
records on each node (``pkg.torch.onnx.name_scopes``); a file without them names its layers after its nodes.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import torch
from torch import fx

from ..errors import BadInput
from ..runtime import cpu_threads
from .base import ConvInfo, ModelCard
from .fx_taps import GraphModel, Scope, TapPoint, layer_points, short_class_name

TORCH_OPSET = 17
"""The highest default-domain opset onnx2torch converts; newer files are converted down first."""

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


class OnnxModel(GraphModel):
    """An ``.onnx`` file."""

    format = "onnx"

    def __init__(self, model_id: str, path: Path, card: ModelCard) -> None:
        super().__init__(model_id, path, card)
        proto = _read(self.path)
        graph_input = _image_input(proto, self.path.name)
        self._input_name = graph_input.name
        self._input_dtype = _numpy_dtype(graph_input)
        self._scopes = _module_scopes(proto)
        self._convs = _conv_layers(proto, self._scopes)
        converted = _for_onnx2torch(proto, self.path.name)
        self._names = {
            out: (node.name or out, node.op_type) for node in converted.graph.node for out in node.output
        }
        graph_module = _convert(converted, self.path.name)
        self._tensor_of = _onnx_tensor_names(graph_module)
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in _dims(graph_input)
        ]
        self._set_graph(graph_module, dims)
        self._session = None
        self._session_failed: str | None = None
        self._session_lock = threading.Lock()

    def layer_points(self) -> list[TapPoint]:
        return layer_points(self.graph_module, scopes_of=self._node_scopes, fallback=self._node_fallback)

    def _node_scopes(self, node: fx.Node) -> list[Scope]:
        return self._scopes.get(self._tensor_of.get(node.name, ""), [])

    def _node_fallback(self, node: fx.Node) -> tuple[str, str] | None:
        tensor = self._tensor_of.get(node.name)
        return self._names.get(tensor) if tensor else None

    def conv_layers(self) -> list[ConvInfo]:
        return list(self._convs)

    def _read_conv_weight(self, conv: ConvInfo) -> np.ndarray:
        # Read from the file again rather than kept since loading: the weights are wanted rarely, and the
        # onnx2torch module already holds a copy of every one in memory.
        return _constant_values(_read(self.path), {conv.weight_name}, self.path.parent)[conv.weight_name]

    def logits(self, images: torch.Tensor | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Forward-only logits through ONNX Runtime (the onnx2torch module if Runtime cannot run the file)."""
        session = self._runtime()
        if session is None:
            return super().logits(images, batch_size)
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        pixels = np.asarray(images, dtype=np.float32)
        mean = np.asarray(self.card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.card.std, dtype=np.float32).reshape(1, 3, 1, 1)
        inputs = ((pixels - mean) / std).astype(self._input_dtype, copy=False)
        size = self.fixed_batch or max(1, batch_size)
        outputs = []
        for start in range(0, inputs.shape[0], size):
            chunk = inputs[start : start + size]
            count = chunk.shape[0]
            if self.fixed_batch and count < size:
                chunk = np.concatenate([chunk, np.zeros((size - count, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(session.run(None, {self._input_name: chunk})[0][:count])
        return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)

    @property
    def input_name(self) -> str:
        """The name of the graph's image input."""
        return self._input_name

    @property
    def input_dtype(self) -> np.dtype:
        """The element type of the graph's image input."""
        return self._input_dtype

    def _runtime(self):
        if self._session is None and self._session_failed is None:
            with self._session_lock:
                if self._session is None and self._session_failed is None:
                    try:
                        self._session = runtime_session(self.path)
                    except Exception as error:  # noqa: BLE001 - any Runtime failure leaves onnx2torch to do it
                        self._session_failed = f"{type(error).__name__}: {error}"
        return self._session


def _read(path: Path):
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf and file errors alike mean "not a usable file"
        raise BadInput(
            "model", f"{path.name} is not a readable ONNX file ({type(error).__name__}: {error})"
        ) from None
    if not proto.graph.node or not proto.graph.output:
        raise BadInput("model", f"{path.name} is not an ONNX model (its graph is empty)")
    return proto


def _image_input(proto, file_name: str):
    initialisers = {initialiser.name for initialiser in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initialisers]
    if len(inputs) != 1:
        raise BadInput("model", f"{file_name} takes {len(inputs)} inputs; convlens needs one image input")
    if len(_dims(inputs[0])) != 4:
        raise BadInput("model", f"{file_name}: input {inputs[0].name!r} is not 4-D (NxCxHxW)")
    return inputs[0]


def _dims(value) -> list:
    return list(value.type.tensor_type.shape.dim)


def _numpy_dtype(value) -> np.dtype:
    import onnx.helper

    elem_type = value.type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else np.dtype(np.float32)


def _module_scopes(proto) -> dict[str, list[Scope]]:
    """Output tensor name → module scopes (outermost first) from the dynamo exporter's node metadata."""
    scopes: dict[str, list[Scope]] = {}
    for node in proto.graph.node:
        props = {prop.key: prop.value for prop in node.metadata_props}
        if NAME_SCOPES not in props:
            continue
        try:
            names = ast.literal_eval(props[NAME_SCOPES])
            classes = ast.literal_eval(props.get(CLASS_HIERARCHY, "[]"))
        except (ValueError, SyntaxError):
            continue
        # The first entry is the root module, the last the operator itself.
        classes = (list(classes) + [""] * len(names))[: len(names)]
        node_scopes = [
            (str(n), short_class_name(c)) for n, c in zip(names[1:-1], classes[1:-1], strict=True) if n
        ]
        for output in node.output:
            scopes[output] = node_scopes
    return scopes


def _default_opset(proto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _for_onnx2torch(proto, file_name: str):
    """``proto`` in the form onnx2torch converts: opset ≤ 17 and Reshape without ``allowzero``."""
    import onnx
    import onnx.version_converter

    if _default_opset(proto) > TORCH_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, TORCH_OPSET)
        except Exception as error:  # noqa: BLE001 - the converter raises plain RuntimeErrors
            raise BadInput("model", f"{file_name}: cannot convert to opset {TORCH_OPSET} ({error})") from None
    _bypass_initialiser_identities(proto)
    constants = _constant_values(proto)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        # The converter moves Reduce* axes into an attribute but leaves opset 18's noop_with_empty_axes behind;
        # its default, 0, is what the older operators do anyway.
        if node.op_type.startswith("Reduce"):
            for attribute in [a for a in node.attribute if a.name == "noop_with_empty_axes" and a.i == 0]:
                node.attribute.remove(attribute)
        # allowzero=1 only differs from 0 when the target shape holds a literal 0, which a classifier never has.
        if node.op_type == "Reshape" and len(node.input) > 1:
            shape = constants.get(node.input[1])
            for attribute in node.attribute:
                if (
                    attribute.name == "allowzero"
                    and attribute.i == 1
                    and (shape is None or not (shape == 0).any())
                ):
                    attribute.i = 0
    return proto


def _bypass_initialiser_identities(proto) -> None:
    """Point readers of ``Identity(initialiser)`` at the initialiser itself and drop the Identity.

    The TorchScript-based exporter shares equal weights this way; onnx2torch wants Conv weights and biases to
    be initialisers.
    """
    initialisers = {initialiser.name for initialiser in proto.graph.initializer}
    graph_outputs = {output.name for output in proto.graph.output}
    renamed = {}
    for node in list(proto.graph.node):
        if (
            node.op_type == "Identity"
            and node.input[0] in initialisers
            and node.output[0] not in graph_outputs
        ):
            renamed[node.output[0]] = node.input[0]
            proto.graph.node.remove(node)
    if renamed:
        for node in proto.graph.node:
            for index, name in enumerate(node.input):
                if name in renamed:
                    node.input[index] = renamed[name]


def _constant_values(
    proto, names: set[str] | None = None, base_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """The graph's initialisers and Constant-node tensors, by name (only ``names``, when given)."""
    from onnx import numpy_helper

    directory = str(base_dir or "")
    values = {
        initialiser.name: numpy_helper.to_array(initialiser, directory)
        for initialiser in proto.graph.initializer
        if names is None or initialiser.name in names
    }
    for node in proto.graph.node:
        if node.op_type == "Constant" and (names is None or node.output[0] in names):
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t, directory)
    return values


FUSED_BATCHNORM = "FuseBatchNorm"
"""In the rewrite rules onnxscript's optimiser records on a node it made (``torch.onnx.export``'s default)."""
REWRITE_RULES = "pkg.onnxscript.rewriter.rule_name"


def _conv_layers(proto, scopes: dict[str, list[Scope]]) -> list[ConvInfo]:
    """The 2-D Conv nodes whose weight is an initialiser or a Constant, with their attributes.

    A Conv's name is the innermost module scope of its output, the name :meth:`layers` gives that tensor:
    a BatchNorm folded into it lends its own (``bn1``, not ``conv1``). ``bn_folded`` is true where the
    exporter's optimiser records folding one, false where a BatchNormalization node reads the output, and
    unknown (``None``) otherwise, as another exporter may fold without saying so.
    """
    import onnx.helper

    shapes = {initialiser.name: tuple(initialiser.dims) for initialiser in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
    aliases = {
        node.output[0]: node.input[0]
        for node in proto.graph.node
        if node.op_type == "Identity" and node.input[0] in shapes
    }
    normalised = {
        name for node in proto.graph.node if node.op_type == "BatchNormalization" for name in node.input[:1]
    }
    convs = []
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        weight = aliases.get(node.input[1], node.input[1])
        shape = shapes.get(weight)
        if shape is None or len(shape) != 4:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        props = {prop.key: prop.value for prop in node.metadata_props}
        node_scopes = scopes.get(node.output[0])
        if FUSED_BATCHNORM in props.get(REWRITE_RULES, ""):
            folded = True
        else:
            folded = False if node.output[0] in normalised else None
        convs.append(
            ConvInfo(
                node_scopes[-1][0] if node_scopes else node.name or node.output[0],
                weight,
                tuple(int(d) for d in shape),
                int(attributes.get("group", 1)),
                tuple(int(v) for v in attributes.get("strides", (1, 1))),
                _onnx_padding(attributes),
                tuple(int(v) for v in attributes.get("dilations", (1, 1))),
                folded,
            )
        )
    return convs


def _onnx_padding(attributes: dict) -> tuple[int, int, int, int] | str:
    """ONNX ``pads`` (begin then end: top, left, bottom, right), or ``same`` for ``auto_pad`` SAME_*."""
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad.startswith("SAME"):
        return "same"
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    pads = [int(v) for v in attributes.get("pads", (0, 0, 0, 0))]
    return tuple(pads) if len(pads) == 4 else (0, 0, 0, 0)


def _convert(proto, file_name: str) -> fx.GraphModule:
    import onnx2torch

    try:
        module = onnx2torch.convert(proto, attach_onnx_mapping=True)
    except Exception as error:  # noqa: BLE001 - onnx2torch raises NotImplementedError, KeyError, ...
        raise BadInput(
            "model", f"{file_name}: onnx2torch cannot convert it ({type(error).__name__}: {error})"
        ) from None
    return module.eval()


def _onnx_tensor_names(graph_module: fx.GraphModule) -> dict[str, str]:
    """fx node name → the ONNX tensor it computes, from the mapping onnx2torch attaches to each module."""
    import operator

    tensors: dict[str, str] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            mapping = getattr(graph_module.get_submodule(str(node.target)), "onnx_mapping", None)
            if mapping is None:
                continue
            outputs[node.name] = tuple(mapping.outputs)
            if len(mapping.outputs) == 1:
                tensors[node.name] = mapping.outputs[0]
        elif node.op == "call_function" and node.target is operator.getitem:
            source, index = node.args[0], node.args[1]
            names = outputs.get(getattr(source, "name", ""), ())
            if isinstance(index, int) and len(names) > 1 and index < len(names):
                tensors[node.name] = names[index]
    return tensors


def runtime_session(source: Path | bytes, threads: int | None = None):
    """An ONNX Runtime session for a file (or a serialised model), with the options convlens uses throughout.

    ``threads`` is its intra-op thread count (default: :func:`convlens.runtime.cpu_threads`). With one, ``run`` computes in the calling
    thread, and several threads can each run their own inputs at once. Its providers follow the process's device
    (:func:`convlens.devices.ort_providers`).
    """
    import onnxruntime as ort

    from ..devices import current, ort_providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, sess_options=options, providers=ort_providers(current()))
