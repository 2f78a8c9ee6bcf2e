import pandas as pd
import pytest

from bench.cli import parse_options
from bench.profile import by_kind, kind_of


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
        ("triton_tem_fused_addmm_gelu_2", "gemm"),
        ("_partial_stats", "norm / reduction (triton)"),  # plugin.groupnorm's kernels
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


def test_engine_options_parse_from_the_command_line():
    assert parse_options(["attention=sdpa", "channels_last=true"]) == {"attention": "sdpa", "channels_last": True}
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_options(["attention"])


def test_reports_name_the_commit_given_in_the_environment(monkeypatch):
    from bench.environment import git_commit

    monkeypatch.setenv("UNIDIFFUSER_COMMIT", "ceabff6")
    assert git_commit() == "ceabff6"
    monkeypatch.delenv("UNIDIFFUSER_COMMIT")
    assert git_commit() != "ceabff6"
