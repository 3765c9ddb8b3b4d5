"""The local engine: the pool through the workspace's detector in this process, one stream of images.

The default engine. It needs no Ray, starts nothing, and costs nothing over the scorer itself: the detector reads
and decodes each image, scores `batch` images per forward pass and yields each image's result; results are committed
as a shard (`Store.put_detections`) every `COMMIT_EVERY` images, so a kill loses at most one chunk of inference and
never a result already committed. An image that cannot be read or decoded is quarantined and gets a row with the
reason in its `error` column, as the Ray engine writes it: it is not tried again for the same model.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from labelwise.detectors.base import ScoreFailure
from labelwise.engines import ScoreReport, ScoreRequest
from labelwise.progress import track

if TYPE_CHECKING:
    from labelwise.workflow.context import WorkspaceContext

#: Results committed to the workspace together (one transaction each).
COMMIT_EVERY = 64


class LocalEngine:
    name = "local"

    def score(self, ctx: "WorkspaceContext", request: ScoreRequest, progress: bool = True) -> ScoreReport:
        from labelwise.workflow.context import crash_point

        started = time.perf_counter()
        report = ScoreReport(engine=self.name)
        done = ctx.store.scored_shas(request.model_hash, request.imgsz, request.variant)
        todo = [img for img in request.images if img.sha256 not in done]
        report.skipped = len(request.images) - len(todo)
        if not todo:
            return report
        stream = ctx.detector.score(request.weights, ((img.sha256, img.path) for img in todo),
                                    imgsz=request.imgsz, conf=request.conf, iou=request.iou, batch=request.batch,
                                    device=request.device, flip=request.flip, max_det=request.max_det)
        if progress:
            stream = track(stream, len(todo), "Scoring" + (f" ({request.variant})" if request.variant else ""))
        by_sha = {img.sha256: img for img in todo}
        pending: list[tuple[str, Any]] = []
        for sha, result in stream:
            if isinstance(result, ScoreFailure):
                # a quarantined row (the reason in its error column): the image is not tried again for this model
                path = str(by_sha[sha].path)
                ctx.store.quarantine(path, result.reason, sha256=sha)
                report.quarantined.append((path, result.reason))
                pending.append((sha, result.reason))
            else:
                pending.append((sha, result))
                report.scored += 1
            if len(pending) >= COMMIT_EVERY:  # commit often: a kill loses at most one chunk of inference
                self._commit(ctx, request, pending)
                pending = []
                crash_point("mid_score")
        if pending:
            self._commit(ctx, request, pending)
        report.seconds = time.perf_counter() - started
        return report

    def close(self) -> None:
        """Nothing to release: the detector belongs to the workspace."""

    def _commit(self, ctx: "WorkspaceContext", request: ScoreRequest, rows: list[tuple[str, Any]]) -> None:
        ctx.store.put_detections(request.model_hash, request.imgsz, rows, request.variant, round_no=request.round,
                                 engine=self.name)
