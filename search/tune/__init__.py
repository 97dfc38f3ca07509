"""Ray Tune for every stage: searchers, the one recorder of trials, trainables and Ray start-up."""

from distilnas.search.tune.cluster import (
    RunStorage,
    check_nodes,
    init_ray,
    remote_of,
    shelf,
    start_ray,
    trial_slots,
)
from distilnas.search.tune.recorder import Recorder
from distilnas.search.tune.searchers import Job, JobSearcher, StrategySearcher, TimedSearcher
from distilnas.search.tune.trainables import run_trials

__all__ = [
    "Job",
    "JobSearcher",
    "Recorder",
    "RunStorage",
    "StrategySearcher",
    "TimedSearcher",
    "check_nodes",
    "init_ray",
    "remote_of",
    "run_trials",
    "shelf",
    "start_ray",
    "trial_slots",
]
