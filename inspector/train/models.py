"""The networks: recognizer (fully convolutional ResNet), segmenter (DeepLabv3+ with a branch network instead
of ASPP), their baselines (ResNet image classifier, original DeepLabv3+), and `Deployed`, the export wrapper.

All trunks are torchvision ResNets built with `weights=None`: nothing pretrained can be downloaded, and the
paper trains its segmenter from scratch as well.

Receptive field of the recognizer (one output cell), computed along the main path of the network as
``rf += (kernel - 1) * jump; jump *= stride`` (`receptive_field()` does exactly this, and a test checks it
against the gradient of one output cell with respect to the input):

- ResNet-50 (torchvision's v1.5, stride on the 3x3 conv): conv1 7x7/2 -> 7, maxpool 3x3/2 -> 11; each
  bottleneck's 3x3 conv adds 2 * jump (its 1x1 convs add nothing): layer1 3 x 8 -> 35; layer2 8 (strided
  conv, jump 4 -> 8) + 3 x 16 -> 91; layer3 16 + 5 x 32 -> 267; layer4 32 + 2 x 64 -> **427 px**. Where it lies:
  the paddings add up to 213 px (3 + 2 + the 1-px pads of every 3x3 conv times its jump), so cell i covers
  input pixels [32 i - 213, 32 i + 213] — centred on the block's first pixel, not its middle. On the paper's
  224x224 input the blocks of rows/columns 1..6 therefore see the whole image and those of row/column 0 all
  but its last 10 px (a test measures both with gradients): each block score is decided with essentially the
  whole image as context.
- ResNet-18: 435 px, ResNet-34: 899 px, resnet-tiny (one BasicBlock per stage): 195 px — the demo models see
  a neighbourhood of roughly 6x6 blocks, not the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from inspector.preprocess import MEAN_GRAY, MEAN_RGB, STD_GRAY, STD_RGB

TASKS = ("recognizer", "segmenter", "classifier", "deeplabv3plus")
BLOCK_SIZE = 32  # total stride of every trunk in the recognizer: one output cell per 32x32 input block


# ------------------------------------------------------------------------------------------ ResNet trunks
#
# Written here instead of taken from torchvision: torchvision's wheels on PyPI are built against the CUDA build
# of torch, and the CPU build of torch (~200 MB instead of ~5.5 GB, what a CPU-only training box wants) cannot
# import them. The blocks are the standard ones (He et al. 2016; "v1.5": the stride on the bottleneck's 3x3
# conv), initialised the way torchvision does, so a ResNet-18/34/50 here has torchvision's layer shapes.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        if dilation > 1:
            raise ValueError("BasicBlock trunks cannot be dilated; use output stride 32 or resnet50")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _projection(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1):
    """One ResNet stage; a dilated stage keeps its resolution (stride 1) and dilates every 3x3 conv after the
    first by `dilation` (the first uses the previous dilation, as torchvision's replace_stride_with_dilation)."""
    first_dilation = max(dilation // 2, 1) if dilation > 1 else 1
    layers = [block(inplanes, planes, stride, first_dilation)]
    layers += [block(planes * block.expansion, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class ArchSpec:
    block: Block
    blocks: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]  # planes of layer1..layer4 (x block.expansion = output channels)
    stem: int


# The model ladder (docs/TRAINING.md gives accuracy, training minutes and inference ms for each):
# - resnet-tiny: one BasicBlock per stage, widths 16..128, ~0.3 M parameters: demo models, fastest CPU lines;
# - resnet-small: ResNet-18's layout (two BasicBlocks per stage) at half width, ~2.8 M parameters, a quarter
#   of ResNet-18's compute: the CPU-only recommendation;
# - resnet18/34/50: the standard trunks (the paper uses resnet50): GPU training.
ARCH_SPECS: dict[str, ArchSpec] = {
    "resnet-tiny": ArchSpec(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), 16),
    "resnet-small": ArchSpec(BasicBlock, (2, 2, 2, 2), (32, 64, 128, 256), 32),
    "resnet18": ArchSpec(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": ArchSpec(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet50": ArchSpec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64),
}
ARCHS = tuple(ARCH_SPECS)

# Decoder width of both segmentation networks (ours and the DeepLabv3+ baseline: one width, so the comparison
# is of architecture, not of size). 256 is DeepLabv3+'s, for ResNet-50's 2048-channel deep features. On the
# small trunks the decoder's 3x3 convolutions at 1/4 resolution are most of a step: resnet-small at 256 took
# 13.5 s per training step (16 windows of 256x256, one core, under load) against 3.1 s at 64: 3 epochs in an
# hour before, 24 epochs in 36-47 minutes after (docs/RESULTS.md). Checkpoints record the width they were built with.
DECODER_WIDTH: dict[str, int] = {
    "resnet-tiny": 64,
    "resnet-small": 64,
    "resnet18": 256,
    "resnet34": 256,
    "resnet50": 256,
}
LEGACY_DECODER_WIDTH: dict[str, int] = {**DECODER_WIDTH, "resnet-small": 256}  # checkpoints without the field


def mean_std(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation constants for a network input of `in_channels` (from inspector.preprocess)."""
    return (MEAN_GRAY, STD_GRAY) if in_channels == 1 else (MEAN_RGB, STD_RGB)


class ImageStandardize(nn.Module):
    """Per-image standardisation of the (already normalised) input over its frame pixels: x -> (x - m) / s.

    m and s are the image's own mean and standard deviation over all channels, computed over the pixels that
    are not zero border (an input pixel of 0 in every channel, which is what `place_image` writes around a
    frame); the border stays 0. Why: on a line the lighting drifts and parts differ in brightness and contrast;
    normalising each image removes that before the first convolution, instead of leaving the network to learn
    the invariance from a few hundred images (it costs two reductions). Caveat, stated: a frame pixel that is 0
    in every channel (a clipped black) counts as border.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # The normalised value of a uint8 0: the border, per channel.
        zero = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
        self.register_buffer("zero", zero.view(1, -1, 1, 1))
        self.channels = float(len(mean))  # a constant, not x.shape[1]: no run-time shape arithmetic in the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = ((x - self.zero).abs().amax(dim=1, keepdim=True) > 1e-4).to(x.dtype)  # (N, 1, H, W)
        count = frame.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1.0) * self.channels
        mean = (x * frame).sum(dim=(1, 2, 3), keepdim=True) / count
        var = (((x - mean) * frame) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
        return (x - mean) / torch.sqrt(var + 1e-4) * frame


class Trunk(nn.Module):
    """ResNet conv1..layer4, returning the stage outputs a head needs.

    `channels` gives the output width of stem/layer1..layer4; `block` the residual block type (so the
    segmenter's branch can reuse the same kind); `strides` the total stride after each stage. With
    `standardize`, the input is standardised per image first (ImageStandardize).
    """

    def __init__(
        self, arch: str, in_channels: int, dilate: Sequence[bool] = (False, False, False), standardize: bool = False
    ):
        super().__init__()
        mean, std = mean_std(in_channels)
        self.standardize = ImageStandardize(mean, std) if standardize else None
        if arch not in ARCH_SPECS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        spec = ARCH_SPECS[arch]
        if any(dilate) and spec.block is not Bottleneck:
            raise ValueError(f"{arch} cannot be dilated (BasicBlock); use output stride 32 or resnet50")
        self.arch = arch
        self.block: Block = spec.block
        e = spec.block.expansion
        self.channels = (spec.stem, *(w * e for w in spec.widths))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, spec.stem, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(spec.stem),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stride, dilation, strides = 4, 1, [4]
        stages = []
        inplanes = spec.stem
        for i, (planes, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True)):
            s = 1
            if i > 0:
                if dilate[i - 1]:
                    dilation *= 2
                else:
                    s, stride = 2, stride * 2
                strides.append(stride)
            stages.append(make_stage(spec.block, inplanes, planes, blocks, s, dilation))
            inplanes = planes * e
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.strides = (2, *strides)  # stem (before maxpool), layer1..layer4
        init_weights(self)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(x) if self.standardize is not None else x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (layer1 features at 1/4, layer4 features at 1/strides[4])."""
        low = self.layer1(self.maxpool(self.stem(self.prepare(x))))
        deep = self.layer4(self.layer3(self.layer2(low)))
        return low, deep

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """-> [layer1, layer2, layer3, layer4] outputs (strides 4, 8, 16, 32 undilated)."""
        out = [self.layer1(self.maxpool(self.stem(self.prepare(x))))]
        for layer in (self.layer2, self.layer3, self.layer4):
            out.append(layer(out[-1]))
        return out


def init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, unit/zero batch norm: what torchvision's ResNet applies."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# --------------------------------------------------------------------------------------------- recognizer


class Recognizer(nn.Module):
    """Fully convolutional ResNet: the global pooling and the FC layer replaced by a 1x1 convolution.

    (N, C, H, W) -> logits (N, 2, H/32, W/32); channel 1 = defective. A 1x1 convolution applied at each cell is
    the FC layer applied to each 32x32 block's feature vector, so the network is the paper's classifier slid
    over the image in one pass.

    Mixed supervision (training only): with `aux`, a light dense head predicts the defect mask at stride 8 from
    layer2 fused with the upsampled layer4, so the pixel masks teach the trunk where defects are instead of
    only which 32x32 blocks hold one (SegDecNet's lesson: a dense loss at a coarse stride plus a block/image
    decision beats block labels alone). `forward` never runs it: the exported graph is the block head only.
    """

    def __init__(self, arch: str, in_channels: int, aux: bool = False, standardize: bool = False):
        super().__init__()
        self.trunk = Trunk(arch, in_channels, standardize=standardize)
        c = self.trunk.channels
        self.head = nn.Conv2d(c[4], 2, kernel_size=1)
        self.aux = DenseHead(c[2], c[4], width=max(32, c[2])) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, deep = self.trunk(x)
        return self.head(deep)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (block logits (N, 2, H/32, W/32), dense defect logits (N, 1, H/8, W/8) or None)."""
        layers = self.trunk.stages(x)
        blocks = self.head(layers[3])
        return blocks, (self.aux(layers[1], layers[3]) if self.aux is not None else None)


class DenseHead(nn.Module):
    """Stride-8 defect logits from layer2 and layer4 (1x1 projections, upsample, add, 3x3, 1x1)."""

    def __init__(self, mid_channels: int, deep_channels: int, width: int):
        super().__init__()
        self.mid = _conv_bn_relu(mid_channels, width, kernel=1)
        self.deep = _conv_bn_relu(deep_channels, width, kernel=1)
        self.fuse = _conv_bn_relu(width, width)
        self.out = nn.Conv2d(width, 1, kernel_size=1)
        init_weights(self)

    def forward(self, mid: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.deep(deep), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(self.mid(mid) + up))


def build_recognizer(arch: str, in_channels: int, aux: bool = False, standardize: bool = False) -> nn.Module:
    return Recognizer(arch, in_channels, aux, standardize)


def receptive_field(arch: str) -> int:
    """Theoretical receptive field (pixels) of one recognizer output cell, walked along the main path.

    The projection shortcuts (1x1, same stride as the block's strided conv) never reach further than the main
    path, so walking conv1, maxpool and every block's convolutions in order gives the network's extent.
    """
    trunk = Trunk(arch, 3)
    rf, jump = 1, 1
    layers: list[nn.Module] = [trunk.stem[0], trunk.maxpool]
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        for block in stage:
            layers += [m for name, m in block.named_children() if name.startswith("conv")]
    for m in layers:
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        d = m.dilation if isinstance(m.dilation, int) else m.dilation[0]
        rf += (k - 1) * d * jump
        jump *= s
    return rf


# ---------------------------------------------------------------------------------------------- classifier


class Classifier(nn.Module):
    """Baseline: the plain ResNet image classifier (global average pool + FC), logits (N, 2)."""

    def __init__(self, arch: str, in_channels: int, standardize: bool = False):
        super().__init__()
        self.trunk = Trunk(arch, in_channels, standardize=standardize)
        self.fc = nn.Linear(self.trunk.channels[4], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, deep = self.trunk(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(deep, 1), 1))


def build_classifier(arch: str, in_channels: int, standardize: bool = False) -> nn.Module:
    return Classifier(arch, in_channels, standardize)


# ----------------------------------------------------------------------------------------------- segmenter


def _dilation_for(arch: str, output_stride: int) -> tuple[bool, bool, bool]:
    """replace_stride_with_dilation for the requested deep-feature stride (ResNet-50 only; others stay at 32)."""
    if arch != "resnet50":
        return (False, False, False)
    return {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]


class Branch(nn.Module):
    """The high-resolution branch: a large-kernel stride-2 convolution and one ResNet first-stage, at 1/2.

    Same block type and width as the backbone's layer1 (3 Bottlenecks -> 256 channels for ResNet-50), but
    without the max-pool, so thin and few-pixel defects still span feature cells.
    """

    def __init__(self, trunk: Trunk, in_channels: int, kernel: int, blocks: int):
        super().__init__()
        stem = trunk.channels[0]
        self.stem = _conv_bn_relu(in_channels, stem, kernel=kernel, stride=2)
        self.stage = make_stage(trunk.block, stem, trunk.channels[1] // trunk.block.expansion, blocks)
        init_weights(self)
        self.out_channels = trunk.channels[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.stem(x))


class Segmenter(nn.Module):
    """DeepLabv3+ without ASPP, with the branch network, and a decoder of three upsampling steps.

    Decoder (input H x W, deep features at H/os):
      1. deep (1x1 projected) upsampled to 1/4, concatenated with layer1 (1x1 projected), two 3x3 convs;
      2. that upsampled to 1/2, concatenated with the branch (1x1 projected), two 3x3 convs, 1x1 classifier;
      3. logits upsampled to H x W.

    Training on a crop — `forward(x_full, branch_crop, crop_box)`: the backbone and decoder step 1 run on the
    whole image; the branch runs on `branch_crop`, which must be the pixels ``x_full[..., top:top+h,
    left:left+w]`` for each sample's ``crop_box = (top, left, h, w)`` (all multiples of 4, the stride of decoder
    step 1, so the 1/4 and 1/2 grids of the crop coincide with the full image's). Decoder step 1's output is
    cut out with one extra cell on every side, upsampled, and trimmed, so the bilinear interpolation at the cut
    sees the same neighbours as a full-image forward: inside the crop the fused features are exactly those of
    `forward(x_full)`. What differs is the branch near the crop's edge, where it sees zero padding instead of
    image — a band of about half its receptive field (~15 px for ResNet-50, checked by a test): the local
    crop the paper feeds its branch. The output covers only the crop, so the loss counts only the crop.
    """

    def __init__(
        self,
        arch: str,
        in_channels: int,
        num_classes: int,
        output_stride: int = 16,
        branch_kernel: int = 7,
        branch_blocks: int | None = None,
        decoder_width: int | None = None,
        standardize: bool = False,
        aux: bool = False,
    ):
        super().__init__()
        # Standardised once, here, so that the backbone and the branch see the same input (the branch crop is
        # cut from the standardised image, never standardised on its own statistics).
        self.standardize = ImageStandardize(*mean_std(in_channels)) if standardize else None
        self.trunk = Trunk(arch, in_channels, _dilation_for(arch, output_stride))
        c = self.trunk.channels
        width = decoder_width or DECODER_WIDTH[arch]
        skip = max(width // 4, 16)  # the projected layer1 and branch features
        blocks = branch_blocks or len(self.trunk.layer1)
        self.branch = Branch(self.trunk, in_channels, branch_kernel, blocks)
        self.deep_proj = _conv_bn_relu(c[4], width, kernel=1)  # stands where ASPP was
        self.low_proj = _conv_bn_relu(c[1], skip, kernel=1)
        self.fuse4 = nn.Sequential(_conv_bn_relu(width + skip, width), _conv_bn_relu(width, width))
        self.branch_proj = _conv_bn_relu(self.branch.out_channels, skip, kernel=1)
        half = max(width // 2, 16)
        self.fuse2 = nn.Sequential(_conv_bn_relu(width + skip, half), _conv_bn_relu(half, half))
        self.classifier = nn.Conv2d(half, num_classes, kernel_size=1)
        # Training only (`aux`): logits of decoder step 1 over the whole window. The crop loss reaches the
        # backbone only through the crop's quarter of the window; this head lets every labelled pixel of the
        # window teach it, as DeepLabv3+'s loss does. `forward` never runs it: the export is unchanged.
        self.window_head = nn.Conv2d(width, num_classes, kernel_size=1) if aux else None
        init_weights(nn.ModuleList([self.deep_proj, self.low_proj, self.fuse4, self.branch_proj, self.fuse2]))

    def _step1(self, x: torch.Tensor) -> torch.Tensor:
        low, deep = self.trunk(x)
        deep = F.interpolate(self.deep_proj(deep), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse4(torch.cat([deep, self.low_proj(low)], dim=1))

    def _step2(self, f4: torch.Tensor, branch_input: torch.Tensor) -> torch.Tensor:
        b = self.branch_proj(self.branch(branch_input))
        return self.classifier(self.fuse2(torch.cat([f4, b], dim=1)))

    def forward(
        self,
        x: torch.Tensor,
        branch_crop: torch.Tensor | None = None,
        crop_box: torch.Tensor | Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        return self._forward(x, branch_crop, crop_box)[0]

    def forward_train(
        self, x: torch.Tensor, branch_crop: torch.Tensor, crop_box: torch.Tensor | Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (the crop's logits, as `forward`; the whole window's logits from decoder step 1, upsampled to the
        window, or None without `aux`)."""
        logits, f4 = self._forward(x, branch_crop, crop_box)
        if self.window_head is None:
            return logits, None
        window = F.interpolate(self.window_head(f4), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, window

    def _forward(
        self,
        x: torch.Tensor,
        branch_crop: torch.Tensor | None,
        crop_box: torch.Tensor | Sequence[Sequence[int]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits, decoder step 1's features at 1/4)."""
        if self.standardize is not None:
            x = self.standardize(x)
            if branch_crop is not None and crop_box is not None:
                boxes = [[int(v) for v in box] for box in crop_box]
                branch_crop = torch.stack([x[i, :, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
        f4 = self._step1(x)
        if branch_crop is None:
            f2 = F.interpolate(f4, scale_factor=2.0, mode="bilinear", align_corners=False)
            logits = self._step2(f2, x)
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), f4
        if crop_box is None:
            raise ValueError("a branch crop needs its crop_box (top, left, height, width) per sample")
        h, w = branch_crop.shape[-2:]
        f2 = torch.cat([self._cut_and_upsample(f4[i : i + 1], box, (h, w)) for i, box in enumerate(crop_box)])
        logits = self._step2(f2, branch_crop)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), f4

    @staticmethod
    def _cut_and_upsample(f4: torch.Tensor, box: Sequence[int] | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The 1/2-resolution decoder features of the crop, identical to upsampling the whole map and cutting."""
        top, left, h, w = (int(v) for v in box)
        if (top, left, h, w) != tuple(v - v % 4 for v in (top, left, h, w)) or (h, w) != size:
            raise ValueError(f"crop box {(top, left, h, w)} must be multiples of 4 and match the crop {size}")
        t4, l4, h4, w4 = top // 4, left // 4, h // 4, w // 4
        H4, W4 = f4.shape[-2:]
        # One cell of context each side (bilinear x2 reads at most one neighbour), clamped at the image edge,
        # where a full-image upsample replicates the edge cell exactly as this cut does.
        y0, y1 = max(t4 - 1, 0), min(t4 + h4 + 1, H4)
        x0, x1 = max(l4 - 1, 0), min(l4 + w4 + 1, W4)
        up = F.interpolate(f4[..., y0:y1, x0:x1], scale_factor=2.0, mode="bilinear", align_corners=False)
        oy, ox = 2 * (t4 - y0), 2 * (l4 - x0)
        return up[..., oy : oy + h // 2, ox : ox + w // 2]


def build_segmenter(
    arch: str,
    in_channels: int,
    num_classes: int,
    output_stride: int = 16,
    standardize: bool = False,
    decoder_width: int | None = None,
    aux: bool = False,
) -> nn.Module:
    return Segmenter(
        arch,
        in_channels,
        num_classes,
        output_stride=output_stride,
        standardize=standardize,
        decoder_width=decoder_width,
        aux=aux,
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017/2018): a 1x1 conv, three dilated 3x3 convs and image
    pooling in parallel, concatenated and projected, with dropout 0.5 as in DeepLabv3 (the baseline only)."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256):
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, out_channels, kernel=1)]
        for rate in rates:
            branches.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            _conv_bn_relu(out_channels * (len(branches) + 1), out_channels, kernel=1), nn.Dropout(0.5)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """Baseline: the original DeepLabv3+ (ASPP on the deep features, layer1 skip, two x4 upsamplings)."""

    def __init__(
        self,
        arch: str,
        in_channels: int,
        num_classes: int,
        output_stride: int = 16,
        standardize: bool = False,
        decoder_width: int | None = None,
    ):
        super().__init__()
        self.trunk = Trunk(arch, in_channels, _dilation_for(arch, output_stride), standardize=standardize)
        c = self.trunk.channels
        width = decoder_width or DECODER_WIDTH[arch]
        skip = 48 if width >= 256 else max(width // 4, 16)  # DeepLabv3+'s 48 for its 256 decoder
        rates = (12, 24, 36) if self.trunk.strides[4] == 8 else (6, 12, 18)
        self.aspp = ASPP(c[4], list(rates), out_channels=width)
        self.low_proj = _conv_bn_relu(c[1], skip, kernel=1)
        self.fuse = nn.Sequential(_conv_bn_relu(width + skip, width), _conv_bn_relu(width, width))
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)
        init_weights(nn.ModuleList([self.low_proj, self.fuse]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, deep = self.trunk(x)
        deep = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(torch.cat([deep, self.low_proj(low)], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_deeplabv3plus(
    arch: str,
    in_channels: int,
    num_classes: int,
    output_stride: int = 16,
    standardize: bool = False,
    decoder_width: int | None = None,
) -> nn.Module:
    return DeepLabV3Plus(
        arch,
        in_channels,
        num_classes,
        output_stride=output_stride,
        standardize=standardize,
        decoder_width=decoder_width,
    )


def build_model(
    task: str,
    arch: str,
    in_channels: int,
    num_classes: int = 2,
    output_stride: int = 16,
    aux: bool = False,
    standardize: bool = False,
    decoder_width: int | None = None,
) -> nn.Module:
    """Any of the four networks by task name (num_classes counts background; segmentation tasks only; `aux`:
    the training-only head of the recognizer (dense mask) or of the segmenter (whole-window logits);
    `standardize`: per-image input standardisation; `decoder_width`: the segmentation decoders' channels,
    None = DECODER_WIDTH[arch])."""
    if task == "recognizer":
        return build_recognizer(arch, in_channels, aux, standardize)
    if task == "classifier":
        return build_classifier(arch, in_channels, standardize)
    if task == "segmenter":
        return build_segmenter(arch, in_channels, num_classes, output_stride, standardize, decoder_width, aux)
    if task == "deeplabv3plus":
        return build_deeplabv3plus(arch, in_channels, num_classes, output_stride, standardize, decoder_width)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


# ------------------------------------------------------------------------------------------------- export


class Normalize(nn.Module):
    """uint8 NHWC -> float32 NCHW, (x/255 - mean) / std: the preprocessing folded into the exported graph."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cast before permuting: TensorRT refuses uint8 intermediate tensors (a uint8 Transpose), and the
        # two orders are numerically identical.
        return (x.float().permute(0, 3, 1, 2) - self.mean) / self.std


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Training's normalisation of a uint8 NHWC batch: the same arithmetic as the exported graph."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x.permute(0, 3, 1, 2).float() - m) / s


class Deployed(nn.Module):
    """What is exported: uint8 NHWC frames in, probabilities out (see inspector.manifest's conventions).

    - recognizer (and classifier, as a 1x1 grid): block_scores (N, gh, gw) = P(defective);
    - segmenter / deeplabv3plus: pixel_scores (N, C, H, W), softmax over classes, class 0 background.
    No data-dependent control flow: the task is fixed at construction.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Literal["recognizer", "segmenter", "classifier", "deeplabv3plus"],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        self.normalize = Normalize(mean, std)
        self.model = model
        self.task = task

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.normalize(image))
        if self.task in ("recognizer", "classifier"):
            if self.task == "classifier":
                logits = logits[:, :, None, None]
            return torch.softmax(logits, dim=1)[:, 1]
        return torch.softmax(logits, dim=1)
