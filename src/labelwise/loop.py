"""The workflow's Python API: `Workspace`, a thin facade over `labelwise.workflow` (one module per step).

Rounds of train -> score -> select -> annotate run as a state machine persisted in the store. Each step reads its
inputs from the store, does its work, and records its result and the next step in ONE transaction, so killing the
process at any moment and running the same command again resumes where it was: training restarts the round's
training, scoring skips every image already cached for the round's model, selection and imports are atomic.
Nothing here ever waits for a keyboard.

A round:
    train     train on every labeled pool image (warm start from the previous round's best weights)
    score     one forward pass over the pool: boxes, full class scores, embeddings (cached by image, model, size)
    select    the strategy picks the batch; every score component and the reason are stored
    annotate  the batch goes to the annotation backend; labels come back; the round is done when every image
              is labeled or skipped (skipped images go back to the pool)
The first round of a workspace with no labels at all skips train and score and picks its batch at random (or from
a pretrained checkpoint's embeddings).

The work itself is in `labelwise.workflow`; each method here is a line or two that hands the workspace's context to
it. The names the CLI, the tests and the benchmarks import from here are re-exported below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from labelwise.annotation.base import AnnotationBackend, Batch, PullResult, PushReport, RetireReport
from labelwise.config import WorkspaceConfig, load_config
from labelwise.detectors.base import Detector
from labelwise.engines import ScoreReport
from labelwise.store import STORE_NAME, Store
from labelwise.workflow import annotating, ingest, scoring, selecting, status, training
from labelwise.workflow import rounds as machine  # not `rounds`: run() has a parameter of that name
from labelwise.workflow.annotating import ImportReport, StoreBackendState
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point, open_round
from labelwise.workflow.context import finished as _finished
from labelwise.workflow.ingest import AddReport, init_state
from labelwise.workflow.rounds import STEPS, RoundSummary
from labelwise.workflow.selecting import PERCEPTUAL_HASH
from labelwise.workflow.status import Status

__all__ = ["STEPS", "PERCEPTUAL_HASH", "AddReport", "ImportReport", "LoopError", "RoundSummary", "ScoreReport",
           "Status", "StoreBackendState", "Workspace", "WorkspaceContext", "crash_point", "init_state"]


class Workspace:
    """A labelwise workspace: labelwise.yaml, the store, and everything rounds write. The Python API of the CLI."""

    def __init__(self, root: Path, detector: Detector | None = None, threads: int | None = None):
        """`threads`: CPU threads for training and scoring in this process (`--threads`), over labelwise.yaml's."""
        root = Path(root).absolute()
        self.ctx = WorkspaceContext(root=root, config=load_config(root), store=Store(root / STORE_NAME),
                                    detector_=detector, threads=threads)

    # The workspace's state lives in the context the workflow functions share; these keep the attributes that
    # callers (the CLI, simulate, the report, tests) read and set.
    @property
    def root(self) -> Path:
        return self.ctx.root

    @property
    def config(self) -> WorkspaceConfig:
        return self.ctx.config

    @config.setter
    def config(self, value: WorkspaceConfig) -> None:
        self.ctx.config = value

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def detector(self) -> Detector:
        return self.ctx.detector

    @property
    def threads(self) -> int | None:
        return self.ctx.threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        if self.ctx.detector_ is not None and value != self.ctx.threads:
            raise LoopError("set the workspace's threads before its first training or scoring (the detector "
                            "has started with its own)")
        self.ctx.threads = value

    # -- creation and the pool -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, images: list[Path], classes: list[str] | None = None, data_yaml: Path | None = None,
               labeled: list[Path] | None = None, val: Path | None = None, **settings: Any) -> "Workspace":
        return cls(ingest.create(root, images, classes, data_yaml, labeled, val, **settings))

    def add(self, sources: list[Path], *, labeled: bool = False, split: str = "pool",
            progress: bool = True) -> AddReport:
        return ingest.add(self.ctx, sources, labeled=labeled, split=split, progress=progress)

    def ingest_sources(self, progress: bool = True) -> AddReport:
        return ingest.ingest_sources(self.ctx, progress=progress)

    # -- the state machine ---------------------------------------------------------------------------------------

    def finished(self) -> str | None:
        return _finished(self.ctx)

    def _open_round(self) -> tuple[int, str]:
        return open_round(self.ctx)

    def resume(self) -> str:
        return machine.resume(self.ctx)

    def step(self) -> str | None:
        return machine.step(self.ctx)

    def run(self, oracle: Path | None = None, rounds: int | None = None,
            on_round: Callable[[RoundSummary], None] | None = None,
            on_labels: Callable[[ImportReport], None] | None = None) -> str:
        return machine.run(self.ctx, oracle=oracle, rounds=rounds, on_round=on_round, on_labels=on_labels)

    # -- train, score, select ------------------------------------------------------------------------------------

    def write_dataset(self, round_no: int) -> Path:
        return training.write_dataset(self.ctx, round_no)

    def train(self) -> None:
        training.train(self.ctx)

    def score(self, progress: bool = True, *, engine: str | None = None, address: str | None = None) -> int:
        return scoring.score(self.ctx, progress=progress, engine=engine, address=address)

    def score_round(self, progress: bool = True, *, engine: str | None = None,
                    address: str | None = None) -> ScoreReport:
        return scoring.score_round(self.ctx, progress=progress, engine=engine, address=address)

    # Used by simulate.py, the benchmarks and the cache test, which drive one pass at a time.
    def _score_images(self, weights: Path, model_hash: str, **kwargs: Any) -> int:
        return scoring.score_images(self.ctx, weights, model_hash, **kwargs)

    def _extra_passes(self, round_no: int, strategy: dict[str, Any], progress: bool = True) -> int:
        return scoring.extra_passes(self.ctx, round_no, strategy, progress=progress)

    def _agreement_with_previous(self, current: Any, stop_set_size: int = 200, conf: float = 0.25) -> float | None:
        return scoring.agreement_with_previous(self.ctx, current, stop_set_size=stop_set_size, conf=conf)

    def select(self, k: int | None = None, strategy: str | dict[str, Any] | None = None,
               on_retire: Callable[[str, RetireReport], None] | None = None) -> list[dict[str, Any]]:
        return selecting.select(self.ctx, k=k, strategy=strategy, on_retire=on_retire)

    # -- annotation ----------------------------------------------------------------------------------------------

    def batch(self, round_no: int | None = None) -> Batch:
        return annotating.batch(self.ctx, round_no)

    def backend(self, name: str | None = None) -> AnnotationBackend:
        return annotating.backend(self.ctx, name)

    def export(self) -> Path:
        return annotating.export(self.ctx)

    def import_labels(self, folder: Path) -> ImportReport:
        return annotating.import_labels(self.ctx, folder)

    def push(self, backend: AnnotationBackend | None = None, *, new_project: bool = False) -> PushReport | None:
        return annotating.push(self.ctx, backend, new_project=new_project)

    def pull(self, backend: AnnotationBackend | None = None) -> ImportReport:
        return annotating.pull(self.ctx, backend)

    def check_annotations(self, backend: AnnotationBackend | None = None) -> ImportReport:
        return annotating.check(self.ctx, backend)

    def wait(self, backend: AnnotationBackend | None = None, **kwargs: Any) -> ImportReport:
        return annotating.wait(self.ctx, backend, **kwargs)

    def _apply(self, batch: Batch, result: PullResult) -> ImportReport:
        return annotating.apply(self.ctx, batch, result)

    # -- the dividend experiment ---------------------------------------------------------------------------------

    def dividend(self, k: int | None = None, seeds: int | None = None, oracle: Path | None = None, *,
                 on_event: Callable[[str], None] | None = None,
                 on_retire: Callable[[str, RetireReport], None] | None = None) -> Any:
        """`labelwise dividend`: strategy batch vs random batch, both labeled and trained on (workflow.dividend)."""
        from labelwise.workflow import dividend

        return dividend.run(self.ctx, k=k, seeds=seeds, oracle=oracle, on_event=on_event, on_retire=on_retire)

    # -- label QA ------------------------------------------------------------------------------------------------

    def qa_check(self, round_no: int | None = None) -> Any:
        """Check a round's labels against the model's cached predictions (workflow.qa; default: the latest)."""
        from labelwise.workflow import qa

        return qa.check(self.ctx, round_no)

    def qa_suspects(self, round_no: int | None = None) -> list[dict[str, Any]]:
        """The open label QA suspects (of `round_no`), by round and rank."""
        from labelwise.workflow import qa

        return qa.open_suspects(self.ctx, round_no)

    def qa_confirm(self, images: list[str], *, every: bool = False, round_no: int | None = None) -> list[str]:
        from labelwise.workflow import qa

        return qa.confirm(self.ctx, images, every=every, round_no=round_no)

    def push_review(self) -> Any:
        from labelwise.workflow import qa

        return qa.push_review(self.ctx)

    def pull_review(self) -> Any:
        from labelwise.workflow import qa

        return qa.pull_review(self.ctx)

    # -- production monitoring ---------------------------------------------------------------------------------

    def monitor(self, images: list[str | Path], *, model: Path | None = None, progress: bool = True) -> Any:
        """`labelwise monitor`: score production images (files, folders, globs) with the deployed model and flag
        those worth labeling into the pool; returns a MonitorReport (workflow.monitoring)."""
        from labelwise.workflow import monitoring

        return monitoring.monitor(self.ctx, images, model=model, progress=progress)

    def watch(self, images: list[str | Path], *, model: Path | None = None, **kwargs: Any) -> Any:
        """`labelwise monitor --watch`: `monitor`, then every image written to the folders until stopped
        (workflow.monitoring.watch: stop, lock, on_batch, ready)."""
        from labelwise.workflow import monitoring

        return monitoring.watch(self.ctx, images, model=model, **kwargs)

    def drift(self) -> Any:
        """What `labelwise monitor` saw per day, as the drift plot draws it (a DriftSeries; None before any)."""
        from labelwise.workflow import monitoring

        return monitoring.drift_series(self.ctx)

    # -- stopping and status -------------------------------------------------------------------------------------

    def stop_advice(self) -> list[Any]:
        return status.stop_advice(self.ctx)

    def status(self) -> Status:
        return status.status(self.ctx)

