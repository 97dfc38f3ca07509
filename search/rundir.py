"""The run folder (``output_dir``): the one place its layout, its recorded configs and its study names live.

```
output_dir/
  config.json         the config of ``distilnas run`` and its hash (each stage folder records its own too)
  run.log  optuna.journal (every stage's trials, one study each, unless storage.url names a database)
  search-mapping/     the layer-mapping search     search-supernet/   the architecture search
  search-joint/       the joint search of shape and mapping
  final/              the final stage              results/  exports/  report.html
```

A folder belongs to the config that made it: running another config in it, or the same one again without
``--resume``, is refused before any work.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from distilnas.distill.config import describe
from distilnas.distill.errors import ConfigError, UserError
from distilnas.distill.teacher import resolve
from distilnas.distill.utils import atomic_write_json, file_digest
from distilnas.results.storage import JOURNAL, open_storage
from distilnas.search.config import RunConfig

CONFIG = "config.json"
RESULTS = "results.json"

MAPPING_INPUTS = ("teacher", "data.glue_dir", "data.corpus", "proxy", "distill", "search.mapping", "seed")
"""What the mapping search's outputs depend on (another final stage may reuse them)."""
JOINT_INPUTS = (
    "teacher", "data.glue_dir", "data.corpus", "proxy", "distill", "search.joint",
    "search.mapping.constraints", "search.mapping.mode", "final.latency", "seed",
)  # fmt: skip
"""What the joint search's outputs depend on: the mapping search's, its own space and the latency setting."""
SUPERNET_INPUTS = (
    "teacher.name", "data.corpus", "distill.max_length", "search.supernet", "final.latency", "seed"
)  # fmt: skip
"""What the supernet search's outputs depend on: the teacher's hidden states on the corpus (never its
fine-tuned copies) and its latency table, timed at ``final.latency``."""


def made_from(cfg: RunConfig, inputs: tuple[str, ...] | None) -> dict[str, str]:
    """What the config's names stand for, by content: the teacher's weights and the corpus files, where
    ``inputs`` hold them (a folder or file changed in place under the same name is another input)."""

    def depends(setting: str) -> bool:
        return inputs is None or any(
            s == setting or setting.startswith(f"{s}.") or s.startswith(f"{setting}.") for s in inputs
        )

    out = {}
    if depends("teacher.name"):
        out["the teacher's weights"] = resolve(cfg.teacher.name).identity()
    if cfg.data.corpus is not None and depends("data.corpus"):
        for f in cfg.data.corpus.files:
            out[f"corpus file {f}"] = content_digest(Path(f))
    return out


def content_digest(path: Path) -> str:
    """A file's digest, hashed once per process while its size and modification time stay the same."""
    if not path.is_file():
        return "missing"
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


@dataclass(frozen=True)
class Studies:
    """The Optuna study names of a run's stages, all under one prefix (``storage.study_prefix``)."""

    prefix: str

    def name(self, *parts: str) -> str:
        return "-".join((self.prefix, *parts))

    @property
    def mapping(self) -> str:
        return self.name("mapping")

    def fidelity(self, setting: str, search: str = "mapping") -> str:
        return (
            self.name("fidelity", setting) if search == "mapping" else self.name("fidelity", search, setting)
        )

    @property
    def final(self) -> str:
        return self.name("final")

    @property
    def final_general(self) -> str:
        return self.name("final", "general")

    @property
    def joint(self) -> str:
        return self.name("joint")

    @property
    def supernet_blocks(self) -> str:
        return self.name("supernet", "blocks")

    @property
    def supernet(self) -> str:
        return self.name("supernet")

    @property
    def supernet_inherited(self) -> str:
        return self.name("supernet", "inherited")

    @property
    def supernet_fidelity(self) -> str:
        return self.name("supernet", "fidelity")


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first setting (a dotted path) where two config trees differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list | str) else str(value)


