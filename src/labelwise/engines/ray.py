"""The Ray engine: a scoring pass as a Ray Data pipeline, on a Ray cluster or a Ray started on this machine.

    from_items   the pass's unscored images (content hash and path), cut into chunks of `batch` images in the order
                 the local engine would take them; one row per chunk
    map_batches  decode: Ray tasks read each image's bytes (a local path, or a URL that pyarrow's filesystems or
                 fsspec read: s3://bucket/key.jpg, gs://..., hdfs://...), check its content hash and decode it
    map_batches  score: a pool of actors (a callable class), each holding the fused one-pass scorer once (weights
                 loaded in `__init__`), one forward pass per chunk; `num_gpus=1` each where the cluster has GPUs,
                 CPU actors elsewhere; `score.ray.concurrency` actors
    write_parquet  the rows (`labelwise.vectors.DETECTIONS_SCHEMA`) as Parquet shards into a folder of the run's own
                 under `<workspace>/vectors/ray/`, which the store then registers (`Store.register_shards`)

Same answer: every chunk holds the images the local engine would put in one forward pass (`batch` consecutive
unscored images), and the actor runs the same scorer on them, so the two engines give the same scores.

Resume: a shard file is finished once its Parquet footer is written; a run that was killed or failed leaves finished
files (kept, registered when the next run starts) and at most a few unfinished ones (deleted). The images in the
finished ones are not scored again.

Never a failed job for one image: an image that cannot be read, whose bytes no longer match its hash, that OpenCV
cannot decode, or that makes the scorer raise becomes a row with its `error` set (a quarantined row) and is
quarantined in the store.

Settings (`score.ray` in labelwise.yaml): address, concurrency, batch_size, num_gpus, num_cpus, and `paths`, where
the cluster reads the pool's folders (`{/data/fleet: "s3://my-bucket/fleet"}`: each image is read from the URL and
its bytes checked against the hash the workspace recorded); `threads` (or `--threads`) sets each CPU actor's torch
threads, else its num_cpus.

Where the shards are written: on a cluster that is this machine alone, by Ray Data's `write_parquet` in the workers;
on a cluster of several machines the workspace is on this machine's disk only, so the rows stream back here
(`iter_batches`, small next to the images: about 5-10 KB an image) and this process writes the same shards.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from labelwise.engines import RAY_INSTALL, EngineError, ScoreImage, ScoreReport, ScoreRequest

if TYPE_CHECKING:
    import pyarrow as pa

    from labelwise.workflow.context import WorkspaceContext

#: Where the Ray engine's runs write, under the workspace's vectors folder: one subfolder per run.
RAY_DIR = "ray"
#: Rows (images) gathered into one Parquet file at least: fewer, larger shards than one per chunk. A kill loses the
#: rows not yet written (at most about this many per write in flight).
SHARD_ROWS = 1024


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the `data` extra)
    except ImportError as exc:
        raise EngineError(f"the Ray engine needs Ray Data, which is not installed ({exc}): {RAY_INSTALL}") from None
    return ray


# -- reading images on any filesystem ---------------------------------------------------------------------------------

_FILESYSTEMS: dict[str, Any] = {}


def read_bytes(path: str) -> bytes:
    """The bytes of `path`: a local path, or a URL of any filesystem pyarrow reads (s3://bucket/key, gs://, hdfs://,
    file://; credentials as pyarrow finds them, e.g. AWS_* variables or the instance role), else fsspec (any
    protocol it has installed)."""
    if "://" not in path:
        with open(path, "rb") as fh:
            return fh.read()
    parsed = urlparse(path)
    root = f"{parsed.scheme}://{parsed.netloc}"
    fs = _FILESYSTEMS.get(root)
    if fs is None:
        import pyarrow as pa
        import pyarrow.fs as pafs

        try:
            fs, _ = pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            fs = "fsspec"  # a scheme pyarrow does not know
        _FILESYSTEMS[root] = fs
    if fs == "fsspec":
        import fsspec

        with fsspec.open(path, "rb") as fh:
            return fh.read()
    # pyarrow's path inside the filesystem: bucket/key for object stores, the path alone for the others
    inner = parsed.netloc + parsed.path if parsed.scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az") \
        else parsed.path
    with fs.open_input_file(inner) as fh:
        return fh.read()


def remote_path(path: str, paths: dict[str, str]) -> str:
    """Where the cluster reads `path`: the longest folder of `paths` (score.ray.paths) that holds it replaced by what
    it maps to (`/data/fleet/a.jpg` with {"/data/fleet": "s3://bucket/fleet"} -> s3://bucket/fleet/a.jpg); else
    `path` itself."""
    best = None
    for local in paths:
        folder = local.rstrip("/") or "/"
        if path == folder or path.startswith(folder.rstrip("/") + "/"):
            if best is None or len(folder) > len(best[0]):
                best = (folder, paths[local])
    if best is None:
        return path
    rest = path[len(best[0]):].lstrip("/")
    return best[1].rstrip("/") + "/" + rest if rest else best[1]


# -- the pipeline's stages (module level: Ray workers import them by name) --------------------------------------------

def _chunk_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("chunk", pa.int64()),
        pa.field("sha256", pa.list_(pa.string())),
        pa.field("path", pa.list_(pa.string())),
        pa.field("error", pa.list_(pa.string())),  # per image: why it could not be read or decoded, else null
        pa.field("shape", pa.list_(pa.int32())),  # per image: h, w, 3 (0, 0, 0 for an error)
        pa.field("pixels", pa.large_binary()),  # the decoded images, BGR uint8, one after the other
    ])


def decode_chunks(batch: "pa.Table") -> "pa.Table":
    """Ray task: read and decode every image of each chunk row. An image that cannot be read, whose bytes no longer
    hash to its sha256, or that OpenCV cannot decode gets its reason in `error` (the chunk goes on)."""
    import pyarrow as pa

    from labelwise.detectors.ultralytics import UNDECODABLE, decode_image

    out: dict[str, list[Any]] = {name: [] for name in _chunk_schema().names}
    for row in batch.to_pylist():
        errors, shapes, pixels = [], [], []
        for sha, path in zip(row["sha256"], row["path"]):
            image, error = None, None
            try:
                data = read_bytes(path)
            except Exception as exc:  # any filesystem's error: the image is quarantined, the run goes on
                error = f"{path}: cannot be read ({exc.__class__.__name__}: {exc})"
            else:
                if hashlib.sha256(data).hexdigest() != sha:
                    error = (f"{path}: its content changed since it was added (sha256 differs); add the file again "
                             "or restore it")
                else:
                    image = decode_image(data)
                    if image is None:
                        error = f"{path}: {UNDECODABLE}"
            errors.append(error)
            if image is None:
                shapes.extend((0, 0, 0))
            else:
                image = np.ascontiguousarray(image)
                shapes.extend(image.shape)
                pixels.append(image.tobytes())
        out["chunk"].append(row["chunk"])
        out["sha256"].append(row["sha256"])
        out["path"].append(row["path"])
        out["error"].append(errors)
        out["shape"].append(shapes)
        out["pixels"].append(b"".join(pixels))
    return pa.Table.from_pydict(out, schema=_chunk_schema())


class ChunkScorer:
    """Ray actor: holds the fused one-pass scorer (the weights are loaded once, here) and scores one chunk per
    call into `DETECTIONS_SCHEMA` rows."""

    def __init__(self, weights: Any, weights_name: str, model_hash: str, imgsz: int, variant: str, flip: bool,
                 conf: float, iou: float, max_det: int, device: str, threads: int | None,
                 crash: dict[str, Any] | None = None):
        from labelwise.detectors.ultralytics import UltralyticsDetector

        ray = _import_ray()
        self.folder = Path(tempfile.mkdtemp(prefix="labelwise-ray-"))
        data = ray.get(weights[0])  # the checkpoint's bytes, from the object store: no shared disk needed
        self.weights = self.folder / weights_name
        self.weights.write_bytes(data)
        self.detector = UltralyticsDetector(self.folder / ".ultralytics", threads=threads)
        self.args = dict(imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device=device, flip=flip)
        self.key = (model_hash, imgsz, variant)
        self.crash = crash or {}
        # load the weights and build the fused network now, not in the first call
        list(self.detector.score(self.weights, [], batch=1, **self.args))

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        from labelwise.detectors.base import ScoreFailure
        from labelwise.vectors import DETECTIONS_SCHEMA, detections_table

        self._maybe_crash()
        tables = []
        for row in range(batch.num_rows):
            shas = batch.column("sha256")[row].as_py()
            errors = batch.column("error")[row].as_py()
            shape = np.asarray(batch.column("shape")[row].as_py(), dtype=np.int64).reshape(-1, 3)
            pixels = memoryview(batch.column("pixels")[row].as_buffer())
            results: dict[str, Any] = {}
            items = []
            offset = 0
            for sha, error, (h, w, c) in zip(shas, errors, shape):
                if error is not None:
                    results[sha] = error
                    continue
                size = int(h * w * c)
                items.append((sha, np.frombuffer(pixels[offset:offset + size], dtype=np.uint8).reshape(h, w, c)))
                offset += size
            for sha, result in self._score(items):
                results[sha] = result.reason if isinstance(result, ScoreFailure) else result
            rows = [(sha, results[sha]) for sha in shas]
            tables.append(detections_table(rows, *self.key))
        return pa.concat_tables(tables) if tables else DETECTIONS_SCHEMA.empty_table()

    def _score(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[str, Any]]:
        """The chunk in one forward pass; when that raises, image by image, each that still raises becoming an
        error row (one bad image never fails the job)."""
        if not items:
            return []
        try:
            return list(self.detector.score(self.weights, items, batch=len(items), **self.args))
        except Exception:
            if len(items) == 1:
                raise
        out = []
        for item in items:
            try:
                out.extend(self.detector.score(self.weights, [item], batch=1, **self.args))
            except Exception as exc:
                out.append((item[0], f"the scorer failed on this image ({exc.__class__.__name__}: {exc})"))
        return out

    def _maybe_crash(self) -> None:
        """Fault injection for the resume tests (LABELWISE_CRASH_AT in the driver's environment), from the second
        chunk on, once a shard of the run is finished: `ray_mid_score` kills the driver with SIGKILL, as `kill -9`
        would; `ray_fail` raises here, a failed job."""
        what = self.crash.get("at")
        if what not in ("ray_mid_score", "ray_fail"):
            return
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls < 2:
            return
        deadline = time.monotonic() + 120
        while not any(_finished_shard(p) for p in Path(self.crash["folder"]).glob("*.parquet")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        if what == "ray_mid_score":
            os.kill(int(self.crash["driver_pid"]), signal.SIGKILL)
            time.sleep(60)  # the driver is gone; Ray ends this actor with it
        raise RuntimeError("injected failure (LABELWISE_CRASH_AT=ray_fail)")


def _why(exc: BaseException) -> str:
    """The user-level cause of a failed Ray job, in one line (Ray wraps it in RayTaskError and friends)."""
    cause = exc
    for _ in range(5):
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    text = str(cause).strip().splitlines()
    return f"{cause.__class__.__name__}: {text[0] if text else ''}".strip()


def _finished_shard(path: Path) -> bool:
    """Whether `path` is a complete detections shard (its footer written: a file cut short by a kill is not)."""
    from labelwise.vectors import shard_info

    try:
        shard_info(path)
    except Exception:  # pyarrow's ArrowInvalid, OSError, ValueError: unfinished or not ours
        return False
    return True


# -- the engine -------------------------------------------------------------------------------------------------------

class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, *, decode_in_actor: bool = False,
                 write_on_driver: bool | None = None):
        """`address`: the cluster (over score.ray.address). `decode_in_actor`: let Ray Data fuse the decoding into
        the scoring actors where it can (CPU actors; saves moving decoded pixels through the object store, but each
        actor then decodes and scores in turn); by default decoding runs in tasks of its own. `write_on_driver`:
        None decides by the cluster (`_workers_write`); True or False forces it (tests, benchmarks)."""
        self.ray = _import_ray()
        self.address = address
        self.decode_in_actor = decode_in_actor
        self.write_on_driver = write_on_driver
        self.started = False  # this engine started (or joined) the Ray it uses: `close` ends it

    def score(self, ctx: "WorkspaceContext", request: ScoreRequest, progress: bool = True) -> ScoreReport:
        from labelwise.vectors import VECTORS_DIR, shard_prefix

        started = time.perf_counter()
        report = ScoreReport(engine=self.name)
        key = (request.model_hash, request.imgsz, request.variant)
        runs = ctx.root / VECTORS_DIR / RAY_DIR
        prefix = shard_prefix(*key)
        recovered = self._recover(ctx, runs, prefix, request.round)
        by_sha = {img.sha256: img for img in request.images}
        report.quarantined.extend(self._quarantine(ctx, recovered, by_sha))
        done = ctx.store.scored_shas(*key)
        todo = [img for img in request.images if img.sha256 not in done]
        report.skipped = len(request.images) - len(todo)
        if not todo:
            report.seconds = time.perf_counter() - started
            return report
        folder = runs / f"{prefix}{uuid.uuid4().hex}"
        written, failure = self._run(ctx, request, todo, folder, progress)
        if written:
            ctx.store.register_shards(written, round_no=request.round, engine=self.name)
            report.shards.extend(str(p) for p in written)
        quarantined = self._quarantine(ctx, written, by_sha)
        report.quarantined.extend(quarantined)
        now_done = ctx.store.scored_shas(*key)
        report.scored = sum(1 for img in todo if img.sha256 in now_done) - len(quarantined)
        report.seconds = time.perf_counter() - started
        if failure is not None:
            kept = report.scored + len(quarantined)
            raise EngineError(f"Ray scoring stopped: {failure}. The {kept} images in finished shards are kept; run the "
                              f"same command again to score the other {len(todo) - kept}")
        return report

    # -- the pipeline

    def _run(self, ctx: "WorkspaceContext", request: ScoreRequest, todo: list[ScoreImage], folder: Path,
             progress: bool) -> tuple[list[Path], str | None]:
        """Run the pipeline writing into `folder`; (finished shard files, None) or, when it failed, (the files that
        were finished, why)."""
        ray = self.ray
        settings = ctx.config.score.ray
        self._connect(settings)
        try:
            from ray.data import DataContext

            data_context = DataContext.get_current()
            data_context.enable_progress_bars = progress
            data_context.print_on_execution_start = False
            data_context.raise_original_map_exception = True  # a failure says what failed, not "UDF failed"
            resources = ray.cluster_resources()
            gpus = settings.num_gpus if settings.num_gpus is not None else (1.0 if resources.get("GPU", 0) else 0.0)
            cpus = float(settings.num_cpus)
            if settings.concurrency is not None:
                actors = settings.concurrency
            elif gpus:
                actors = max(1, int(resources.get("GPU", 0) // gpus))
            else:  # one CPU left for the decoding tasks
                actors = max(1, int((resources.get("CPU", 1) - 1) // cpus))
            threads = ctx.threads_setting or max(1, math.ceil(cpus))
            size = settings.batch_size or request.batch
            chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
            items = [{"chunk": i, "sha256": [img.sha256 for img in chunk],
                      "path": [remote_path(img.path, settings.paths) for img in chunk]}
                     for i, chunk in enumerate(chunks)]
            weights = ray.put(Path(request.weights).read_bytes())
            crash = {"at": os.environ.get("LABELWISE_CRASH_AT"), "folder": str(folder), "driver_pid": os.getpid()}
            from labelwise.vectors import DETECTIONS_SCHEMA

            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * actors * 8)))
            # Different scheduling strategies keep Ray Data from fusing the decoding into the actors (it fuses a
            # task stage into an actor stage whose resources match), so decoding overlaps the forward passes.
            apart = {} if self.decode_in_actor else {"scheduling_strategy": "SPREAD"}
            ds = ds.map_batches(decode_chunks, batch_size=1, batch_format="pyarrow", num_cpus=1, **apart)
            ds = ds.map_batches(
                ChunkScorer, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus, num_gpus=gpus, **({} if self.decode_in_actor else {"scheduling_strategy": "DEFAULT"}),
                fn_constructor_kwargs=dict(
                    weights=[weights], weights_name=Path(request.weights).name, model_hash=request.model_hash,
                    imgsz=request.imgsz, variant=request.variant, flip=request.flip, conf=request.conf,
                    iou=request.iou, max_det=request.max_det, device="cuda:0" if gpus else "cpu",
                    threads=None if gpus else threads, crash=crash))
            failure = None
            try:
                if self._workers_write():
                    ds.write_parquet(str(folder), min_rows_per_file=SHARD_ROWS, schema=DETECTIONS_SCHEMA)
                else:
                    self._write_on_driver(ds, folder)
            except Exception as exc:  # a lost node, an actor that died...: keep what is finished
                failure = _why(exc)
            if failure is not None:
                # The failed run's actors live until its executor is collected, and the exception's traceback
                # holds it in a reference cycle: collect it now, or the actors keep their CPUs and GPUs and the
                # next run in this process waits for them.
                del ds
                gc.collect()
        except BaseException:
            self.close()
            raise
        return self._finished(folder), failure

    def _workers_write(self) -> bool:
        """Whether Ray Data's writers can write the run's folder: the cluster is this machine alone (the workspace's
        folder is theirs too). On a cluster of several machines the workspace is on the driver's disk only, so the
        rows stream back to the driver, which writes the same shards (`write_on_driver`)."""
        if self.write_on_driver is not None:
            return not self.write_on_driver
        from ray.util import get_node_ip_address

        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == get_node_ip_address()

    @staticmethod
    def _write_on_driver(ds: Any, folder: Path) -> None:
        """The scored rows, streamed to this process as the actors return them, written as shards of SHARD_ROWS rows
        into `folder` (atomically: a hidden file renamed into place; `labelwise.vectors.VectorStore`)."""
        import pyarrow as pa

        from labelwise.vectors import VectorStore

        store = VectorStore(folder)
        pending: list[pa.Table] = []
        rows = 0
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not table.num_rows:
                continue
            pending.append(table)
            rows += table.num_rows
            if rows >= SHARD_ROWS:
                store.write_shards(pending, max_rows=rows)
                pending, rows = [], 0
        if pending:
            store.write_shards(pending, max_rows=rows)

    def close(self) -> None:
        """Leave the cluster this engine joined, or stop the Ray it started (a Ray that was running in this process
        before is left as it is). The passes of a round share one connection."""
        if self.started:
            self.started = False
            self.ray.shutdown()

    def _connect(self, settings: Any) -> None:
        """Join the cluster (`--address`, else score.ray.address) or start a Ray on this machine, once (`close`
        ends it). A Ray already initialised in this process (a notebook's, a test's) is used as it is."""
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.address or settings.address
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                      configure_logging=True)
        try:
            if address in (None, "local"):
                ray.init(**kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, a timeout, a version mismatch
            raise EngineError(f"cannot reach the Ray cluster at {address or 'this machine'}: {exc}") from None
        self.started = True

    # -- shards

    def _finished(self, folder: Path) -> list[Path]:
        """The finished shard files in a run's folder (by name); the unfinished ones are deleted."""
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.iterdir()):
            if path.suffix == ".parquet" and _finished_shard(path):
                out.append(path)
            elif path.is_file():
                path.unlink(missing_ok=True)  # cut short by a kill, or a writer's temporary file
        if not out:
            shutil.rmtree(folder, ignore_errors=True)
        return out

    def _recover(self, ctx: "WorkspaceContext", runs: Path, prefix: str, round_no: int | None) -> list[Path]:
        """Register the finished shards an earlier run of this key left unregistered (it was killed, or failed
        before registering) and delete the unfinished files; returns the shards registered."""
        if not runs.is_dir():
            return []
        registered = {Path(s["path"]).resolve() for s in ctx.store.shards()}
        found = []
        for folder in sorted(runs.iterdir()):
            if folder.is_dir() and folder.name.startswith(prefix):
                found.extend(p for p in self._finished(folder) if p.resolve() not in registered)
        if found:
            ctx.store.register_shards(found, round_no=round_no, engine=self.name)
        return found

    def _quarantine(self, ctx: "WorkspaceContext", shards: list[Path],
                    by_sha: dict[str, ScoreImage]) -> list[tuple[str, str]]:
        """Quarantine in the store the images that have an error row in `shards`; (path, reason) of each."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        out = []
        for path in shards:
            table = pq.read_table(path, columns=["sha256", "error"])
            table = table.filter(pc.is_valid(table.column("error")))
            for sha, reason in zip(table.column("sha256").to_pylist(), table.column("error").to_pylist()):
                image = by_sha.get(sha)
                where = image.path if image is not None else sha
                ctx.store.quarantine(where, reason, sha256=sha)
                out.append((where, reason))
        return out
