"""Annotation backends behind one protocol (see `base`): folder (default), Label Studio, CVAT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labelwise.annotation.base import (
    AnnotationBackend,
    AnnotationError,
    AnnotationProgress,
    BackendState,
    Problem,
    PullResult,
    PushReport,
    RetireReport,
    TaskOutcome,
)

__all__ = ["BACKENDS", "AnnotationBackend", "AnnotationError", "AnnotationProgress", "BackendState", "Problem",
           "PullResult", "PushReport", "RetireReport", "TaskOutcome", "make_backend"]

BACKENDS = ("folder", "label_studio", "cvat")


def make_backend(name: str, options: dict[str, Any], state: BackendState, workspace: Path,
                 classes: tuple[str, ...]) -> AnnotationBackend:
    """The backend `name` configured from the `annotation:` options of labelwise.yaml."""
    if name == "folder":
        from labelwise.annotation.folder import FolderBackend

        return FolderBackend(Path(options.get("path") or Path(workspace) / "annotation"))
    if name == "label_studio":
        from labelwise.annotation import label_studio

        return label_studio.from_config(options, state, Path(workspace), classes)
    if name == "cvat":
        from labelwise.annotation import cvat

        return cvat.from_config(options, state, Path(workspace), classes)
    raise AnnotationError(f"unknown annotation backend '{name}' in labelwise.yaml; use one of {', '.join(BACKENDS)}")
