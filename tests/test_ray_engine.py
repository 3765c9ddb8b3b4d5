"""The Ray engine on a local Ray (`ray.init(num_cpus=2)`, started and stopped here) and real photographs (the aquarium
dataset, read in place from $LABELWISE_AQUARIUM), with the pretrained checkpoint `make test` fetches (real boxes):

- same answer: the local and the Ray engine give the same scores on the same images, to 1e-5;
- resume: a run killed with SIGKILL, or one that fails, keeps its finished shards, and the next run scores only the
  images not in them;
- an image that cannot be read or decoded becomes a quarantined row, never a failed job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

ray = pytest.importorskip("ray", reason="the Ray engine's tests need `pip install 'labelwise[ray]'` (make test does)")

from labelwise.engines import ray as ray_engine  # noqa: E402
from labelwise.engines.local import LocalEngine  # noqa: E402
from labelwise.engines.ray import RayEngine  # noqa: E402
from labelwise.loop import Workspace  # noqa: E402
from labelwise.workflow import scoring  # noqa: E402

MODEL_HASH = "m0"
IMGSZ = 320


@pytest.fixture(scope="module")
def local_ray():
    """A Ray on this machine for the module: 2 CPUs, no dashboard; stopped at the end."""
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def workspace(folder: Path, photos: list[Path], checkpoint: Path, **settings) -> Workspace:
    """A workspace over `photos` (symlinked, so the dataset is read in place and can be broken here without touching
    it), 2 torch threads for both engines."""
    images = folder / "images"
    images.mkdir(parents=True)
    for p in photos:
        os.symlink(p, images / p.name)
    ws = Workspace.create(folder / "ws", images=[images], classes=["fish", "person"], model=str(checkpoint),
                          imgsz=IMGSZ, **settings)
    ws.ingest_sources(progress=False)
    return Workspace(folder / "ws", threads=2)


def score(ws: Workspace, checkpoint: Path, engine, **kwargs):
    return scoring.score_images_report(ws.ctx, checkpoint, MODEL_HASH, engine=engine, progress=False, **kwargs)


def pool_shas(ws: Workspace) -> list[str]:
    return [img.sha256 for img in ws.store.images(split="pool")]


def test_local_and_ray_engines_give_the_same_scores(tmp_path, aquarium, checkpoint, local_ray):
    """Local, then Ray with the shards written by Ray Data's workers and the images read through a file:// URL
    (score.ray.paths, as s3://... would be), then Ray with the rows streamed back and written here (as on a cluster
    of several machines)."""
    photos = sorted((aquarium / "train" / "images").iterdir())[::11][:40]  # of 4 sizes
    results = {}
    for name, engine in (("local", LocalEngine()), ("ray", RayEngine(write_on_driver=False)),
                         ("ray-driver-writes", RayEngine(write_on_driver=True))):
        ws = workspace(tmp_path / name, photos, checkpoint)
        if name == "ray":
            folder = Path(ws.store.images(split="pool")[0].path).parent
            ws.config.score.ray.paths = {str(folder): folder.as_uri()}
        plain = score(ws, checkpoint, engine)
        flipped = score(ws, checkpoint, engine, flip=True, states=("unlabeled",))
        assert plain.engine == flipped.engine == engine.name
        pool = len(pool_shas(ws))
        assert pool >= 35 and plain.scored == pool and plain.skipped == 0 and not plain.quarantined
        assert flipped.scored == pool
        again = score(ws, checkpoint, engine)  # cached: nothing to score
        assert (again.scored, again.skipped) == (0, pool)
        results[name] = {variant: ws.store.detections_many(pool_shas(ws), MODEL_HASH, IMGSZ, variant)
                         for variant in ("", "flip")}
    shapes = {img.shape for img in map(__import__("cv2").imread, map(str, photos))}
    assert len(shapes) > 1  # chunks of photos of different sizes (square letterbox) and of one size (rectangular)
    boxes = 0
    for variant, other in (("", "ray"), ("flip", "ray"), ("", "ray-driver-writes"), ("flip", "ray-driver-writes")):
        local, remote = results["local"][variant], results[other][variant]
        assert local.keys() == remote.keys() and len(local) >= 35
        for sha, a in local.items():
            b = remote[sha]
            assert (a.width, a.height) == (b.width, b.height)
            assert a.max_candidate_score == pytest.approx(b.max_candidate_score, abs=1e-5)
            for field in ("boxes", "class_scores", "embedding", "box_features"):
                x, y = getattr(a, field), getattr(b, field)
                assert x.shape == y.shape, (sha, field)
                np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64), rtol=1e-5, atol=1e-5,
                                           err_msg=f"{other} {sha} {variant or 'plain'} {field}")
            boxes += a.n_boxes
    assert boxes > 200  # a real model on real photos: there are boxes to compare
    assert all(r["engine"] == "ray" for r in Workspace(tmp_path / "ray" / "ws").store.shards())


def finished_rows(ws: Workspace) -> int:
    import pyarrow.parquet as pq

    runs = ws.root / "vectors" / ray_engine.RAY_DIR
    return sum(pq.ParquetFile(p).metadata.num_rows for p in runs.rglob("*.parquet") if ray_engine._finished_shard(p))


def registered_rows(ws: Workspace) -> int:
    return sum(s["rows"] for s in ws.store.shards(MODEL_HASH))


def test_a_run_killed_with_sigkill_resumes_without_scoring_finished_shards_again(tmp_path, aquarium, checkpoint,
                                                                                 local_ray, monkeypatch):
    photos = sorted((aquarium / "train" / "images").iterdir())[100:149]
    ws = workspace(tmp_path / "k", photos, checkpoint)
    total = len(pool_shas(ws))
    # `labelwise score` in another process, on this Ray: its actor kills it (SIGKILL) once a shard is finished
    script = textwrap.dedent(f"""
        from pathlib import Path
        import labelwise.engines.ray as R
        from labelwise.loop import Workspace
        from labelwise.workflow import scoring
        R.SHARD_ROWS = 8
        ws = Workspace(Path({str(ws.root)!r}), threads=2)
        scoring.score_images_report(ws.ctx, Path({str(checkpoint)!r}), {MODEL_HASH!r}, progress=False,
                                    engine=R.RayEngine(address={ray.get_runtime_context().gcs_address!r}))
        print("finished without being killed")
    """)
    env = {**os.environ, "LABELWISE_CRASH_AT": "ray_mid_score"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    done = finished_rows(ws)
    assert 0 < done < total
    assert registered_rows(ws) == 0  # the driver died before registering anything
    monkeypatch.setattr(ray_engine, "SHARD_ROWS", 8)
    resumed = score(ws, checkpoint, RayEngine())
    assert resumed.skipped == done and resumed.scored == total - done and not resumed.quarantined
    # every image scored exactly once: the finished shards were registered, not scored again
    assert registered_rows(ws) == total
    assert len(ws.store.detections_many(pool_shas(ws), MODEL_HASH, IMGSZ)) == total
    assert not [p for p in (ws.root / "vectors" / ray_engine.RAY_DIR).rglob("*") if p.is_file()
                and not ray_engine._finished_shard(p)]


def test_a_failed_run_keeps_its_finished_shards_and_the_next_one_scores_the_rest(tmp_path, aquarium, checkpoint,
                                                                                  local_ray, monkeypatch):
    photos = sorted((aquarium / "train" / "images").iterdir())[200:249]
    ws = workspace(tmp_path / "f", photos, checkpoint)
    total = len(pool_shas(ws))
    # `labelwise score` in another process, on this Ray, whose actor raises once a shard is finished: the job fails
    # (in its own process, as a failed command ends: its actors go with it)
    script = textwrap.dedent(f"""
        from pathlib import Path
        import labelwise.engines.ray as R
        from labelwise.engines import EngineError
        from labelwise.loop import Workspace
        from labelwise.workflow import scoring
        R.SHARD_ROWS = 8
        ws = Workspace(Path({str(ws.root)!r}), threads=2)
        try:
            scoring.score_images_report(ws.ctx, Path({str(checkpoint)!r}), {MODEL_HASH!r}, progress=False,
                                        engine=R.RayEngine(address={ray.get_runtime_context().gcs_address!r}))
        except EngineError as exc:
            print("ENGINE ERROR:", exc)
    """)
    env = {**os.environ, "LABELWISE_CRASH_AT": "ray_fail"}
    failed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 0, failed.stdout[-2000:] + failed.stderr[-3000:]
    message = failed.stdout
    assert "ENGINE ERROR: Ray scoring stopped: RuntimeError: injected failure" in message, message[-3000:]
    assert "run the same command again to score the other" in message
    kept = registered_rows(ws)
    assert 0 < kept < total  # registered at once, with the failure
    monkeypatch.setattr(ray_engine, "SHARD_ROWS", 8)
    resumed = score(ws, checkpoint, RayEngine())
    assert resumed.skipped == kept and resumed.scored == total - kept
    assert registered_rows(ws) == total


def test_an_unreadable_image_becomes_a_quarantined_row_not_a_failed_job(tmp_path, aquarium, checkpoint, local_ray):
    photos = sorted((aquarium / "valid" / "images").iterdir())[:12]
    ws = workspace(tmp_path / "u", photos, checkpoint)
    pool = len(pool_shas(ws))
    images = {Path(img.path).name: Path(img.path) for img in ws.store.images(split="pool")}
    names = sorted(images)
    broken, gone = images[names[2]], images[names[5]]
    broken.unlink()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a photo any more")  # replaces the symlink; the dataset is untouched
    gone.unlink()
    report = score(ws, checkpoint, RayEngine())
    assert report.scored == pool - 2 and report.skipped == 0
    reasons = dict(report.quarantined)
    assert set(reasons) == {str(broken), str(gone)}
    assert "its content changed since it was added" in reasons[str(broken)]
    assert "cannot be read (FileNotFoundError" in reasons[str(gone)]
    assert dict(ws.store.quarantined()) == reasons  # `labelwise status` lists them
    # the quarantined rows are in the shards, with the reason in the error column
    rows = ws.store.vectors.detections(pool_shas(ws), MODEL_HASH, IMGSZ)
    errors = {sha: r for sha, r in rows.items() if isinstance(r, str)}
    assert sorted(errors.values()) == sorted(reasons.values()) and len(rows) == pool
    # a rerun does not try them again
    again = score(ws, checkpoint, RayEngine())
    assert (again.scored, again.skipped, again.quarantined) == (0, pool, [])


def test_labelwise_score_engine_ray_scores_the_round_and_records_its_shards(tmp_path, aquarium, checkpoint,
                                                                             local_ray):
    from typer.testing import CliRunner

    from labelwise.cli import app

    photos = sorted((aquarium / "test" / "images").iterdir())[:10]
    ws = workspace(tmp_path / "cli", photos, checkpoint)
    pool = len(pool_shas(ws))
    ws.store.start_round(1, "score")  # as training leaves a round: its model, at step score
    ws.store.update_round(1, model_path=str(checkpoint), model_hash=MODEL_HASH)
    result = CliRunner().invoke(app, ["score", "-w", str(ws.root), "--engine", "ray", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert f"scored {pool} images with the ray engine" in result.output
    ws = Workspace(ws.root)
    assert ws.store.current_round().step == "select"
    shards = ws.store.shards(MODEL_HASH)
    assert shards and {s["round"] for s in shards} == {1} and {s["engine"] for s in shards} == {"ray"}
    assert sum(s["rows"] for s in shards) == pool
