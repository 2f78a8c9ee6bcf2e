"""The suite itself on a CPU: what needs a GPU skips, saying why, and nothing else does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU nothing skips for want of one")
def test_the_gpu_skip_follows_the_mark_not_a_case_named_gpu(pytester):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(
        test_cases="""
        import pytest

        @pytest.mark.gpu
        def test_marked():
            pass

        @pytest.mark.parametrize("key", ["gpu", "cpu"])
        def test_a_case_named(key):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*test_cases.py:*: needs a CUDA GPU (torch.cuda.is_available() is False)"])
