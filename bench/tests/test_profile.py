import pandas as pd
import pytest
import torch

from bench.cli import parse_options
from bench.profile import by_kind, copy_bandwidth, kind_of, traffic_line, triton_bytes, with_traffic


@pytest.mark.parametrize(
    "kernel, kind",
    [
        ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x256x64", "gemm"),
        ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "gemm"),
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>", "attention"),
        ("triton_red_fused_add_native_layer_norm_3", "norm / reduction (triton)"),
        ("triton_poi_fused_gelu_4", "pointwise (triton)"),
        ("triton_poi_fused_add_convolution_silu_33", "pointwise (triton)"),  # a conv's bias add, not a conv
        ("triton_poi_fused_full_short_attention_triu_unsqueeze_view_1", "pointwise (triton)"),  # a mask
        ("triton_per_fused__softmax_4", "attention"),
        ("_attention", "attention"),  # plugin.attention's kernel
        ("triton_tem_fused_addmm_gelu_2", "gemm"),
        ("_partial_stats", "norm / reduction (triton)"),  # plugin.groupnorm's kernels
        ("_merge_cells", "norm / reduction (triton)"),
        ("_cell_stats", "norm / reduction (triton)"),  # plugin.groupstats's kernels
        ("_normalize_rows", "pointwise (triton)"),
        ("_quantize_rows", "norm / reduction (triton)"),  # plugin.fp8's kernels
        ("_add_layernorm_quantize", "norm / reduction (triton)"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other elementwise"),
    ],
)
def test_kernels_are_sorted_into_kinds(kernel, kind):
    assert kind_of(kernel) == kind


def test_idle_time_is_event_time_minus_kernel_time():
    kernels = pd.DataFrame(
        {"kernel": ["a_gemm", "b_gemm", "flash_fwd"], "calls": [1.0, 2.0, 1.0], "ms": [2.0, 1.0, 0.5]}
    )
    kernels["kind"] = kernels["kernel"].map(kind_of)
    kinds = by_kind(kernels, event_ms=4.0)
    assert kinds.loc["gemm", "ms"] == 3.0 and kinds.loc["gemm", "launches"] == 3.0
    assert kinds.loc["idle (event time - kernel time)", "ms"] == pytest.approx(0.5)
    assert kinds["share"].sum() == pytest.approx(1.0)


def test_traffic_counts_only_the_kernels_whose_bytes_are_known():
    kernels = pd.DataFrame(
        {
            "kernel": ["triton_poi_a", "triton_poi_b", "triton_red_c", "nvjet_gemm"],
            "calls": [2.0, 1.0, 1.0, 1.0],
            "ms": [0.2, 0.1, 0.3, 1.0],
        }
    )
    kernels["kind"] = kernels["kernel"].map(kind_of)
    kernels = with_traffic(kernels, {"triton_poi_a": 1e8, "triton_red_c": 3e8})  # per launch; b's unknown
    assert kernels.set_index("kernel").loc["triton_poi_a", "GB"] == pytest.approx(0.2)  # two launches
    kinds = by_kind(kernels, event_ms=2.0)
    assert kinds.loc["pointwise (triton)", "GB"] == pytest.approx(0.2)
    assert kinds.loc["pointwise (triton)", "TB/s"] == pytest.approx(1.0)  # 0.2 GB in a's 0.2 ms, not in 0.3
    assert kinds.loc["norm / reduction (triton)", "TB/s"] == pytest.approx(1.0)
    assert pd.isna(kinds.loc["gemm", "GB"]) and pd.isna(kinds.loc["gemm", "TB/s"])
    line = traffic_line(kernels, copy_bytes_per_s=2.5e12)
    assert "**0.50 GB**" in line and "1.00 TB/s" in line and "**0.200 ms**" in line  # 0.5 GB at 2.5 TB/s
    assert "take 1.100 ms" in line and "**1.300 ms**" in line  # b and the GEMM as measured, plus 0.2
    assert "faster than a copy" not in line
    slow_copy = traffic_line(kernels, copy_bytes_per_s=0.9e12)  # both counted kernels now read "faster than a copy"
    assert "2 kernel(s) would move their count faster than a copy (up to 1.00 TB/s, 0.50 GB)" in slow_copy


def test_traffic_says_when_no_kernel_carries_a_byte_count():
    kernels = pd.DataFrame({"kernel": ["nvjet_gemm"], "calls": [1.0], "ms": [1.0], "kind": ["gemm"]})
    assert "No kernel here carries" in traffic_line(with_traffic(kernels, {}), copy_bytes_per_s=3e12)


@pytest.mark.gpu
def test_inductor_byte_counts_are_found_by_kernel_name():
    import torch._inductor.config as inductor_config

    x = torch.randn(1 << 20, device="cuda")
    with inductor_config.patch(benchmark_kernel=True):
        torch.compile(lambda t: t * 3.0 + 1.0)(x)
    assert 8 * (1 << 20) in triton_bytes().values()  # 4 MiB read, 4 MiB written


@pytest.mark.gpu
def test_copy_bandwidth_is_a_memory_bandwidth():
    assert 1e11 < copy_bandwidth(torch.device("cuda"), nbytes=1 << 28) < 2e13


def test_engine_options_parse_from_the_command_line():
    from engines.spec import EngineSpec

    options = parse_options(["channels_last=true", "persistent_rows=2048", "groupnorm=stats"])
    assert options == {"channels_last": "true", "persistent_rows": "2048", "groupnorm": "stats"}
    spec = EngineSpec.of("decoder", "inductor", "fp16", **options)
    assert spec.options.channels_last is True and spec.settings.persistent_rows == 2048
    with pytest.raises(ValueError, match="persistent_rows is a whole number, not 'many'"):
        EngineSpec.of("decoder", "inductor", "fp16", **parse_options(["persistent_rows=many"]))
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_options(["attention"])


def test_reports_name_the_commit_given_in_the_environment(monkeypatch):
    from bench.environment import git_commit

    monkeypatch.setenv("UNIDIFFUSER_COMMIT", "ceabff6")
    assert git_commit() == "ceabff6"
    monkeypatch.delenv("UNIDIFFUSER_COMMIT")
    assert git_commit() != "ceabff6"
