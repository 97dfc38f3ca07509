"""What makes the distillation step fast changes only what it may: dropout from random bits keeps torch's
distribution, bf16 autocast stays within its stated tolerance of fp32, glibc keeps freed memory, and an
embedding table trained by rows gives the rows a batch has AdamW's own update."""

from __future__ import annotations

import copy
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
from distilnas.distill.optim import TableAdamW, adamw, clip_grad_norm
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


def test_a_live_teacher_under_bf16_autocast_gives_autocast_s_own_outputs(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    """Its linear layers cast to bf16 once give, bit for bit, what autocast's casts at every call give;
    the teacher itself keeps its fp32 weights, and outside autocast it runs as it is."""
    live = LiveTeacher(tiny_teacher)
    batch = collate([sentences[i] for i in range(8)])
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = tiny_teacher(**inputs, output_hidden_states=True).hidden_states
        views = live.views(list(range(8)), batch, [0, 2, 4], [2])
    assert all(torch.equal(views.hidden[i], expected[i].float()) for i in (0, 2, 4))
    assert live._bf16_linears is not None and live._bf16_linears is not tiny_teacher
    assert all(p.dtype == torch.float32 for p in tiny_teacher.parameters())
    with torch.no_grad():
        plain = tiny_teacher(**inputs, output_hidden_states=True).hidden_states[4]
    assert torch.equal(live.views(list(range(8)), batch, [4], []).hidden[4], plain)


def test_a_live_teacher_s_head_tied_to_its_table_keeps_the_table_fp32(sentences) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    teacher = BertForMaskedLM(cfg).eval()  # its decoder's weight is the word-embedding table
    assert teacher.cls.predictions.decoder.weight is teacher.get_input_embeddings().weight
    live = LiveTeacher(teacher)
    batch = collate([sentences[i] for i in range(4)])
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = teacher(**inputs, output_hidden_states=True).hidden_states
        views = live.views(list(range(4)), batch, [0, 2], [])
    assert torch.equal(views.hidden[0], expected[0].float()) and torch.equal(
        views.hidden[2], expected[2].float()
    )
    assert live._bf16_linears is not None
    assert live._bf16_linears.get_input_embeddings().weight.dtype == torch.float32


def test_freed_memory_is_kept_on_glibc() -> None:
    import platform

    kept = keep_freed_memory()
    assert kept == keep_freed_memory()  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert kept


def _table_and_grads(rows: list[list[int]], sparse: bool) -> tuple[nn.Embedding, list[torch.Tensor]]:
    torch.manual_seed(0)
    table = nn.Embedding(12, 5, sparse=sparse)
    targets = [torch.randn(len(r), 5) for r in rows]
    return table, targets


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_lazy_table_adamw_gives_seen_rows_adamw_s_update_and_leaves_the_others(decay: float) -> None:
    batches = [[0, 3, 3, 7], [0, 3, 7, 7], [3, 0, 7, 0]]  # rows 0, 3, 7 in every batch, repeats summed
    results = {}
    for sparse in (False, True):
        table, targets = _table_and_grads(batches, sparse)
        start = table.weight.detach().clone()
        opt = (
            TableAdamW(table.parameters(), 1e-2, decay, lazy=True)
            if sparse
            else adamw(table.parameters(), 1e-2, decay)
        )
        for rows, target in zip(batches, targets, strict=True):
            F.mse_loss(table(torch.tensor(rows)), target).backward()
            clip_grad_norm(list(table.parameters()), 1e9)
            opt.step()
            opt.zero_grad(set_to_none=True)
        results[sparse] = (table.weight.detach(), start, opt)
    (dense, start, _), (rows_w, start_r, opt) = results[False], results[True]
    seen = [0, 3, 7]
    torch.testing.assert_close(rows_w[seen], dense[seen], rtol=1e-6, atol=1e-7)
    unseen = [i for i in range(12) if i not in seen]
    assert torch.equal(rows_w[unseen], start_r[unseen])  # not decayed, not moved
    if decay:
        assert not torch.equal(dense[unseen], start[unseen])  # dense AdamW decays them
    state = opt.state_dict()["state"][0]
    assert float(state["step"]) == 3 and torch.count_nonzero(state["exp_avg"][unseen]) == 0


def _train_table(
    sparse: bool, steps: int, reload_at: int | None = None, decay: float = 0.1
) -> tuple[torch.Tensor, dict]:
    """A 50-row table trained on random rows of its first 40 (rows come for the first time late, rows
    leave batches) with decay, clipping that bites and a falling learning rate; densely with fused
    AdamW, or from a sparse gradient with TableAdamW (reloaded from its state_dict at ``reload_at``)."""
    torch.manual_seed(1)
    table = nn.Embedding(50, 8, sparse=sparse)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 40, (12,), generator=gen), torch.randn(12, 8, generator=gen)) for _ in range(steps)
    ]

    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = (
            TableAdamW(table.parameters(), 1e-2, decay) if sparse else adamw(table.parameters(), 1e-2, decay)
        )
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 40)

    opt, schedule = make()
    for i, (rows, target) in enumerate(batches):
        if i == reload_at:  # as a checkpoint's resume does: new objects, then the saved states
            saved = opt.state_dict(), schedule.state_dict()
            opt, schedule = make()
            opt.load_state_dict(saved[0])
            schedule.load_state_dict(saved[1])
        F.mse_loss(table(rows), target).backward()
        clip_grad_norm(list(table.parameters()), 0.05)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
    return table.weight.detach(), opt.state_dict()["state"][0]


