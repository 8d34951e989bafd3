"""ResNet-18/50 backbones whose parameter names and shapes follow torchvision's layout (1- or 3-channel stem)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the identity (ResNet-18/34 block)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, "ResNet v1.5"), 1x1 expand by 4, plus the identity (ResNet-50 block)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet with torchvision parameter names (``conv1``, ``bn1``, ``layer1..4``, ``fc``).

    ``forward_features(x)`` gives the last stage's map ``[B, D, R, S]`` (D = 512 for ResNet-18, 2048 for
    ResNet-50 at the default width; R = ceil(H/32), S = ceil(W/32), i.e. 7x7 at 224x224), ``pool(map)`` the
    global average ``[B, D]``. ``forward(x)`` returns ``fc(pool(map))`` when ``num_classes > 0`` (the torchvision
    classifier) and the pooled features otherwise. ``width`` scales every stage (64 = torchvision); small widths
    make tiny test models.
    """

    stride = 32
    stage_strides = (2, 4, 8, 16, 32)  # of the maps ``stages`` returns

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        in_chans: int = 1,
        width: int = 64,
        num_classes: int = 0,
        zero_init_residual: bool = False,
        arch: str = "resnet",
    ):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.arch, self.in_chans, self.width, self.num_classes = arch, in_chans, width, num_classes
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin = width
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, width * 2, layers[1], 2)
        self.layer3 = self._stage(block, width * 4, layers[2], 2)
        self.layer4 = self._stage(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = width * 8 * block.expansion
        if num_classes > 0:
            self.fc = nn.Linear(self.out_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero, so every block starts as the identity
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_grid(self, height: int, width: int | None = None) -> tuple[int, int]:
        """(R, S) of the feature map for an input of ``height x width`` pixels (each stride-2 step rounds up)."""
        width = height if width is None else width
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    @property
    def stage_channels(self) -> list[int]:
        """Channels of the maps ``stages`` returns: ``[w, w e, 2 w e, 4 w e, 8 w e]`` (w = width, e = expansion)."""
        e = self.out_dim // (8 * self.width)
        return [self.width] + [self.width * m * e for m in (1, 2, 4, 8)]

    def stages(self, x: Tensor) -> list[Tensor]:
        """``[B, in_chans, H, W]`` -> the stem's map (stride 2) and each stage's output (strides 4, 8, 16, 32):
        ``[B, stage_channels[i], ceil(H / stride_i), ceil(W / stride_i)]``, the skip connections of a U-Net."""
        stem = self.relu(self.bn1(self.conv1(x)))
        maps = [stem]
        y = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            y = layer(y)
            maps.append(y)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, D, ceil(H/32), ceil(W/32)]``."""
        return self.stages(x)[-1]

    def pool(self, fmap: Tensor) -> Tensor:
        """``[B, D, R, S]`` -> ``[B, D]`` global average."""
        return torch.flatten(self.avgpool(fmap), 1)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, H, W]`` -> ``(pooled [B, D], fmap [B, D, ceil(H/32), ceil(W/32)])``."""
        fmap = self.forward_features(x)
        return self.pool(fmap), fmap

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(self.forward_features(x))
        return self.fc(pooled) if self.num_classes > 0 else pooled


def resnet18(in_chans: int = 1, width: int = 64, num_classes: int = 0, **kwargs) -> ResNet:
    """ResNet-18 (11,689,512 parameters with a 3-channel stem and the 1000-class ``fc``; D = 8 * width).

    Example:
        >>> from lvmmed_ext.models import resnet18
        >>> resnet18(in_chans=1).forward_features(torch.zeros(2, 1, 224, 224)).shape
        torch.Size([2, 512, 7, 7])
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], in_chans, width, num_classes, arch="resnet18", **kwargs)


def resnet50(in_chans: int = 1, width: int = 64, num_classes: int = 0, **kwargs) -> ResNet:
    """ResNet-50 (25,557,032 parameters with a 3-channel stem and the 1000-class ``fc``; D = 32 * width).

    Example:
        >>> from lvmmed_ext.models import resnet50
        >>> resnet50(in_chans=3).forward_features(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 2048, 7, 7])
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], in_chans, width, num_classes, arch="resnet50", **kwargs)
