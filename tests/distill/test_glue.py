"""GLUE: the local reader's quirks, row counts of the shared copy, errors, submissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilnas.distill.errors import DataError, UserError
from distilnas.distill.glue import GLUE_TASKS, count_rows, get_task, load_split, write_submission


# Row counts as listed in ../shared/data/SOURCES.md (header rows excluded).
def test_registry_covers_glue() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"}
    assert get_task("SST-2").name == "sst2" and get_task("STS-B").is_regression
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    with pytest.raises(UserError, match=r"unknown GLUE task 'sst3'; known: cola, sst2"):
        get_task("sst3")


def test_cola_has_no_header_and_keeps_its_first_row(glue_dir: Path) -> None:
    first = (glue_dir / "CoLA" / "train.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    ds = load_split("cola", "train", glue_dir)
    assert ds[0]["sentence"] == first[3] and ds[0]["label"] == int(first[1])
    assert len(ds) == 8551  # the first line is data, not a header


def test_mrpc_byte_order_mark_is_read(glue_dir: Path) -> None:
    raw = (glue_dir / "MRPC" / "train.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the quirk is really there
    ds = load_split("mrpc", "train", glue_dir)
    assert sum(ds["label"]) == 2474  # positives per SOURCES.md: the Quality column was found


def test_quotes_are_not_processed(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text('sentence\tlabel\n"quoted\t1\nplain "mid" text\t0\n')
    ds = load_split("sst2", "validation", tmp_path)
    assert ds["sentence"] == ['"quoted', 'plain "mid" text'] and ds["label"] == [1, 0]


def test_synthetic_quirks(tmp_path: Path) -> None:
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "dev.tsv").write_text("gj04\t1\t\tOur friends won't buy this.\nab\t0\t*\tBad one.\n")
    ds = load_split("cola", "validation", tmp_path)
    assert ds["sentence"] == ["Our friends won't buy this.", "Bad one."] and ds["label"] == [1, 0]
    (tmp_path / "MNLI").mkdir()
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text(
        "\ufeff" + header + "\n0\t1\t2\tg\tb\tb\tp\tp\tA man.\tA person.\tneutral\tcontradiction\n"
    )
    mm = load_split("mnli", "validation_mismatched", tmp_path)
    assert mm[0] == {"premise": "A man.", "hypothesis": "A person.", "label": 2, "idx": 0}


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "RTE").mkdir()
    bad = tmp_path / "RTE" / "train.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tnot_entailment\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 4 tab-separated fields, got 3"):
        load_split("rte", "train", tmp_path)


def test_missing_folder_and_split(tmp_path: Path, glue_dir: Path) -> None:
    with pytest.raises(DataError, match=r"QNLI/train\.tsv: missing"):
        load_split("qnli", "train", glue_dir)
    with pytest.raises(DataError, match="no QQP folder"):
        load_split("qqp", "train", glue_dir)
    with pytest.raises(DataError, match="GLUE folder not found"):
        count_rows(tmp_path / "nope")


def test_bad_label_is_reported(tmp_path: Path) -> None:
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: bad label 'maybe'"):
        load_split("rte", "validation", tmp_path)


def test_submission_files_in_glue_server_format(tmp_path: Path) -> None:
    p = write_submission(get_task("rte"), "test", [0, 1], [1, 0], tmp_path)
    assert p.name == "RTE.tsv"
    assert p.read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    s = write_submission(get_task("stsb"), "test", [3], [5.4321], tmp_path)
    assert s.read_text() == "index\tprediction\n3\t5.000\n"
    c = write_submission(get_task("cola"), "test", [0], [1], tmp_path)
    assert c.read_text().splitlines()[1] == "0\t1"
    m = write_submission(get_task("mnli"), "test_mismatched", [0], [2], tmp_path)
    assert m.name == "MNLI-mm.tsv" and m.read_text().splitlines()[1] == "0\tcontradiction"
    with pytest.raises(UserError):
        write_submission(get_task("rte"), "validation", [0], [1], tmp_path)


def test_test_split_keeps_file_index(glue_dir: Path) -> None:
    ds = load_split("stsb", "test", glue_dir)
    assert ds[0]["label"] == -1.0 and ds["idx"][:3] == [0, 1, 2]
