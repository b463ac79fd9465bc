"""Self-contained ResNet-50/101 (no torchvision import) with frozen BatchNorm, in torchvision's parameter naming so
that torchvision ImageNet state dicts load directly.

IRN/RIB use strides (2, 2, 2, 1): conv1 2, max-pool 2, layer2 2, layer3 2, layer4 1 -> output stride 16, with no
dilation in layer4. DeepLab-v2 uses strides (2, 2, 1, 1) with dilations (1, 1, 2, 4) -> output stride 8.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import DataError

IMAGENET_URLS = {
    # The files IRN loads (torchvision's original ImageNet weights).
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
}


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (IRN's FixedBatchNorm): the batch of a
    WSSS classifier is small and its statistics would be noisy. The affine weight and bias can still be trained.

    `calibrating = True` switches one module to accumulate running statistics from the batches it sees
    (cumulative average); used only to give a randomly initialised network sensible statistics.
    """

    calibrating = False

    def forward(self, x):
        if self.calibrating:
            self.num_batches_tracked += 1  # cumulative average: factor 1/n for the n-th batch
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                True, 1.0 / float(self.num_batches_tracked), self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = FixedBatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FixedBatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FixedBatchNorm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers, strides=(2, 2, 2, 1), dilations=(1, 1, 1, 1)):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=strides[0], padding=3, bias=False)
        self.bn1 = FixedBatchNorm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, dilations[0])
        self.layer2 = self._make_layer(128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3], dilations[3])
        self.out_channels = 2048
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride, dilation):
        downsample = None
        if stride != 1 or self.in_planes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, planes * 4, 1, stride=stride, bias=False),
                                       FixedBatchNorm(planes * 4))
        layers = [Bottleneck(self.in_planes, planes, stride, downsample, dilation)]
        self.in_planes = planes * 4
        layers += [Bottleneck(self.in_planes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def resnet50(strides=(2, 2, 2, 1), dilations=(1, 1, 1, 1)):
    return ResNet([3, 4, 6, 3], strides, dilations)


def resnet101(strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)):
    return ResNet([3, 4, 23, 3], strides, dilations)


def load_backbone_weights(model, spec, arch="resnet50", flag="--backbone_weights"):
    """Fill `model` (a ResNet) from `spec` = 'none' (keep random init), 'imagenet' (download torchvision's weights
    into the torch hub cache; only when asked) or a path: a torchvision-format state dict, or a checkpoint of this
    project whose network holds the ResNet as `backbone.` (e.g. the classifier sess/res50_cam.pth: the demo,
    without ImageNet weights, starts DeepLab from the classifier it trained). `flag` names the option in errors."""
    if spec is None or spec == "none":
        return model
    if spec == "imagenet":
        url = IMAGENET_URLS[arch]
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
        except Exception as e:  # URLError, HTTPError, timeouts...
            raise DataError(f"{flag} imagenet: could not download {url} ({e}). Offline? Download the "
                            f"file elsewhere and pass its path with {flag} PATH") from e
    else:
        if not os.path.isfile(spec):
            raise DataError(f"{flag} {spec}: no such file; give a torchvision-format {arch} state "
                            f"dict, 'imagenet' to download it, or 'none' for random initialisation")
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"{flag} {spec} is not a loadable state dict ({e})") from e
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if any(k.startswith("backbone.") for k in state):  # a project checkpoint: its backbone only
            state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise DataError(f"{flag} {spec} does not match {arch}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    return model


@torch.no_grad()
def calibrate_batchnorm(model, batches):
    """Set every FixedBatchNorm's running statistics to the data's (cumulative average over `batches`).

    Only for randomly initialised backbones (`--backbone_weights none`, tests and the demo): frozen BatchNorm
    with default statistics (mean 0, var 1) does not normalise anything, and a deep random ResNet then produces
    activations that grow by orders of magnitude from block to block. ImageNet weights bring their own statistics.
    All layers calibrate in one pass: while calibrating, each normalises with its batch statistics, so the
    layers after it already see normalised inputs (as in ordinary train-mode BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, FixedBatchNorm)]
    was_training = model.training
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.calibrating = True
    for x in batches:
        model(x)
    for bn in bns:
        bn.calibrating = False
    model.train(was_training)
