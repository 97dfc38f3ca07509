"""The run configuration: one YAML file, validated before any work starts.

Strings may use ``${NAME}`` or ``${NAME:-default}`` to read environment variables (``GLUE_DIR``).
A bad field fails with its path and the reason, e.g. ``final.tasks[2]: unknown GLUE task 'sst3'``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from distilnas.distill.config import (
    DataConfig,
    DistillConfig,
    LatencyConfig,
    Strict,
    StudentShape,
    TaskName,
    TeacherConfig,
    describe,
)
from distilnas.distill.errors import ConfigError
from distilnas.distill.remote import Remote, is_uri
from distilnas.distill.utils import default_cache_dir, fingerprint, read_text
from distilnas.proxies.config import FidelityConfig, ProxyConfig

Constraint = Literal["monotone", "no_repeats", "supervised"]
CONSTRAINT_NAMES: tuple[Constraint, ...] = ("monotone", "no_repeats", "supervised")


class MappingSearchConfig(Strict):
    """The genetic-algorithm layer-mapping search."""

    population: int = Field(8, gt=1)
    generations: int = Field(3, gt=0)
    crossover: float = Field(0.7, ge=0, le=1)
    mutation: float = Field(0.3, ge=0, le=1)
    tournament: int = Field(3, gt=1)
    hall_of_fame: int = Field(2, ge=0)
    """Elites carried into every generation."""
    crossover_kind: Literal["one_point", "uniform"] = "one_point"
    constraints: list[Constraint] = Field(default_factory=lambda: list(CONSTRAINT_NAMES))
    """Rules every mapping keeps (each switchable)."""
    mode: Literal["task-agnostic", "task-specific"] = "task-agnostic"
    """Task-agnostic: general distillation with the mapping, then fine-tuning on each proxy task.
    Task-specific: task distillation with the mapping on each proxy task."""
    random_baseline: bool = True
    """Also run random search at the GA's evaluation budget."""
    seed_with_baselines: bool = False
    """Start the GA's population from the uniform and last-layers mappings (then random ones): with
    elitism the GA never ends below them. Random search gets no such start."""
    strategy: Literal["auto", "ga", "exhaustive"] = "auto"
    """``auto``: exhaustive search (every valid mapping once) when the space after its constraints is no
    larger than the evaluation budget, else the GA (and random search at its budget)."""

    @property
    def budget(self) -> int:
        """Evaluations the search may spend: the GA's population times its generations, as much again
        for random search at its budget."""
        return self.population * self.generations * (2 if self.random_baseline else 1)

    def exhaustive(self, size: int) -> bool:
        """Whether a space of ``size`` valid mappings is searched exhaustively."""
        return self.strategy == "exhaustive" or (self.strategy == "auto" and size <= self.budget)

    @model_validator(mode="after")
    def _sizes(self) -> MappingSearchConfig:
        if self.population < self.tournament:
            raise ValueError(
                f"population ({self.population}) is smaller than the tournament ({self.tournament})"
            )
        return self


