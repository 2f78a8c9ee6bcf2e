"""One test of each outcome, run by test_reports.py in a pytest of its own (the name keeps it out of every other
run): a test that dies before it can add rows must reach the accuracy report as a failure, not as rows missing."""

from __future__ import annotations

import pytest


def test_passes(accuracy_log):
    pass


def test_dies_before_adding_rows(accuracy_log):
    raise RuntimeError("CUDA out of memory. Tried to allocate 72.00 MiB | 5.56 MiB free\nsecond line")


def test_is_skipped(accuracy_log):
    pytest.skip("needs a CUDA GPU")
