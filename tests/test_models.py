"""Models: shapes, the U-Net's receptive field (halo) measured empirically, blockwise == whole-array."""

from __future__ import annotations

import pytest
import torch

from polarxr.errors import ModelError
from polarxr.models import PatchCNN, UNet, build_model

torch.set_num_threads(1)


def _unet(depth: int = 2, width: int = 4, in_channels: int = 2, seed: int = 0, trained_bn: bool = True,
          pool: int = 1, refine: int = 0) -> UNet:
    """A small U-Net in eval mode, by default with non-trivial BatchNorm statistics (as after training)."""
    torch.manual_seed(seed)
    net = build_model({"name": "unet", "in_channels": in_channels, "width": width, "depth": depth, "pool": pool,
                       "refine": refine})
    for module in net.modules():
        if trained_bn and isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def test_build_models_and_shapes():
    net = build_model({"name": "unet", "in_channels": 3, "n_classes": 3, "width": 8, "depth": 3})
    assert isinstance(net, UNet) and net.pad_multiple == 8
    assert net(torch.zeros(2, 3, 48, 64)).shape == (2, 3, 48, 64)
    assert build_model(net.config).config == net.config
    refined = build_model({"name": "unet", "width": 8, "depth": 2, "pool": 4, "refine": 4})
    assert refined(torch.zeros(1, 3, 48, 64)).shape == (1, 3, 48, 64) and build_model(refined.config).config["refine"] == 4
    pooled = build_model({"name": "unet", "in_channels": 3, "width": 8, "depth": 2, "pool": 4})
    assert pooled.pad_multiple == 16 and pooled(torch.zeros(1, 3, 48, 64)).shape == (1, 3, 48, 64)
    cnn = build_model({"name": "patchcnn", "in_channels": 2, "width": 8})
    assert isinstance(cnn, PatchCNN) and cnn.patch_size == 64
    assert cnn.eval()(torch.zeros(5, 2, 64, 64)).shape == (5, 3)
    assert net.dense and not cnn.dense


