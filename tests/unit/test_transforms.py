"""Unit tests of d3s.transforms: normalisation round trips and the seeded crop/flip views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d3s.transforms import Normalizer, apply_views, identity_views, sample_views

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ Normalizer


def test_normalizer_round_trip_and_values():
    g = torch.Generator().manual_seed(0)
    norm = Normalizer(MEAN, STD)
    x = torch.rand(4, 3, 6, 5, generator=g)
    y = norm(x)
    want = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(norm.inverse(y), x, rtol=0, atol=1e-6)


def test_normalizer_bounds_are_normalised_zero_and_one():
    norm = Normalizer(MEAN, STD)
    lo, hi = norm.bounds()
    assert lo.shape == hi.shape == (1, 3, 1, 1)
    torch.testing.assert_close(lo, norm(torch.zeros(1, 3, 1, 1)))
    torch.testing.assert_close(hi, norm(torch.ones(1, 3, 1, 1)))
    torch.testing.assert_close(lo.flatten(), torch.tensor([-m / s for m, s in zip(MEAN, STD)]))
    torch.testing.assert_close(hi.flatten(), torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]))
    assert torch.all(lo < hi)


@pytest.mark.parametrize("mean,std", [(MEAN, STD), ((0.5,), (0.5,)), ((0.1307,), (0.3081,))])
def test_normalizer_uint8_round_trip_is_exact(mean, std):
    norm = Normalizer(mean, std)
    c = len(mean)
    # Every uint8 value in every channel, plus a random image.
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, c, 1, 1)
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, 256, (3, c, 7, 9), generator=g, dtype=torch.uint8)
    for u8 in (every, rand):
        x = norm.from_uint8(u8)
        assert x.dtype == torch.float32
        back = norm.to_uint8(x)
        assert back.dtype == torch.uint8
        assert torch.equal(back, u8)


def test_normalizer_to_uint8_clamps_out_of_range():
    norm = Normalizer(MEAN, STD)
    lo, hi = norm.bounds()
    x = torch.cat([lo - 1.0, hi + 1.0]).expand(2, 3, 2, 2)
    out = norm.to_uint8(x)
    assert torch.equal(out[0], torch.zeros(3, 2, 2, dtype=torch.uint8))
    assert torch.equal(out[1], torch.full((3, 2, 2), 255, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------- apply_views


def _image(n=3, c=2, h=8, w=8, seed=2):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_identity_views_leave_input_unchanged():
    x = _image()
    boxes, flips = identity_views(len(x))
    assert boxes.shape == (3, 4) and flips.shape == (3,) and not flips.any()
    out = apply_views(x, boxes, flips, 8)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_flip_view_flips_horizontally():
    x = _image()
    boxes, _ = identity_views(len(x))
    flips = torch.tensor([True, False, True])
    out = apply_views(x, boxes, flips, 8)
    torch.testing.assert_close(out[0], x[0].flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[2], x[2].flip(-1), rtol=0, atol=1e-5)


def test_left_half_box_is_left_half_upsampled():
    H = W = 8
    x = _image(n=2, h=H, w=W)
    boxes = torch.tensor([[-0.5, 0.0, 0.5, 1.0]]).repeat(2, 1)
    flips = torch.zeros(2, dtype=torch.bool)
    out = apply_views(x, boxes, flips, W)
    assert out.shape == x.shape
    left = x[..., : W // 2]
    ref = F.interpolate(left, size=(H, W), mode="bilinear", align_corners=False)
    # Output column j samples source column 0.5 j - 0.25 (the same as F.interpolate), except that
    # the last column (source W/2 - 0.75) legitimately blends in 1/4 of column W/2 just outside the
    # box, which F.interpolate of the cut-out half cannot see: compare it separately.
    torch.testing.assert_close(out[..., : W - 1], ref[..., : W - 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[..., W - 1], 0.75 * x[..., W // 2 - 1] + 0.25 * x[..., W // 2], rtol=0, atol=1e-5)

    # When the column just right of the box repeats its last column, the whole output is exact.
    y = x.clone()
    y[..., W // 2] = y[..., W // 2 - 1]
    out_y = apply_views(y, boxes, flips, W)
    ref_y = F.interpolate(y[..., : W // 2], size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out_y, ref_y, rtol=0, atol=1e-5)

    # Flipping the left-half view mirrors it.
    out_f = apply_views(x, boxes, torch.ones(2, dtype=torch.bool), W)
    torch.testing.assert_close(out_f, out.flip(-1), rtol=0, atol=1e-5)


def test_constant_halves_map_to_constant_output():
    """A box inside a constant region gives that constant exactly, at any output size."""
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4] = 3.0
    x[..., 4:] = -1.0
    left = torch.tensor([[-0.625, 0.2, 0.25, 0.5]])  # spans columns 0..3 of the left half
    right = torch.tensor([[0.625, -0.3, 0.25, 0.4]])
    no = torch.zeros(1, dtype=torch.bool)
    torch.testing.assert_close(apply_views(x, left, no, 5), torch.full((1, 1, 5, 5), 3.0))
    torch.testing.assert_close(apply_views(x, right, no, 12), torch.full((1, 1, 12, 12), -1.0))


def test_apply_views_resizes_to_out_size():
    x = _image(n=2, h=8, w=8)
    boxes, flips = sample_views(2, (0.3, 1.0), True, torch.Generator().manual_seed(3))
    assert apply_views(x, boxes, flips, 5).shape == (2, 2, 5, 5)
    assert apply_views(x, boxes, flips, 13).shape == (2, 2, 13, 13)


def test_apply_views_is_differentiable():
    x = _image(n=4, h=8, w=8).requires_grad_()
    boxes, flips = sample_views(4, (0.2, 1.0), True, torch.Generator().manual_seed(4))
    out = apply_views(x, boxes, flips, 8)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(grad).all()
    for i in range(4):  # every image gets a gradient
        assert grad[i].abs().max() > 0
    # The gradient is exact (finite differences, double precision, small input).
    xd = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    bd = boxes[:2].double()
    assert torch.autograd.gradcheck(lambda t: apply_views(t, bd, flips[:2], 4), (xd,))


# ---------------------------------------------------------------------------------------- sample_views


def test_sample_views_is_seeded():
    a = sample_views(64, (0.08, 1.0), True, torch.Generator().manual_seed(42))
    b = sample_views(64, (0.08, 1.0), True, torch.Generator().manual_seed(42))
    c = sample_views(64, (0.08, 1.0), True, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (64, 4) and a[1].shape == (64,) and a[1].dtype == torch.bool


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0), (0.7, 1.0), (0.25, 0.25), (1.0, 1.0)])
def test_sample_views_boxes_inside_image_and_area_in_range(scale):
    ratio = (3 / 4, 4 / 3)
    boxes, _ = sample_views(2000, scale, True, torch.Generator().manual_seed(7), ratio=ratio)
    cx, cy, w, h = boxes.unbind(1)
    assert torch.all(w > 0) and torch.all(h > 0) and torch.all(w <= 1) and torch.all(h <= 1)
    assert torch.all(cx.abs() + w <= 1 + 1e-6)
    assert torch.all(cy.abs() + h <= 1 + 1e-6)
    unclamped = (w < 1) & (h < 1)
    area = (w * h)[unclamped]
    assert torch.all(area >= scale[0] - 1e-6) and torch.all(area <= scale[1] + 1e-6)
    aspect = (w / h)[unclamped]
    assert torch.all(aspect >= ratio[0] - 1e-5) and torch.all(aspect <= ratio[1] + 1e-5)
    if scale[1] < 0.5:  # small boxes never need the clamp
        assert unclamped.all()


def test_sample_views_flip_flags():
    _, none = sample_views(2000, (0.08, 1.0), False, torch.Generator().manual_seed(8))
    assert not none.any()
    _, some = sample_views(2000, (0.08, 1.0), True, torch.Generator().manual_seed(8))
    # Binomial(2000, 1/2): sd ~ 22, so 1000 +- 150 is > 6 sd.
    assert 850 <= int(some.sum()) <= 1150
