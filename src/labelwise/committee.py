"""Query by committee for detection: class vote entropy and localisation disagreement of matched boxes.

Pure NumPy/SciPy. The members are detectors trained on bootstrap resamples of the labeled set; each scored the same
pool (same rows, same order). Their boxes are grouped across members by IoU matching (`labelwise.boxes.match_boxes`).
"""

from __future__ import annotations

import numpy as np

from labelwise.boxes import iou_matrix, match_boxes
from labelwise.detections import csr_offsets
from labelwise.uncertainty import aggregate_csr


def vote_entropy(votes: np.ndarray, n_outcomes: int) -> float:
    """Vote entropy (Dagan & Engelson 1995; query by committee, Seung et al. 1992), normalised to [0, 1]:
    ``VE = -sum_v (V(v)/C) ln(V(v)/C) / ln(min(C, n_outcomes))`` over the C votes; 0 when C < 2 or unanimous."""
    votes = np.asarray(votes).reshape(-1)
    c = votes.shape[0]
    top = min(c, n_outcomes)
    if c < 2 or top < 2:
        return 0.0
    _, counts = np.unique(votes, return_counts=True)
    f = counts / c
    return float(-(f * np.log(f)).sum() / np.log(top))


def match_across_members(member_boxes: list[np.ndarray], iou_threshold: float = 0.5) -> np.ndarray:
    """Groups boxes of C members of one image into objects: (n_objects, C) array of each member's box row for the
    object, -1 where that member has no box there.

    Members are visited in order; each member's boxes are matched one-to-one (Hungarian, IoU >= threshold) to the
    objects found so far, using the box of the first member that saw each object; unmatched boxes start new objects.
    """
    n_members = len(member_boxes)
    reps: list[np.ndarray] = []
    rows: list[list[int]] = []
    for m, boxes in enumerate(member_boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        matched_obj, matched_box = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if reps and boxes.shape[0]:
            matched_obj, matched_box, _ = match_boxes(np.stack(reps), boxes, iou_threshold)
        for o, b in zip(matched_obj, matched_box):
            rows[o][m] = int(b)
        taken = set(matched_box.tolist())
        for b in range(boxes.shape[0]):
            if b not in taken:
                reps.append(boxes[b])
                row = [-1] * n_members
                row[m] = b
                rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, n_members)


def object_disagreement(member_boxes: list[np.ndarray], member_scores: list[np.ndarray],
                        iou_threshold: float = 0.5) -> np.ndarray:
    """Per matched object, ``0.5 * VE + 0.5 * (1 - mean pairwise IoU)`` in [0, 1].

    VE: `vote_entropy` of the members' class votes (argmax class of their box; a member with no box there votes
    "background", outcome n_classes). Pairwise IoU: mean over all C(C-1)/2 member pairs, a missing box having IoU 0
    with everything (the localisation-disagreement term of committee-based detection AL, e.g. Roy et al. 2018 and
    the matched-box agreement of Kao et al. 2018). Identical members give 0 for every object.
    """
    n_members = len(member_boxes)
    groups = match_across_members(member_boxes, iou_threshold)
    if groups.shape[0] == 0:
        return np.zeros(0)
    n_classes = next((np.asarray(s).shape[1] for s in member_scores if np.asarray(s).ndim == 2), 1)
    out = np.empty(groups.shape[0])
    pairs = n_members * (n_members - 1) / 2
    for o, row in enumerate(groups):
        votes = np.array([np.argmax(member_scores[m][b]) if b >= 0 else n_classes for m, b in enumerate(row)])
        ve = vote_entropy(votes, n_classes + 1)
        present = [m for m, b in enumerate(row) if b >= 0]
        if pairs == 0:
            loc = 0.0
        else:
            bx = np.stack([np.asarray(member_boxes[m], dtype=np.float64).reshape(-1, 4)[row[m]] for m in present])
            ious = iou_matrix(bx, bx)
            iu = np.triu_indices(len(present), 1)
            loc = 1.0 - float(ious[iu].sum()) / pairs
        out[o] = 0.5 * ve + 0.5 * loc
    return out


def committee_disagreement(members: list, aggregation: str = "max", top_n: int = 3,
                           iou_threshold: float = 0.5) -> np.ndarray:
    """(N,) per-image disagreement of a committee of `ScoredPool`s scoring the same images in the same order:
    `object_disagreement` per object, aggregated per image with `uncertainty.aggregate_csr`.

    An image where no member kept a box gets 0: the committee agrees unanimously that it is empty (a measured
    value, not a default). Raises ValueError when the members do not list the same images.
    """
    if not members:
        raise ValueError("the committee strategy needs at least one member pool")
    ids = members[0].image_ids
    for m in members[1:]:
        if not np.array_equal(m.image_ids, ids):
            raise ValueError("committee members must score the same images in the same order")
    n = len(ids)
    per_object: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        boxes = [m.boxes[m.box_offsets[i]:m.box_offsets[i + 1]] for m in members]
        if not any(b.shape[0] for b in boxes):
            continue
        scores = [m.class_scores[m.box_offsets[i]:m.box_offsets[i + 1]] for m in members]
        d = object_disagreement(boxes, scores, iou_threshold)
        per_object.append(d)
        counts[i] = d.shape[0]
    offsets = csr_offsets(counts)
    flat = np.concatenate(per_object) if per_object else np.zeros(0)
    return aggregate_csr(flat, offsets, aggregation, top_n, empty_scores=0.0)
