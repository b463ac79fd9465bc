"""DeepLab-v2 (Chen et al., TPAMI 2017) as kazuto1011/deeplab-pytorch builds it, on the project's ResNet (net/).

- Backbone: ResNet-101 (or ResNet-50 for tests and the demo) with frozen BatchNorm, output stride 8: strides
  (2, 2, 1, 1) and dilation 2 in layer3, 4 in layer4 (every block of a layer gets its layer's dilation, as the
  Caffe DeepLab). torchvision layout: the stride sits on the 3x3 conv and the stem max-pool rounds down; the
  Caffe/MSRA model of deeplab-pytorch strides on the 1x1 conv and rounds the max-pool up (docs/deeplab.md).
- ASPP: four 3x3 convs from 2048 channels straight to the classes (background included), rates 6/12/18/24,
  with bias, weights N(0, 0.01), bias 0; their outputs are summed.
- MSC: the logits of the image at 1.0, 0.75 and 0.5 and their pixel-wise max on the 1.0 grid. In training all
  four are returned (each gets a loss), in eval only the max.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import DataError
from misc.fileio import load_checkpoint, load_weights, save_checkpoint
from net.resnet50 import FixedBatchNorm, resnet50, resnet101

ARCHS = {"resnet101": resnet101, "resnet50": resnet50}
ASPP_RATES = (6, 12, 18, 24)
MSC_SCALES = (1.0, 0.75, 0.5)  # deeplab-pytorch: the full image plus [0.5, 0.75]
OUTPUT_STRIDE = 8


class ASPP(nn.Module):
    """DeepLab-v2's atrous spatial pyramid: parallel dilated 3x3 convs to class logits, summed."""

    def __init__(self, in_channels, num_outputs, rates=ASPP_RATES):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, num_outputs, 3, padding=r, dilation=r, bias=True)
                                   for r in rates)
        for conv in self.convs:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Backbone + ASPP: (N, 3, H, W) normalised image -> (N, num_outputs, ceil(H/8), ceil(W/8)) logits."""

    def __init__(self, num_outputs, arch="resnet101"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown DeepLab backbone {arch!r}; choose from {', '.join(ARCHS)}")
        self.arch = arch
        self.num_outputs = num_outputs
        self.backbone = ARCHS[arch](strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4))
        self.aspp = ASPP(self.backbone.out_channels, num_outputs)
        self.freeze_batchnorm()

    def freeze_batchnorm(self):
        """BN is fully frozen (deeplab-pytorch: eval-mode BN and BN parameters left out of the optimiser):
        FixedBatchNorm already normalises with its running statistics; its affine parameters get no gradient."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)

    def forward(self, x):
        b = self.backbone
        x = b.layer4(b.layer3(b.layer2(b.layer1(b.stem(x)))))
        return self.aspp(x)


def logit_size(size):
    """Size of the stride-8 logits of an (H, W) input: each of the three stride-2 ops maps n to ceil(n / 2)."""
    h, w = size
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (deeplab-pytorch's MSC).

    Each scale s resizes the input bilinearly (align_corners=False, size floor(s * H)), the base model gives its
    logits, and these are resized bilinearly to the 1.0 input's logit grid where their pixel-wise max is taken.
    Training: [logits at each scale..., max]; eval: the max only. `scales` may be given per call (inference).
    """

    def __init__(self, base, scales=MSC_SCALES):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x, scales=None):
        scales = tuple(scales or self.scales)
        grid = logit_size(x.shape[-2:])
        logits = []
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            logits.append(self.base(xs))
        on_grid = [l if tuple(l.shape[-2:]) == grid else
                   F.interpolate(l, size=grid, mode="bilinear", align_corners=False) for l in logits]
        fused = on_grid[0]
        for l in on_grid[1:]:
            fused = torch.maximum(fused, l)
        return logits + [fused] if self.training else fused


def build_deeplab(num_outputs, arch="resnet101"):
    """The trained network: MSC around DeepLab-v2."""
    return MSC(DeepLabV2(num_outputs, arch))


def parameter_groups(model, lr, weight_decay):
    """deeplab-pytorch's three SGD groups: backbone conv weights at lr (1x), ASPP weights at 10x lr, ASPP biases
    at 20x lr without weight decay. BN parameters are in no group (frozen). Each group keeps its `lr_mult`."""
    net = model.base if isinstance(model, MSC) else model
    backbone = [m.weight for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    aspp_weights = [c.weight for c in net.aspp.convs]
    aspp_biases = [c.bias for c in net.aspp.convs]
    return [{"params": backbone, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"params": aspp_weights, "lr": 10 * lr, "lr_mult": 10.0, "weight_decay": weight_decay},
            {"params": aspp_biases, "lr": 20 * lr, "lr_mult": 20.0, "weight_decay": 0.0}]


def poly_lr(base_lr, iteration, max_iter, power=0.9, step=10):
    """deeplab-pytorch's PolynomialLR: base * (1 - k / max) ** power, with k = iteration rounded down to a multiple
    of `step` (the rate is updated every `step` iterations; LR_DECAY 10). A pure function of the iteration, so a
    resumed run has exactly the uninterrupted run's rate."""
    k = min((iteration // step) * step, max_iter)
    return base_lr * (1 - k / max_iter) ** power


def set_lr(optimizer, base_lr):
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)


def batchnorm_modules(model):
    return [m for m in model.modules() if isinstance(m, FixedBatchNorm)]


# --- checkpoints ---------------------------------------------------------------------------------------------------


def save_deeplab(path, model, arch, class_names, **meta):
    net = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_checkpoint(path, state, arch=arch, num_outputs=len(class_names) + 1, class_names=list(class_names), **meta)


def load_deeplab(path, num_outputs, arch, made_by="train_deeplab"):
    """The MSC DeepLab of a checkpoint, on the CPU, in eval mode. Another backbone or class count is an error
    naming the file and the flag."""
    ckpt = load_checkpoint(path, "DeepLab checkpoint", made_by=made_by)
    state = ckpt["state_dict"]
    weight = state.get("base.aspp.convs.0.weight")
    if weight is None:
        raise DataError(f"{path} is not a DeepLab checkpoint of this project (no ASPP weights); train one with "
                        f"--only {made_by}")
    saved_arch = ckpt.get("arch")
    if saved_arch is not None and saved_arch != arch:
        raise DataError(f"{path} is a {saved_arch} DeepLab but --seg_arch is {arch}; pass --seg_arch {saved_arch} "
                        f"or retrain with --overwrite {made_by}")
    if weight.shape[0] != num_outputs:
        raise DataError(f"{path} predicts {weight.shape[0]} classes (background included) but the dataset has "
                        f"{num_outputs}; use a checkpoint trained on this dataset or retrain with --overwrite "
                        f"{made_by}")
    model = load_weights(build_deeplab(num_outputs, arch), state, path, f"a {arch} DeepLab checkpoint", made_by,
                         fix=f"pass the --seg_arch it was trained with or retrain with --overwrite {made_by}")
    return model.eval()
