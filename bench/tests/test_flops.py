import pytest

from bench.flops import component_flops, pipeline_flops


@pytest.mark.parametrize("component, tflop", [("clip", 0.0133), ("uvit", 4.657), ("decoder", 2.515)])
def test_full_size_flops_match_spec(component, tflop):
    """SPEC section 6: U-ViT forward 2.33 TFLOP (a guided step is two), decoder 2.51, CLIP 0.013."""
    assert component_flops(component, "full") / 1e12 == pytest.approx(tflop, rel=2e-3)


def test_two_call_guidance_costs_the_same_as_batched():
    assert component_flops("uvit", "full", guidance="two-calls") == component_flops("uvit", "full")


def test_pipeline_is_clip_fifty_steps_and_decoder():
    assert pipeline_flops("full") / 1e12 == pytest.approx(0.0133 + 50 * 4.657 + 2.515, rel=2e-3)


def test_the_guided_steps_flops_by_kind_add_up():
    """4.19 TFLOP in the linears and 0.47 in attention (issue 26's split): what an FP8 floor runs at FP8 rates."""
    from bench.flops import flops_by_kind

    kinds = flops_by_kind("uvit", "full")
    assert sum(kinds.values()) == component_flops("uvit", "full")
    assert kinds["linear"] / 1e12 == pytest.approx(4.19, rel=2e-3) and kinds["attention"] / 1e12 == pytest.approx(
        0.465, rel=2e-3
    )
    assert set(flops_by_kind("decoder", "full")) == {"attention", "convolution"}
