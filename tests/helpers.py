"""What tests share beyond fixtures: where the offline data is, tiny BERTs saved as model folders, a tiny
whole run's config, and the servers tests start (optuna-dashboard, PostgreSQL) and how they read them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import BertConfig

from distilnas.spaces.joint_space import JointSpace

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GLUE = SHARED / "glue"
CORPUS = SHARED / "corpus"
VOCAB = SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"
WIKISPLIT = CORPUS / "wikisplit" / "tune.tsv"


@dataclass
class Ran:
    """What a ``distilnas`` command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_process(*args: str, timeout: int = 1200, env: dict[str, str] | None = None) -> Ran:
    """``python -m distilnas ARGS`` in a process of its own (offline; Ray started by the command)."""
    full = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS="", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "distilnas", *args], capture_output=True, text=True, timeout=timeout, env=full
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


Cli = Callable[..., Ran]
"""The ``cli`` fixture: ``cli(*args, process=False, timeout=1200, env=None) -> Ran``."""


def save_tiny_bert(folder: Path, layers: int, hidden: int = 32, heads: int = 2) -> Path:
    """Save a random-weight BERT of the given shape (FFN 2x hidden) with the BERT uncased tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from distilnas.distill.teacher import wordpiece_tokenizer

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    wordpiece_tokenizer(VOCAB).save_pretrained(folder)
    return folder


TEXTS = [
    "the film was a delight from start to finish",
    "a dull and lifeless film",
    "the cast is wonderful and the story moves",
    "i could not wait for it to end",
    "stock prices fell sharply on monday",
    "the market rallied after the report",
    "a warm , funny and moving picture",
    "the plot makes no sense at all",
]


def reference_pool(tiny_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tiny teacher's output cache on TEXTS, and its reference store (last layer, 5 tokens)."""
    from distilnas.distill.data import tokenize_texts
    from distilnas.distill.reference_store import task_store
    from distilnas.distill.teacher import wordpiece_tokenizer
    from distilnas.distill.teacher_cache import teacher_cache

    data = tokenize_texts(TEXTS, wordpiece_tokenizer(VOCAB), 32)
    cache = teacher_cache(tiny_teacher, "tiny", data, 32, ["hidden"], tmp_path)
    return cache, task_store(cache, TEXTS, "tiny", 4, 5, tmp_path)


def referenced_student(width: int = 64):  # type: ignore[no-untyped-def]
    """A 2-layer referenced BERT classifier whose projection gives references a visible effect."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from distilnas.distill.referenced_bert import referenced

    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(3)
    model = referenced(BertForSequenceClassification(cfg), width, layer=4, tokens=5).eval()
    with torch.no_grad():  # a visible reference: the projection's BERT initialisation is small
        model.bert.reference_projection.weight.normal_(0, 0.5)
    return model


def bert_params(v: int, p: int, t: int, h: int, i: int, layers: int) -> int:
    """BERT's parameter count by hand: embeddings + layers + pooler."""
    embeddings = (v + p + t) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * layer + (h * h + h)


def bert_flops(b: int, s: int, h: int, i: int, layers: int) -> int:
    """Forward matmul FLOPs (2 per multiply-add): Q, K, V, O projections, the two attention
    products (QK^T and AV, over all heads together), the FFN, and the pooler on [CLS]."""
    per_layer = 4 * 2 * s * h * h + 2 * 2 * s * s * h + 2 * 2 * s * h * i
    return b * (layers * per_layer + 2 * h * h)


SOURCES_ROWS = {
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "wnli": {"train": 635, "validation": 71, "test": 146},
    "qnli": {"validation": 5463, "test": 5463},
    "ax": {"test": 1104},
}


JOINT_TEACHER = BertConfig(
    vocab_size=100, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=256
)