class SupernetSearchConfig(Strict):
    """The NAS-BERT architecture space (the supernet search builds on it)."""

    blocks: int = Field(3, gt=0)
    """Blocks the teacher's 2N-layer chain is split into (it must divide 2N)."""
    hidden_sizes: list[int] = Field([128, 192, 256, 384], min_length=1)
    """Hidden sizes a block may take (NAS-BERT: 128, 192, 256, 384, 512 for BERT-base); at most the
    teacher's."""
    operations: list[Literal["mha", "ffn", "conv3", "conv5", "conv7"]] = Field(
        ["mha", "ffn", "conv3", "conv5", "conv7"], min_length=1
    )
    """Operations a layer may take besides identity."""
    corpus_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the corpus the blocks train on (its teacher hidden states are cached once)."""
    batch_size: int = Field(32, gt=0)
    lr: float = Field(5e-4, gt=0)
    warmup_epochs: int = Field(3, ge=1)
    """Epochs over the corpus sample, one uniformly sampled path per step, before shrinking starts
    (NAS-BERT: 3)."""
    bins: int = Field(10, gt=0)
    """Progressive shrinking: each block's paths fall into this many bins by parameters and as many by
    latency (quantiles; NAS-BERT: 10)."""
    paths_per_bin: int = Field(2000, gt=1)
    """Paths sampled into each bin when shrinking starts (NAS-BERT: 2000)."""
    keep_per_bin: int = Field(10, gt=0)
    """Shrinking halves each bin every epoch until this many remain (NAS-BERT: 10)."""
    score_batches: int = Field(5, gt=0)
    """Held-out corpus batches a path is scored on (NAS-BERT: 5)."""
    population: int = Field(32, gt=1)
    """NSGA-II population over whole students (block candidates combined)."""
    generations: int = Field(20, gt=0)
    rescore: int = Field(16, gt=0)
    """Students of the estimated front re-scored end to end with inherited weights."""
    hand_designed: list[str] = Field(default_factory=list)
    """Students a person would design, as BERT shapes (``2L-96``: attention and feed-forward layers at
    one width, cut over the blocks) or paths: shrinking never drops their blocks, the selection evaluates
    them first and they are always re-scored, so the front holds them unless something beats them."""


class JointSearchConfig(Strict):
    """The joint search of a plain BERT student's shape and its layer mapping (NSGA-II)."""

    layers: list[int] = Field([2, 3, 4], min_length=1)
    hidden: list[int] = Field([128, 192, 256, 384], min_length=1)
    """Widths a student may take; at most the teacher's."""
    heads: list[int] = Field([2, 4, 6, 8, 12], min_length=1)
    """Attention heads (a count that does not divide a width is replaced by the nearest that does)."""
    intermediate: list[int] = Field([512, 1024, 1536], min_length=1)
    """Feed-forward sizes."""
    init: list[Literal["random", "copy", "extract"]] = Field(["extract"], min_length=1)
    """Starts a student may take (``copy`` only at the teacher's sizes)."""
    embedding: list[int | None] = Field([None], min_length=1)
    """Word-embedding tables a student may take: null, the dense vocab x hidden table; a width E, a
    factorised vocab x E table and E x hidden projection (ALBERT-style; only narrower than the student)."""
    population: int = Field(12, gt=1)
    generations: int = Field(5, gt=0)
    crossover: float = Field(0.9, ge=0, le=1)
    mutation: float = Field(0.3, ge=0, le=1)
    max_params: int | None = Field(None, gt=0)
    """A budget: students with more parameters are never evaluated."""
    max_latency_ms: float | None = Field(None, gt=0)
    """A budget on the predicted latency at ``final.latency``'s setting."""
    strategy: Literal["auto", "nsga2", "exhaustive"] = "auto"
    """``auto``: every valid student once when the space fits the budget (population x generations),
    else NSGA-II."""

    @property
    def budget(self) -> int:
        return self.population * self.generations

    def exhaustive(self, size: int) -> bool:
        return self.strategy == "exhaustive" or (self.strategy == "auto" and size <= self.budget)


class SearchConfig(Strict):
    mapping: MappingSearchConfig = MappingSearchConfig()
    supernet: SupernetSearchConfig = SupernetSearchConfig()
    joint: JointSearchConfig = JointSearchConfig()


class FinalConfig(Strict):
    """The final stage: chosen students fully distilled and scored on these GLUE tasks."""

    tasks: list[TaskName] = Field(["mrpc", "rte", "sst2"], min_length=1)
    students: list[Literal["searched", "uniform", "last", "random", "supernet", "joint", "hand"]] = Field(
        ["searched", "uniform", "last"], min_length=1
    )
    """Which students: the mapping search's best, the uniform and last-layers baselines and random
    search's best at the search's budget (all shaped as ``distill.student``); ``supernet``: every student
    on the supernet search's front (run first when it has not finished), distilled from its inherited
    weights at its block boundaries; ``joint``: students of the joint search's front (run first when it
    has not finished), each with its searched mapping; ``hand``: the ``hand_designed`` students."""
    hand_designed: list[StudentShape] = Field(default_factory=list, validate_default=True)
    """Students a person would design (TinyBERT-style: ``{layers: 2, hidden: 96}``, heads and FFN
    following the teacher's ratios), each built as ``distill.student`` says but at this shape, with the
    uniform mapping: the yardstick the searched students are compared with."""
    joint_front: int = Field(4, gt=0)
    """At most this many of the joint search's front, spread over its sizes (the smallest and the largest
    included)."""
    latency: LatencyConfig = LatencyConfig()
    export_front: bool = True
    """Export only the Pareto front (else every final student)."""

    @property
    def mapping_search(self) -> bool:
        """Whether a student comes from the mapping search (its best, or random search's)."""
        return "searched" in self.students or "random" in self.students

    @field_validator("hand_designed")
    @classmethod
    def _hand_students(cls, value: list[StudentShape], info: ValidationInfo) -> list[StudentShape]:
        wanted = "hand" in info.data.get("students", [])
        if wanted and not value:
            raise ValueError("list the shapes when final.students has 'hand'")
        if value and not wanted:
            raise ValueError("add 'hand' to final.students to distil these students")
        return value


