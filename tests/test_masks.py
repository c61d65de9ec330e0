"""Mask properties over many sizes and both parities (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clayflow.transforms import AffineCoupling, alternating_mask, half_mask
from zoo import mlp, randomize


@given(
    features=st.integers(2, 64), parity=st.integers(0, 1), kind=st.sampled_from([half_mask, alternating_mask])
)
def test_masks_and_their_complements_cover_every_feature(features, parity, kind):
    mask, other = kind(features, parity), kind(features, 1 - parity)
    assert mask.shape == (features,) and mask.dtype == torch.bool
    assert torch.equal(mask, ~other)
    assert mask.any() and not mask.all()


@settings(max_examples=20, deadline=None)
@given(
    features=st.integers(2, 9), parity=st.integers(0, 1), kind=st.sampled_from([half_mask, alternating_mask])
)
def test_coupling_round_trip_for_any_size(features, parity, kind):
    coupling = randomize(AffineCoupling(kind(features, parity), mlp)).double()
    x = torch.randn(4, features, dtype=torch.float64)
    z, logabsdet = coupling(x)
    kept = kind(features, parity)
    assert torch.equal(z[:, kept], x[:, kept])
    x_back, inverse_logabsdet = coupling.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet)
