"""Scoring engines (issue 10), the parts that need no model: the settings, the choice of engine and its errors, and
the Ray engine's reading and decoding stage (a plain function, run here without Ray). The engines on real photos
and a real Ray are in test_ray_engine.py."""

from __future__ import annotations

import builtins
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelwise.cli import app
from labelwise.config import ConfigError, config_from_dict
from labelwise.engines import ENGINES, RAY_INSTALL, EngineError, ScoreReport, engine
from labelwise.engines.local import LocalEngine

MINIMAL = {"classes": ["fish"], "images": ["/data/pool"]}


def refused(score: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "score": score}, "/ws/labelwise.yaml")
    assert len(info.value.problems) == 1, info.value.problems
    line = str(info.value)
    assert "\n" not in line
    return line


def test_the_engine_setting_defaults_to_local_and_takes_the_ray_section():
    cfg = config_from_dict(MINIMAL)
    assert cfg.score.engine == "local" and ENGINES == ("local", "ray")
    assert cfg.score.ray.address is None and cfg.score.ray.concurrency is None
    cfg = config_from_dict({**MINIMAL, "score": {"engine": "ray", "ray": {
        "address": "ray://head:10001", "concurrency": 4, "batch_size": 32, "num_gpus": 1, "num_cpus": 2}}})
    assert cfg.score.engine == "ray"
    assert (cfg.score.ray.address, cfg.score.ray.concurrency, cfg.score.ray.batch_size) == ("ray://head:10001", 4, 32)
    assert cfg.score.ray.num_gpus == 1 and cfg.score.ray.num_cpus == 2
    for address in ("auto", "local", "10.0.0.5:6379", "head-node:6379"):
        assert config_from_dict({**MINIMAL, "score": {"ray": {"address": address}}}).score.ray.address == address
    assert config_from_dict({**MINIMAL, "score": {"ray": None}}).score.ray.num_cpus == 1  # `ray:` left empty
    assert config_from_dict({**MINIMAL, "score": {"engine": "ray"}}).to_dict()["score"]["engine"] == "ray"


@pytest.mark.parametrize(("score", "said"), [
    ({"engine": "spark"}, "score.engine: 'spark' is not one of the choices; allowed: one of local, ray"),
    ({"ray": {"address": "http://head:8265"}}, "score.ray.address: 'http://head:8265' is not a Ray address"),
    ({"ray": {"concurrency": 0}}, "score.ray.concurrency: 0 is out of range; allowed: a whole number >= 1, or null"),
    ({"ray": {"batch_size": "32"}}, "score.ray.batch_size: '32' is text"),
    ({"ray": {"num_gpus": -1}}, "score.ray.num_gpus: -1 is out of range"),
    ({"ray": {"num_cpus": 0}}, "score.ray.num_cpus: 0 is out of range"),
    ({"ray": {"gpus": 1}}, "score.ray.gpus: unknown key, set to 1 (did you mean num_gpus?)"),
])
def test_bad_engine_settings_are_one_line_each(score, said):
    line = refused(score)
    assert line.startswith("/ws/labelwise.yaml: ") and said in line, line


def test_a_scoring_section_says_where_the_settings_live():
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "scoring": {"engine": "ray"}}, "/ws/labelwise.yaml")
    assert "scoring: the scoring settings are under `score:` (score.engine" in str(info.value)


def test_engines_by_name():
    assert isinstance(engine("local"), LocalEngine) and engine("local").name == "local"
    with pytest.raises(EngineError, match="unknown scoring engine 'spark': use one of local, ray"):
        engine("spark")


def test_without_ray_the_ray_engine_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EngineError) as info:
        engine("ray")
    assert RAY_INSTALL in str(info.value) and "pip install 'labelwise[ray]'" == RAY_INSTALL


def test_reports_add_up():
    a = ScoreReport("ray", scored=3, skipped=1, quarantined=[("a.jpg", "bad")], seconds=1.0, shards=["s1"])
    b = ScoreReport("ray", scored=2, skipped=4, quarantined=[("b.jpg", "worse")], seconds=2.0, shards=["s2"])
    total = a.merge(b)
    assert (total.scored, total.skipped, total.seconds, total.shards) == (5, 5, 3.0, ["s1", "s2"])
    assert total.quarantined == [("a.jpg", "bad"), ("b.jpg", "worse")] and total.needed_inference == 7


