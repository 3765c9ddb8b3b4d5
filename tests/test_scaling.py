"""The one min-max scaling of scores (labelwise.scaling.minmax)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import labelwise
from labelwise.balance import class_rarity
from labelwise.scaling import minmax


def test_minmax_formula_and_the_degenerate_cases():
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.array([3, 1, 2])).dtype == np.float64  # integers in, floats out
    for constant in ([5.0, 5.0, 5.0], [7.0]):
        assert minmax(np.array(constant)).tolist() == [0.0] * len(constant)  # no preference, no contribution
    empty = minmax(np.zeros(0, dtype=np.int64))
    assert empty.shape == (0,) and empty.dtype == np.float64
    assert minmax(np.array([1.0, np.nan])).tolist() == [0.0, 0.0]
    assert minmax(np.array([[1.0, 3.0], [2.0, 5.0]])).tolist() == [[0.0, 0.5], [0.25, 1.0]]


def test_the_callers_keep_their_results():
    assert class_rarity(np.array([0, 1, 3])) == pytest.approx([1.0, 1 / 3, 0.0])
    assert class_rarity(np.array([2, 2])).tolist() == [0.0, 0.0]
    assert class_rarity(np.zeros(0)).shape == (0,)


def test_there_is_one_min_max_scaling_in_labelwise():
    # `(x - lo) / (hi - lo)` written out anywhere but labelwise.scaling is a second copy to keep in step
    pattern = re.compile(r"-\s*(lo|\w+\.min\(\))\)\s*/\s*\(\s*(hi|\w+\.max\(\))\s*-")
    root = Path(labelwise.__file__).parent
    copies = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if p.name != "scaling.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert copies == []
