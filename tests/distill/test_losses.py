"""Every registered loss against a value computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distilnas.distill.losses import LOSSES, LossContext, Views, combined, teacher_fields


def ctx(
    student: Views, teacher: Views, mask: list[list[int]], pairs=((0, 0), (1, 1)), **kw: object
) -> LossContext:
    return LossContext(
        student=student,
        teacher=teacher,
        pairs=list(pairs),
        mask=torch.tensor(mask, dtype=torch.bool),
        projections=nn.ModuleDict(),
        **kw,  # type: ignore[arg-type]
    )


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_embedding_and_hidden_mse() -> None:
    s = Views(hidden={0: t([[[1, 2], [3, 4]]]), 1: t([[[0, 0], [0, 0]]])})
    te = Views(hidden={0: t([[[1, 1], [1, 1]]]), 1: t([[[1, 1], [2, 2]]])})
    # embeddings: squared errors per token (0, 1) and (4, 9): token means 0.5 and 6.5
    assert LOSSES["embedding_mse"](ctx(s, te, [[1, 1]])).item() == pytest.approx(3.5)
    assert LOSSES["embedding_mse"](ctx(s, te, [[1, 0]])).item() == pytest.approx(0.5)  # padding excluded
    # layer 1: token means 1 and 4
    assert LOSSES["hidden_mse"](ctx(s, te, [[1, 1]])).item() == pytest.approx(2.5)


def test_hidden_mse_uses_projection_when_widths_differ() -> None:
    s = Views(hidden={1: t([[[1.0]]])})
    te = Views(hidden={1: t([[[2.0, 4.0]]])})
    c = ctx(s, te, [[1]], pairs=((1, 1),))
    proj = nn.Linear(1, 2, bias=False)
    proj.weight.data = t([[2.0], [3.0]])  # maps 1 -> (2, 3): errors 0 and 1
    c.projections["s1"] = proj
    assert LOSSES["hidden_mse"](c).item() == pytest.approx(0.5)


def test_hidden_cosine() -> None:
    s = Views(hidden={1: t([[[1, 0], [1, 1]]])})
    te = Views(hidden={1: t([[[0, 1], [2, 2]]])})
    # token 1 orthogonal (1 - 0), token 2 parallel (1 - 1)
    assert LOSSES["hidden_cosine"](ctx(s, te, [[1, 1]])).item() == pytest.approx(0.5)


def qkv(q: list, k: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return t(q), t(k), t(k)


def test_attention_mse() -> None:
    # one head of size 1: scores = q k^T. student q=(1,2), k=(1,1): [[1,1],[2,2]]; teacher all zero
    s = Views(qkv={1: qkv([[[1], [2]]], [[[1], [1]]])}, heads=1)
    te = Views(qkv={1: qkv([[[0], [0]]], [[[0], [0]]])}, heads=1)
    assert LOSSES["attention_mse"](ctx(s, te, [[1, 1]])).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert LOSSES["attention_mse"](ctx(s, te, [[1, 0]])).item() == pytest.approx(1.0)  # only (0, 0)
    with pytest.raises(ValueError, match="equal head counts"):
        LOSSES["attention_mse"](ctx(Views(qkv=s.qkv, heads=2), te, [[1, 1]]))


def test_minilm_relation() -> None:
    # teacher x = (1, 0): relation rows softmax([1, 0]) and softmax([0, 0]); student x = 0: uniform rows
    te_x = [[[1.0], [0.0]]]
    s = Views(qkv={1: (t([[[0.0], [0.0]]]),) * 3})
    te = Views(qkv={1: (t(te_x),) * 3})
    p = math.e / (math.e + 1)
    kl_row0 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    expected = 3 * (kl_row0 + 0.0) / 2  # Q, K and V relations; two query rows
    assert LOSSES["minilm_relation"](ctx(s, te, [[1, 1]], relation_heads=1)).item() == pytest.approx(expected)
    # with the second token padded, row 0 sees only key 0: both distributions are (1): KL 0
    assert LOSSES["minilm_relation"](ctx(s, te, [[1, 0]], relation_heads=1)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_prediction_soft_cross_entropy() -> None:
    logits = t([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    c = ctx(Views(logits=logits), Views(logits=logits), [[1]])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert LOSSES["prediction_ce"](c).item() == pytest.approx(entropy)
    c2 = ctx(Views(logits=t([[0.0, 0.0]])), Views(logits=logits * 2), [[1]], temperature=2.0)
    # at T=2 the teacher is again (0.75, 0.25); the uniform student costs log 2
    assert LOSSES["prediction_ce"](c2).item() == pytest.approx(math.log(2))
    reg = ctx(Views(logits=t([[1.0]])), Views(logits=t([[3.0]])), [[1]], regression=True)
    assert LOSSES["prediction_ce"](reg).item() == pytest.approx(4.0)


def test_hard_label() -> None:
    c = ctx(Views(logits=t([[math.log(3.0), 0.0]])), Views(), [[1]], labels=torch.tensor([0]))
    assert LOSSES["hard_label"](c).item() == pytest.approx(-math.log(0.75))
    r = ctx(Views(logits=t([[2.0]])), Views(), [[1]], labels=t([5.0]), regression=True)
    assert LOSSES["hard_label"](r).item() == pytest.approx(9.0)


def test_combined_and_fields() -> None:
    s = Views(hidden={0: t([[[1, 2]]]), 1: t([[[0, 0]]])})
    te = Views(hidden={0: t([[[1, 1]]]), 1: t([[[1, 1]]])})
    total, parts = combined(
        {"embedding_mse": 2.0, "hidden_mse": 0.5, "attention_mse": 0.0}, ctx(s, te, [[1]])
    )
    assert parts == pytest.approx({"embedding_mse": 0.5, "hidden_mse": 1.0})
    assert total.item() == pytest.approx(2 * 0.5 + 0.5 * 1.0)
    assert teacher_fields({"hidden_mse": 1, "minilm_relation": 1, "prediction_ce": 0}) == {"hidden", "qkv"}


def random_views(seed: int, heads: int = 2) -> Views:
    g = torch.Generator().manual_seed(seed)
    layer = {i: torch.randn(2, 5, 8, generator=g) for i in range(3)}
    qkv = {i: tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3)) for i in (1, 2)}
    return Views(hidden=layer, qkv=qkv, logits=torch.randn(2, 3, generator=g), heads=heads)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_zero_against_itself_positive_otherwise_and_needs_what_it_says(name: str) -> None:
    """Each registered loss: no loss when the student is the teacher (a soft cross-entropy is the
    teacher's entropy then, its minimum), more when it is not, gradients reach the student, and the
    teacher fields it declares are the ones it reads."""
    mask = [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    labels = torch.tensor([0, 2])
    pairs = ((0, 0), (1, 1), (2, 2))
    teacher = random_views(0)
    same = ctx(teacher, teacher, mask, pairs=pairs, labels=labels, relation_heads=2)
    other_views = random_views(1)
    for x in [*other_views.hidden.values(), *(t for v in other_views.qkv.values() for t in v)]:
        x.requires_grad_(True)
    assert other_views.logits is not None
    other_views.logits.requires_grad_(True)
    other = ctx(other_views, teacher, mask, pairs=pairs, labels=labels, relation_heads=2)
    loss = LOSSES[name]
    at_self, away = float(loss(same).detach()), loss(other)
    if name == "prediction_ce":  # soft cross-entropy: the teacher's own entropy is its minimum
        assert float(away.detach()) > at_self > 0
    elif name == "hard_label":  # labels, not the teacher: any logits give a positive loss
        assert at_self > 0 and float(away.detach()) > 0
    else:
        assert at_self == pytest.approx(0.0, abs=1e-6) and float(away.detach()) > 1e-3
    away.backward()
    grads = [x.grad for x in [*other_views.hidden.values(), other_views.logits] if x.grad is not None]
    grads += [t.grad for v in other_views.qkv.values() for t in v if t.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    # the declared teacher fields are enough: without the others the loss still computes
    needed = Views(
        hidden=teacher.hidden if "hidden" in loss.needs else {},
        qkv=teacher.qkv if "qkv" in loss.needs else {},
        logits=teacher.logits if "logits" in loss.needs else None,
        heads=teacher.heads,
    )
    partial = loss(ctx(other_views, needed, mask, pairs=pairs, labels=labels, relation_heads=2))
    assert float(partial.detach()) == pytest.approx(float(away.detach()))
    assert teacher_fields({name: 1.0}) == loss.needs