class Folder:
    """A folder that records the config that made it (``config.json``) and may hold ``results.json``.

    ``inputs``: the config sections its outputs depend on (None: the whole config); another config that
    agrees on them may use the folder's outputs, one that does not is refused naming the setting."""

    def __init__(self, path: Path, inputs: tuple[str, ...] | None = None) -> None:
        self.path = Path(path)
        self.inputs = inputs

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def started(self) -> bool:
        return self.config_file.is_file()

    def difference(self, cfg: RunConfig) -> str | None:
        """How ``cfg`` differs from the config that made the folder in its inputs: the first setting, else
        what a name stands for (:func:`made_from`); None when they agree."""
        recorded = self._recorded()
        old, new = recorded["config"], cfg.model_dump(mode="json")
        if old.get("run_storage") and old.get("run_storage") == new.get("run_storage"):
            old, new = {**old, "output_dir": None}, {**new, "output_dir": None}  # each machine's own copy
        for section in self.inputs or ("",):
            a: Any = old
            b: Any = new
            for part in filter(None, section.split(".")):
                a, b = (a or {}).get(part), (b or {}).get(part)
            found = first_difference(a, b, section)
            if found:
                field, was, now = found
                return f"{field}={show(was)}; this config has {show(now)}"
        if "made_from" in recorded:
            found = first_difference(recorded["made_from"], made_from(cfg, self.inputs))
            if found:
                what, was, now = found
                return f"{what} {was}; now {now}"
        return None

    def check_inputs(self, cfg: RunConfig, what: str = "") -> None:
        """Refuse to use the folder's outputs for ``cfg`` unless they were made from the same inputs."""
        found = self.difference(cfg)
        if found:
            raise UserError(
                f"{self.path}: {what}{self.path.name} was made with {found}"
                " (choose another output_dir, or remove the folder)"
            )

    def check(self, cfg: RunConfig, resume: bool) -> None:
        """A folder belongs to one config: resuming another's, or overwriting one, is refused."""
        if self.started:
            if not resume:
                raise UserError(
                    f"{self.path}: a run is already here; pass --resume or choose another output_dir"
                )
            self.check_inputs(cfg, "--resume with another config: ")
        elif resume:
            raise UserError(f"{self.path}: nothing to resume")

    def record(self, cfg: RunConfig) -> None:
        atomic_write_json(
            self.config_file,
            {
                "hash": cfg.config_hash(),
                "config": cfg.model_dump(mode="json"),
                "made_from": made_from(cfg, self.inputs),
            },
        )

    def _recorded(self) -> dict[str, Any]:
        if not self.started:
            raise UserError(f"{self.path}: not a distilnas run folder (no {CONFIG})")
        try:
            return dict(json.loads(self.config_file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.config_file}: unreadable ({exc})") from None

    def recorded_hash(self) -> str:
        return str(self._recorded()["hash"])

    def recorded_config(self) -> RunConfig:
        """The config the folder was made with."""
        try:
            return RunConfig.model_validate(self._recorded()["config"])
        except ValidationError as exc:
            raise ConfigError(f"{self.config_file}: {describe(exc)}") from None

    def recorded_storage_url(self) -> str | None:
        url = self._recorded()["config"].get("storage", {}).get("url")
        return str(url) if url else None

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def finished(self) -> bool:
        return self.results_file.is_file()

    def results(self) -> dict[str, Any]:
        if not self.finished:
            raise UserError(f"{self.path}: has not finished (no {RESULTS})")
        return dict(json.loads(self.results_file.read_text()))

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.results_file, results)


class RunFolder(Folder):
    """A run's folder and its stage folders (see the module docstring)."""

    def __init__(self, path: Path, prefix: str = "distilnas") -> None:
        super().__init__(path)
        self.studies = Studies(prefix)

    @classmethod
    def of(cls, cfg: RunConfig) -> RunFolder:
        return cls(cfg.output_dir, cfg.storage.study_prefix)

    @classmethod
    def existing(cls, path: Path) -> RunFolder:
        """A run folder made earlier, with the study prefix it recorded."""
        if not path.is_dir():
            raise UserError(f"{path}: run folder not found")
        run = cls(path)
        for folder in run.recorded_folders():
            return cls(path, folder.recorded_config().storage.study_prefix)
        return run

    @property
    def mapping(self) -> Folder:
        return Folder(self.path / "search-mapping", MAPPING_INPUTS)

    @property
    def supernet(self) -> Folder:
        return Folder(self.path / "search-supernet", SUPERNET_INPUTS)

    @property
    def joint(self) -> Folder:
        return Folder(self.path / "search-joint", JOINT_INPUTS)

    @property
    def final(self) -> Folder:
        return Folder(self.path / "final")

    @property
    def artifacts(self) -> Path:
        """The cache folders trials read, published for the nodes of a cluster (by fingerprinted name)."""
        return self.path / "artifacts"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    def recorded_folders(self) -> list[Folder]:
        """The run's own folder and its stage folders that recorded a config, the run's first."""
        return [f for f in (self, self.mapping, self.joint, self.supernet, self.final) if f.started]

    def storage(self, url: str | None) -> optuna.storages.BaseStorage:
        """The run's Optuna storage: the journal file in the folder, or the RDB at ``url``."""
        return open_storage(url, self.path)

    def recorded_storage(self) -> optuna.storages.BaseStorage:
        """The storage a run made earlier wrote to: the database its recorded config names (the run's
        own config first, then its stages'), else its journal file."""
        for folder in self.recorded_folders():
            url = folder.recorded_storage_url()
            if url:
                return self.storage(url)
        if not (self.path / JOURNAL).is_file():
            raise UserError(f"{self.path}: no Optuna storage in this run folder (no {JOURNAL})")
        return self.storage(None)
