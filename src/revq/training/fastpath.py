"""Measured CPU fast-path tweaks for the training step (see docs/performance.md).

* :func:`pin_fp32_depthwise` -- under CPU bf16 autocast, oneDNN's backward of the rectifier's 5x5
  depthwise convolutions (the multi-scale attention aggregation) is ~4x *slower* in bf16 than in
  fp32 (torch 2.13, AVX512-BF16/AMX CPU), while everything else is faster in bf16.  This pins the
  selected convolutions to fp32 (their output is fp32; the next autocast op casts back).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _fp32_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return self._conv_forward(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


def pin_fp32_depthwise(module: nn.Module, *, min_kernel: int = 5) -> int:
    """Run depthwise ``nn.Conv2d`` layers with kernel >= ``min_kernel`` in fp32 under autocast.

    Returns how many layers were pinned.  Instance-level: ``state_dict`` and results in fp32
    (no autocast) are unchanged.
    """
    n = 0
    for m in module.modules():
        if (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                and max(m.kernel_size) >= min_kernel):
            m.forward = types.MethodType(_fp32_conv_forward, m)
            n += 1
    return n


__all__ = ["pin_fp32_depthwise"]