def test_bad_model_configs_and_input_sizes():
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        build_model({"name": "resnet"})
    with pytest.raises(ModelError, match="cannot build model 'unet'"):
        build_model({"name": "unet", "depth": 0})
    with pytest.raises(ModelError, match="cannot build model 'unet'"):
        build_model({"name": "unet", "colour": "red"})
    net = _unet(depth=3)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 2, 50, 64))
    assert net.forward_padded(torch.zeros(1, 2, 50, 61)).shape == (1, 3, 50, 61)
    with pytest.raises(ValueError, match="64 x 64"):
        build_model({"name": "patchcnn"})(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("depth,pool,refine", [(2, 1, 0), (3, 1, 0), (2, 2, 0), (2, 4, 0), (2, 4, 4)])
def test_halo_bounds_the_measured_receptive_field(depth, pool, refine):
    """Perturbing one input pixel changes no logit farther than receptive_radius(), and some that far."""
    net = _unet(depth=depth, pool=pool, refine=refine, trained_bn=False)  # fresh BN: no ReLU dead everywhere, every path counts
    radius, m = net.receptive_radius(), net.pad_multiple
    assert m == pool * 2**depth
    # the hand count for this layout: convolutions and up-samplings, then the bilinear up-sampling by pool
    # (the full-resolution refinement's 3x3 convolution adds one pixel)
    assert radius == pool * (7 * 2**depth - 5) + (pool + (pool - 1) // 2 if pool > 1 else 0) + (1 if refine else 0)
    assert net.halo % m == 0 and radius <= net.halo < radius + m
    size = (2 * radius // m + 4) * m
    x = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(1))
    reach = []
    with torch.no_grad():
        base = net(x)
        for offset in range(m):  # every phase of the pixel relative to the pooling grid
            p = size // 2 - (size // 2) % m + offset
            bumped = x.clone()
            bumped[0, :, p, p] += 1000.0
            changed = (net(bumped) != base).any(dim=1)[0].nonzero()  # exact: untouched logits are bit-identical
            reach.append(int((changed - p).abs().amax()))
    assert max(reach) <= radius
    assert max(reach) == radius  # the bound is tight: the halo is not wastefully large


def _blockwise(net: UNet, x: torch.Tensor, chunk: int, halo: int) -> torch.Tensor:
    """Logits assembled from blocks of ``chunk`` px, each run on its crop extended by ``halo`` px."""
    height, width = x.shape[-2:]
    out = torch.empty(1, net.n_classes, height, width)
    for y0 in range(0, height, chunk):
        for x0 in range(0, width, chunk):
            y1, x1 = min(y0 + chunk, height), min(x0 + chunk, width)
            cy0, cx0 = max(0, y0 - halo), max(0, x0 - halo)
            crop = x[..., cy0:min(height, y1 + halo), cx0:min(width, x1 + halo)]
            logits = net.forward_padded(crop)
            out[..., y0:y1, x0:x1] = logits[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    return out


@pytest.mark.parametrize("chunk,pool,refine", [(24, 1, 0), (40, 1, 0), (64, 1, 0), (32, 4, 0), (48, 2, 0), (32, 4, 4)])
def test_blockwise_with_halo_equals_whole_array(chunk, pool, refine):
    """Blocks aligned to pad_multiple, extended by the halo, give the whole-array logits (ragged edges too)."""
    net = _unet(depth=3, pool=pool, refine=refine)
    x = torch.randn(1, 2, 101 * pool, 90 * pool, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = net.forward_padded(x)
        blocks = _blockwise(net, x, chunk, net.halo)
        short = _blockwise(net, x, chunk, net.halo // 2)
    torch.testing.assert_close(blocks, whole, atol=1e-4, rtol=1e-4)
    assert torch.equal(blocks.argmax(1), whole.argmax(1))
    # with half the halo, block edges show: the halo is what makes the tiling seamless
    assert (short - whole).abs().max() > 1e-3


@pytest.mark.parametrize("pool,refine", [(1, 0), (4, 0), (4, 4), (2, 4)])
def test_forward_crop_equals_cropping_the_forward(pool, refine):
    """UNet.forward_crop upsamples and refines only the crop and decodes only around it; the crop's values are
    those of the whole forward (up to the rounding of convolutions over a smaller extent)."""
    net = _unet(depth=3, pool=pool, refine=refine)
    multiple = net.pad_multiple
    x = torch.randn(1, 2, 5 * multiple, 4 * multiple, generator=torch.Generator().manual_seed(4))
    height, width = x.shape[-2:]
    crops = [(0, height, 0, width), (multiple, 3 * multiple, multiple, 2 * multiple), (3, height - 5, 1, width - 2),
             (height - 1, height, width - 1, width), (0, 1, 0, 1), (7, 8, 9, 13)]
    with torch.no_grad():
        whole = net(x)
        for y0, y1, x0, x1 in crops:
            expected = whole[..., y0:y1, x0:x1]
            actual = net.forward_crop(x, slice(y0, y1), slice(x0, x1))
            assert actual.shape == expected.shape
            torch.testing.assert_close(actual, expected, atol=2e-6, rtol=1e-5, msg=str((y0, y1, x0, x1)))


@pytest.mark.parametrize("pool,refine", [(4, 0), (4, 4), (1, 0)])
def test_crop_strips_put_together_equal_the_whole_crop(pool, refine):
    """predict runs a window's full-resolution stages strip by strip from one U-Net run: the strips, top to
    bottom and covering the crop, put together are the whole crop's logits (up to rounding)."""
    net = _unet(depth=3, pool=pool, refine=refine)
    multiple = net.pad_multiple
    x = torch.randn(1, 2, 6 * multiple, 4 * multiple, generator=torch.Generator().manual_seed(5))
    rows, cols = slice(5, x.shape[-2] - 3), slice(2, x.shape[-1] - 7)
    with torch.no_grad():
        whole = net(x)[..., rows, cols]
        pieces = list(net.crop_strips(x, rows, cols, 37))
    assert [(s.start, s.stop) for s, _ in pieces] == [(y, min(y + 37, rows.stop)) for y in range(rows.start, rows.stop, 37)]
    strips = torch.cat([logits for _, logits in pieces], dim=2)
    assert len(pieces) > 1 and strips.shape == whole.shape
    torch.testing.assert_close(strips, whole, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("depth,pool,refine", [(3, 4, 0), (3, 4, 4), (4, 4, 8), (3, 1, 0), (2, 2, 4)])
def test_decoders_cropped_to_the_kept_pixels_keep_their_values(depth, pool, refine):
    """UNet.coarse_logits_over decodes only the kept coarse pixels plus :meth:`decoder_margins`: over 40 random
    crops (edges, interiors, unaligned) the values are those of the whole forward, while the decoders' margins
    are what keeps them so (without them, the crop's zero padding shows)."""
    import random

    net = _unet(depth=depth, pool=pool, refine=refine)
    multiple = net.pad_multiple
    x = torch.randn(1, 2, 7 * multiple, 5 * multiple, generator=torch.Generator().manual_seed(6))
    height, width = x.shape[-2:]
    rng = random.Random(depth * 10 + pool)
    crops = []
    for _ in range(40):
        y0, x0 = rng.randrange(height - 1), rng.randrange(width - 1)
        crops.append((slice(y0, rng.randrange(y0 + 1, height + 1)), slice(x0, rng.randrange(x0 + 1, width + 1))))
    with torch.no_grad():
        whole = net(x)
        for rows, cols in crops:
            torch.testing.assert_close(net.forward_crop(x, rows, cols), whole[..., rows, cols], atol=2e-6, rtol=1e-5)
        coarse, (row0, col0) = net.coarse_logits_over(x, slice(9, 20), slice(3, 11))
        assert row0 <= 9 and col0 <= 3 and coarse.shape[-2] < height // pool  # a window, not the whole
        net.decoder_margins = lambda: [0] * (depth + 1)
        worst = max((net.forward_crop(x, rows, cols) - whole[..., rows, cols]).abs().max().item() for rows, cols in crops)
    assert worst > 1e-4
