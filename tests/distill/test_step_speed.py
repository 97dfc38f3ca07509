"""What makes the distillation step fast changes only what it may: dropout from random bits keeps torch's
distribution, bf16 autocast stays within its stated tolerance of fp32, and glibc keeps freed memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from distilnas.distill.bert import BertShape, build_student
from distilnas.distill.capture import _attend
from distilnas.distill.config import DistillSettings
from distilnas.distill.data import collate
from distilnas.distill.distiller import Distiller, LiveTeacher
from distilnas.distill.dropout import FastDropout, dropout, keep_mask, use_fast_dropout
from distilnas.distill.utils import keep_freed_memory, native_bf16, uses_bf16


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_drops_at_the_rate_in_every_quarter_of_a_draw(p: float) -> None:
    torch.manual_seed(0)
    n = 400_000
    kept = keep_mask((n,), p, torch.device("cpu")).float()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((1 - kept.mean().item()) - p) < 4 * sigma + 2**-16
    # each 16-bit quarter of a 64-bit draw is used: none may be biased (the word's top bit is always 0)
    for quarter in range(4):
        part = kept[quarter::4]
        assert abs((1 - part.mean().item()) - p) < 4 * sigma * 2 + 2**-16


def test_dropout_scales_survivors_zeroes_the_rest_and_follows_the_seed() -> None:
    x = torch.rand(64, 33) + 0.5  # no zeros of its own
    torch.manual_seed(3)
    y = dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75, rtol=1e-6, atol=0)  # torch's scaling
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.25), y)  # the default generator: seeds and checkpoints replay masks
    assert not torch.equal(dropout(x, 0.25), y)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    # the gradient is the mask, scaled
    x.requires_grad_(True)
    torch.manual_seed(3)
    dropout(x, 0.25).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, kept.float() / 0.75)


def test_use_fast_dropout_swaps_every_dropout_and_changes_no_output_in_eval() -> None:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = BertModel(cfg).eval()  # an evaluating model's dropouts stay off
    ids = torch.randint(0, 100, (2, 7))
    before = model(input_ids=ids).last_hidden_state
    plain = [m for m in model.modules() if type(m) is nn.Dropout]
    use_fast_dropout(model)
    fast = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(fast) == len(plain) > 0 and not [m for m in model.modules() if type(m) is nn.Dropout]
    assert {m.p for m in fast} == {m.p for m in plain} and not any(m.training for m in fast)
    assert torch.equal(model(input_ids=ids).last_hidden_state, before)


def test_attention_with_dropout_is_the_math_path_with_the_fast_mask() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second row's last two tokens are padding
    torch.manual_seed(7)
    out = _attend(q, k, v, mask, None, 0.2)
    torch.manual_seed(7)
    probs = (q @ k.transpose(-1, -2) / 2).masked_fill(~mask, -1e30).softmax(-1)
    expected = probs * keep_mask(probs.shape, 0.2, q.device) / 0.8 @ v
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # without dropout it is SDPA itself
    assert torch.equal(_attend(q, k, v, mask, None, 0.0), F.scaled_dot_product_attention(q, k, v, mask))


def test_precision_settings_mean_what_they_say() -> None:
    cpu = torch.device("cpu")
    assert not uses_bf16("fp32", cpu) and uses_bf16("bf16", cpu)
    assert uses_bf16("auto", cpu) == native_bf16(cpu)
    with pytest.raises(ValueError, match="precision"):
        DistillSettings(precision="fp16")  # type: ignore[arg-type]


def test_bf16_loss_is_within_its_tolerance_of_fp32_and_keys_its_checkpoints(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    """bf16 autocast rounds matrix products to 8 bits of mantissa (2**-8 = 0.4%): a step's loss stays
    within 2% of fp32's, its gradients point the same way, and a checkpoint of one is not the other's."""
    losses = {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0}
    student = build_student(BertShape(2, 64, 4, 128), tiny_teacher, "extract", layer_sources=[2, 4]).eval()
    pairs = [(0, 0), (1, 2), (2, 4)]
    runs = {}
    for precision in ("fp32", "bf16"):
        d = Distiller(
            student, LiveTeacher(tiny_teacher), pairs, DistillSettings(losses=losses, precision=precision)
        )
        assert d.bf16 == (precision == "bf16")
        batch = collate([sentences[i] for i in range(16)])
        student.zero_grad(set_to_none=True)
        loss, _ = d.loss(list(range(16)), batch)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in student.encoder.parameters() if p.grad is not None])
        runs[precision] = (loss.item(), grad, d.run_key(sentences))
    (l32, g32, k32), (l16, g16, k16) = runs["fp32"], runs["bf16"]
    assert l16 == pytest.approx(l32, rel=2e-2)
    assert F.cosine_similarity(g32, g16, dim=0).item() > 0.99
    assert k16 != k32


def test_freed_memory_is_kept_on_glibc() -> None:
    import platform

    kept = keep_freed_memory()
    assert kept == keep_freed_memory()  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert kept
