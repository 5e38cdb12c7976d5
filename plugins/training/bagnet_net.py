"""A small BagNet-q built and written as model files with a card, for the one-pass path of ``bagnet``.

Brendel & Bethge 2019 (arXiv:1904.00760), section 3: BagNet-q is a ResNet-50 whose 3 x 3 convolutions become
1 x 1 once the receptive field reaches q, with no padding anywhere, so each position of the last feature map
sees one q x q patch of the picture and nothing else; the logits layer is applied at every position. Here
each of the four stages has ``blocks`` bottleneck blocks (the paper: 3, 4, 6, 3) and its first block's middle
convolution is 3 x 3 while the receptive field is below q (stem 3, then 5, 9, 17, 33: q = 9 stops after stage
two, 17 after three, 33 after four); the stride is 8 for every q, as in the paper. A block's shortcut is
cropped at its end to the main path's size, so both read the same top-left corner.

Differences from the paper: widths start at ``width`` (the paper's 64) so that a file takes seconds to build;
the logits layer is a 1 x 1 convolution named ``logit_map`` (the paper's fully connected layer on each
position) and the file's one output is its mean over space, which equals the paper's average-pool-then-linear
logits. So the file is an ordinary classifier to every other method, and its logit map is a layer any format
exposes by name. The weights are random (seeded): nothing can be downloaded here, and the BagNet property
holds for any weights.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

RECEPTIVE_FIELDS = {9: 2, 17: 3, 33: 4}
"""q → how many stages open with a 3 x 3 convolution."""
STRIDE = 8
"""The total stride of every BagNet-q: the stem and the last stage keep the size, stages one to three halve it."""
EXPANSION = 4
MAP_LAYER = "logit_map"


class Bottleneck(nn.Module):
    """1 x 1, ``kernel`` x ``kernel`` (strided, unpadded), 1 x 1, and a shortcut cropped to the output's size."""

    def __init__(self, inputs: int, planes: int, stride: int, kernel: int) -> None:
        super().__init__()
        outputs = planes * EXPANSION
        self.conv1 = nn.Conv2d(inputs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outputs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.downsample = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else None
        )
        # An unpadded k x k conv at stride s (1 or 2) ends (k - 1) // s positions before its 1 x 1 shortcut,
        # whatever the input's size: a constant crop keeps the exported graphs free of shape arithmetic.
        self.crop = (kernel - 1) // stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.crop:
            shortcut = shortcut[:, :, : -self.crop, : -self.crop]
        return self.relu(out + shortcut)


class BagNet(nn.Module):
    """BagNet-``patch``: Nx3xHxW normalised pictures → NxK logits, the space mean of the ``logit_map`` layer."""

    def __init__(self, patch: int = 17, classes: int = 10, width: int = 8, blocks: int = 1) -> None:
        super().__init__()
        if patch not in RECEPTIVE_FIELDS:
            raise ValueError(f"a BagNet's patch is one of {sorted(RECEPTIVE_FIELDS)}, not {patch!r}")
        self.conv1 = nn.Conv2d(3, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        inputs, stages = width, []
        for stage, stride in enumerate((2, 2, 2, 1)):
            planes = width * 2**stage
            kernel = 3 if stage < RECEPTIVE_FIELDS[patch] else 1
            layers = [Bottleneck(inputs, planes, stride, kernel)]
            inputs = planes * EXPANSION
            layers += [Bottleneck(inputs, planes, 1, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.logit_map = nn.Conv2d(inputs, classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv2(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.logit_map(x).mean(dim=(2, 3))


def bagnet(patch: int = 17, classes: int = 10, width: int = 8, blocks: int = 1, seed: int = 0) -> BagNet:
    """A BagNet-``patch`` in eval mode with seeded random weights and BatchNorm statistics.

    Random running statistics make each BatchNorm a real per-channel affine map, as in a trained net (the
    fresh 0 and 1 would leave it the identity).
    """
    generator = torch.Generator().manual_seed(seed)
    net = BagNet(patch, classes, width, blocks)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return net.eval()


def card(patch: int, classes: int, size: int = 224, title: str | None = None) -> dict:
    """The card of a BagNet-``patch`` file: what the ``bagnet`` method reads to take its map in one pass."""
    return {
        "title": title or f"BagNet-{patch} (small, random weights)",
        "input_size": [size, size],
        "dynamic_size": True,
        "labels": [f"class {index}" for index in range(classes)],
        "bagnet": {"patch": patch, "stride": STRIDE, "layer": MAP_LAYER},
        "source": "convlens_plugins.training.bagnet_net (Brendel & Bethge 2019's architecture, narrowed)",
    }


def write_bagnet(
    folder: Path,
    stem: str,
    net: BagNet,
    patch: int,
    size: int = 224,
    formats: tuple[str, ...] = (".onnx", ".pt"),
) -> list[Path]:
    """Write ``net`` as ``<stem>.onnx`` (dynamic batch, height and width) and/or ``<stem>.pt`` (TorchScript)
    with ``<stem>.json``, its card, into ``folder``; the files written, card first."""
    from convlens.models.default import write_onnx_program

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = net.logit_map.out_channels
    card_file = folder / f"{stem}.json"
    card_file.write_text(json.dumps(card(patch, classes, size), indent=2), encoding="utf-8")
    written = [card_file]
    # Batch 2: torch.export would fix a dimension of size 1 as a constant.
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if ".onnx" in formats:
            from torch.export import Dim

            # The dynamo exporter, unlike the TorchScript-based one, records each node's module scope, so the
            # map is the layer ``logit_map`` in the ONNX file as in the .pt file. torch.export proves the
            # shortcut's crop right only for sides that are multiples of 8, and assumes no side is 1, so it
            # traces sides 8k with a map of at least 2 x 2; the ONNX graph has no shape arithmetic and runs
            # on any side of at least q.
            least = (patch + STRIDE) // STRIDE + 1
            rows, columns = Dim("rows", min=least), Dim("columns", min=least)
            dims = {0: Dim("batch", min=1), 2: STRIDE * rows, 3: STRIDE * columns}
            program = torch.export.export(net, (example,), dynamic_shapes={"images": dims})
            path = folder / f"{stem}.onnx"
            write_onnx_program(program, path)
            written.append(path)
        if ".pt" in formats:
            path = folder / f"{stem}.pt"
            torch.jit.save(torch.jit.trace(net, (example,)), str(path))
            written.append(path)
    return written
