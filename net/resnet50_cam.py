"""Multi-label classifier of IRN/RIB: ResNet-50 (output stride 16) -> GAP -> bias-free 1x1 conv with C outputs.

Because the classifier is linear and has no bias, the logit of class c equals the GAP of the raw class map
w_c^T f(x) (Zhang et al.; paper Sec. 3.2), so every pooling (GAP, GNDRP) can work on `class_maps`.
"""
import torch.nn as nn
import torch.nn.functional as F

from net.resnet50 import load_backbone_weights, resnet50


class Net(nn.Module):
    def __init__(self, num_classes, backbone_weights="none"):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = load_backbone_weights(resnet50(strides=(2, 2, 2, 1)), backbone_weights)
        self.classifier = nn.Conv2d(2048, num_classes, 1, bias=False)
        # IRN trains layer3, layer4 (BN affine included) and the classifier; the stem, layer1 and layer2 stay as
        # initialised (their output is also detached in `features`, so no gradient reaches them).
        for module in (self.backbone.conv1, self.backbone.bn1, self.backbone.layer1, self.backbone.layer2):
            for p in module.parameters():
                p.requires_grad_(False)

    def features(self, x):
        b = self.backbone
        x = b.layer2(b.layer1(b.stem(x))).detach()
        return b.layer4(b.layer3(x))

    def class_maps(self, x):
        """Raw (pre-ReLU) class maps (N, C, h, w) at stride 16."""
        return F.conv2d(self.features(x), self.classifier.weight)

    def forward(self, x):
        """Classification logits (N, C): GAP then the classifier (IRN's order)."""
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def trainable_parameter_groups(self):
        """(backbone parameters, classifier parameters); the classifier gets 10x the learning rate."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())


def flip_merged_cam(class_maps_pair):
    """(2, C, h, w) raw maps of [image, h-flipped image] -> (C, h, w) ReLU map merged with its flip back (IRN)."""
    cams = F.relu(class_maps_pair)
    return cams[0] + cams[1].flip(-1)


def check_class_count(state_dict, num_classes, path):
    """A classifier checkpoint trained on another dataset (80 COCO vs 20 VOC classes) must not load silently."""
    from misc.errors import DataError
    weight = state_dict.get("classifier.weight")
    if weight is None:
        raise DataError(f"{path} is not a classifier checkpoint of this project (no classifier.weight); "
                        f"train one with --only train_cam")
    if weight.shape[0] != num_classes:
        raise DataError(f"{path} has {weight.shape[0]} classes but the dataset has {num_classes}; use a "
                        f"checkpoint trained on this dataset (or retrain with --overwrite train_cam)")


def load_classifier(path, num_classes, device="cpu"):
    """The trained classifier theta_0 from `sess/res50_cam.pth` (weights_only load, class count checked)."""
    from misc.fileio import load_checkpoint, load_weights
    ckpt = load_checkpoint(path, "classifier checkpoint", made_by="train_cam")
    check_class_count(ckpt["state_dict"], num_classes, path)
    model = load_weights(Net(num_classes), ckpt["state_dict"], path, "a classifier checkpoint", "train_cam")
    return model.to(device).eval()
