"""A small fully convolutional U-Net: per-pixel class logits from the scene bands, tileable without seams.

The network is built only from stride-1 zero-padded ("same") 3x3 convolutions, 2x2 max-pooling and 2x2
stride-2 transposed convolutions, optionally between an input average-pooling by ``pool`` (multi-looking:
it averages speckle and widens the context ``pool`` times for ``1 / pool**2`` of the compute) and a
bilinear upsampling of the logits back to full resolution. So it is translation-equivariant for shifts
that are multiples of its downsampling factor :attr:`UNet.pad_multiple` (``pool * 2 ** depth``). With
BatchNorm in eval mode (a per-pixel affine map) the value at an output pixel depends only on the input
within :meth:`UNet.receptive_radius` pixels of it. Hence a block cropped from a larger array, extended
by :attr:`UNet.halo` pixels on each side (clipped at the array's edges) and starting at a multiple of
``pad_multiple`` gives, over the block, the same logits as a run over the whole array: see
:meth:`UNet.forward_padded`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 'same' convolutions, each followed by BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _conv_radius(block: nn.Module, scale: int) -> int:
    """Receptive-field growth (input px, one side) of the stride-1 convolutions of ``block`` at ``scale``."""
    radius = 0
    for conv in block.modules():
        if isinstance(conv, nn.Conv2d):
            if conv.stride != (1, 1):
                raise ValueError("only stride-1 convolutions keep the receptive field computable this way")
            radius += max((k - 1) // 2 * d for k, d in zip(conv.kernel_size, conv.dilation)) * scale
    return radius


def row_strips(rows: slice, step: int | None = None) -> list[slice]:
    """``rows`` (a slice with start and stop) cut into consecutive slices of ``step`` rows, top to bottom,
    the last one shorter where ``step`` does not divide it (default: one slice)."""
    step = step or max(1, rows.stop - rows.start)
    return [slice(y, min(y + step, rows.stop)) for y in range(rows.start, rows.stop, step)]


class UNet(nn.Module):
    """U-Net segmenter: ``(N, in_channels, H, W)`` float -> ``(N, n_classes, H, W)`` logits.

    ``H`` and ``W`` must be multiples of :attr:`pad_multiple`; :meth:`forward_padded` accepts any size.
    Channel widths are ``width * 2**level`` for ``level`` in ``0..depth`` (the bottleneck is ``depth``).
    ``pool`` > 1 runs the U-Net on the input average-pooled by ``pool`` and upsamples the logits bilinearly;
    ``refine`` > 0 then corrects them at full resolution by a 3x3 convolution of
    ``refine`` channels over the input bands and the upsampled logits (a residual).
    """

    #: per-pixel output (a segmenter), as opposed to one class per patch
    dense = True

    def __init__(self, in_channels: int = 3, n_classes: int = 3, width: int = 16, depth: int = 3, pool: int = 1,
                 refine: int = 0):
        super().__init__()
        if in_channels < 1 or n_classes < 2 or width < 1 or depth < 1 or pool < 1 or refine < 0:
            raise ValueError(f"bad U-Net size: in_channels={in_channels}, n_classes={n_classes}, "
                             f"width={width}, depth={depth}, pool={pool}, refine={refine}")
        self.in_channels, self.n_classes, self.width, self.depth = in_channels, n_classes, width, depth
        self.pool, self.refine = pool, refine
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            _double_conv(in_channels if level == 0 else widths[level - 1], widths[level]) for level in range(depth)
        )
        self.down = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(widths[depth - 1], widths[depth])
        levels = range(depth - 1, -1, -1)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[lv + 1], widths[lv], 2, stride=2) for lv in levels)
        self.decoders = nn.ModuleList(_double_conv(2 * widths[lv], widths[lv]) for lv in levels)
        self.head = nn.Conv2d(width, n_classes, 1)
        # full-resolution refinement after the multi-look: the upsampled logits beside the input bands, so
        # objects and edges smaller than one multi-looked pixel (2 x 2 px icebergs, narrow fjords) are drawn
        # at 40 m; a residual on the upsampled logits, so it starts from what the coarse U-Net says
        self.refiner = None
        if refine:
            self.refiner = nn.Sequential(
                nn.Conv2d(in_channels + n_classes, refine, 3, padding=1, bias=False),
                nn.BatchNorm2d(refine),
                nn.ReLU(inplace=True),
                nn.Conv2d(refine, n_classes, 1),
            )

    @property
    def config(self) -> dict:
        """The :func:`polarxr.models.build_model` config that rebuilds this architecture."""
        config = {"name": "unet", "in_channels": self.in_channels, "n_classes": self.n_classes,
                  "width": self.width, "depth": self.depth, "pool": self.pool}
        if self.refine:  # absent when off, so configs of models without it read as before
            config["refine"] = self.refine
        return config

    @property
    def pad_multiple(self) -> int:
        """Input height/width, and block offsets relative to the whole array, must be multiples of this (px)."""
        return self.pool * 2**self.depth

    def receptive_radius(self) -> int:
        """Radius (px, Chebyshev) of the input window that can influence one output pixel.

        Walks the layers in forward order: a convolution at a level of scale ``s`` (input px per feature
        px) grows the radius by ``s * (k - 1) // 2``; a 2x2 max-pool on aligned windows adds nothing (the
        coarse pixel's footprint is the union of its children's); a 2x2 upsampling adds the fine scale,
        because a fine pixel may sit in either half of its coarse parent's footprint; a skip concatenation
        takes the larger radius of its two inputs. The input average-pooling (aligned windows) adds nothing;
        the final bilinear upsampling by ``s = pool`` reads the coarse pixel beside the fine pixel's own,
        which adds ``s + (s - 1) // 2``. With ``pool`` 1 and ``depth`` 3 this gives 51 px
        (``7 * 2**depth - 5``); in general ``pool * (7 * 2**depth - 5) + pool + (pool - 1) // 2``.
        """
        radius, scale, skips = 0, self.pool, []
        for encoder in self.encoders:
            radius += _conv_radius(encoder, scale)
            skips.append(radius)
            scale *= 2
        radius += _conv_radius(self.bottleneck, scale)
        for decoder in self.decoders:
            scale //= 2
            radius = max(radius + scale, skips.pop())
            radius += _conv_radius(decoder, scale)
        radius += _conv_radius(self.head, scale)
        if self.pool > 1:
            radius += self.pool + (self.pool - 1) // 2
        if self.refiner is not None:
            radius += _conv_radius(self.refiner, 1)
        return radius

    @property
    def halo(self) -> int:
        """Overlap (px) each block needs on every side for blockwise == whole-array inference.

        The receptive radius rounded up to :attr:`pad_multiple`, so that a block whose edges sit on
        multiples of ``pad_multiple`` keeps its extended crop aligned too. Within the crop, an output pixel
        at least ``receptive_radius()`` from the crop's edge never sees the crop's zero padding at any
        level, nor the edge clamping of the bilinear upsampling (the crop's edges are aligned to every
        level's grid), so no further margin is needed.
        """
        multiple = self.pad_multiple
        return -(-self.receptive_radius() // multiple) * multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes, H, W)`` for normalised input ``(N, in_channels, H, W)``."""
        height, width = x.shape[-2:]
        if height % self.pad_multiple or width % self.pad_multiple:
            raise ValueError(f"U-Net input of {height} x {width} px: height and width must be multiples of "
                             f"{self.pad_multiple}; use forward_padded for other sizes")
        full = x
        logits = self.coarse_logits(x)
        if self.pool > 1:
            logits = F.interpolate(logits, scale_factor=self.pool, mode="bilinear", align_corners=False)
        if self.refiner is not None:
            logits = logits + self.refiner(torch.cat([full, logits], dim=1))
        return logits

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's logits ``(N, n_classes, H / pool, W / pool)`` at its own (multi-looked) resolution,
        before upsampling and refinement."""
        logits, _ = self.coarse_logits_over(x)
        return logits

    def coarse_logits_over(self, x: torch.Tensor, rows: slice | None = None, cols: slice | None = None
                           ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(logits, (row0, col0))``: the :meth:`coarse_logits` of ``x`` over at least the coarse pixels
        ``rows`` x ``cols`` (default all), as a window whose first pixel is coarse pixel ``(row0, col0)``.

        The encoder runs over all of ``x`` (the context), but each decoder level only over the kept pixels
        plus the margin its remaining convolutions read (:meth:`decoder_margins`), so the decoders (about
        3/4 of the U-Net's operations) skip most of a block's halo. Pixels the crop's zero padding reaches
        lie outside the kept window, so the kept values are those of the whole run, up to the rounding of
        convolutions over a different extent.
        """
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        height, width = x.shape[-2:]
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.down(x)
        x = self.bottleneck(x)
        keep = rows is not None or cols is not None
        rows = rows if rows is not None else slice(0, height)
        cols = cols if cols is not None else slice(0, width)
        oy = ox = 0  # the position of x's first pixel at its level
        margins = self.decoder_margins()
        for level, up, decoder in zip(range(self.depth - 1, -1, -1), self.ups, self.decoders):
            skip = skips.pop()
            if keep:  # cut x (at level + 1) to what this and the later decoders read, aligned to its grid
                scale, margin = 2 ** (level + 1), margins[level + 1]
                y0, y1 = max(0, rows.start // scale - margin), min(height // scale, -(-rows.stop // scale) + margin)
                x0, x1 = max(0, cols.start // scale - margin), min(width // scale, -(-cols.stop // scale) + margin)
                x = x[..., y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                oy, ox = 2 * y0, 2 * x0
                skip = skip[..., oy:2 * y1, ox:2 * x1]
            x = decoder(torch.cat([skip, up(x)], dim=1))
        return self.head(x), (oy, ox)

    def decoder_margins(self) -> list[int]:
        """Per level ``0..depth``: the margin (px at that level) beyond the kept pixels that the decoder
        input at that level must hold valid values for, so that level 0's output is valid over the kept
        pixels: ``m[l + 1] = ceil((m[l] + r[l]) / 2)`` with ``r[l]`` the radius of decoder ``l``'s
        convolutions (2 for the 3x3 pairs), from ``m[0] = 0`` (the head is 1x1)."""
        margins = [_conv_radius(self.head, 1)]
        for decoder in reversed(self.decoders):  # level 0 upwards
            margins.append(-(-(margins[-1] + _conv_radius(decoder, 1)) // 2))
        return margins

    def forward_crop(self, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """``forward(x)[..., rows, cols]``, with the full-resolution stages (the bilinear upsampling, the
        refinement) run only over the crop.

        The multi-looked U-Net's encoder runs over all of ``x`` (the crop's context), its decoders only around
        the crop (:meth:`coarse_logits_over`), then :meth:`crop_logits` upsamples and refines the crop alone: a
        2048 px tile with a 224 px halo computes 1.49x fewer full-resolution pixels, and its decoders (about 3/4
        of the U-Net's operations) ~1.4x fewer coarse ones, than cropping the whole forward.
        """
        ((_, logits),) = self.crop_strips(x, rows, cols)
        return logits

    def crop_strips(self, x: torch.Tensor, rows: slice, cols: slice, strip: int | None = None
                    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(strip_rows, forward(x)[..., strip_rows, cols])`` for the crop cut into strips of ``strip`` rows
        (default: one strip), top to bottom; the U-Net runs once, the full-resolution stages per strip, so a
        caller holds one strip's float temporaries at a time."""
        strips = row_strips(rows, strip)
        height, width = x.shape[-2:]
        cy0, cy1 = self._coarse_reads(self._fine_window(rows, height), height)
        cx0, cx1 = self._coarse_reads(self._fine_window(cols, width, self._fine_width_multiple), width)
        coarse, offset = self.coarse_logits_over(x, slice(cy0, cy1), slice(cx0, cx1))
        for rows_of in strips:
            yield rows_of, self.crop_logits(coarse, x, rows_of, cols, offset)

    def _fine_window(self, pixels: slice, size: int, align: int = 1) -> tuple[int, int]:
        """The full-resolution pixels ``[f0, f1)`` of an axis of ``size`` px that the full-resolution stages
        compute for the output ``pixels``: one more on each side for the refiner's 3x3 convolution, widened
        within the axis to a multiple of ``align`` px."""
        margin = 1 if self.refiner is not None else 0
        f0, f1 = max(0, pixels.start - margin), min(size, pixels.stop + margin)
        extra = -(f1 - f0) % align
        grow = min(extra, size - f1)
        return max(0, f0 - (extra - grow)), f1 + grow

    def _coarse_reads(self, window: tuple[int, int], size: int) -> tuple[int, int]:
        """The coarse pixels ``[c0, c1)`` that the full-resolution ``window`` ``[f0, f1)`` (:meth:`_fine_window`,
        on an axis of ``size`` px) reads through the upsampling, plus one on each side so that no needed value
        is clamped at a cut (bilinear ``src = (i + 0.5) / pool - 0.5`` reads its coarse pixel and the next)."""
        f0, f1 = window
        p = self.pool
        if p == 1:
            return f0, f1
        return max(0, f0 // p - 1), min(size // p, (f1 - 1) // p + 2)

    @property
    def _fine_width_multiple(self) -> int:
        # oneDNN's 3x3 convolution runs ~1.7x slower on rows whose width is not a multiple of 8 (a 2050 px
        # wide strip: 56 ms, 2048 or 2056 px: 34-37 ms, measured), which a block's core + 1 px always is
        return 8 if self.refiner is not None else 1

    def crop_logits(self, coarse: torch.Tensor, x: torch.Tensor, rows: slice, cols: slice,
                    offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The full-resolution logits ``forward(x)[..., rows, cols]`` from the :meth:`coarse_logits` of ``x``
        (or a window of them whose first pixel is coarse pixel ``offset``, from :meth:`coarse_logits_over`).

        The coarse logits are cut to the coarse pixels the crop's upsampled values read (:meth:`_coarse_reads`)
        before upsampling. Bilinear weights depend only on a pixel's offset from an aligned coarse grid, so a
        cut at whole coarse pixels gives the same values; so callers may compute a large window's full-resolution
        stages strip by strip, bounding their float temporaries, from one run of the coarse U-Net. ``x`` (full
        resolution) is read only by the refinement.
        """
        height, width = x.shape[-2:]
        align = self._fine_width_multiple
        (fy0, fy1), (fx0, fx1) = self._fine_window(rows, height), self._fine_window(cols, width, align)
        p = self.pool
        (cy0, cy1), (cx0, cx1) = self._coarse_reads((fy0, fy1), height), self._coarse_reads((fx0, fx1), width)
        logits = coarse[..., cy0 - offset[0]:cy1 - offset[0], cx0 - offset[1]:cx1 - offset[1]]
        if p > 1:
            logits = F.interpolate(logits, scale_factor=p, mode="bilinear", align_corners=False)
        logits = logits[..., fy0 - p * cy0:fy1 - p * cy0, fx0 - p * cx0:fx1 - p * cx0]
        if self.refiner is not None:
            logits = logits + self.refiner(torch.cat([x[..., fy0:fy1, fx0:fx1], logits], dim=1))
        return logits[..., rows.start - fy0:rows.stop - fy0, cols.start - fx0:cols.stop - fx0]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for input of any height/width: zero-padded at the bottom/right to :attr:`pad_multiple`.

        This is the reference whole-array run: a block crop that starts at a multiple of ``pad_multiple``
        of the whole array and extends :attr:`halo` px beyond the block (clipped at the array's edges) gives,
        inside the block, the logits of ``forward_padded`` on the whole array.
        """
        height, width = x.shape[-2:]
        pad_h = -height % self.pad_multiple
        pad_w = -width % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self(x)[..., :height, :width]