def test_exact_table_adamw_is_adamw_on_every_row() -> None:
    """Every row gets dense AdamW's update: the touched ones the full step, the never-touched ones (40
    to 49) their weight decay. Only summation order may differ (fp32 rounding: here it is none)."""
    (dense, dense_state), (rows, rows_state) = _train_table(False, 30), _train_table(True, 30)
    torch.testing.assert_close(rows, dense, rtol=1e-6, atol=1e-7)
    for name in ("exp_avg", "exp_avg_sq"):  # written as AdamW's full tables, in row order
        torch.testing.assert_close(rows_state[name], dense_state[name], rtol=1e-6, atol=1e-9)
    assert float(rows_state["step"]) == float(dense_state["step"]) == 30
    start = nn.Embedding(50, 8).weight.detach() if torch.manual_seed(1) else None
    assert start is not None and not torch.equal(rows[40:], start[40:])  # decayed, as AdamW decays them
    torch.testing.assert_close(rows[40:], start[40:] * math.prod(1 - 1e-3 * (1 - s / 40) for s in range(30)))


def test_exact_table_adamw_resumes_bit_identically_and_takes_a_dense_adamw_state() -> None:
    whole, whole_state = _train_table(True, 30)
    resumed, resumed_state = _train_table(True, 30, reload_at=13)
    assert torch.equal(resumed, whole)
    assert all(torch.equal(resumed_state[k], whole_state[k]) for k in whole_state)
    # a dense AdamW's state (a checkpoint of the code before) continues as it would have
    torch.manual_seed(1)
    table = nn.Embedding(50, 8, sparse=True)
    dense = adamw([nn.Parameter(table.weight.detach().clone())], 1e-2, 0.1)
    dense.param_groups[0]["params"][0].grad = torch.ones(50, 8) * (torch.arange(50) < 5).view(-1, 1)
    dense.step()
    exact = TableAdamW(table.parameters(), 1e-2, 0.1)
    exact.load_state_dict(copy.deepcopy(dense.state_dict()))  # as from a file: no shared step
    table.weight.data.copy_(dense.param_groups[0]["params"][0].detach())
    table(torch.tensor([7])).sum().backward()
    exact.step()
    dense.param_groups[0]["params"][0].grad = torch.zeros(50, 8)
    dense.param_groups[0]["params"][0].grad[7] = 1
    dense.step()
    torch.testing.assert_close(table.weight.detach(), dense.param_groups[0]["params"][0].detach())
    state = exact.state_dict()["state"][0]
    assert torch.count_nonzero(state["exp_avg"].any(1)) == 6  # rows 0-4 keep their moments, 7 joins


