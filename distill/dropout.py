"""Dropout whose mask comes from random bits: torch's distribution at a fraction of its cost on CPU.

On CPU, torch draws a dropout mask with ``bernoulli_``, one double-precision draw per element: about
5 ms for one BERT attention-probability tensor at batch 32 (``bench/vs_textbrewer.py``), while the
multiply that applies it takes 0.05 ms. Here one 64-bit draw (``random_``) makes four masks' worth of
15-bit numbers, and an element is kept when its number is at least ``round(p * 2**15)``: the drop
probability is ``p`` to within 2**-16 (0.1 becomes 0.100006), survivors are scaled by ``1 / (1 - p)`` as
torch does, and draws come from torch's default generator, so seeds and resumed checkpoints replay the
same masks. Off CPU (CUDA's fused dropout is already cheap) it is ``F.dropout``.

:func:`use_fast_dropout` swaps a model's ``nn.Dropout`` modules for :class:`FastDropout` (no weights
change, so saved models are untouched); :mod:`distilnas.distill.capture`'s attention applies the same
mask to attention probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BITS = 15
"""Bits per element: the low 15 of each 16-bit quarter of a draw (``random_`` on int64 leaves the top bit
of a word zero, so the 16th bit is not uniform)."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of ``shape``, each element True (kept) with probability ``1 - p`` (to 2**-16)."""
    n = 1
    for size in shape:
        n *= int(size)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    quarters = words.view(torch.int16)[:n] & ((1 << BITS) - 1)
    return (quarters >= round(p * (1 << BITS))).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` in distribution, with the mask of :func:`keep_mask` on CPU."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p >= 1:
        return x * 0
    scale = keep_mask(x.shape, p, x.device).to(x.dtype) * (1 / (1 - p))
    return x * scale


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` in ``model`` (in place) by a :class:`FastDropout` of the same rate."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p).train(child.training))
    return model
