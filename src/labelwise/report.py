"""`labelwise report`: one self-contained HTML page about a workspace, for people to look at.

Everything is embedded (the learning-curve PNG and every thumbnail as base64 data URIs, CSS inline, no script), so
the single file can be mailed, attached to a ticket or opened from an archive, and nothing it shows can go stale
or missing when the workspace moves. The page has:

- where the loop stands (round, step, next command) and the workspace's settings;
- label counts and boxes per class (labeled pool and validation);
- the stopping advice of every rule, and the learning-curve statistics (gains, ROI per 100 labels);
- the learning curve (mAP50 against labeled images);
- a table with one row per trained round: labeled images, mAP50, mAP50-95, agreement, times and AP50 per class;
- each round's selected images as thumbnails, with their label boxes (solid, green) and the boxes of the model
  that selected them (dashed, orange; from the score cache, confidence >= 0.25, where cached), rank, score,
  outcome, the score components and the reason;
- the label QA suspects (labelwise.workflow.qa) of every checked round: thumbnails with the box behind the suspicion
  drawn in red over the label and the predictions, the kind of error, the score and where the review stands.

The file is written atomically: a browser or a crash sees the old report or the new one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from labelwise.fileio import atomic_write_text

THUMB_SIZE = 224
PREDICTION_CONF = 0.25  # the same threshold as the pre-annotations sent to annotators
MAX_THUMBS_PER_ROUND = 300  # a 1000-image batch would make a 50 MB page; the rest is listed by name
LABEL_COLOUR = (46, 204, 64)
PREDICTION_COLOUR = (255, 133, 27)
SUSPECT_COLOUR = (230, 25, 75)
MAX_QA_THUMBS = 60  # suspects shown as thumbnails per round; the CSV lists them all

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.stop { color: #b00020; font-weight: bold; } .go { color: #1b7f3b; } .na { color: #888; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure.pick { margin: 0; width: 232px; border: 1px solid #ddd; padding: 4px; font-size: 0.78em; background: #fafafa; }
figure.pick img { display: block; max-width: 224px; max-height: 224px; margin: 0 auto; }
figure.pick figcaption { margin-top: 4px; word-wrap: break-word; }
.legend span { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin: 0 4px 0 12px; }
.muted { color: #777; } img.curve { max-width: 100%; border: 1px solid #eee; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: Path, labels: list[tuple], predictions: list[tuple], classes: list[str],
              size: int = THUMB_SIZE, highlight: list[tuple] = ()) -> bytes | None:
    """A JPEG thumbnail of `path` with its label boxes (solid) and predicted boxes (dashed) drawn; None when the
    file cannot be read. labels: (class, cx, cy, w, h) normalised; predictions: (class, cx, cy, w, h, conf);
    highlight: boxes drawn last, thick and red (label QA's suspect box), (class, cx, cy, w, h)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    # scaled to the thumbnail size both ways: a 64 px synthetic image is too small to see its boxes otherwise
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
    w, h = image.size
    draw = ImageDraw.Draw(image)

    def corners(box: tuple) -> tuple[float, float, float, float]:
        _cls, cx, cy, bw, bh = box[:5]
        return (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h

    for box in labels:
        x1, y1, x2, y2 = corners(box)
        draw.rectangle([x1, y1, x2, y2], outline=LABEL_COLOUR, width=2)
        name = classes[int(box[0])] if 0 <= int(box[0]) < len(classes) else str(box[0])
        draw.text((x1 + 2, max(y1 - 11, 0)), name, fill=LABEL_COLOUR)
    for box in predictions:
        x1, y1, x2, y2 = corners(box)
        # dashed and drawn over the labels: where a prediction matches its label exactly, both stay visible
        for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
            length = math.hypot(b[0] - a[0], b[1] - a[1])
            steps = max(int(length // 4), 1)
            for i in range(0, steps, 2):
                t0, t1 = i / steps, min((i + 1) / steps, 1.0)
                draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                           (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=PREDICTION_COLOUR, width=2)
    for box in highlight:
        x1, y1, x2, y2 = corners(box)
        draw.rectangle([x1 - 2, y1 - 2, x2 + 2, y2 + 2], outline=SUSPECT_COLOUR, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _learning_curve_png(name: str, labeled: list[float], map50: list[float]) -> bytes:
    from labelwise.plots import learning_curves

    with tempfile.TemporaryDirectory() as tmp:
        path = learning_curves({name: [(labeled, map50)]}, Path(tmp) / "curve.png", title="Learning curve",
                               figsize=(7.0, 4.0))
        return path.read_bytes()


def _table(head: list[str], rows: list[list[str]], table_id: str, text_cols: int = 1) -> str:
    cls = lambda i: ' class="text"' if i < text_cols else ""  # noqa: E731
    out = [f'<table id="{table_id}">']
    if any(head):
        out += ["<thead><tr>", *(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head)), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _advice_html(advice: list[Any]) -> str:
    items = []
    for a in advice:
        if isinstance(a, str):
            items.append(f'<li class="na">{_e(a)}</li>')
            continue
        state, cls = ("STOP", "stop") if a.stop else (("continue", "go") if a.ready else ("not ready", "na"))
        items.append(f'<li><b>{_e(a.rule)}</b>: <span class="{cls}">{state}</span> - {_e(a.reason)}</li>')
    return f'<ul id="stopping-advice">{"".join(items)}</ul>'


def _dividend_png(result) -> bytes:
    from labelwise.plots import dividend_bars

    names = {"strategy": f"strategy ({result.strategy})", "random": "random"}
    with tempfile.TemporaryDirectory() as tmp:
        path = dividend_bars({names[a]: arm.map50 for a, arm in result.arms.items()},
                             {names[a]: arm.gain_per_100 for a, arm in result.arms.items()}, Path(tmp) / "d.png",
                             baseline=result.baseline_map50,
                             title=f"Round {result.round}: {result.k} images by the strategy vs {result.k} at random")
        return path.read_bytes()


def _dividend_html(ws) -> str:
    """The latest `labelwise dividend` experiment: where it stands, or its bars, table and noise verdict."""
    from labelwise.workflow.dividend import latest

    result = latest(ws.ctx)
    if result is None:
        return ""
    out = ['<h2 id="dividend">Dividend: strategy batch vs random batch</h2>']
    if result.state != "done":
        out.append(f'<p id="dividend-state">{_e(result.line)}</p>')
        return "".join(out)
    png = _dividend_png(result)
    out.append(f'<img id="dividend-plot" class="curve" alt="mAP50 and gain per 100 labels, strategy vs random" '
               f'src="{_data_uri(png, "image/png")}">')
    classes = list(result.arms["strategy"].per_class_ap50)
    rows = [["current model", "", "", _num(result.baseline_map50), "",
             *(_num(result.baseline_per_class_ap50.get(c)) for c in classes)]]
    for label, arm in ((f"+ strategy batch ({result.strategy})", result.arms["strategy"]),
                       ("+ random batch", result.arms["random"])):
        per_seed = "" if len(arm.map50) < 2 else " (" + ", ".join(_num(m) for m in arm.map50) + ")"
        rows.append([_e(label), _e(arm.batch), _e(arm.n_train), _num(arm.mean_map50) + per_seed,
                     _num(arm.gain_per_100, "+.3f"), *(_num(arm.per_class_ap50.get(c)) for c in classes)])
    out.append(_table(["model", "batch", "trained on", "mAP50", "gain / 100 labels", *classes], rows,
                      "dividend-table"))
    ratio = ("" if result.ratio is None else
             f" The strategy's mAP50 gain per label is {result.ratio:.1f}x random's.")
    out.append(f'<p id="dividend-verdict"><b>{_e(result.comparison.verdict)}</b>: {_e(result.comparison.text)}.'
               f"{_e(ratio)} Validation split: {_e(result.n_val)} images; current model: "
               f"{_e(result.baseline_source)}. Both batches stay labeled.</p>")
    return "".join(out)


def _qa_html(ws, classes: list[str], max_thumbs: int = MAX_QA_THUMBS) -> str:
    """Label QA: each checked round's suspects (open ones first, then those confirmed, changed or cleared), as
    thumbnails with the suspect box in red; empty when no round has suspects."""
    from labelwise.workflow.qa import csv_path, describe, issue_name

    store, cfg = ws.store, ws.config
    rows = store.suspects()
    if not rows:
        return ""
    held = {image.id for image, *_ in store.held(kind="qa")}
    out = ['<h2 id="label-qa">Label QA suspects</h2>',
           '<p class="legend">images whose label most likely holds an error, worst first: '
           '<span style="background:rgb%s"></span>the box behind the suspicion (a box the label lacks, a box of the '
           'wrong class, or a badly placed one) over the label (green) and the predictions (dashed)</p>'
           % (SUSPECT_COLOUR,)]
    for round_no in sorted({r["round"] for r in rows}, reverse=True):
        mine = sorted((r for r in rows if r["round"] == round_no), key=lambda r: (r["status"] != "open", r["rank"]))
        n_open = sum(1 for r in mine if r["status"] == "open")
        out.append(f'<section class="qa" id="qa-round-{round_no}"><h3>Round {round_no}: {n_open} open suspect(s), '
                   f'{len(mine) - n_open} reviewed or cleared (all: {_e(csv_path(ws.ctx, round_no))})</h3>')
        model = mine[0]["model_hash"]
        found = store.detections_many([r["sha256"] for r in mine[:max_thumbs]], model, cfg.imgsz)
        figures = []
        for r in mine[:max_thumbs]:
            det = found.get(r["sha256"])
            predictions = [b for b in det.yolo_boxes() if b[5] >= PREDICTION_CONF] if det is not None else []
            jpeg = thumbnail(Path(r["path"]), store.label(r["image_id"]) or [], predictions, classes,
                             highlight=[tuple(r["box"])] if r["box"] else [])
            image = (f'<img class="thumb" alt="{_e(Path(r["path"]).name)}" src="{_data_uri(jpeg, "image/jpeg")}">'
                     if jpeg else f'<p class="na">image not readable: {_e(r["path"])}</p>')
            caption = (f"<b>#{r['rank']} {_e(issue_name(r['issue']))}</b> - score {r['score']:.3f} - "
                       f"{_e(r['status'])}{' (held out of training)' if r['image_id'] in held else ''}<br>"
                       f"{_e(describe(r, classes))}<br><span class=\"muted\">missing box {r['missing_box']:.3f}, "
                       f"wrong class {r['wrong_class']:.3f}, badly placed {r['badly_placed']:.3f}</span>")
            figures.append(f'<figure class="pick qa-suspect">{image}<figcaption>{caption}</figcaption></figure>')
        out.append(f'<div class="grid">{"".join(figures)}</div>')
        if len(mine) > max_thumbs:
            out.append(f'<p class="muted">{len(mine) - max_thumbs} more in the CSV</p>')
        out.append("</section>")
    return "".join(out)


def _monitor_html(status: Any) -> str:
    """Production monitoring: the summary line and the drift plot (labelwise.workflow.monitoring); nothing when
    `labelwise monitor` never ran."""
    summary = getattr(status, "monitor", None)
    if summary is None:
        return ""
    parts = ["<h2>Production monitoring</h2>", f'<p id="monitor-summary">{_e(summary.line)}</p>']
    if summary.plot is not None and Path(summary.plot).exists():
        parts.append('<img id="drift-plot" class="curve" alt="drift per day: mean confidence and detections per '
                     'class against the validation set, share of images flagged per rule" '
                     f'src="{_data_uri(Path(summary.plot).read_bytes(), "image/png")}">')
    return "".join(parts)


def build_report(workspace, out: Path, *, max_thumbs_per_round: int = MAX_THUMBS_PER_ROUND) -> Path:
    """Write the report of `workspace` (a `labelwise.loop.Workspace`) and return the HTML file's path.

    out: the HTML file, or a folder to write report.html into.
    """
    from labelwise.stopping import learning_curve_stats

    out = Path(out)
    path = out if out.suffix.lower() in (".html", ".htm") else out / "report.html"
    ws = workspace
    store, cfg = ws.store, ws.config
    classes = list(cfg.classes)
    status = ws.status()
    rounds = store.rounds()
    trained = [r for r in rounds if r.map50 is not None]
    parts: list[str] = []

    strategy = cfg.strategy.get("name", "?")
    parts.append(f"<h1>labelwise report: {_e(ws.root.name)}</h1>")
    parts.append(f'<p class="muted">{_e(ws.root)} - generated {_e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>')

    # -- where the loop stands
    c = status.counts
    state_rows = [
        ["round", _e(status.round or 0)], ["step", _e(status.step)], ["state", _e(status.message)],
        ["next command", f"<code>{_e(status.next_command)}</code>"],
        ["strategy", _e(json.dumps(cfg.strategy))], ["model", _e(cfg.model)], ["imgsz", _e(cfg.imgsz)],
        ["budget", _e(f"initial {cfg.budget.initial or cfg.budget.per_round}, {cfg.budget.per_round} per round, "
                      f"total {cfg.budget.total if cfg.budget.total is not None else 'unlimited'}")],
        ["stopping rule", _e(cfg.stopping.rule)],
    ]
    if status.finished:
        state_rows.insert(3, ["finished", _e(status.finished)])
    parts.append("<h2>Status</h2>" + _table(["", ""], state_rows, "status", text_cols=2))

    # -- counts
    parts.append("<h2>Labels</h2>")
    count_rows = [["labeled pool images", _e(c["pool_labeled"])], ["unlabeled pool images", _e(c["pool_unlabeled"])],
                  ["selected, awaiting labels", _e(c["pool_selected"])], ["validation images", _e(c["val_labeled"])],
                  ["quarantined files", _e(c["quarantined"])]]
    parts.append(_table(["", "images"], count_rows, "label-counts"))
    pool_boxes = store.class_box_counts(len(classes), "pool")
    val_boxes = store.class_box_counts(len(classes), "val")
    class_rows = [[_e(name), _e(int(pool_boxes[i])), _e(int(val_boxes[i]))] for i, name in enumerate(classes)]
    class_rows.append(["<b>all</b>", f"<b>{int(pool_boxes.sum())}</b>", f"<b>{int(val_boxes.sum())}</b>"])
    parts.append(_table(["class", "boxes in labeled pool", "boxes in validation"], class_rows, "class-counts"))

    # -- stopping advice and the curve
    parts.append("<h2>Stopping advice</h2>")
    parts.append(_advice_html(status.advice))
    if len(trained) >= 2:
        stats = learning_curve_stats([r.map50 for r in trained], [r.n_labeled or 0 for r in trained],
                                     min_gain=cfg.stopping.min_map_gain)
        gain_rows = [[_e(trained[i + 1].round), _e(trained[i + 1].n_labeled), _num(g, "+.4f"),
                      _num(roi, "+.4f")] for i, (g, roi) in enumerate(zip(stats.gains, stats.roi_per_100_labels))]
        parts.append(_table(["round", "labeled", "mAP50 gain", "gain per 100 labels"], gain_rows, "gains"))
        parts.append(f"<p>Predicted gain of the next round: {_num(stats.predicted_next_gain, '+.4f')} "
                     f"(fit: {_e(stats.fit)}).</p>")

    parts.append("<h2>Learning curve</h2>")
    if trained:
        png = _learning_curve_png(strategy, [float(r.n_labeled or 0) for r in trained], [r.map50 for r in trained])
        parts.append(f'<img id="learning-curve" class="curve" alt="learning curve: mAP50 against labeled images" '
                     f'src="{_data_uri(png, "image/png")}">')
    else:
        parts.append('<p class="muted" id="learning-curve-missing">No model trained yet: the curve starts after '
                     "the first training.</p>")

    # -- per-round, per-class AP
    parts.append("<h2>AP50 per class and round</h2>")
    head = ["round", "strategy", "labeled", "mAP50", "mAP50-95", "agreement", "train s", "score s", *classes]
    ap_rows = []
    for r in trained:
        ap = r.per_class_ap50 or {}
        ap_rows.append([_e(r.round), _e(json.loads(r.strategy or "{}").get("name", "")), _e(r.n_labeled),
                        _num(r.map50), _num(r.map50_95), _num(r.agreement), _num(r.train_seconds, ".0f"),
                        _num(r.score_seconds, ".0f"), *(_num(ap.get(name)) for name in classes)])
    parts.append(_table(head, ap_rows, "per-class-ap", text_cols=2) if ap_rows
                 else '<p class="muted">No trained round yet.</p>')

    # -- the dividend experiment (labelwise dividend), when one was run
    parts.append(_dividend_html(ws))

    # -- label QA suspects
    parts.append(_qa_html(ws, classes))

    # -- each round's picks
    # -- production monitoring (labelwise monitor)
    parts.append(_monitor_html(status))

    parts.append("<h2>Selected images per round</h2>")
    parts.append('<p class="legend">boxes: <span style="background:rgb%s"></span>label '
                 '<span style="background:rgb%s"></span>prediction of the model that selected the image '
                 "(dashed, confidence &ge; %.2f)</p>" % (LABEL_COLOUR, PREDICTION_COLOUR, PREDICTION_CONF))
    for r in reversed(rounds):  # newest first: that is the batch people look at
        picks = store.selection(r.round)
        if not picks:
            continue
        name = json.loads(r.strategy or "{}").get("name", "")
        done = sum(1 for p in picks if p["outcome"] == "labeled")
        parts.append(f'<section class="round" id="round-{r.round}"><h3>Round {r.round}: {len(picks)} images '
                     f"selected by {_e(name)} ({done} labeled)</h3>")
        figures = []
        found = store.detections_many([p["sha256"] for p in picks[:max_thumbs_per_round]], r.model_hash,
                                      cfg.imgsz) if r.model_hash else {}
        for p in picks[:max_thumbs_per_round]:
            labels = store.label(p["image_id"]) or []
            predictions: list[tuple] = []
            det = found.get(p["sha256"])
            if det is not None:
                predictions = [b for b in det.yolo_boxes() if b[5] >= PREDICTION_CONF]
            jpeg = thumbnail(Path(p["path"]), labels, predictions, classes)
            components = ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                   for k, v in list(p["components"].items())[:6])
            caption = (f"<b>#{p['rank']}</b> score {p['score']:.4f} - {_e(p['outcome'])}<br>"
                       f"{_e(Path(p['path']).name)}<br>{len(labels)} label box(es), {len(predictions)} predicted"
                       f"<br><span class=\"muted\">{_e(components)}</span><br>{_e(p['reason'])}")
            image = (f'<img class="thumb" alt="{_e(Path(p["path"]).name)}" src="{_data_uri(jpeg, "image/jpeg")}">'
                     if jpeg else f'<p class="na">image not readable: {_e(p["path"])}</p>')
            figures.append(f'<figure class="pick">{image}<figcaption>{caption}</figcaption></figure>')
        parts.append(f'<div class="grid">{"".join(figures)}</div>')
        if len(picks) > max_thumbs_per_round:
            rest = ", ".join(_e(Path(p["path"]).name) for p in picks[max_thumbs_per_round:])
            parts.append(f'<p class="muted">{len(picks) - max_thumbs_per_round} more: {rest}</p>')
        parts.append("</section>")

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>labelwise report: {_e(ws.root.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    atomic_write_text(path, page)
    return path
