"""Corpus files: WikiText headings and blank lines, TSV columns, seeded sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilnas.distill.config import CorpusConfig
from distilnas.distill.corpus import is_heading, load_corpus, read_text_file, sample_fraction
from distilnas.distill.errors import DataError

WIKI = (
    " = Valkyria Chronicles III = \n"
    "\n"
    " Senjō no Valkyria 3 is a tactical role @-@ playing video game .\n"
    " The game began development in 2010 .\n"
    "\n"
    " = = Gameplay = = \n"
    "\n"
    " As with previous games , the player controls a squad .\n"
)


def test_headings() -> None:
    assert is_heading(" = Valkyria Chronicles III = ")
    assert is_heading(" = = Gameplay = = ")
    assert is_heading(" = = = Plot = = = ")
    assert not is_heading(" 2 + 2 = 4 , he wrote .")
    assert not is_heading("")


def test_wikitext_lines_and_paragraphs(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_text(WIKI)
    lines = read_text_file(f, "line", min_chars=1)
    assert lines == [
        "Senjō no Valkyria 3 is a tactical role @-@ playing video game .",
        "The game began development in 2010 .",
        "As with previous games , the player controls a squad .",
    ]
    paras = read_text_file(f, "paragraph", min_chars=1)
    assert paras == [lines[0] + " " + lines[1], lines[2]]


def test_tsv_first_column(tmp_path: Path) -> None:
    f = tmp_path / "s.tsv"
    f.write_text("A long sentence here .\tA long <::::> sentence .\nShort\tx\n")
    assert read_text_file(f, min_chars=10) == ["A long sentence here ."]


def test_shared_corpus_loads(corpus_dir: Path) -> None:
    cfg = CorpusConfig(files=[corpus_dir / "wikitext-2" / "valid.txt", corpus_dir / "wikisplit" / "tune.tsv"])
    texts = load_corpus(cfg)
    assert not any(is_heading(t) for t in texts)
    assert all(len(t) >= 20 for t in texts)
    assert sum(1 for t in texts if "@-@" in t) > 100  # WikiText made it in
    assert len(texts) > 5000  # the 5,000 WikiSplit rows and the WikiText paragraphs


def test_sampling_is_seeded_and_sized() -> None:
    texts = [f"example {i}" for i in range(1000)]
    a = sample_fraction(texts, 0.1, seed=3)
    assert len(a) == 100 and a == sample_fraction(texts, 0.1, seed=3)
    assert a != sample_fraction(texts, 0.1, seed=4)
    assert a == sorted(a, key=texts.index)  # corpus order kept
    assert sample_fraction(texts, 1.0, seed=0) == texts
    assert len(sample_fraction(texts, 0.0015, seed=0)) == 2  # ceil
    with pytest.raises(ValueError):
        sample_fraction(texts, 0.0, seed=0)


def test_missing_file() -> None:
    with pytest.raises(DataError, match=r"nope\.txt: corpus file not found"):
        read_text_file("nope.txt")
