"""Label QA of every batch that comes back: which of the round's labeled images most likely hold an annotation error
(a missing box, a wrong class, a badly placed box), found by ObjectLab (`labelwise.quality`, cleanlab) against the
predictions that scoring cached for the model that selected the batch, so QA costs no inference.

When it runs: after every pull or import that wrote labels (`annotating.apply` calls `after_labels`), on the whole
labeled part of the batch (cleanlab's flag compares each box with its class's AP over the batch), and on demand
(`labelwise qa check`). Round 1's batch, picked before any model, has no predictions: it is not checked.

What it keeps: one row per suspect image and round in the store (`Store.put_suspects`): rank, score, the three
subscores, the kind of error, the box behind it, the label checked and where the review stands:

    open       suspected, nobody has had a second look
    confirmed  a person kept the label (`labelwise qa confirm`, or a review that returned it unchanged)
    changed    a new label came for it (a re-pull, an import or a review)
    cleared    checked again, no longer suspected

With `qa.hold_suspects: true` an open suspect is held out of training (`Store.hold`, kind 'qa') until it is
confirmed or changed; a label a person has looked at again is never held again (they had their second look). The
round's suspects are also written to <workspace>/qa/round-NNN-suspects.csv (atomically) on every check.

Review: `annotate push --review` sends the open suspects back for a second look (the folder backend: a review
folder beside the round's; Label Studio: the tasks marked and a "labelwise review" tab), and `annotate pull
--review` takes what the reviewers did: a changed label goes in like any pulled label, an unchanged one that a
reviewer returned is confirmed.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from labelwise.fileio import atomic_write_text
from labelwise.workflow.context import LoopError, WorkspaceContext

QA_DIR = "qa"
KV = "qa"  # the store's kv namespace: when each round was checked, what was sent for review
HOLD_KIND = "qa"
STATUSES = ("open", "confirmed", "changed", "cleared")
TOP = 5  # suspects listed by status and by the commands' summaries


@dataclass
class QAReport:
    """What a QA check of one round found.

    checked: labeled images of the batch checked against the model's predictions; unchecked: why others were not
    (one line each, counted). suspects: the round's open suspects, worst first (store rows). newly_held / released:
    images held out of training by this check (qa.hold_suspects) / released by it (label confirmed or changed).
    skipped: why the round was not checked at all ("" when it was). csv: the suspects file written.
    """

    round: int
    checked: int = 0
    unchecked: list[str] = field(default_factory=list)
    suspects: list[dict[str, Any]] = field(default_factory=list)
    newly_held: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    skipped: str = ""
    csv: Path | None = None
    threshold: str = ""  # how suspects were chosen, in words

    def lines(self, limit: int = TOP) -> list[str]:
        """One line per fact, for the CLI: the summary, the worst suspects, what was held and released."""
        if self.skipped:
            return [f"label QA of round {self.round}: not checked ({self.skipped})"]
        out = [f"label QA of round {self.round}: {len(self.suspects)} suspect(s) among {self.checked} checked "
               f"image(s) ({self.threshold})" + (f"; {', '.join(self.unchecked)}" if self.unchecked else "")
               + (f"; list: {self.csv}" if self.csv and self.suspects else "")]
        out += ["  " + describe(row) for row in self.suspects[:limit]]
        if len(self.suspects) > limit:
            out.append(f"  ... and {len(self.suspects) - limit} more (labelwise qa list)")
        if self.newly_held:
            out.append(f"  held out of training until confirmed or changed: {len(self.newly_held)} image(s) "
                       "(labelwise qa confirm IMAGE, or correct the label)")
        if self.released:
            out.append(f"  released back into training: {', '.join(self.released)}")
        return out


def issue_name(kind: str) -> str:
    from labelwise.quality import ISSUE_NAMES

    return ISSUE_NAMES.get(kind, kind)


def describe(row: dict[str, Any], classes: list[str] | None = None) -> str:
    """One line about one suspect: rank, image, the kind of error, the score, the box and where its review stands."""
    def name(c: Any) -> str:
        return classes[int(c)] if classes and 0 <= int(c) < len(classes) else f"class {int(c)}"

    text = f"#{row['rank']} {Path(row['path']).name}: {issue_name(row['issue'])} (score {row['score']:.3f})"
    box = row.get("box")
    if box:
        c, cx, cy, w, h = box
        where = f"{name(c)} at ({cx:.2f}, {cy:.2f}) size {w:.2f} x {h:.2f}"
        if row["issue"] == "missing_box":
            text += f", the model sees {where} that the label lacks"
        elif row["issue"] == "wrong_class" and row.get("suggested_class") is not None:
            text += f", the label says {where}, the model says {name(row['suggested_class'])}"
        else:
            text += f", label box {where}"
    if row.get("status", "open") != "open":
        text += f" [{row['status']}]"
    return text


def qa_folder(ctx: WorkspaceContext) -> Path:
    return ctx.root / QA_DIR


def csv_path(ctx: WorkspaceContext, round_no: int) -> Path:
    return qa_folder(ctx) / f"round-{round_no:03d}-suspects.csv"


def _round(ctx: WorkspaceContext, round_no: int | None):
    rounds = ctx.store.rounds()
    if round_no is None:
        with_batch = [r for r in rounds if r.step in ("annotate", "done") and ctx.store.selection(r.round)]
        if not with_batch:
            raise LoopError(f"no batch has come back yet: nothing to check (labelwise status -w {ctx.root})")
        return with_batch[-1]
    found = next((r for r in rounds if r.round == round_no), None)
    if found is None or not ctx.store.selection(round_no):
        raise LoopError(f"round {round_no} has no batch; rounds with one: "
                        + (", ".join(str(r.round) for r in rounds if ctx.store.selection(r.round)) or "none"))
    return found


def check(ctx: WorkspaceContext, round_no: int | None = None) -> QAReport:
    """Check the labeled images of a round's batch (default: the latest round with a batch) and record the
    suspects: rank, score, subscores, kind, box; hold or release them (qa.hold_suspects); write the CSV."""
    from labelwise.quality import ImagePredictions, label_quality, labels_from_yolo, xyxy_to_yolo

    cfg = ctx.config.qa
    store = ctx.store
    row = _round(ctx, round_no)
    report = QAReport(round=row.round, threshold=(f"score <= {cfg.threshold:g}" if cfg.threshold is not None
                                                  else "cleanlab's flags")
                      + (f", at most {cfg.top_k}" if cfg.top_k is not None else ""))
    if not cfg.enabled:
        report.skipped = "qa.enabled is false in labelwise.yaml"
        return report
    if not row.model_hash:
        report.skipped = (f"round {row.round}'s batch was picked before any model was trained, so no predictions "
                          "were cached to check its labels against")
        return report
    selection = [r for r in store.selection(row.round) if r["outcome"] == "labeled"]
    found = store.detections_many([r["sha256"] for r in selection], row.model_hash, ctx.config.imgsz)
    images, labels, predictions = [], [], []
    for r in selection:
        label = store.label(r["image_id"])
        det = found.get(r["sha256"])
        if label is None or det is None:
            continue
        images.append((r, label))
        labels.append(labels_from_yolo(label, r["width"], r["height"]))
        predictions.append(ImagePredictions(det.boxes, det.class_scores))
    missing = len(selection) - len(images)
    if missing:
        report.unchecked.append(f"{missing} labeled image(s) without cached predictions of model "
                                f"{row.model_hash[:8]} not checked")
    report.checked = len(images)
    previous = {p["image_id"]: p for p in store.suspects(row.round)}
    if not images:
        _write_csv(ctx, row.round, report)
        return report
    quality = label_quality(labels, predictions, len(ctx.config.classes))
    suspect_rows = {int(i) for i in quality.suspects(cfg.threshold, cfg.top_k)}
    position = {int(i): k + 1 for k, i in enumerate(quality.order())}
    from labelwise.store import label_json  # the label as the store writes it: compared to see a change

    rows: list[dict[str, Any]] = []
    for i, (r, label) in enumerate(images):
        prev = previous.get(r["image_id"])
        name = Path(r["path"]).name
        changed = prev is not None and label_json(prev["label"]) != label_json(label)
        reviewed = bool(prev and prev["reviewed"]) or changed
        if changed and prev["status"] in ("open", "confirmed"):
            report.changed.append(name)
        if i in suspect_rows:
            status = "confirmed" if prev is not None and not changed and prev["status"] == "confirmed" else "open"
        elif prev is not None:
            status = "changed" if changed else ("confirmed" if prev["status"] == "confirmed" else "cleared")
        else:
            continue
        kind = str(quality.issue[i])
        box = None
        if int(quality.box_class[i]) >= 0:
            box = [int(quality.box_class[i]), *(round(v, 6) for v in xyxy_to_yolo(quality.box[i], r["width"],
                                                                                   r["height"]))]
        rows.append({"round": row.round, "image_id": r["image_id"], "rank": position[i],
                     "score": float(quality.score[i]), "missing_box": float(quality.missing_box[i]),
                     "wrong_class": float(quality.wrong_class[i]), "badly_placed": float(quality.badly_placed[i]),
                     "issue": kind, "box": box,
                     "suggested_class": int(quality.suggested_class[i]) if quality.suggested_class[i] >= 0 else None,
                     "label": label, "model_hash": row.model_hash, "status": status, "reviewed": reviewed})
    with store.transaction():
        store.put_suspects(rows)
        for new in rows:
            name = Path(next(r["path"] for r, _ in images if r["image_id"] == new["image_id"])).name
            held = store.held_kind(new["image_id"])
            if new["status"] == "open" and cfg.hold_suspects and not new["reviewed"] and held is None:
                reason = f"label QA suspects a {issue_name(new['issue'])} (score {new['score']:.3f})"
                if store.hold(new["image_id"], row.round, reason, kind=HOLD_KIND):
                    report.newly_held.append(name)
            elif new["status"] != "open" and held == HOLD_KIND:
                store.release(new["image_id"], kind=HOLD_KIND)
                report.released.append(name)
            elif new["status"] == "open" and new["reviewed"] and held == HOLD_KIND:
                store.release(new["image_id"], kind=HOLD_KIND)  # its label changed: the second look happened
                report.released.append(name)
        store.kv_set(KV, f"round/{row.round}/checked", {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "checked": report.checked, "model_hash": row.model_hash})
    report.suspects = store.suspects(row.round, status="open")
    _write_csv(ctx, row.round, report)
    return report


def _write_csv(ctx: WorkspaceContext, round_no: int, report: QAReport) -> None:
    """<workspace>/qa/round-NNN-suspects.csv: every QA row of the round (any status), worst first; atomic."""
    classes = list(ctx.config.classes)
    held = {image.id for image, *_ in ctx.store.held(kind=HOLD_KIND)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "image", "path", "sha256", "status", "held", "issue", "score", "missing_box",
                     "wrong_class", "badly_placed", "box_class", "box_cx", "box_cy", "box_w", "box_h",
                     "suggested_class", "label_boxes", "model_hash"])

    def name(c: Any) -> str:
        return "" if c is None else classes[int(c)] if 0 <= int(c) < len(classes) else str(c)

    for r in sorted(ctx.store.suspects(round_no), key=lambda r: (r["status"] != "open", r["rank"])):
        box = r["box"] or [None, "", "", "", ""]
        writer.writerow([r["rank"], Path(r["path"]).name, r["path"], r["sha256"], r["status"],
                         "yes" if r["image_id"] in held else "no", issue_name(r["issue"]), f"{r['score']:.6f}",
                         f"{r['missing_box']:.6f}", f"{r['wrong_class']:.6f}", f"{r['badly_placed']:.6f}",
                         name(box[0]), *box[1:], name(r["suggested_class"]), len(r["label"]), r["model_hash"]])
    path = csv_path(ctx, round_no)
    atomic_write_text(path, buf.getvalue())
    report.csv = path


def after_labels(ctx: WorkspaceContext, round_no: int) -> QAReport | None:
    """The check `annotating.apply` runs once labels were written for `round_no`: None when QA is off or the round
    has no model (nothing to say on every pull of round 1). A failure becomes the report's `skipped` line: QA must
    never stop labels from coming in."""
    if not ctx.config.qa.enabled:
        return None
    row = next((r for r in ctx.store.rounds() if r.round == round_no), None)
    if row is None or not row.model_hash:
        return None
    try:
        return check(ctx, round_no)
    except Exception as exc:  # noqa: BLE001 - reported, never raised: the labels are in already
        return QAReport(round=round_no, skipped=f"label QA failed: {type(exc).__name__}: {exc}")


def summary(ctx: WorkspaceContext) -> dict[str, Any] | None:
    """For `labelwise status` and the report: the latest checked round's open suspects (count, the worst few as rows
    and as lines), how many are held, and the open ones of every round. None when no round was checked."""
    checked = [r.round for r in ctx.store.rounds() if ctx.store.kv_get(KV, f"round/{r.round}/checked")]
    if not checked:
        return None
    open_rows = ctx.store.suspects(status="open")
    latest = checked[-1]
    rows = [r for r in open_rows if r["round"] == latest]
    held = len(ctx.store.held(kind=HOLD_KIND))
    classes = list(ctx.config.classes)
    return {"round": latest, "open": len(rows), "top": rows[:TOP], "lines": [describe(r, classes) for r in rows[:TOP]],
            "held": held, "all_open": len(open_rows), "csv": csv_path(ctx, latest)}


def open_suspects(ctx: WorkspaceContext, round_no: int | None = None) -> list[dict[str, Any]]:
    return ctx.store.suspects(round_no, status="open")


def _match(rows: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    """The rows whose image `wanted` names: its path, file name, staged name (sha12_stem.ext) or sha256 (a prefix of
    at least 8 characters)."""
    text = wanted.strip()
    found = []
    for r in rows:
        path = Path(r["path"])
        staged = f"{r['sha256'][:12]}_{path.stem}{path.suffix.lower()}"
        if (text in (str(path), path.name, staged, Path(staged).stem)
                or (len(text) >= 8 and r["sha256"].startswith(text.lower()))
                or Path(text).absolute() == path.absolute()):
            found.append(r)
    return found


def confirm(ctx: WorkspaceContext, images: list[str], *, every: bool = False,
            round_no: int | None = None) -> list[str]:
    """Mark suspects as confirmed (a person kept their label): they leave the review and, when held, go back into
    training. `images`: paths, file names, staged names or sha256 prefixes of open suspects; `every`: all open ones
    (of `round_no` when given). Returns the confirmed images' names. Raises LoopError naming what matches nothing."""
    rows = open_suspects(ctx, round_no)
    chosen: dict[tuple[int, int], dict[str, Any]] = {}
    if every:
        chosen = {(r["round"], r["image_id"]): r for r in rows}
    unknown = []
    for wanted in images:
        hits = _match(rows, wanted)
        if not hits:
            unknown.append(wanted)
        chosen.update({(r["round"], r["image_id"]): r for r in hits})
    if unknown:
        listing = ", ".join(Path(r["path"]).name for r in rows[:10]) or "none"
        raise LoopError(f"not an open label QA suspect: {', '.join(unknown)} (open suspects: {listing}"
                        f"{' ...' if len(rows) > 10 else ''}; labelwise qa list -w {ctx.root})")
    if not chosen:
        raise LoopError("name the images to confirm (labelwise qa list shows them), or give --all")
    names = []
    with ctx.store.transaction():
        for (round_, image_id), r in chosen.items():
            ctx.store.set_suspect_status(round_, image_id, "confirmed", reviewed=True)
            ctx.store.release(image_id, kind=HOLD_KIND)
            names.append(Path(r["path"]).name)
    for round_ in sorted({k[0] for k in chosen}):
        _write_csv(ctx, round_, QAReport(round=round_))
    return names


