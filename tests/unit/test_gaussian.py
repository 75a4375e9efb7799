"""Unit tests of d3s.gaussian: KL against torch.distributions, streaming moments against numpy,
feature sampling layouts and the moving (EMA) whole-set statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from d3s.gaussian import (
    MomentAccumulator,
    MovingMoments,
    affine_moments,
    batch_moments,
    feature_moments,
    feature_samples,
    gaussian_kl,
    gaussian_target,
    layer_ridge,
)

F64 = torch.float64


def random_spd(d: int, g: torch.Generator, floor: float = 0.05) -> torch.Tensor:
    """A random symmetric positive-definite matrix with a spread of eigenvalues (not near identity)."""
    a = torch.randn(d, d, generator=g, dtype=F64)
    scales = torch.logspace(-1, 1, d, dtype=F64)  # columns of very different size: condition ~1e2..1e3
    a = a * scales
    return a @ a.T / d + floor * torch.eye(d, dtype=F64)


def reference_kl(mu_t, cov_t, mu_s, cov_s, eps: float) -> torch.Tensor:
    eye = torch.eye(mu_t.shape[0], dtype=F64)
    return kl_divergence(MultivariateNormal(mu_t, cov_t + eps * eye), MultivariateNormal(mu_s, cov_s + eps * eye))


# --------------------------------------------------------------------------------------------- KL


@pytest.mark.parametrize("d", [3, 17, 64])
@pytest.mark.parametrize("ridge", [1e-3, 0.1])
def test_kl_matches_torch_distributions_with_relative_ridge(d, ridge):
    g = torch.Generator().manual_seed(1000 + d)
    cov_t, cov_s = random_spd(d, g), random_spd(d, g)
    mu_t = torch.randn(d, generator=g, dtype=F64)
    mu_s = mu_t + 0.5 * torch.randn(d, generator=g, dtype=F64)

    target = gaussian_target(mu_t, cov_t, ridge)
    # The ridge is relative to the target's mean variance.
    expected_eps = ridge * (torch.trace(cov_t) / d).item()
    assert target.ridge == pytest.approx(expected_eps, rel=1e-12)
    assert target.ridge == pytest.approx(layer_ridge(cov_t, ridge), rel=1e-12)
    assert target.dim == d

    got = gaussian_kl(target, mu_s, cov_s)
    want = reference_kl(mu_t, cov_t, mu_s, cov_s, target.ridge)
    assert got.dtype == F64
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("d", [3, 17, 64])
def test_kl_matches_torch_distributions_without_ridge(d):
    g = torch.Generator().manual_seed(2000 + d)
    cov_t, cov_s = random_spd(d, g, floor=1.0), random_spd(d, g, floor=1.0)  # well conditioned
    mu_t, mu_s = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    target = gaussian_target(mu_t, cov_t, 0.0)
    assert target.ridge == 0.0
    got = gaussian_kl(target, mu_s, cov_s)
    want = reference_kl(mu_t, cov_t, mu_s, cov_s, 0.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-10)


def test_kl_accepts_float32_synthetic_moments():
    g = torch.Generator().manual_seed(3)
    d = 9
    cov_t, cov_s = random_spd(d, g, floor=0.5), random_spd(d, g, floor=0.5)
    mu_t, mu_s = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    target = gaussian_target(mu_t.float(), cov_t.float(), 1e-2)
    got = gaussian_kl(target, mu_s.float(), cov_s.float())
    want = reference_kl(
        mu_t.float().double(), cov_t.float().double(), mu_s.float().double(), cov_s.float().double(), target.ridge
    )
    assert got.dtype == F64
    assert got.item() == pytest.approx(want.item(), rel=1e-9)


@pytest.mark.parametrize("d,ridge", [(3, 0.0), (17, 1e-2), (64, 1e-3)])
def test_kl_gradients_match_torch_distributions(d, ridge):
    g = torch.Generator().manual_seed(4000 + d)
    cov_t = random_spd(d, g)
    mu_t = torch.randn(d, generator=g, dtype=F64)
    target = gaussian_target(mu_t, cov_t, ridge)

    a0 = torch.randn(d, d, generator=g, dtype=F64) / d**0.5
    m0 = mu_t + torch.randn(d, generator=g, dtype=F64)
    eye = torch.eye(d, dtype=F64)

    a1, m1 = a0.clone().requires_grad_(), m0.clone().requires_grad_()
    kl = gaussian_kl(target, m1, a1 @ a1.T + eye)
    grad_a, grad_m = torch.autograd.grad(kl, (a1, m1))

    a2, m2 = a0.clone().requires_grad_(), m0.clone().requires_grad_()
    ref = reference_kl(mu_t, cov_t, m2, a2 @ a2.T + eye, target.ridge)
    ref_a, ref_m = torch.autograd.grad(ref, (a2, m2))

    assert kl.item() == pytest.approx(ref.item(), rel=1e-9)
    assert grad_m.abs().max() > 0 and grad_a.abs().max() > 0
    torch.testing.assert_close(grad_m, ref_m, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_a, ref_a, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_kl_zero_for_equal_gaussians_positive_otherwise(ridge):
    g = torch.Generator().manual_seed(5)
    d = 12
    cov = random_spd(d, g)
    mu = torch.randn(d, generator=g, dtype=F64)
    target = gaussian_target(mu, cov, ridge)

    assert abs(gaussian_kl(target, mu, cov).item()) < 1e-10

    shifted_mean = gaussian_kl(target, mu + 0.1, cov).item()
    scaled_cov = gaussian_kl(target, mu, 1.5 * cov).item()
    other_cov = gaussian_kl(target, mu, random_spd(d, g)).item()
    for value in (shifted_mean, scaled_cov, other_cov):
        assert value > 1e-6


# ---------------------------------------------------------------------------------- MomentAccumulator


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_moment_accumulator_matches_numpy(offset):
    g = torch.Generator().manual_seed(6)
    d = 6
    sizes = [1, 37, 500, 1, 128, 3, 900]
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.2, 3.0, d)
    batches = []
    for i, n in enumerate(sizes):
        # Batches from slightly different distributions, so the between-batch term of the merge matters.
        x = torch.randn(n, d, generator=g) @ mix + offset + 0.5 * i
        batches.append(x.float())

    acc = MomentAccumulator(d)
    for b in batches:
        acc.update(b)
    acc.update(torch.zeros(0, d))  # an empty batch is a no-op

    data = torch.cat(batches).double().numpy()
    assert acc.count == sum(sizes) == data.shape[0]
    want_mean = np.mean(data, axis=0)
    want_cov = np.cov(data, rowvar=False, bias=True)
    assert acc.mean.dtype == F64 and acc.covariance().dtype == F64
    # Means: the float32 batch mean of values around 1000 has an absolute error ~ ulp(1000) = 6e-5.
    np.testing.assert_allclose(acc.mean.numpy(), want_mean, rtol=1e-6, atol=1e-5)
    # Covariances (entries of order 1..30): float32 scatter products, relative error ~1e-6.
    scale = np.abs(want_cov).max()
    np.testing.assert_allclose(acc.covariance().numpy(), want_cov, rtol=1e-5, atol=1e-5 * scale)


def test_moment_accumulator_single_batch_and_order_independent():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(200, 4, generator=g) * 3 + 2
    one = MomentAccumulator(4)
    one.update(x)
    many = MomentAccumulator(4)
    for chunk in reversed(torch.split(x, [1, 50, 9, 140])):
        many.update(chunk)
    assert one.count == many.count == 200
    torch.testing.assert_close(one.mean, many.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(one.covariance(), many.covariance(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- batch_moments


def test_batch_moments_matches_numpy():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(50, 7, generator=g, dtype=F64) @ torch.randn(7, 7, generator=g, dtype=F64) + 4.0
    mean, cov = batch_moments(x)
    np.testing.assert_allclose(mean.numpy(), np.mean(x.numpy(), axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False, bias=True), rtol=1e-11, atol=1e-11)

    mean32, cov32 = batch_moments(x.float())
    assert mean32.dtype == torch.float32 and cov32.dtype == torch.float32


def test_batch_moments_is_differentiable():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: batch_moments(t), (x,))
    mean, cov = batch_moments(x)
    (grad,) = torch.autograd.grad(cov.trace() + mean.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


# ----------------------------------------------------------------------------------- feature_samples


def test_feature_samples_positions_rows_are_channel_vectors():
    B, C, H, W = 2, 3, 4, 5
    x = torch.arange(B * C * H * W, dtype=torch.float32).reshape(B, C, H, W)
    rows = feature_samples(x, "positions")
    assert rows.shape == (B * H * W, C)

    def has_row(vec: torch.Tensor, block: torch.Tensor) -> bool:
        return bool((block == vec).all(1).any())

    # A few explicit positions: the C-vector at (b, h, w) is a row.
    for b, h, w in [(0, 0, 0), (0, 3, 4), (1, 2, 1), (1, 0, 4), (0, 1, 3)]:
        assert has_row(x[b, :, h, w], rows), (b, h, w)
    # Exactly the multiset of all positions (values are unique, so compare sorted row keys), and
    # each image's positions form that image's contiguous block of H*W rows.
    expected = x.permute(0, 2, 3, 1).reshape(-1, C)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, expected.tolist()))
    for b in range(B):
        block = rows[b * H * W : (b + 1) * H * W]
        assert sorted(map(tuple, block.tolist())) == sorted(map(tuple, expected[b * H * W : (b + 1) * H * W].tolist()))
    # Channels are never mixed: every row keeps the channel stride of the layout.
    assert torch.all(rows[:, 1] - rows[:, 0] == H * W) and torch.all(rows[:, 2] - rows[:, 1] == H * W)


def test_feature_samples_image_is_spatial_mean():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 4, 5, 6, generator=g)
    rows = feature_samples(x, "image")
    assert rows.shape == (3, 4)
    torch.testing.assert_close(rows, x.mean(dim=(2, 3)))


def test_feature_samples_passes_through_2d_and_rejects_unknown_pooling():
    x = torch.randn(5, 3)
    assert feature_samples(x, "positions") is x
    with pytest.raises(ValueError, match="pooling"):
        feature_samples(torch.randn(2, 3, 4, 4), "channels")


# ------------------------------------------------------------------------------------- MovingMoments


def _blocks(k: int = 4, n: int = 16, d: int = 5, seed: int = 11) -> list[torch.Tensor]:
    """Equal-sized blocks of fixed features with clearly different block statistics."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=F64) * (1 + 0.5 * i) + 2.0 * i for i in range(k)]


