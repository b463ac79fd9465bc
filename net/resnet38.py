"""PSA's wide ResNet-38 (Wu, Shen & van den Hengel's model A1, as PSA's network/resnet38d.py builds it), with the
parameter names of PSA's PyTorch port so that its converted weights load directly.

Pre-activation blocks (BN -> ReLU -> conv); output stride 8 (conv1a stride 1, b2, b3, b4 stride 2), then dilated
stages b5 (dilation 2), b6 and b7 (dilation 4, bottleneck blocks with dropout 0.3 / 0.5), and bn7 + ReLU:
  b2   64 -> 128 (x3)    b3  128 -> 256 (x3)    b4  256 -> 512 (x6)    b5  512 -> 1024 (x3)
  b6 1024 -> 2048        b7 2048 -> 4096        about 104 M parameters.
AffinityNet reads three levels: the BN-ReLU input of b5 (512 ch), of b6 (1024 ch), and the final map (4096 ch).
BatchNorm is frozen (FixedBatchNorm), as PSA sets every BN to eval mode while training.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import DataError
from net.resnet50 import FixedBatchNorm

# PSA names the heads it puts on this backbone: fc8 (classifier), f8_* / f9 (AffinityNet); linear1000 is the
# ImageNet classifier of the converted MXNet file. None of them is part of the backbone.
HEAD_PREFIXES = ("fc8.", "f8_", "f9.", "linear1000")


class PreActBlock(nn.Module):
    """Two 3x3 convolutions (PSA's ResBlock). The shortcut is the raw input when the shape is kept, else a 1x1
    conv of the BN-ReLU'd input."""

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = FixedBatchNorm(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation, dilation=first_dilation,
                                       bias=False)
        self.bn_branch2b1 = FixedBatchNorm(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x):
        """-> (output, BN-ReLU'd input): the second is the level AffinityNet reads."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        out = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        return shortcut + out, pre


class PreActBottleneck(nn.Module):
    """1x1 -> 3x3 (dilated) -> 1x1 with channels out/4, out/2, out and dropout before the last two convolutions
    (PSA's ResBlock_bot); the shortcut is always a 1x1 conv."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.bn_branch2a = FixedBatchNorm(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = FixedBatchNorm(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = FixedBatchNorm(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn_branch2a(x))
        out = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre)))))
        out = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(out))))
        return self.conv_branch1(pre) + out, pre


class ResNet38(nn.Module):
    level_channels = (512, 1024, 4096)

    def __init__(self):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = PreActBlock(64, 128, 128, stride=2)
        self.b2_1 = PreActBlock(128, 128, 128)
        self.b2_2 = PreActBlock(128, 128, 128)
        self.b3 = PreActBlock(128, 256, 256, stride=2)
        self.b3_1 = PreActBlock(256, 256, 256)
        self.b3_2 = PreActBlock(256, 256, 256)
        self.b4 = PreActBlock(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", PreActBlock(512, 512, 512))
        self.b5 = PreActBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = PreActBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = PreActBlock(1024, 512, 1024, dilation=2)
        self.b6 = PreActBottleneck(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = PreActBottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = FixedBatchNorm(4096)

    def frozen_modules(self):
        """The layers PSA never trains (its `not_training`): the first conv and the first stage."""
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def levels(self, x):
        """(BN-ReLU input of b5, BN-ReLU input of b6, final map): 512, 1024 and 4096 channels at stride 8."""
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"):
            x, _ = getattr(self, name)(x)
        x, level3 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, level4 = self.b6(x)
        x, _ = self.b7(x)
        return level3, level4, F.relu(self.bn7(x))

    def forward(self, x):
        return self.levels(x)[-1]


def load_resnet38_weights(model, spec, flag="--psa_backbone_weights"):
    """Fill a ResNet38 from `spec`: 'none' keeps the random init; a path is a PyTorch state dict in PSA's naming
    (PSA's ImageNet weights converted from MXNet, or one of PSA's trained models: heads are ignored)."""
    if spec in (None, "", "none"):
        return model
    convert_hint = ("PSA's ResNet-38 ImageNet weights are the MXNet file ilsvrc-cls_rna-a1_cls1000_ep-0001.params; "
                    "convert it to a PyTorch state dict with PSA's network/resnet38d.convert_mxnet_to_torch (needs "
                    "mxnet), save it with torch.save, and pass that .pth")
    if spec == "imagenet" or str(spec).endswith(".params"):
        raise DataError(f"{flag} {spec}: cannot be loaded here. {convert_hint}")
    if not os.path.isfile(spec):
        raise DataError(f"{flag} {spec}: no such file. {convert_hint}; or pass none for random initialisation")
    try:
        state = torch.load(spec, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files that are not checkpoints
        raise DataError(f"{flag} {spec} is not a loadable PyTorch state dict ({type(e).__name__}). "
                        f"{convert_hint}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{flag} {spec} does not hold a state dict. {convert_hint}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing = [k for k in own if k not in backbone and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in backbone if k not in own]
    wrong_shape = [k for k in backbone if k in own and tuple(backbone[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        raise DataError(f"{flag} {spec} is not a ResNet-38 state dict in PSA's naming: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shape {wrong_shape[:3]} (a ResNet-50 file? use "
                        f"--psa_backbone resnet50 with --backbone_weights)")
    model.load_state_dict(backbone, strict=False)
    return model