class RayConfig(Strict):
    """Where trials run: no ``address`` starts Ray here; ``auto`` or ``host:port`` joins a cluster."""

    address: str | None = None
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    """GPUs each trial holds; a fraction lets several small trials share one GPU (0.25: four). A trial
    runs on the GPU Ray assigns it, in bf16 autocast where the GPU has it (each stage's ``precision``)."""
    max_concurrent: int | None = Field(None, gt=0)
    retries: int = Field(1, ge=0)
    """A failed trial is tried again this many times (in the run and after a resume) before it counts as
    failed; each failure is a FAIL trial in the storage, with its reason."""
    runtime_env: dict[str, Any] | None = None
    """What Ray sets up in every worker of the run, as Ray defines it (``pip``, ``conda``, ``working_dir``,
    ``env_vars``, ...); empty: the workers' own environment (a cluster started with the same install)."""

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_gpus_above_one(cls, value: float) -> float:
        if value > 1 and not value.is_integer():
            raise ValueError(f"{value:g}: a trial shares one GPU (a fraction up to 1) or holds whole GPUs")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _ray_runtime_env(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from ray.runtime_env import RuntimeEnv  # Ray accepts unknown fields silently: check them here

        unknown = sorted(set(value) - set(RuntimeEnv.known_fields))
        if unknown:
            known = ", ".join(f for f in sorted(RuntimeEnv.known_fields) if not f.startswith("_"))
            raise ValueError(f"unknown field {unknown[0]!r}; Ray knows: {known}")
        try:
            RuntimeEnv(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return value


class StorageConfig(Strict):
    """The Optuna storage: empty ``url`` is a JournalStorage file in the run folder; else an RDB URL."""

    url: str | None = None
    study_prefix: str = "distilnas"


class RunConfig(Strict):
    """One distilnas run."""

    teacher: TeacherConfig = TeacherConfig()
    data: DataConfig = DataConfig()
    proxy: ProxyConfig = ProxyConfig()
    fidelity: FidelityConfig = FidelityConfig()
    distill: DistillConfig = DistillConfig()
    search: SearchConfig = SearchConfig()
    final: FinalConfig = FinalConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()
    output_dir: Path = Path("runs/default")
    """The run folder. On a cluster: a shared disk's path, or a URI (``s3://bucket/runs/demo``, any
    filesystem pyarrow opens, its query configuring it): the run is then kept there (``run_storage``) and
    worked on in a local copy under the cache, which this field then names."""
    run_storage: str | None = None
    """The URI the run is kept at (set from a URI ``output_dir``); empty: the run folder alone."""
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _run_storage(cls, data: Any) -> Any:
        """A URI ``output_dir`` becomes ``run_storage``, and ``output_dir`` the run's local copy."""
        if isinstance(data, dict) and is_uri(data.get("output_dir")):
            uri = str(data["output_dir"])
            if data.get("run_storage") not in (None, uri):
                raise ValueError(f"output_dir {uri!r} and run_storage {data['run_storage']!r} differ")
            cache = (data.get("data") or {}).get("cache_dir") or default_cache_dir()
            data = {**data, "run_storage": uri, "output_dir": str(local_copy(uri, Path(cache)))}
        return data

    @property
    def cache_dir(self) -> Path:
        return self.data.cache_dir or default_cache_dir()

    def config_hash(self) -> str:
        """A fingerprint of every setting, to tell one run's folder from another's. Empty settings are
        left out, so a new optional setting (empty by default) keeps older runs resumable."""
        return fingerprint(self.model_dump(mode="json", exclude_none=True))


def local_copy(uri: str, cache_dir: Path) -> Path:
    """Where a run kept at ``uri`` is worked on: a folder of the cache named by the URI."""
    base = Remote(uri).base
    scheme, _, rest = base.partition("://")
    return cache_dir / "runs" / f"{scheme}-{Path(rest).name or 'run'}-{fingerprint(base)[:10]}"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, path: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV.sub(sub, value)


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a parsed config tree (after environment expansion)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(expand_env(data))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None


MAX_VALUES = 100_000
"""A config file expands to at most this many values (aliases counted as often as they are used)."""


def expanded_size(node: yaml.Node, path: str, open_: set[int], sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded; a node inside itself (a
    recursive alias) is an error."""
    if id(node) in open_:
        raise ConfigError(f"{path}: a recursive YAML alias (a value that contains itself)")
    if id(node) in sizes:
        return sizes[id(node)]
    open_.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1 + sum(expanded_size(child, path, open_, sizes) for child in children)
    open_.discard(id(node))
    sizes[id(node)] = size
    return size


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content: UTF-8, valid YAML (an error names its line and column), without recursive
    aliases or alias bombs (at most ``MAX_VALUES`` values once expanded)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    text = read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and expanded_size(root, str(path), set(), {}) > MAX_VALUES:
            raise ConfigError(f"{path}: expands to more than {MAX_VALUES:,} values (an alias bomb?)")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config; every error names the file and the field."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    return parse_config(read_yaml(path), str(path))
