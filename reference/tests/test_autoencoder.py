import torch
import torch.nn.functional as F

from reference import autoencoder as ae


def test_groupnorm_is_32_groups_eps_1e6_in_fp32():
    """SPEC section 5: GroupNorm(32, eps 1e-6, affine), statistics in at least fp32 whatever the input dtype."""
    gn = ae.GroupNorm(64)
    assert (gn.num_groups, gn.eps) == (32, 1e-6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5, generator=g), gn.bias.uniform_(-1, 1, generator=g)
    x = torch.randn(1, 64, 8, 8, generator=g) * 1e-2  # variance 1e-4: eps 1e-5 would move the output by 4%
    want = F.group_norm(x.double(), 32, gn.weight.double(), gn.bias.double(), 1e-6)
    torch.testing.assert_close(gn(x).double(), want, rtol=1e-4, atol=1e-4)
    assert gn(x.half()).dtype == torch.float16