# -- review: a second look in the annotation tool ------------------------------------------------------------------


@dataclass
class ReviewReport:
    """What `annotate push --review` / `annotate pull --review` did for one round's suspects."""

    round: int
    sent: int = 0
    where: str = ""
    notes: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)  # pull: returned unchanged by a reviewer
    labels: Any = None  # pull: the ImportReport of the changed labels taken
    pending: int = 0  # pull: suspects nobody has looked at yet

    def lines(self) -> list[str]:
        out = []
        if self.where:
            out.append(f"round {self.round}: sent {self.sent} label QA suspect(s) for review to {self.where}")
        if self.confirmed:
            out.append(f"round {self.round}: {len(self.confirmed)} suspect label(s) kept by the reviewers "
                       f"(confirmed): {', '.join(self.confirmed)}")
        if self.labels is not None or self.pending:
            taken = self.labels.imported if self.labels is not None else 0
            out.append(f"round {self.round}: {taken} corrected label(s) taken from the review, {self.pending} "
                       "suspect(s) not reviewed yet")
        return out + [f"note: {n}" for n in self.notes]


def _review_round(ctx: WorkspaceContext) -> int:
    rows = open_suspects(ctx)
    if not rows:
        raise LoopError(f"no open label QA suspects to review (labelwise qa list -w {ctx.root})")
    return max(r["round"] for r in rows)


