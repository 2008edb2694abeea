"""`dub report --workers N`: score clips on N Ray actors instead of in one process.

Each actor loads the metric models once (one GPU each when the report runs on cuda) and scores
chunks of clips with the same `_ClipScorer` the in-process path uses; the driver gathers the
rows, page media and embedding features as they come back (journaling them, so a stopped report
resumes), and computes the set-level metrics (FAD, IS) as before.
Scores do not depend on which actor computed them: the in-process and Ray results are equal.
"""

from __future__ import annotations

from collections.abc import Callable

from dub.workflows.metrics.embeddings import BackendInfo
from dub.workflows.metrics.run_inputs import GeneratedRow
from dub.workflows.report.config import Injected, ReportConfig, ScoredClip
from dub.workflows.report.scoring import load_models

__all__ = ["score_on_ray"]

CHUNK = 4  # clips per actor call: small enough to balance, large enough to amortise the call


class ScoringActor:
    """One replica of the report's models."""

    def __init__(self, setup: tuple[ReportConfig, dict, list[GeneratedRow], Injected]) -> None:
        import torch

        config, run_config, rows, injected = setup
        if not config.device.startswith("cuda"):
            torch.set_num_threads(1)  # Ray gives this actor one CPU; torch would take them all
        self.models = load_models(config, run_config, rows, injected)
        self.scorer = self.models.scorer(config)

    def info(self) -> tuple[dict[str, BackendInfo], float, dict[str, str]]:
        return self.models.infos(), self.models.load_s, self.models.unavailable

    def score(self, items: list[tuple[int, GeneratedRow, bool]]) -> list[ScoredClip]:
        return [self.scorer.score(index, row, want_media) for index, row, want_media in items]


def score_on_ray(
    config: ReportConfig,
    run_config: dict,
    rows: list[GeneratedRow],
    items: list[tuple[int, GeneratedRow, bool]],
    injected: Injected,
    on_loaded: Callable[[dict[str, BackendInfo], float, dict[str, str]], None],
    on_scored: Callable[[list[ScoredClip]], None],
) -> None:
    """Score `items` (index, row, want media) on `config.workers` actors: `on_loaded` gets one
    actor's (backend infos, model load seconds, unavailable), `on_scored` each chunk of clips as
    it comes back, in any order (the driver journals them)."""
    import ray
    from ray.util import ActorPool

    from dub.workflows.ray_cluster import connect

    resources = connect(config.address)
    gpus = 0.0
    if config.device.startswith("cuda"):
        if resources.gpus < config.workers:
            raise ValueError(
                f"--device cuda with {config.workers} workers needs {config.workers} GPUs; "
                f"the cluster has {resources.gpus:g}"
            )
        gpus = 1.0
    elif resources.cpus < config.workers:
        raise ValueError(f"{config.workers} workers need {config.workers} CPUs; the cluster has {resources.cpus:g}")
    actor_class = ray.remote(num_cpus=1, num_gpus=gpus)(ScoringActor)
    setup = ray.put((config, run_config, rows, injected))  # one copy for all actors
    actors = [actor_class.remote(setup) for _ in range(config.workers)]
    chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
    try:
        on_loaded(*ray.get(actors[0].info.remote()))
        for clips in ActorPool(actors).map_unordered(lambda actor, chunk: actor.score.remote(chunk), chunks):
            on_scored(clips)
    finally:
        for actor in actors:
            ray.kill(actor)