def _cov_of(mm: MovingMoments) -> torch.Tensor:
    return mm.second - torch.outer(mm.mean, mm.mean)


def test_moving_moments_initialise_is_exact():
    blocks = _blocks()
    mm = MovingMoments(0.5, [len(b) for b in blocks])
    mm.initialise([batch_moments(b) for b in blocks])
    mean, cov = batch_moments(torch.cat(blocks))
    torch.testing.assert_close(mm.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_cov_of(mm), cov, rtol=1e-10, atol=1e-10)


def test_moving_moments_combine_is_exact_for_unchanged_features():
    """With every block stored and features that do not change, combining any live block gives the
    whole-set statistics back; unequal block sizes are weighted by size."""
    for blocks in (_blocks(), _blocks()[:3] + [_blocks()[3][:5]]):
        mm = MovingMoments(0.5, [len(b) for b in blocks])
        mm.initialise([batch_moments(b) for b in blocks])
        want_mean, want_cov = batch_moments(torch.cat(blocks))
        for i, b in enumerate(blocks):
            mean, cov = mm.combine(i, *batch_moments(b))
            torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(cov, want_cov, rtol=1e-10, atol=1e-10)


def test_moving_moments_single_block_or_uninitialised_is_the_block():
    blocks = _blocks(k=2)
    m, c = batch_moments(blocks[0])
    fresh = MovingMoments(0.9, [16, 16])
    assert fresh.combine(0, m, c) == (m, c)
    one = MovingMoments(0.9, [16])
    one.initialise([batch_moments(blocks[0])])
    mean, cov = one.combine(0, m, c)
    assert mean is m and cov is c