def test_a_dense_gradient_after_sparse_ones_continues_as_dense_adamw() -> None:
    """A table trained by rows, then densely (a student handed on), follows dense AdamW throughout."""
    results = []
    for switch in (True, False):
        torch.manual_seed(1)
        table = nn.Embedding(20, 4, sparse=switch)
        opt = TableAdamW(table.parameters(), 1e-2, 0.1)
        for step in range(8):
            table.sparse = switch and step < 4
            F.mse_loss(table(torch.tensor([step % 5, 7])), torch.ones(2, 4)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        results.append((table.weight.detach(), opt.state_dict()["state"][0]))
    (switched, state), (dense, dense_state) = results
    torch.testing.assert_close(switched, dense, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(state["exp_avg_sq"], dense_state["exp_avg_sq"], rtol=1e-6, atol=1e-10)


def test_clipping_counts_a_sparse_gradient_as_its_dense_one() -> None:
    norms, grads = {}, {}
    for sparse in (False, True):
        torch.manual_seed(0)
        table, head = nn.Embedding(20, 4, sparse=sparse), nn.Linear(4, 3)
        head(table(torch.tensor([[1, 2, 2, 9]]))).pow(2).sum().mul(50).backward()
        params = [*table.parameters(), *head.parameters()]
        norms[sparse] = clip_grad_norm(params, 0.5).item()
        grads[sparse] = [p.grad.to_dense() for p in params]  # type: ignore[union-attr]
    assert norms[True] == pytest.approx(norms[False], rel=1e-6) and norms[False] > 0.5
    for a, b in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads[True]]))
    assert total.item() == pytest.approx(0.5, rel=1e-5)


def test_a_plain_table_is_trained_by_rows_on_cpu_and_rows_updates_need_one(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    from distilnas.distill.errors import UserError
    from distilnas.distill.factorised import factorised

    plain = build_student(BertShape(2, 32, 2, 64), tiny_teacher, "random", seed=0)
    rows = DistillSettings(embedding_updates="rows", relation_heads=4)
    d = Distiller(plain, LiveTeacher(tiny_teacher), [(0, 0), (1, 2)], rows)
    assert plain.get_input_embeddings().sparse and d.optimizer().lazy
    d = Distiller(plain, LiveTeacher(tiny_teacher), [(0, 0), (1, 2)], DistillSettings(relation_heads=4))
    exact = d.optimizer()
    assert plain.get_input_embeddings().sparse and isinstance(exact, TableAdamW) and not exact.lazy
    d.fit(sentences, stop_after=2)  # leaves the table dense for another trainer; a fit sets it again
    assert not plain.get_input_embeddings().sparse
    d.fit(sentences, stop_after=1)
    assert not plain.get_input_embeddings().sparse
    narrow = factorised(build_student(BertShape(2, 32, 2, 64), tiny_teacher, "random", seed=0), 8)
    d = Distiller(narrow, LiveTeacher(tiny_teacher), [(0, 0), (1, 2)], DistillSettings(relation_heads=4))
    assert not isinstance(d.optimizer(), TableAdamW)  # its table is no nn.Embedding: a dense gradient
    with pytest.raises(UserError, match="embedding_updates: rows needs a plain word-embedding table"):
        Distiller(narrow, LiveTeacher(tiny_teacher), [(0, 0), (1, 2)], rows)


def test_a_distillation_by_table_rows_follows_the_dense_loss_curve(tiny_teacher, sentences) -> None:  # type: ignore[no-untyped-def]
    """The exact rows update changes no value beyond fp32 summation order: twelve steps of a distiller
    (dropout, decay, clipping) give the dense gradient's losses to 1e-5 and its weights to 1e-5."""
    losses = {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0}
    settings = DistillSettings(losses=losses, precision="fp32", lr=1e-3, max_grad_norm=0.5)
    runs = []
    for sparse in (True, False):
        student = build_student(BertShape(2, 64, 4, 128), tiny_teacher, "random", seed=0)
        d = Distiller(student, LiveTeacher(tiny_teacher), [(0, 0), (1, 2), (2, 4)], settings)
        student.get_input_embeddings().sparse = sparse  # False: the dense gradient and fused AdamW
        opt = d.optimizer()
        assert isinstance(opt, TableAdamW) == sparse
        torch.manual_seed(0)
        curve = []
        for start in range(0, 48, 4):
            rows = [(start + i) % len(sentences) for i in range(8)]
            curve.append(d.train_step(rows, collate([sentences[i] for i in rows]), opt)[0])
        runs.append((curve, student.get_input_embeddings().weight.detach().clone()))
    (curve, table), (dense_curve, dense_table) = runs
    assert curve == pytest.approx(dense_curve, rel=1e-5)
    torch.testing.assert_close(table, dense_table, rtol=1e-5, atol=1e-5)
