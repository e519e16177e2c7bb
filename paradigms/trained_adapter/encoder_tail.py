"""The trainable part of the vision encoder for Frozen (Tsimpoukelli et al. 2021).

Frozen trains the vision encoder with the language model frozen. The run's encoder is shared by
every paradigm and stays frozen, so Frozen trains its own *copy* of the encoder's last blocks (or
of all of it): the frozen front computes the activations at the input of the first trained block
once per image (cached like features), and :class:`EncoderTail` — part of the connector, saved in
its checkpoint — runs the rest with gradients.

Only EfficientNet-Lite-style encoders (a stem, ``_blocks``, a head convolution) can be split;
another encoder with a trained tail stops the run with a message naming the option. BatchNorm
layers keep their ImageNet running statistics (eval mode even while training): batches of 4
captions would make batch statistics noise (Frozen's NF-ResNet has no BatchNorm at all); their
affine weights are trained.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _lite_model(encoder_model: Any) -> nn.Module:
    need = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1")
    if not all(hasattr(encoder_model, a) for a in need):
        raise ValueError(
            "connector.encoder 'all'/'last' (Frozen's trained vision encoder) needs the EfficientNet-Lite "
            f"encoder (stem, _blocks, head); got {type(encoder_model).__name__}. Use connector.encoder: fixed"
        )
    return encoder_model


def first_trained_block(encoder_model: Any, mode: str, last_blocks: int) -> int:
    """Index of the first trained MBConv block; -1 means the stem is trained too ("all")."""
    model = _lite_model(encoder_model)
    if mode == "all":
        return -1
    n = len(model._blocks)
    if last_blocks > n:
        raise ValueError(f"connector.encoder_blocks {last_blocks} > the encoder's {n} blocks")
    return n - last_blocks


class EncoderTail(nn.Module):
    """A trainable copy of the encoder from block ``start`` (``-1``: from the stem) to its last feature map."""

    def __init__(self, encoder_model: Any, start: int) -> None:
        super().__init__()
        model = _lite_model(encoder_model)
        self.start = start
        self.stem = nn.Sequential(copy.deepcopy(model._conv_stem), copy.deepcopy(model._bn0)) if start < 0 else None
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in model._blocks[max(start, 0):])
        self.head = nn.Sequential(copy.deepcopy(model._conv_head), copy.deepcopy(model._bn1))
        self.requires_grad_(True)
        self._freeze_bn_stats()

    def _freeze_bn_stats(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def train(self, mode: bool = True) -> "EncoderTail":
        super().train(mode)
        self._freeze_bn_stats()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = F.relu6(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.head(x))


class FrontEncoder:
    """The frozen front of the shared encoder: images -> the input of the first trained block.

    Has the ``features``/``fingerprint`` interface of an encoder, so features are cached the same way.
    """

    def __init__(self, encoder: Any, start: int) -> None:
        self.encoder = encoder
        self.start = start
        self.model = _lite_model(encoder.model)

    def fingerprint(self) -> str:
        return f"{self.encoder.fingerprint()}[front:{self.start}]"

    @torch.inference_mode()
    def features(self, images: Sequence[Any]) -> torch.Tensor:
        x = self.encoder.preprocess(images).to(self.encoder.device)
        if self.start < 0:
            return x
        m = self.model
        x = F.relu6(m._bn0(m._conv_stem(x)))
        for block in m._blocks[: self.start]:
            x = block(x)
        return x