def joint_space(constraints: list[str] | None = None, **choices: list) -> JointSpace:
    """A joint space over a 6-layer, 64-wide teacher config (no weights)."""
    given = {
        "layers": [1, 2, 3, 4],
        "hidden": [16, 32, 48, 64],
        "heads": [2, 3, 4],
        "intermediate": [64, 256],
        "init": ["random", "copy", "extract"],
    } | choices
    names = ["monotone", "no_repeats", "supervised"] if constraints is None else constraints
    return JointSpace(**given, teacher=JOINT_TEACHER, constraints=names)


def write_run_config(tmp: Path, glue_dir: Path, corpus_dir: Path, extra: str = "") -> Path:
    """A whole ``distilnas run`` on a 4-layer tiny teacher in ``tmp`` (a minute or two): its mapping
    search, two students distilled on RTE and MRPC; ``extra`` is YAML appended (a storage, say)."""
    teacher = save_tiny_bert(tmp / "teacher", layers=4)
    cfg = tmp / "run.yaml"
    cfg.write_text(
        f"""
teacher:
  name: {teacher}
  train: {{epochs: 1, train_limit: 64, batch_size: 16, max_length: 32}}
data:
  glue_dir: {glue_dir}
  cache_dir: {tmp / "cache"}
  corpus: {{files: [{corpus_dir / "wikisplit" / "tune.tsv"}]}}
proxy: {{tasks: [rte], corpus_fraction: 0.01, train_examples: 32, general_steps: 2, task_steps: 2}}
distill:
  student: {{layers: 2, init: copy}}
  max_length: 32
  corpus_fraction: 0.01
  train_limit: 64
  general: {{losses: {{embedding_mse: 1, hidden_mse: 1}}, batch_size: 16, steps: 3}}
  task:
    intermediate: {{steps: 2, batch_size: 16}}
    prediction: {{steps: 2, batch_size: 16}}
  baseline: {{batch_size: 16}}
search:
  mapping: {{population: 3, generations: 2, tournament: 2, hall_of_fame: 1}}
final:
  tasks: [rte, mrpc]
  latency: {{repeats: 5}}
ray: {{cpus_per_trial: 1}}
output_dir: {tmp / "out"}
{extra}"""
    )
    return cfg


# ---------------------------------------------------------------------- servers a test starts and reads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for_json(url: str, seconds: float = 60) -> Any:
    """The JSON at ``url`` once the server behind it answers (None if it never does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return get_json(url)
        except OSError:
            time.sleep(0.25)
    return None


def chromium() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    page = subprocess.run(
        [chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert page.returncode == 0, page.stderr[-2000:]
    return page.stdout


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """An S3 server of its own on 127.0.0.1 and a free port (moto's, the one S3 implementation pip
    installs: S3 itself and MinIO cannot run here), with the credentials every process of the test
    inherits; yields the endpoint for run-storage URIs (``s3://bucket/x?endpoint_override=...``)."""
    port = free_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="distilnas",
        AWS_SECRET_ACCESS_KEY="distilnas",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",  # no credential lookups on a cloud's metadata address
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.2)
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        server.terminate()
        server.wait(timeout=30)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of its own (initdb into a temp folder, on 127.0.0.1 and a free port, trust
    authentication), stopped and removed on exit; yields the URL of its database ``distilnas``. As root,
    the server runs as the ``postgres`` user (PostgreSQL refuses root)."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "no PostgreSQL server programs"
    as_root = os.getuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="distilnas-pg-"))
    if as_root:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()

    def pg(program: str, *args: str) -> None:
        proc = subprocess.run([*prefix, str(bin_dir / program), *args], capture_output=True, text=True)
        assert proc.returncode == 0, f"{program}: {proc.stderr[-2000:]}"

    try:
        pg("initdb", "-D", str(data), "-U", "distilnas", "--auth=trust", "-E", "UTF8")
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        pg("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "distilnas", "distilnas")
            yield f"postgresql://distilnas@127.0.0.1:{port}/distilnas"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