def test_moving_moments_track_blocks_that_change():
    """After a block moves, its stored moments follow it (momentum 0: at once; 0.5: halving the gap per visit)
    and the estimate stays the exact whole-set statistics of the current features."""
    blocks = _blocks()
    sizes = [len(b) for b in blocks]
    for momentum in (0.0, 0.5):
        mm = MovingMoments(momentum, sizes)
        mm.initialise([batch_moments(b) for b in blocks])
        moved = [b.clone() for b in blocks]
        moved[2] = moved[2] * 3 - 7
        visits = 1 if momentum == 0 else 40
        for _ in range(visits):
            mm.update(2, *batch_moments(moved[2]))
        want_mean, want_cov = batch_moments(torch.cat(moved))
        tol = 1e-10 if momentum == 0 else 1e-6  # 0.5**40 of the initial gap is left
        torch.testing.assert_close(mm.mean, want_mean, rtol=tol, atol=tol)
        torch.testing.assert_close(_cov_of(mm), want_cov, rtol=tol, atol=tol)
        # the live view of another block sees the moved block through its stored moments
        mean, cov = mm.combine(0, *batch_moments(moved[0]))
        torch.testing.assert_close(cov, want_cov, rtol=tol, atol=tol)


def test_moving_moments_gradients_flow_through_live_block_only():
    blocks = _blocks()
    share = 1 / len(blocks)
    mm = MovingMoments(0.5, [len(b) for b in blocks])
    mm.initialise([batch_moments(b) for b in blocks])
    assert not mm.mean.requires_grad and not mm.second.requires_grad

    live = blocks[1].clone().requires_grad_()
    mean_b, cov_b = batch_moments(live)
    mean, cov = mm.combine(1, mean_b, cov_b)
    assert mean.requires_grad and cov.requires_grad
    g_mean, g_cov = torch.autograd.grad(mean.sum() + cov.trace(), (mean_b, cov_b))
    assert g_mean.abs().max() > 0 and torch.isfinite(g_mean).all()
    # d(trace of cov)/d cov_b is share * I exactly.
    torch.testing.assert_close(g_cov, share * torch.eye(cov_b.shape[0], dtype=F64))
    (g_pixels,) = torch.autograd.grad(mm.combine(1, *batch_moments(live))[0].sum(), live)
    torch.testing.assert_close(g_pixels, torch.full_like(live, share / live.shape[0]))

    # Updating with tensors that carry a graph stores detached values.
    mm.update(1, mean_b, cov_b)
    assert not mm.mean.requires_grad and not mm.second.requires_grad
    assert all(m.grad_fn is None for m in mm.means) and all(s.grad_fn is None for s in mm.seconds)
    with pytest.raises(RuntimeError, match="before initialise"):
        MovingMoments(0.5, [4, 4]).update(0, mean_b, cov_b)


