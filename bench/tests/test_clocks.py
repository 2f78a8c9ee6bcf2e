import pytest
import torch

from bench.clocks import ClockSampler, parse


def test_readings_parse_and_unreadable_lines_drop():
    assert parse(["1980, 650.12", "1755, [N/A]", "", "345, 71.6"]) == [(1980.0, 650.12), (345.0, 71.6)]


def test_a_cpu_run_says_why_it_has_no_clock():
    with ClockSampler(torch.device("cpu")) as clocks:
        pass
    assert clocks.summary() == {"clock_samples": 0, "clock_note": "not a CUDA device"}


@pytest.mark.gpu
def test_clocks_are_sampled_while_the_gpu_works():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    with ClockSampler(torch.device("cuda")) as clocks:
        for _ in range(200):  # about 0.3 s of matmuls on an H100
            a @ a
        torch.cuda.synchronize()
    got = clocks.summary()
    assert got["clock_samples"] >= 2, got
    assert 100 < got["sm_clock_mhz_min"] <= got["sm_clock_mhz_p50"] < 5000 and got["power_w_p50"] > 0, got
