"""The proxy fitness of a layer mapping.

:func:`prepare_proxy` runs once, in the driver: it prepares the proxy setting through
:func:`distilnas.distill.prepared.prepare` (the fine-tuned teacher on each proxy task, a seeded corpus
sample, the tasks' train subsets and dev sets, head and neuron importance, and the teacher's outputs on
what the trials distil from: the corpus sample; the task subsets in task-specific mode). The result is a
small JSON-able :class:`PreparedProxy`.

:class:`MappingFitness` is what a trial runs: the one distillation recipe (:mod:`distilnas.distill.
recipes`) at the proxy's step budgets. It never runs the teacher: it reads the caches.
- task-agnostic mode: general distillation on the corpus sample with the mapping, then fine-tuning on each
  proxy task's train subset; fitness = the mean dev score over the tasks;
- task-specific mode: task distillation with the mapping on each proxy task; fitness likewise.

:class:`JointFitness` scores a student's shape with its mapping the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from distilnas.distill.config import DistillConfig, StudentConfig, TeacherConfig
from distilnas.distill.prepared import PreparedData, prepare
from distilnas.distill.recipes import Budget, distil
from distilnas.distill.students import StudentRecord, student_spec
from distilnas.proxies.config import ProxyConfig
from distilnas.spaces.joint_space import JointCandidate
from distilnas.spaces.mapping import LayerMapping
from distilnas.spaces.rungs import rung_fraction, rung_steps, split_rung


@dataclass
class PreparedProxy:
    """The prepared data, the distillation settings and the proxy's budgets (JSON; cheap to ship)."""

    data: PreparedData
    distill: dict[str, Any]
    proxy: dict[str, Any]
    mode: str = "task-agnostic"

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data.to_json(), "distill": self.distill, "proxy": self.proxy, "mode": self.mode}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedProxy:
        return cls(PreparedData.from_json(data["data"]), data["distill"], data["proxy"], data["mode"])

    def budget(self, rung: int | None = None) -> Budget:
        """The proxy's step budgets and task rows, at ``rung`` of successive halving (None: the full
        proxy)."""
        proxy = ProxyConfig.model_validate(self.proxy)
        task = rung_steps(proxy.task_steps, rung, proxy.rungs, proxy.eta)
        rows = rung_fraction(rung, proxy.rungs, proxy.eta)
        if self.mode == "task-agnostic":
            general = rung_steps(proxy.general_steps, rung, proxy.rungs, proxy.eta)
            return Budget(general, task, "finetune", rows)
        return Budget(None, task, "distil", rows)


def prepare_proxy(
    teacher: TeacherConfig,
    proxy: ProxyConfig,
    distill: DistillConfig,
    corpus_texts: list[str] | None,
    glue_dir: Path | None,
    cache_dir: Path,
    out_dir: Path,
    mode: str,
    seed: int,
    shelf: str | None = None,
) -> PreparedProxy:
    """Fine-tuned teachers, token data, importance and teacher-output caches for the proxy setting
    (``shelf``: where a cluster run publishes what trials read)."""
    data = prepare(
        teacher,
        distill,
        list(proxy.tasks),
        corpus_texts,
        glue_dir,
        cache_dir,
        out_dir,
        seed,
        corpus_fraction=proxy.corpus_fraction,
        train_limit=proxy.train_examples,
        task_caches=mode == "task-specific",  # task-agnostic trials fine-tune on labels: no teacher outputs
        shelf=shelf,
    )
    return PreparedProxy(data, distill.model_dump(mode="json"), proxy.model_dump(mode="json"), mode)


class MappingFitness:
    """The proxy score of a mapping (picklable; runs inside a Ray trial, never runs the teacher)."""

    def __init__(self, prepared: PreparedProxy) -> None:
        self.prepared = prepared

    def candidate(self, text: str, student: StudentConfig) -> tuple[StudentConfig, LayerMapping]:
        """The student and the mapping a candidate's text stands for: ``distill.student`` and a mapping."""
        return student, LayerMapping.from_string(text, self.prepared.data.teacher_layers)

    def __call__(self, text: str) -> dict[str, float]:
        """Scores of a candidate's text (``@r<rung>`` appended: at that rung's budget)."""
        p = self.prepared
        config = DistillConfig.model_validate(p.distill)
        text, rung = split_rung(text)
        student, mapping = self.candidate(text, config.student)
        spec = student_spec(student, AutoConfig.from_pretrained(p.data.teacher))
        spec = spec.kind.proxy_form(spec)
        record = StudentRecord(spec.name, spec, student.init, str(mapping))
        tasks = [t.name for t in p.data.tasks]
        outcomes = distil(record, mapping.pairs(), p.data.on_node(), config, tasks, budget=p.budget(rung))
        scores = {name: float(o["score"]) for name, o in outcomes.items()}
        scores["fitness"] = sum(scores.values()) / len(scores)
        return scores


class JointFitness(MappingFitness):
    """The proxy score of a student shape with its mapping (:class:`~distilnas.spaces.joint_space.
    JointCandidate`'s text): ``distill.student``'s other options at the candidate's sizes and start."""

    def candidate(self, text: str, student: StudentConfig) -> tuple[StudentConfig, LayerMapping]:
        c = JointCandidate.parse(text, self.prepared.data.teacher_layers)
        return student.model_copy(update=c.student_options()), c.mapping
