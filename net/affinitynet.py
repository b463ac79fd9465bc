"""AffinityNet (PSA; Ahn & Kwak, CVPR 2018): a 448-channel feature map at stride 8 whose L1 distances give the
affinities of pixel pairs (net/psa_affinity.py).

Three backbone levels go through bias-free 1x1 convolutions to 64, 128 and 256 channels with ELU, are
concatenated (448) and mixed by a 1x1 conv (448 -> 448) with ELU. Layer names follow PSA (f8_3, f8_4, f8_5, f9)
and so does their initialisation (Kaiming normal; Xavier uniform with gain 4 for f9).

Backbones (--psa_backbone):
- resnet50 (default here): torchvision-named ResNet-50 with strides (2, 2, 1, 1) and dilations (1, 1, 2, 4), so
  layer2, layer3 and layer4 are all at stride 8; the levels are their outputs (512, 1024, 2048 channels). The
  stem and layer1 are frozen, as PSA freezes ResNet-38's first conv and first stage.
- resnet38: PSA's own wide ResNet-38 (net/resnet38.py); levels of 512, 1024 and 4096 channels, dropout in b6/b7.
BatchNorm is frozen (statistics and affine parameters) in both, as in PSA.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import DataError
from net.resnet38 import ResNet38, load_resnet38_weights
from net.resnet50 import FixedBatchNorm, load_backbone_weights, resnet50

BACKBONES = ("resnet50", "resnet38")
CHECKPOINT_KIND = "psa_affinitynet"
NEW_LAYERS = ("f8_3", "f8_4", "f8_5", "f9")


class AffinityNet(nn.Module):
    def __init__(self, backbone="resnet50", backbone_weights="none"):
        super().__init__()
        if backbone == "resnet50":
            self.backbone = load_backbone_weights(resnet50(strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)),
                                                  backbone_weights)
            channels = (512, 1024, 2048)
            b = self.backbone
            frozen = [b.conv1, b.bn1, b.layer1]
        elif backbone == "resnet38":
            self.backbone = load_resnet38_weights(ResNet38(), backbone_weights)
            channels = ResNet38.level_channels
            frozen = self.backbone.frozen_modules()
        else:
            raise ValueError(f"unknown AffinityNet backbone {backbone!r}; choose from {BACKBONES}")
        self.backbone_name = backbone
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        for module in self.backbone.modules():
            if isinstance(module, FixedBatchNorm):
                for p in module.parameters():
                    p.requires_grad_(False)

        self.f8_3 = nn.Conv2d(channels[0], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(channels[1], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(channels[2], 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def levels(self, x):
        if self.backbone_name == "resnet38":
            return self.backbone.levels(x)
        b = self.backbone
        x3 = b.layer2(b.layer1(b.stem(x)))
        x4 = b.layer3(x3)
        return x3, x4, b.layer4(x4)

    def forward(self, x):
        """Image (N, 3, H, W) -> affinity features (N, 448, ceil(H/8), ceil(W/8)) for H, W multiples of 8."""
        x3, x4, x5 = self.levels(x)
        merged = torch.cat([F.elu(self.f8_3(x3)), F.elu(self.f8_4(x4)), F.elu(self.f8_5(x5))], dim=1)
        return F.elu(self.f9(merged))

    def parameter_groups(self):
        """PSA's four groups: backbone weights (lr, wd), backbone biases (2 lr, no wd), new-layer weights
        (10 lr, wd), new-layer biases (20 lr, no wd); frozen parameters are in none."""
        groups = ([], [], [], [])
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            new = name.split(".")[0] in NEW_LAYERS
            groups[2 * new + name.endswith("bias")].append(p)
        return groups


def load_affinity_net(path, backbone, num_classes, device="cpu"):
    """AffinityNet from sess/psa_aff.pth (weights_only). A checkpoint of another kind (IRNet, classifier), of
    another backbone, or trained on the labels of a dataset with another class count is a DataError."""
    from misc.fileio import load_checkpoint, load_weights
    ckpt = load_checkpoint(path, "AffinityNet checkpoint", made_by="train_aff")
    state = ckpt["state_dict"]
    if ckpt.get("kind") != CHECKPOINT_KIND or "f9.weight" not in state:
        what = ckpt.get("kind") or ("an IRNet checkpoint" if "fc_edge6.weight" in state else
                                    "a classifier checkpoint" if "classifier.weight" in state else "unknown")
        raise DataError(f"{path} is not an AffinityNet checkpoint of this project ({what}); remake it with "
                        f"--overwrite train_aff")
    if ckpt.get("backbone") != backbone:
        raise DataError(f"{path} has a {ckpt.get('backbone')} backbone but --psa_backbone is {backbone}; pass "
                        f"--psa_backbone {ckpt.get('backbone')}, or retrain with --overwrite train_aff")
    if ckpt.get("num_classes") != num_classes:
        raise DataError(f"{path} was trained on the labels of a dataset with {ckpt.get('num_classes')} classes but "
                        f"the dataset has {num_classes}; use this dataset's work dir, or retrain with "
                        f"--overwrite train_aff")
    model = load_weights(AffinityNet(backbone, "none"), state, path, f"a {backbone} AffinityNet checkpoint",
                         "train_aff")
    return model.to(device).eval()