@pytest.mark.parametrize("pooling", ["positions", "image"])
def test_feature_moments_equal_batch_moments_of_the_samples(pooling):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, 4, 3, generator=g) * 2 + 1).requires_grad_()
    fast_mean, fast_cov = feature_moments(x, pooling)
    ref_mean, ref_cov = batch_moments(feature_samples(x, pooling))
    torch.testing.assert_close(fast_mean, ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_cov, ref_cov, rtol=1e-4, atol=1e-5)
    (g_fast,) = torch.autograd.grad(fast_cov.sum() + fast_mean.sum(), x)
    (g_ref,) = torch.autograd.grad(ref_cov.sum() + ref_mean.sum(), x)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


def test_moment_accumulator_from_feature_maps_matches_numpy():
    """update_features (the statistics pass's path) over batches of feature maps equals numpy on all positions."""
    g = torch.Generator().manual_seed(5)
    maps = [torch.randn(b, 6, 4, 3, generator=g) * 3 + 20 for b in (7, 1, 12)]
    acc = MomentAccumulator(6)
    for m in maps:
        acc.update_features(m, "positions")
    rows = np.concatenate([m.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy() for m in maps])
    assert acc.count == len(rows)
    np.testing.assert_allclose(acc.mean.numpy(), rows.mean(0), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(acc.covariance().numpy(), np.cov(rows, rowvar=False, bias=True), rtol=1e-4, atol=1e-4)


def test_affine_moments_match_numpy_on_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    w, b = rng.normal(size=(7, 5)), rng.normal(size=7)
    y = x @ w.T + b
    mean, cov = affine_moments(
        torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x.T, bias=True)), torch.from_numpy(w), torch.from_numpy(b)
    )
    np.testing.assert_allclose(mean.numpy(), y.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), np.cov(y.T, bias=True), rtol=1e-9, atol=1e-9)
    assert torch.equal(affine_moments(mean, cov, torch.eye(7, dtype=torch.float64))[1], cov)