def review_batch(ctx: WorkspaceContext, round_no: int | None = None):
    """(the Batch of a round restricted to its open suspects, their ReviewNotes by sha256, the open rows)."""
    from labelwise.annotation.base import Batch, ReviewNote
    from labelwise.workflow.annotating import batch as round_batch

    round_no = _review_round(ctx) if round_no is None else round_no
    rows = open_suspects(ctx, round_no)
    full = round_batch(ctx, round_no)
    by_sha = {r["sha256"]: r for r in rows}
    items = tuple(item for item in full.items if item.sha256 in by_sha)
    classes = list(ctx.config.classes)
    notes = {sha: ReviewNote(sha256=sha, issue=r["issue"], text="label QA: " + describe(r, classes).split(": ", 1)[1],
                             score=float(r["score"]), box=tuple(r["box"]) if r["box"] else None,
                             label=tuple(tuple(b) for b in r["label"]))
             for sha, r in by_sha.items()}
    return Batch(full.round, full.model_version, full.classes, items), notes, rows


def push_review(ctx: WorkspaceContext) -> ReviewReport:
    """Send the open suspects of the latest round that has some back to the annotation tool for a second look:
    the folder backend stages them in the round folder's review/ subfolder; Label Studio marks their tasks (data
    field labelwise_review) and adds a "labelwise review" tab; CVAT has no such marking here, so they are staged
    as a folder too (the report says so)."""
    from labelwise.annotation.folder import FolderBackend
    from labelwise.workflow.annotating import TOOL, backend, configured_backend

    sub, notes, rows = review_batch(ctx)
    name = configured_backend(ctx)
    report = ReviewReport(round=sub.round)
    be = backend(ctx) if name in ("folder", "label_studio") else FolderBackend(ctx.root / "annotation")
    if name not in ("folder", "label_studio"):
        report.notes.append(f"{TOOL.get(name, name)} has no review marking in labelwise: the suspects are staged as "
                            "a folder instead; correct the labels there and run labelwise annotate pull --review")
    before = ctx.store.kv_get(KV, f"round/{sub.round}/review") or {}
    done = set(before.get("images", [])) - {r["sha256"] for r in rows}  # reviewed since the last push: unmark
    pushed = be.push_review(sub, notes, done=done) if be.name == "label_studio" else be.push_review(sub, notes)
    report.sent, report.where = pushed.sent, pushed.where
    ctx.store.kv_set(KV, f"round/{sub.round}/review", {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "backend": be.name, "where": pushed.where,
        "images": [r["sha256"] for r in rows]})
    return report


