"""`labelwise demo` end to end at toy size: it must keep working, since `make demo` is a user's first command."""

from __future__ import annotations

import pytest
from rich.console import Console

from labelwise.demo import format_elapsed, run_demo
from labelwise.synthetic import ScenarioSpec


@pytest.mark.parametrize("seconds, text", [(0.2, "0 s"), (41.4, "41 s"), (59.6, "1 min 0 s"), (153, "2 min 33 s"),
                                           (3899, "1 h 04 min")])
def test_elapsed_time_reads_like_a_person_would_say_it(seconds, text):
    assert format_elapsed(seconds) == text


@pytest.mark.slow
def test_demo_runs_rounds_and_reports_hard_cases(tmp_path):
    console = Console(record=True, width=120)
    ws = run_demo(tmp_path / "demo", rounds=1, epochs=1, per_round=8, initial=8, console=console,
                  spec=ScenarioSpec(n_train=48, n_val=12, image_size=64, seed=1))
    text = console.export_text()
    assert "round 1: no model yet; random (cold start) selected 8" in text
    assert "round 2: trained on 8 labeled, mAP50" in text
    assert "hard" in text and f"next: labelwise status -w {ws.root}" in text
    assert [r.step for r in ws.store.rounds()] == ["done", "done"]
    assert text.rstrip().splitlines()[-1].startswith("demo finished in ")
