"""The toy classifier of Sec. 3.1: five 3x3 conv layers (each followed by ReLU) and one fully connected layer.

The FC layer sits on globally average-pooled T_5, i.e. y = w^T GAP(T_5), the form of the paper's final layer
(p = sigmoid(w^T GAP(T_L)), Sec. 3.1) and of CAM. It has no bias, like the CAM classifiers of the main pipeline.
There is no batch norm: samples of a batch stay independent, so the gradient of a batch sum with respect to the
input gives every image's own gradient map, and RIB's per-image fine-tuning has no running statistics to manage.
"""
import torch.nn as nn
import torch.nn.functional as F


class ToyCNN(nn.Module):
    def __init__(self, in_channels=1, widths=(16, 32, 32, 64, 64), strides=(1, 2, 1, 2, 1), num_classes=2):
        super().__init__()
        if len(widths) != 5 or len(strides) != 5:
            raise ValueError("the toy classifier has exactly five conv layers (Sec. 3.1)")
        convs = []
        prev = in_channels
        for width, stride in zip(widths, strides):
            # padding 1 keeps the border pixels inside every receptive field, so background pixels at the
            # image edge get gradients through the same path as central ones.
            convs.append(nn.Conv2d(prev, width, kernel_size=3, stride=stride, padding=1))
            prev = width
        self.convs = nn.ModuleList(convs)
        self.classifier = nn.Linear(prev, num_classes, bias=False)
        for conv in self.convs:
            # He init keeps the activation scale through the ReLU stack; PyTorch's default init shrinks it layer
            # by layer, and without batch norm the BCE loss then sits at log(2) for the first epochs.
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward_features(self, x):
        """Return ([T_1, ..., T_5], logits): T_l is the l-th conv layer's output after its ReLU."""
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))
            feats.append(x)
        logits = self.classifier(x.mean(dim=(2, 3)))
        return feats, logits

    def forward(self, x):
        return self.forward_features(x)[1]