def _after(stamp: str | None, since: str) -> bool:
    """Whether ISO time `stamp` (a backend's, e.g. "2026-01-02T03:04:05.6Z") is later than ISO time `since`."""
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        start = datetime.fromisoformat(since)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when > start


def pull_review(ctx: WorkspaceContext) -> ReviewReport:
    """Take back what the reviewers did with the suspects sent by `push_review`: a changed label goes in like any
    pulled label (`annotating.apply`, which checks the round again: the suspect is 'changed' and released); a label
    a reviewer returned unchanged is confirmed. Suspects nobody has looked at stay open."""
    from labelwise.annotation.base import PullResult
    from labelwise.annotation.folder import FolderBackend
    from labelwise.store import label_json
    from labelwise.workflow.annotating import apply, backend

    rounds = [r.round for r in ctx.store.rounds() if ctx.store.kv_get(KV, f"round/{r.round}/review")]
    if not rounds:
        raise LoopError(f"nothing was sent for review yet: labelwise annotate push --review -w {ctx.root}")
    sent = ctx.store.kv_get(KV, f"round/{rounds[-1]}/review")
    sub, _notes, rows = review_batch(ctx, rounds[-1]) if open_suspects(ctx, rounds[-1]) else (None, {}, [])
    report = ReviewReport(round=rounds[-1])
    if sub is None or not sub.items:
        report.notes.append(f"round {rounds[-1]} has no open suspects left to review")
        return report
    if sent["backend"] == "label_studio":
        result = backend(ctx, "label_studio").pull(sub)
    else:
        result = FolderBackend(Path(sent["where"]).parent.parent).pull_review(sub)
    by_sha = {r["sha256"]: r for r in rows}
    changed = []
    looked = set()
    for label in result.labels:
        row = by_sha.get(label.sha256)
        if row is None or label.status != "labeled":
            continue
        if sent["backend"] == "label_studio" and not _after(label.updated_at, sent["at"]):
            continue  # the annotation predates the review: nobody has looked again yet
        looked.add(label.sha256)
        if label_json(label.boxes) == label_json(row["label"]):
            ctx.store.set_suspect_status(row["round"], row["image_id"], "confirmed", reviewed=True)
            ctx.store.release(row["image_id"], kind=HOLD_KIND)
            report.confirmed.append(Path(row["path"]).name)
        else:
            changed.append(label)
    if changed:
        report.labels = apply(ctx, sub, PullResult(tuple(changed)), via="review")
    elif report.confirmed:
        _write_csv(ctx, sub.round, QAReport(round=sub.round))
    report.pending = len([r for r in rows if r["sha256"] not in looked])
    report.notes.extend(str(p) for p in result.problems)
    return report
