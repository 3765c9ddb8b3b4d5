"""Columnar files for what scoring finds in each image: boxes, full class-score vectors, box features, embeddings.

The scores of a pool live in Parquet files, "shards", under `<workspace>/vectors/`; SQLite (labelwise.store) keeps
the state and an index of the finished shards (table `shards`). The file is the data, the index row says it is
finished: a shard counts only once it is registered, and a file without a row (a write that was interrupted) is
ignored and, after a grace period, deleted. Both scoring engines write this one layout: the local engine through
`detections_table` + `VectorStore.write_shard`, the Ray engine through Ray Data with `DETECTIONS_SCHEMA`.

The schema, `DETECTIONS_SCHEMA` (stable: other writers depend on it; one row per image and scoring pass)
    sha256               string          the image's content hash (labelwise.store images.sha256)
    model_hash           string          the scoring model's hash (rounds.model_hash; 16 hex digits)
    imgsz                int32           inference size
    variant              string          '' for the plain pass; 'flip', 'member0', ... for the extra passes
    width, height        int32           the original image's size in pixels
    max_candidate_score  float32         see `labelwise.detections.ImageDetections`
    boxes                list<float32>   n * 4 values, row-major x1 y1 x2 y2 in the original image's pixels
    class_scores         list<float32>   n * n_classes values, the full per-class sigmoid vector of every box
    n_classes            int32
    box_features         list<float16>   n * d_box values, one feature vector per box
    d_box                int32           0 when the image has no box and no feature width is known
    embedding            list<float16>   d values, the image embedding (fp16, as the SQLite store kept it)
    error                string          null for a scored image; for an image that could not be scored, the
                                         reason (a quarantined row: every column but the four keys and error may
                                         then be null or empty)
Every field is nullable (Ray Data and pyarrow infer nullable fields; a schema that differed only there would not
concatenate). Rows of one shard share (model_hash, imgsz, variant). When the same image appears in more than one
registered shard of a key, the shard registered last wins.

API
    detections_table(rows, model_hash, imgsz, variant) -> pa.Table   rows: (sha256, ImageDetections | reason)
    table_detections(table) -> Iterator[(sha256, ImageDetections | reason)]
    VectorStore(root, index=None)
        .write_shard(table) -> Path      atomic (a hidden temporary file renamed into place), a unique name
                                          <model_hash>-<imgsz>-<variant>-<uuid hex>.parquet
        .shards(model_hash, imgsz, variant) -> list[Path]   registered shards (by `index`), or without an index
                                          every shard file of that key by its name, oldest first
        .scored_shas(model_hash, imgsz, variant) -> set[str] reads the sha256 (and error) columns only
        .detections(shas, model_hash, imgsz, variant) -> dict[sha256, ImageDetections | reason]
        .scored_pool(model_hash, imgsz, variant, shas, image_ids, n_classes) -> ScoredPool
                                          the columns selection needs, memory-mapped, flattened to NumPy without
                                          a loop over rows
        .write_shards(tables, max_rows) -> list[(Path, rows)]   stream tables of one key into new shards
        .compact(paths) -> list[(Path, rows)]   merge shards into new (unregistered) ones, the last copy of an
                                          image kept
        .drop(model_hash) -> int          without an index: delete that model's shard files
        .remove(paths), .orphans(registered, min_age_s)

The Ray engine writes `DETECTIONS_SCHEMA` tables through Ray Data into a folder of its own under `vectors/` (a
subfolder is left alone by the orphan sweep, which looks only at files directly in `vectors/`), then registers each
finished file with `labelwise.store.Store.register_shards`.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelwise.detections import ImageDetections, ScoredPool, csr_offsets

VECTORS_DIR = "vectors"
SHARD_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"
ROW_GROUP_ROWS = 4_096  # small enough that looking a few images up reads a little of a big shard
COMPACT_ROWS = 262_144  # rows per file when shards are merged
READ_BATCH_ROWS = 8_192  # rows decoded at a time by scored_pool: its memory beyond the result (decoding a list
#                          column takes several times its size: about 40 MB for 8,192 rows of 448-d fp16 embeddings)

DETECTIONS_SCHEMA = pa.schema([
    pa.field("sha256", pa.string()),
    pa.field("model_hash", pa.string()),
    pa.field("imgsz", pa.int32()),
    pa.field("variant", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("max_candidate_score", pa.float32()),
    pa.field("boxes", pa.list_(pa.float32())),
    pa.field("class_scores", pa.list_(pa.float32())),
    pa.field("n_classes", pa.int32()),
    pa.field("box_features", pa.list_(pa.float16())),
    pa.field("d_box", pa.int32()),
    pa.field("embedding", pa.list_(pa.float16())),
    pa.field("error", pa.string()),
])

#: What `scored_pool` reads: everything but the box features (the large column selection never needs).
POOL_COLUMNS = ["sha256", "width", "height", "max_candidate_score", "boxes", "class_scores", "n_classes",
                "embedding", "error"]

#: index(model_hash, imgsz, variant) -> the registered shard files of that key, in the order they were registered.
ShardIndex = Callable[[str, int, str], list[Path]]


def release_memory() -> None:
    """Hand freed memory back to the operating system: Arrow's pool (mimalloc or jemalloc keep freed pages) and, on
    glibc, the C heap (`malloc_trim`: NumPy's blocks under the mmap threshold, a few MB each, stay in the process
    otherwise). After reading a large pool a batch at a time this is some 300 MB of resident memory at 1,000,000
    images (issue 10)."""
    pa.default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# -- rows <-> Arrow ------------------------------------------------------------------------------------------------


def _list_array(values: list[np.ndarray], dtype: np.dtype, arrow_type: pa.DataType,
                valid: np.ndarray) -> pa.Array:
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = csr_offsets(lengths)
    flat = np.concatenate(values).astype(dtype, copy=False) if values else np.zeros(0, dtype)
    offsets_type = pa.int32() if offsets[-1] < 2**31 else pa.int64()
    off = pa.array(offsets.astype(np.int32 if offsets_type == pa.int32() else np.int64), offsets_type)
    cls = pa.ListArray if offsets_type == pa.int32() else pa.LargeListArray
    arr = cls.from_arrays(off, pa.array(flat, arrow_type))
    if not valid.all():  # error rows: null lists
        arr = pc.if_else(pa.array(valid), arr, pa.nulls(len(arr), arr.type))
    return arr.cast(pa.list_(arrow_type)) if cls is pa.LargeListArray else arr


def detections_table(rows: Iterable[tuple[str, ImageDetections | str]], model_hash: str, imgsz: int,
                     variant: str = "") -> pa.Table:
    """One `DETECTIONS_SCHEMA` row per (sha256, detections) pair; a pair whose second item is a string is an image
    that could not be scored, and the string the reason (the row's `error`)."""
    shas: list[str] = []
    errors: list[str | None] = []
    widths, heights, maxes, ncs, dbs = [], [], [], [], []
    boxes, scores, features, embeddings = [], [], [], []
    for sha, det in rows:
        shas.append(str(sha))
        if isinstance(det, str):
            errors.append(det)
            widths.append(0), heights.append(0), maxes.append(np.nan), ncs.append(0), dbs.append(0)
            boxes.append(np.zeros(0, np.float32)), scores.append(np.zeros(0, np.float32))
            features.append(np.zeros(0, np.float16)), embeddings.append(np.zeros(0, np.float16))
            continue
        n = det.n_boxes
        b = np.asarray(det.boxes, dtype=np.float32)
        s = np.asarray(det.class_scores, dtype=np.float32)
        f = np.asarray(det.box_features, dtype=np.float16)
        if b.shape != (n, 4):
            raise ValueError(f"image {sha}: boxes must be (n, 4), got {b.shape}")
        if s.ndim != 2 or s.shape[0] != n:
            raise ValueError(f"image {sha}: class_scores must be (n, n_classes) with n = {n}, got {s.shape}")
        if f.ndim != 2 or f.shape[0] != n:
            if f.size == 0 and n == 0:
                f = f.reshape(0, 0)
            else:
                raise ValueError(f"image {sha}: box_features must be (n, d_box) with n = {n}, got {f.shape}")
        errors.append(None)
        widths.append(int(det.width)), heights.append(int(det.height))
        maxes.append(float(det.max_candidate_score)), ncs.append(int(s.shape[1])), dbs.append(int(f.shape[1]))
        boxes.append(b.ravel()), scores.append(s.ravel()), features.append(f.ravel())
        embeddings.append(np.asarray(det.embedding).astype(np.float16).ravel())
    n_rows = len(shas)
    ok = np.array([e is None for e in errors], dtype=bool)

    def ints(values: list[int]) -> pa.Array:
        return pa.array(np.asarray(values, dtype=np.int32), pa.int32(), mask=None if ok.all() else ~ok)

    columns = {
        "sha256": pa.array(shas, pa.string()),
        "model_hash": pa.array([model_hash] * n_rows, pa.string()),
        "imgsz": pa.array(np.full(n_rows, imgsz, dtype=np.int32), pa.int32()),
        "variant": pa.array([variant] * n_rows, pa.string()),
        "width": ints(widths),
        "height": ints(heights),
        "max_candidate_score": pa.array(np.asarray(maxes, dtype=np.float32), pa.float32(),
                                        mask=None if ok.all() else ~ok),
        "boxes": _list_array(boxes, np.float32, pa.float32(), ok),
        "class_scores": _list_array(scores, np.float32, pa.float32(), ok),
        "n_classes": ints(ncs),
        "box_features": _list_array(features, np.float16, pa.float16(), ok),
        "d_box": ints(dbs),
        "embedding": _list_array(embeddings, np.float16, pa.float16(), ok),
        "error": pa.array(errors, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=DETECTIONS_SCHEMA)


def _flat(column: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """The values of a list column as one NumPy array (null lists contribute nothing)."""
    values = pc.list_flatten(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _ints(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def table_detections(table: pa.Table) -> Iterator[tuple[str, ImageDetections | str]]:
    """The rows of a `DETECTIONS_SCHEMA` table back as (sha256, ImageDetections), or (sha256, reason) for a row
    with an error. Arrays are views into one flattened copy per column (no per-row conversion of lists)."""
    n = table.num_rows
    if n == 0:
        return
    shas = table.column("sha256").to_pylist()
    errors = table.column("error").to_pylist()
    widths, heights = _ints(table.column("width")), _ints(table.column("height"))
    ncs = _ints(table.column("n_classes"))
    dbs = _ints(table.column("d_box")) if "box_features" in table.column_names else np.zeros(n, np.int64)
    maxes = pc.fill_null(table.column("max_candidate_score"), np.nan).to_numpy(zero_copy_only=False)
    cols = {}
    for name, dtype in (("boxes", np.float32), ("class_scores", np.float32), ("box_features", np.float16),
                        ("embedding", np.float16)):
        if name not in table.column_names:  # read without it (detections(features=False)): no values
            cols[name] = (np.zeros(0, dtype), np.zeros(n + 1, np.int64))
            continue
        cols[name] = (_flat(table.column(name), dtype), csr_offsets(_lengths(table.column(name))))
    for i in range(n):
        if errors[i] is not None:
            yield shas[i], errors[i]
            continue
        b, s, f, e = ((flat[off[i]:off[i + 1]]) for flat, off in cols.values())
        k = len(b) // 4
        nc, db = int(ncs[i]), int(dbs[i])
        yield shas[i], ImageDetections(
            boxes=b.reshape(k, 4),
            class_scores=s.reshape(k, nc) if nc else s.reshape(k, 0),
            box_features=f.reshape(k, db) if db else np.zeros((k, 0), np.float16),
            embedding=e.astype(np.float32),
            max_candidate_score=float(maxes[i]),
            width=int(widths[i]),
            height=int(heights[i]),
        )


# -- files ---------------------------------------------------------------------------------------------------------


def _name_part(value: str) -> str:
    """`value` safe in a file name and free of '-' (the separator): other characters as %XX."""
    return re.sub(r"[^A-Za-z0-9_.]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def shard_prefix(model_hash: str, imgsz: int, variant: str) -> str:
    return f"{_name_part(model_hash)}-{int(imgsz)}-{_name_part(variant)}-"


_SHARD_TAIL = re.compile(r"[0-9a-f]{32}\.parquet")


def _key_of(table: pa.Table) -> tuple[str, int, str]:
    for name in ("model_hash", "imgsz", "variant"):
        values = pc.unique(table.column(name)).to_pylist()
        if len(values) != 1 or values[0] is None:
            raise ValueError(f"a shard holds one (model_hash, imgsz, variant); its {name} column has {values}")
    return (table.column("model_hash")[0].as_py(), int(table.column("imgsz")[0].as_py()),
            table.column("variant")[0].as_py())


def shard_info(path: Path) -> tuple[str, int, str, int]:
    """(model_hash, imgsz, variant, rows) of a shard file, from its key columns; ValueError for a file that does
    not have DETECTIONS_SCHEMA's columns or holds more than one key."""
    pf = pq.ParquetFile(path)
    missing = [n for n in DETECTIONS_SCHEMA.names if n not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: not a detections shard, it lacks {missing}")
    keys = pf.read(columns=["model_hash", "imgsz", "variant"])
    if keys.num_rows == 0:
        raise ValueError(f"{path}: an empty shard")
    model_hash, imgsz, variant = _key_of(keys)
    return model_hash, imgsz, variant, keys.num_rows


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _retry_vanished(method: Callable) -> Callable:
    """Read again when a shard vanished under the read: a writer merged it and deleted the old file after it had
    been listed (the new list names the merged file)."""
    import functools

    @functools.wraps(method)
    def wrapper(self: "VectorStore", *args, **kwargs):
        for attempt in range(3):
            try:
                return method(self, *args, **kwargs)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    return wrapper


class VectorStore:
    """The shard files of a workspace (`root` is `<workspace>/vectors`, made on the first write).

    `index(model_hash, imgsz, variant)` names the registered shards of a key in registration order (the SQLite
    `shards` table; see labelwise.store). Without one, every shard file of the key found by its name counts."""

    def __init__(self, root: Path, index: ShardIndex | None = None):
        self.root = Path(root)
        self.index = index

    # -- writing

    def write_shard(self, table: pa.Table) -> Path:
        """Write `table` (DETECTIONS_SCHEMA, one key) as a new shard: to a hidden temporary file, flushed to disk,
        then renamed to its final, unique name. Returns the final path. Not registered: the caller does that."""
        if table.num_rows == 0:
            raise ValueError("a shard needs at least one row")
        ((path, _),) = self.write_shards([table], max_rows=table.num_rows)
        return path

    def write_shards(self, tables: Iterable[pa.Table], max_rows: int = COMPACT_ROWS) -> list[tuple[Path, int]]:
        """Stream `tables` (DETECTIONS_SCHEMA, all of one key) into new shards of at most `max_rows` rows each,
        every one written like `write_shard`. Returns (path, rows) per file, none registered. On an error the files
        already finished are deleted."""
        out: list[tuple[Path, int]] = []
        writer: pq.ParquetWriter | None = None
        tmp = final = None
        rows_in_file = 0
        try:
            for table in tables:
                table = table.select(DETECTIONS_SCHEMA.names).cast(DETECTIONS_SCHEMA)
                while table.num_rows:
                    if writer is None:
                        key = _key_of(table)
                        self.root.mkdir(parents=True, exist_ok=True)
                        final = self.root / f"{shard_prefix(*key)}{uuid.uuid4().hex}{SHARD_SUFFIX}"
                        tmp = self.root / f"{TMP_PREFIX}{final.name}"
                        writer = pq.ParquetWriter(tmp, DETECTIONS_SCHEMA, **_writer_options())
                        rows_in_file = 0
                        first_key = key
                    elif _key_of(table) != first_key:
                        raise ValueError(f"one shard holds one (model_hash, imgsz, variant): {first_key} then "
                                         f"{_key_of(table)}")
                    take = min(table.num_rows, max_rows - rows_in_file)
                    writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP_ROWS)
                    rows_in_file += take
                    table = table.slice(take)
                    if rows_in_file >= max_rows:
                        out.append((self._finish(writer, tmp, final), rows_in_file))
                        writer = tmp = None
            if writer is not None:
                out.append((self._finish(writer, tmp, final), rows_in_file))
                writer = tmp = None
        except BaseException:
            if writer is not None:
                writer.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self.remove(p for p, _ in out)
            raise
        return out

    def compact(self, paths: Sequence[Path], max_rows: int = COMPACT_ROWS) -> list[tuple[Path, int]]:
        """Merge the shards `paths` (one key, in registration order) into new shards of at most `max_rows` rows,
        keeping only the last copy of each image. Streams shard by shard. Returns (path, rows) of the new files,
        which are not registered yet; the old files are left in place."""
        shas = [pq.read_table(p, columns=["sha256"], memory_map=True).column("sha256") for p in paths]
        if not shas:
            return []
        keep_all = _last_occurrence(pa.chunked_array([c for s in shas for c in s.chunks], pa.string()))
        bounds = csr_offsets(np.array([len(c) for c in shas], dtype=np.int64))

        def tables() -> Iterator[pa.Table]:
            for k, path in enumerate(paths):
                keep = keep_all[bounds[k]:bounds[k + 1]]
                if keep.any():
                    table = pq.read_table(path, memory_map=True)
                    yield table if keep.all() else table.filter(pa.array(keep))

        return self.write_shards(tables(), max_rows=max_rows)

    def _finish(self, writer: pq.ParquetWriter, tmp: Path, final: Path) -> Path:
        writer.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)
        return final

    def remove(self, paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError:
                pass  # left for the orphan sweep

    def drop(self, model_hash: str) -> int:
        """Delete every shard file of `model_hash` found by name (for a VectorStore without an index; with one, the
        index's owner deletes its rows first, then the files, with `remove`). Returns how many."""
        if not self.root.is_dir():
            return 0
        prefix = f"{_name_part(model_hash)}-"
        files = [p for p in self.root.iterdir() if p.name.startswith(prefix) and p.name.endswith(SHARD_SUFFIX)]
        self.remove(files)
        return len(files)

    def orphans(self, registered: set[Path], min_age_s: float) -> list[Path]:
        """Files directly in the folder that no registered shard names (shards and temporary files whose write was
        interrupted), last modified at least `min_age_s` ago. Subfolders are other writers' staging areas."""
        if not self.root.is_dir():
            return []
        registered = {Path(p).resolve() for p in registered}
        cutoff = time.time() - min_age_s
        out = []
        for path in self.root.iterdir():
            if not path.is_file() or not (path.name.endswith(SHARD_SUFFIX) or path.name.startswith(TMP_PREFIX)):
                continue
            if path.resolve() in registered:
                continue
            try:
                if path.stat().st_mtime <= cutoff:
                    out.append(path)
            except FileNotFoundError:
                continue
        return sorted(out)

    # -- reading

    def shards(self, model_hash: str, imgsz: int, variant: str = "") -> list[Path]:
        if self.index is not None:
            return list(self.index(model_hash, imgsz, variant))
        if not self.root.is_dir():
            return []
        prefix = shard_prefix(model_hash, imgsz, variant)
        found = [p for p in self.root.iterdir()
                 if p.name.startswith(prefix) and _SHARD_TAIL.fullmatch(p.name[len(prefix):])]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))

    @_retry_vanished
    def scored_shas(self, model_hash: str, imgsz: int, variant: str = "", *, errors: bool = True) -> set[str]:
        """The images that have a row for the key: scored, and (errors=True) those whose row records why they
        could not be scored (a finished attempt). Reads only the sha256 and error columns."""
        out: set[str] = set()
        for path in self.shards(model_hash, imgsz, variant):
            table = pq.read_table(path, columns=["sha256", "error"], memory_map=True)
            col = table.column("sha256")
            if not errors and table.column("error").null_count != table.num_rows:
                col = col.filter(pc.is_null(table.column("error")))
            out.update(col.to_pylist())
        return out

    @_retry_vanished
    def detections(self, shas: Iterable[str], model_hash: str, imgsz: int,
                   variant: str = "", features: bool = True) -> dict[str, ImageDetections | str]:
        """The rows of `shas` for the key: ImageDetections, or the reason for an image that could not be scored.
        Images without a row are absent. Reads the sha256 column of each shard and then only the row groups that
        hold a wanted image, one at a time. features=False leaves the box features out (each ImageDetections gets
        an (n, 0) array): they are most of a row group, and pre-annotations need only the boxes and scores (a
        re-selected batch of 1,000 from a million images is spread over some 250 row groups: 4.5 GB of features)."""
        wanted = pa.array(sorted(set(shas)), pa.string())
        out: dict[str, ImageDetections | str] = {}
        if len(wanted) == 0:
            return out
        columns = None if features else [f.name for f in DETECTIONS_SCHEMA if f.name != "box_features"]
        for path in self.shards(model_hash, imgsz, variant):
            pf = pq.ParquetFile(path, memory_map=True)
            hit = pc.is_in(pf.read(columns=["sha256"]).column("sha256"), value_set=wanted)
            rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
            if not len(rows):
                continue
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            starts = csr_offsets(np.asarray(sizes, dtype=np.int64))
            group_of = np.searchsorted(starts, rows, side="right") - 1
            for g in np.unique(group_of):
                table = pf.read_row_group(int(g), columns=columns)
                table = table.take(pa.array(rows[group_of == g] - starts[g]))
                out.update(table_detections(table))  # a later shard overwrites: the last registered wins
        return out

    @_retry_vanished
    def scored_pool(self, model_hash: str, imgsz: int, variant: str, shas: Sequence[str],
                    image_ids: np.ndarray | None = None, n_classes: int | None = None,
                    batch_rows: int = READ_BATCH_ROWS, embedding_dtype: type = np.float32) -> ScoredPool:
        """The scored rows of the images `shas` (ids `image_ids`, default 0..N-1) packed for the core, in the order
        of `shas`; images without a scored row (never scored, or an error row) are left out.

        Two passes over the key's shards, memory-mapped: the sha256 and error columns say which rows are wanted
        (the last registered copy of an image wins); then the other `POOL_COLUMNS` are read a batch of row groups
        at a time (about `batch_rows` rows) and the wanted rows are gathered straight from the decoded Arrow
        buffers into the result arrays with NumPy index arrays (per box, not per value; no loop over rows). So the
        memory a read needs beyond its result is one batch's columns, whatever the pool's size.

        Raises ValueError when the rows disagree on the number of classes or differ from `n_classes` when given,
        or when their embeddings differ in length. `hashes` of the result is None (the store fills it).
        `embedding_dtype` np.float16 keeps the embeddings as stored, half the memory of float32 (0.9 GB instead
        of 1.8 GB for 1,000,000 x 448: what a selection from a million reads)."""
        ids = np.arange(len(shas), dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
        if len(ids) != len(shas):
            raise ValueError(f"{len(shas)} hashes but {len(ids)} image ids")
        wanted = shas if isinstance(shas, (pa.Array, pa.ChunkedArray)) else pa.array(list(shas), pa.string())
        # Pass 1: which rows of which shard, in the order of `shas`.
        paths = self.shards(model_hash, imgsz, variant)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        for path in paths:
            keys = pq.read_table(path, columns=["sha256", "error"], memory_map=True)
            pos = pc.index_in(keys.column("sha256"), value_set=wanted)
            keep = pc.fill_null(pc.and_(pc.is_valid(pos), pc.is_null(keys.column("error"))), False)
            rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
            found.append((rows, pc.fill_null(pos, -1).to_numpy(zero_copy_only=False)[rows].astype(np.int64)))
        shard = np.concatenate([np.full(len(r), k, np.int64) for k, (r, _) in enumerate(found)] or [[]]).astype(
            np.int64)
        row = np.concatenate([r for r, _ in found] or [[]]).astype(np.int64)
        pos = np.concatenate([p for _, p in found] or [[]]).astype(np.int64)
        order = np.lexsort((np.arange(len(pos)), pos))
        last = np.ones(len(order), dtype=bool)
        last[:-1] = pos[order][1:] != pos[order][:-1]
        order = order[last]
        shard, row, pos = shard[order], row[order], pos[order]
        n = len(pos)

        # Pass 2: the wanted rows' columns, a batch of row groups at a time, into the result.
        widths, heights = np.zeros(n, np.float32), np.zeros(n, np.float32)
        max_candidate = np.zeros(n, np.float32)
        ncs = np.zeros(n, np.int64)
        embeddings: np.ndarray | None = None
        box_pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        columns = [c for c in POOL_COLUMNS if c not in ("sha256", "error")]
        for k, path in enumerate(paths):
            mine = np.flatnonzero(shard == k)
            if not len(mine):
                continue
            with pq.ParquetFile(path, memory_map=True) as pf:
                sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
                starts = csr_offsets(np.asarray(sizes, dtype=np.int64))
                group_of = np.searchsorted(starts, row[mine], side="right") - 1
                groups = np.unique(group_of)
                batch: list[int] = []
                for g_index, g in enumerate(groups):
                    batch.append(int(g))
                    if g_index + 1 < len(groups) and sum(sizes[x] for x in batch) + sizes[groups[g_index + 1]] \
                            <= max(batch_rows, sizes[groups[g_index + 1]]):
                        continue
                    at = mine[np.isin(group_of, batch)]  # result rows this batch fills
                    table = pf.read_row_groups(batch, columns=columns)
                    read_starts = csr_offsets(np.asarray([sizes[x] for x in batch], dtype=np.int64))
                    which = np.searchsorted(np.asarray(batch), group_of[np.isin(group_of, batch)])
                    local = row[at] - starts[np.asarray(batch)[which]] + read_starts[which]
                    for name, out in (("width", widths), ("height", heights), ("n_classes", ncs),
                                      ("max_candidate_score", max_candidate)):
                        fill = np.nan if name == "max_candidate_score" else 0
                        out[at] = pc.fill_null(table.column(name), fill).to_numpy(zero_copy_only=False)[local]
                    emb, _ = _gather_lists([table], "embedding", np.zeros(len(at), np.int64), local, None,
                                           embedding_dtype)
                    if embeddings is None:
                        embeddings = np.empty((n, emb.shape[1]), embedding_dtype)
                    elif emb.shape[1] != embeddings.shape[1]:
                        raise ValueError(f"cached embeddings have lengths {sorted({emb.shape[1], embeddings.shape[1]})}"
                                         "; one model gives one")
                    embeddings[at] = emb
                    boxes, counts = _gather_lists([table], "boxes", np.zeros(len(at), np.int64), local, 4, np.float32)
                    nc_here = np.unique(ncs[at])
                    scores = None
                    if len(nc_here) == 1 and nc_here[0] > 0:
                        scores, score_counts = _gather_lists([table], "class_scores", np.zeros(len(at), np.int64),
                                                             local, int(nc_here[0]), np.float32)
                        if not np.array_equal(score_counts, counts):
                            raise ValueError("cached detections have class scores for other boxes than their boxes")
                    box_pieces.append((at, counts, boxes, scores))
                    del table
                    batch = []
        found_ncs = np.unique(ncs)
        if n_classes is None and len(found_ncs):
            n_classes = int(found_ncs[0]) if len(found_ncs) == 1 else -1
        if any(int(nc) != n_classes for nc in found_ncs):
            raise ValueError(f"cached detections have {sorted(int(x) for x in found_ncs)} classes, expected "
                             f"{n_classes}")
        nc = n_classes or 0
        counts = np.zeros(n, dtype=np.int64)
        for at, piece_counts, _, _ in box_pieces:
            counts[at] = piece_counts
        offsets = csr_offsets(counts)
        boxes = np.empty((int(offsets[-1]), 4), np.float32)
        class_scores = np.empty((int(offsets[-1]), nc), np.float32) if nc else np.zeros((0, 0), np.float32)
        for at, piece_counts, piece_boxes, piece_scores in box_pieces:
            total = int(piece_counts.sum())
            if not total:
                continue
            within = np.arange(total) - np.repeat(csr_offsets(piece_counts)[:-1], piece_counts)
            dest = np.repeat(offsets[at], piece_counts) + within
            boxes[dest] = piece_boxes
            if nc:
                class_scores[dest] = piece_scores
        del box_pieces
        release_memory()  # the decoded batches and gathered pieces: back to the system
        if len(boxes):
            boxes /= np.repeat(np.stack([widths, heights, widths, heights], axis=1), counts, axis=0)
        return ScoredPool(
            image_ids=ids[pos],
            embeddings=embeddings if n and embeddings is not None else np.zeros((0, 0), embedding_dtype),
            box_offsets=offsets,
            class_scores=class_scores,
            boxes=boxes if len(boxes) else np.zeros((0, 4), np.float32),
            max_candidate_score=max_candidate,
            hashes=None,
        )


def _gather_lists(tables: list[pa.Table], name: str, shard: np.ndarray, row: np.ndarray, unit: int | None,
                  dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """The list column `name` of the picked rows (row[i] of tables[shard[i]]), in pick order, as one (units, unit)
    array of `dtype` and the number of units per pick. A list holds whole units (`unit` values each: 4 for a box,
    n_classes for a score vector); unit=None: exactly one unit per row, its length the list's (the embedding).

    Gathers with one index array per Arrow chunk, sized by the units picked (boxes), from the chunk's value buffer
    (zero-copy), into the result in its final dtype: nothing of the column is copied on the way."""
    n = len(row)
    per_chunk = []  # (pick indices, unit starts in the chunk's units, unit counts, the chunk's units as 2-D)
    width = unit
    for k, table in enumerate(tables):
        at_k = np.flatnonzero(shard == k)
        if not len(at_k):
            continue
        column = table.column(name)
        bounds = csr_offsets(np.array([len(c) for c in column.chunks], dtype=np.int64))
        which = np.searchsorted(bounds, row[at_k], side="right") - 1
        for c, chunk in enumerate(column.chunks):
            at = at_k[which == c]
            if not len(at):
                continue
            local = row[at] - bounds[c]
            offsets = chunk.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
            values = chunk.values.to_numpy(zero_copy_only=False)
            lengths = offsets[local + 1] - offsets[local]
            if unit is None:
                d = int(lengths[0]) if len(lengths) else 0
                if width is None:
                    width = d
                if (lengths != width).any():
                    raise ValueError(f"cached {name}s have lengths {sorted(set(lengths.tolist()) | {width})}; "
                                     "one model gives one")
                step = max(width, 1)
            else:
                step = unit
                if (lengths % unit).any():
                    raise ValueError(f"a cached {name} list is not a whole number of {unit}-value units")
            if (offsets[local] % step).any() or len(values) % step:
                # units not aligned in this chunk's buffer (lists of other lengths before them): copy it aligned
                flat = pc.list_flatten(chunk.take(pa.array(local))).to_numpy(zero_copy_only=False)
                values, starts = flat, csr_offsets(lengths)[:-1]
            else:
                starts = offsets[local]
            per_chunk.append((at, starts // step, lengths // step, values.reshape(-1, step) if step else values))
    width = width or 0
    counts = np.zeros(n, dtype=np.int64)
    for at, _, units, _ in per_chunk:
        counts[at] = units
    if unit is None:
        out = np.empty((n, width), dtype=dtype)
        for at, starts, _, units2d in per_chunk:
            if width:
                out[at] = units2d[starts]
        return out, counts
    dest_offsets = csr_offsets(counts)
    out = np.empty((int(dest_offsets[-1]), unit), dtype=dtype)
    for at, starts, units, units2d in per_chunk:
        total = int(units.sum())
        if not total:
            continue
        within = np.arange(total) - np.repeat(csr_offsets(units)[:-1], units)
        out[np.repeat(dest_offsets[at], units) + within] = units2d[np.repeat(starts, units) + within]
    return out, counts


def _last_occurrence(shas: pa.ChunkedArray) -> np.ndarray:
    """(N,) bool: True where a value is the last occurrence of itself in `shas`."""
    n = len(shas)
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes = pc.index_in(shas, value_set=pc.unique(shas)).to_numpy(zero_copy_only=False).astype(np.int64)
    _, first_from_end = np.unique(codes[::-1], return_index=True)
    keep = np.zeros(n, dtype=bool)
    keep[n - 1 - first_from_end] = True
    return keep


def _writer_options() -> dict:
    """Snappy for what selection reads (decodes fastest), zstd for the hashes and the box features (the bulk of a
    shard, read only for a few images); dictionaries only for the repeated strings."""
    def leaf(field: pa.Field) -> str:
        return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name

    compression = {leaf(f): "zstd" if f.name in ("sha256", "box_features") else "snappy" for f in DETECTIONS_SCHEMA}
    return {"compression": compression, "use_dictionary": ["model_hash", "variant", "error"],
            "use_compliant_nested_type": True, "write_statistics": True}