def test_the_cli_refuses_an_unknown_engine_and_an_address_without_ray(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["score", "-w", str(tmp_path), "--engine", "spark"])
    assert result.exit_code == 2 and "not an engine" in result.output
    # --address needs the Ray engine (checked before anything is scored; the folder is no workspace at all, so the
    # check must come before the workspace is read for it to say this)
    (tmp_path / "labelwise.yaml").write_text("classes: [fish]\nimages: [/data/pool]\n")
    result = runner.invoke(app, ["score", "-w", str(tmp_path), "--address", "auto"])
    assert result.exit_code == 2 and "--address is for the Ray engine" in result.output


# -- the Ray engine's reading and decoding, without Ray ---------------------------------------------------------------

def photo(path: Path, size=(64, 48), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_the_cluster_reads_the_pool_folders_where_score_ray_paths_maps_them():
    pytest.importorskip("pyarrow")
    from labelwise.engines.ray import remote_path

    paths = {"/data/fleet": "s3://my-bucket/fleet/", "/data": "/mnt/data", "/data/fleet/cam2": "gs://g/cam2"}
    assert remote_path("/data/fleet/day1/a.jpg", paths) == "s3://my-bucket/fleet/day1/a.jpg"
    assert remote_path("/data/fleet/cam2/b.jpg", paths) == "gs://g/cam2/b.jpg"  # the longest folder wins
    assert remote_path("/data/fleetwood/c.jpg", paths) == "/mnt/data/fleetwood/c.jpg"  # whole folder names only
    assert remote_path("/elsewhere/d.jpg", paths) == "/elsewhere/d.jpg"
    cfg = config_from_dict({**MINIMAL, "score": {"ray": {"paths": {"/data/fleet": "s3://my-bucket/fleet"}}}})
    assert cfg.score.ray.paths == {"/data/fleet": "s3://my-bucket/fleet"}
    assert "'data' is not an absolute path" in refused({"ray": {"paths": {"data": "s3://b"}}})
    assert "give a URL (s3://bucket/prefix) or an absolute path" in refused({"ray": {"paths": {"/data": "b/c"}}})


def test_images_are_read_from_a_path_or_any_filesystem_url(tmp_path):
    pytest.importorskip("pyarrow")
    from labelwise.engines.ray import read_bytes

    p = photo(tmp_path / "a.jpg")
    assert read_bytes(str(p)) == p.read_bytes()
    assert read_bytes(p.absolute().as_uri()) == p.read_bytes()  # file:///... through pyarrow's LocalFileSystem
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(OSError):
        read_bytes((tmp_path / "missing.jpg").absolute().as_uri())


def test_decoding_keeps_the_chunk_and_gives_every_bad_image_its_reason(tmp_path):
    pytest.importorskip("pyarrow")
    import cv2

    from labelwise.engines.ray import decode_chunks

    import pyarrow as pa

    good = photo(tmp_path / "good.jpg", (80, 60), seed=1)
    other = photo(tmp_path / "other.png", (32, 40), seed=2)
    changed = photo(tmp_path / "changed.jpg", seed=3)
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (good, other, changed)}
    changed.write_bytes(b"not the image that was added")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 definitely not a jpeg")
    rows = [
        {"chunk": 0, "sha256": [sha[good], "0" * 64, sha[changed]],
         "path": [str(good), str(tmp_path / "gone.jpg"), str(changed)]},
        {"chunk": 1, "sha256": [hashlib.sha256(garbage.read_bytes()).hexdigest(), sha[other]],
         "path": [str(garbage), other.absolute().as_uri()]},
    ]
    out = decode_chunks(pa.Table.from_pylist(rows)).to_pylist()
    assert [r["chunk"] for r in out] == [0, 1] and [r["sha256"] for r in out] == [r["sha256"] for r in rows]
    first, second = out
    assert first["error"][0] is None
    assert "gone.jpg: cannot be read (FileNotFoundError" in first["error"][1]
    assert "changed.jpg: its content changed since it was added" in first["error"][2]
    assert "garbage.jpg: OpenCV could not decode the image" in second["error"][0] and second["error"][1] is None
    # the decoded pixels are exactly what the local engine's cv2.imread gives
    assert first["shape"] == [60, 80, 3, 0, 0, 0, 0, 0, 0] and second["shape"] == [0, 0, 0, 40, 32, 3]
    np.testing.assert_array_equal(np.frombuffer(first["pixels"], np.uint8).reshape(60, 80, 3),
                                  cv2.imread(str(good), cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(np.frombuffer(second["pixels"], np.uint8).reshape(40, 32, 3),
                                  cv2.imread(str(other), cv2.IMREAD_COLOR))
