"""Scoring engines: who runs the detector over the pool, behind one small protocol.

    local   in this process, one stream of images through the fused one-pass scorer (the default; needs no Ray)
    ray     on a Ray cluster through Ray Data: decoding in tasks, scoring in actors that each hold the scorer once,
            results written as Parquet shards (`pip install labelwise[ray]`)

An engine gets a `ScoreRequest` (the model, the scoring settings and the pool images a pass covers), scores those not
yet scored for (model, size, variant), records the results in the workspace (the store and its vectors) and returns
a `ScoreReport`: how many it scored, how many were already scored, and every image it quarantined with the reason.
It never raises for one bad image: an image that cannot be read or scored is quarantined and the pass goes on.

`workflow.scoring` picks the engine (`score.engine` in labelwise.yaml, or `labelwise score --engine`) and runs the
passes a round needs through it. Nothing here imports Ray, torch or Ultralytics; `engines.ray` imports Ray only
when a Ray engine is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from labelwise.workflow.context import WorkspaceContext

#: The engines `score.engine` and `labelwise score --engine` accept.
ENGINES: tuple[str, ...] = ("local", "ray")
#: What to run when an engine's optional dependency is missing.
RAY_INSTALL = "pip install 'labelwise[ray]'"


class EngineError(RuntimeError):
    """The engine cannot run (its dependency is missing, its cluster cannot be reached); the message says why and
    what to do."""


@dataclass(frozen=True)
class ScoreImage:
    """One pool image to score: its content hash (the cache key) and where to read it (a local path, or a URL any
    pyarrow/fsspec filesystem reads, such as s3://bucket/key.jpg, for the Ray engine)."""

    sha256: str
    path: str


@dataclass(frozen=True)
class ScoreRequest:
    """One scoring pass: `images` with the model `weights` (recorded under `model_hash`) at `imgsz`. `variant`
    names the pass ("" plain, "flip" mirrored, "memberN" a committee member); `flip` mirrors each image first."""

    weights: Path
    model_hash: str
    imgsz: int
    images: tuple[ScoreImage, ...]
    conf: float
    iou: float
    max_det: int
    batch: int
    device: str
    variant: str = ""
    flip: bool = False
    round: int | None = None  # the round whose scores these are (recorded with the shards)


@dataclass
class ScoreReport:
    """What a pass did. `scored`: images the detector scored now; `skipped`: images already scored for this
    (model, size, variant), by an earlier pass or by a finished shard of a run that was stopped; `quarantined`:
    (path, reason) of every image that could not be read or scored (each also has a quarantined row or entry, so a
    rerun does not try it again)."""

    engine: str
    scored: int = 0
    skipped: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)  # the shard files this pass wrote

    @property
    def needed_inference(self) -> int:
        """Images the pass had to run the detector on (scored or quarantined), as `Workspace.score()` counts."""
        return self.scored + len(self.quarantined)

    def merge(self, other: "ScoreReport") -> "ScoreReport":
        """This report and `other` added up (the passes of one round)."""
        return ScoreReport(engine=self.engine, scored=self.scored + other.scored,
                           skipped=self.skipped + other.skipped,
                           quarantined=[*self.quarantined, *other.quarantined],
                           seconds=self.seconds + other.seconds, shards=[*self.shards, *other.shards])


class ScoringEngine(Protocol):
    name: str

    def score(self, ctx: "WorkspaceContext", request: ScoreRequest, progress: bool = True) -> ScoreReport:
        """Score the images of `request` not yet scored for (model_hash, imgsz, variant), record the results in the
        workspace and say what was done. One image that fails is quarantined, never a failed pass."""
        ...

    def close(self) -> None:
        """Release what the passes shared (the Ray engine's cluster connection); the engine may be used again."""
        ...


def engine(name: str, *, address: str | None = None) -> ScoringEngine:
    """The engine called `name` ("local" or "ray"). `address`: the Ray cluster to join (None: `score.ray.address`
    in labelwise.yaml, else a Ray started for this process). Raises EngineError when Ray is asked for and is not
    installed, naming the install command."""
    if name == "local":
        from labelwise.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from labelwise.engines.ray import RayEngine  # says how to install Ray when it is missing

        return RayEngine(address=address)
    raise EngineError(f"unknown scoring engine {name!r}: use one of {', '.join(ENGINES)}")
