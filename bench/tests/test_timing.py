"""The numbers every benchmark reports: medians, not means; warm-up rounds left out; milliseconds."""

from __future__ import annotations

import time

import pytest
import torch

from bench.timing import Events, percentile, summary_ms


def test_the_summary_is_the_median_and_the_90th_percentile():
    ms = [1.0, 2.0, 3.0, 4.0, 100.0]  # one slow outlier: the mean (22) would say otherwise
    assert summary_ms(ms) == {"p50_ms": 3.0, "p90_ms": 100.0, "n": 5}
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0 and percentile(list(range(11)), 90) == 9


def test_events_time_each_call_in_milliseconds_and_skip_the_warm_up():
    events = Events(lambda: time.sleep(0.02), device=torch.device("cpu"))
    events()  # a warm-up round
    for _ in range(3):
        events()
    ms = events.ms(skip=1)
    assert len(ms) == 3
    assert all(18 < m < 500 for m in ms), ms  # 20 ms sleeps: not seconds, not microseconds


@pytest.mark.parametrize("skip", [0, 2])
def test_events_leave_out_exactly_the_rounds_asked(skip):
    calls = iter([0.0, 0.03, 0.0, 0.0])
    events = Events(lambda: time.sleep(next(calls)), device=torch.device("cpu"))
    for _ in range(4):
        events()
    ms = events.ms(skip=skip)
    assert len(ms) == 4 - skip and (max(ms) > 25) == (skip < 2)
