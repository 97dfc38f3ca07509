"""LayerMapping: constructors, the canonical string, validation."""

from __future__ import annotations

import pytest

from distilnas.distill.errors import UserError
from distilnas.spaces.mapping import LayerMapping


def test_uniform_is_tinybert_rule() -> None:
    assert LayerMapping.uniform(4, 12).targets == (3, 6, 9, 12)
    assert LayerMapping.uniform(3, 6).targets == (2, 4, 6)
    assert LayerMapping.uniform(4, 6).targets == (1, 3, 4, 6)  # m*N/M rounded down
    assert LayerMapping.uniform(6, 6).targets == (1, 2, 3, 4, 5, 6)


def test_last_layers() -> None:
    assert LayerMapping.last(3, 6).targets == (4, 5, 6)
    assert LayerMapping.last(1, 12).targets == (12,)


@pytest.mark.parametrize("text", ["2,4,6/6", "1,-,6/6", "-,-/3", "5,5,5/12"])
def test_string_round_trip(text: str) -> None:
    m = LayerMapping.from_string(text)
    assert str(m) == text and LayerMapping.from_string(str(m)) == m


def test_string_with_depth_argument() -> None:
    assert LayerMapping.from_string("2, -, 6", teacher_layers=6) == LayerMapping((2, None, 6), 6)
    with pytest.raises(UserError, match="written for 6 teacher layers, the teacher has 12"):
        LayerMapping.from_string("2,4/6", teacher_layers=12)
    with pytest.raises(UserError, match="depth is missing"):
        LayerMapping.from_string("2,4")
    with pytest.raises(UserError, match="expected comma-separated"):
        LayerMapping.from_string("two,4/6")


def test_pairs_and_rules() -> None:
    m = LayerMapping((2, None, 6), 6)
    assert m.pairs() == [(0, 0), (1, 2), (3, 6)]
    assert m.pairs(embeddings=False) == [(1, 2), (3, 6)]
    assert m.teacher_layers_used() == [0, 2, 6]
    assert m.is_monotone() and not m.has_repeats()
    assert LayerMapping((4, 2), 6).is_monotone() is False
    assert LayerMapping((3, 3), 6).has_repeats()
    with pytest.raises(UserError, match="must not decrease"):
        LayerMapping((4, 2), 6).check_monotone()
    with pytest.raises(UserError, match=r"mapping 4,-,2/6: teacher layers must not decrease"):
        LayerMapping.from_string("4,-,2/6", monotone=True)
    assert LayerMapping.from_string("2,-,2/6", monotone=True).targets == (2, None, 2)


def test_bad_mappings() -> None:
    with pytest.raises(UserError, match=r"maps to teacher layer 7, outside 1\.\.6"):
        LayerMapping((1, 7), 6)
    with pytest.raises(UserError, match="maps to teacher layer 0"):
        LayerMapping((0, 2), 6)
    with pytest.raises(UserError, match="deeper than its 6-layer teacher"):
        LayerMapping.uniform(8, 6)
    with pytest.raises(UserError, match="at least one layer"):
        LayerMapping((), 6)


def test_immutable_and_hashable() -> None:
    m = LayerMapping.uniform(3, 6)
    with pytest.raises(AttributeError):
        m.teacher_layers = 7  # type: ignore[misc]
    assert len({m, LayerMapping((2, 4, 6), 6)}) == 1
