"""IRNet (Ahn et al., CVPR 2019): class-boundary and displacement branches on a frozen ResNet-50.

The backbone (strides 2, 2, 2, 1: output stride 16) is never trained: its stage outputs are computed without
gradient and its BatchNorm is frozen. Both branches read all five backbone levels:
  stem (64 ch, stride 4), layer1 (256, stride 4), layer2 (512, stride 8), layer3 (1024, 16), layer4 (2048, 16).
- boundary branch: per level 1x1 conv to 32 channels + GroupNorm(4) + ReLU, upsampled to stride 4, concatenated
  (160 channels), 1x1 conv to one boundary logit;
- displacement branch: a two-stage decoder (stride 8 levels -> 256 channels at stride 8, upsampled and merged
  with the stride 4 levels) ending in a 1x1 conv to a 2-channel displacement field (dy, dx) per pixel, then
  `MeanShift`, which in eval mode subtracts the mean displacement stored after training.
Layer names (fc_edge1..6, fc_dp1..7) follow IRN's so that readers can compare.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc import imutils
from net import irn_affinity
from net.resnet50 import load_backbone_weights, resnet50


def _reduce(in_ch, out_ch, groups, upsample=1):
    """1x1 conv (no bias) + GroupNorm (+ bilinear upsampling) + ReLU: IRN's per-level block."""
    layers = [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.GroupNorm(groups, out_ch)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    """Subtracts the mean displacement (stored after training) in eval mode; identity while training."""

    def __init__(self, num_features=2):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x):
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class IRNet(nn.Module):
    def __init__(self, backbone_weights="none"):
        super().__init__()
        self.backbone = load_backbone_weights(resnet50(strides=(2, 2, 2, 1)), backbone_weights)
        for p in self.backbone.parameters():
            p.requires_grad_(False)

        # boundary branch: every level -> 32 channels at stride 4
        self.fc_edge1 = _reduce(64, 32, 4)
        self.fc_edge2 = _reduce(256, 32, 4)
        self.fc_edge3 = _reduce(512, 32, 4, upsample=2)
        self.fc_edge4 = _reduce(1024, 32, 4, upsample=4)
        self.fc_edge5 = _reduce(2048, 32, 4, upsample=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

        # displacement branch: stride 8/16 levels merged at stride 8, then with the stride 4 levels
        self.fc_dp1 = _reduce(64, 64, 8)
        self.fc_dp2 = _reduce(256, 128, 16)
        self.fc_dp3 = _reduce(512, 256, 16)
        self.fc_dp4 = _reduce(1024, 256, 16, upsample=2)
        self.fc_dp5 = _reduce(2048, 256, 16, upsample=2)
        self.fc_dp6 = _reduce(768, 256, 16, upsample=2)
        self.fc_dp7 = nn.Sequential(_reduce(448, 256, 16), nn.Conv2d(256, 2, 1, bias=False))
        self.mean_shift = MeanShift(2)

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # frozen: FixedBatchNorm anyway, but keep the backbone out of training mode
        return self

    def backbone_levels(self, x):
        """The five stage outputs, computed without gradient (IRN detaches them all)."""
        b = self.backbone
        with torch.no_grad():
            x1 = b.stem(x)
            x2 = b.layer1(x1)
            x3 = b.layer2(x2)
            x4 = b.layer3(x3)
            x5 = b.layer4(x4)
        return x1, x2, x3, x4, x5

    def forward(self, x):
        """Image (N, 3, H, W) -> boundary logits (N, 1, ceil(H/4), ceil(W/4)), displacement (N, 2, same)."""
        levels = self.backbone_levels(x)
        return self.edge_head(levels), self.displacement_head(levels)

    def boundary_logits(self, x):
        """The boundary logits of forward(x) alone: the displacement branch (~1/8 of IRNet's operations at
        inference), which the random walk never reads, is not computed."""
        return self.edge_head(self.backbone_levels(x))

    def edge_head(self, levels):
        x1, x2, x3, x4, x5 = levels
        h, w = x2.shape[-2:]  # stride 4; upsampled coarser levels can be 1-3 pixels larger: crop them
        edge = torch.cat([self.fc_edge1(x1), self.fc_edge2(x2), self.fc_edge3(x3)[..., :h, :w],
                          self.fc_edge4(x4)[..., :h, :w], self.fc_edge5(x5)[..., :h, :w]], dim=1)
        return self.fc_edge6(edge)

    def displacement_head(self, levels):
        x1, x2, x3, x4, x5 = levels
        h, w = x2.shape[-2:]
        dp3 = self.fc_dp3(x3)
        h8, w8 = dp3.shape[-2:]
        dp_mid = torch.cat([dp3, self.fc_dp4(x4)[..., :h8, :w8], self.fc_dp5(x5)[..., :h8, :w8]], dim=1)
        dp_mid = self.fc_dp6(dp_mid)[..., :h, :w]
        dp = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp_mid], dim=1))
        return self.mean_shift(dp)

    def trainable_parameters(self):
        """(boundary branch parameters, displacement branch parameters): lr x1 and x10 in IRN."""
        edge = [p for n, p in self.named_parameters() if n.startswith("fc_edge")]
        dp = [p for n, p in self.named_parameters() if n.startswith("fc_dp")]
        return edge, dp

    @torch.no_grad()
    def boundary_map(self, pair, pad_to=0):
        """Class-boundary probability (ceil(H/4), ceil(W/4)) of an image from the pair [image, flipped image]
        (2, 3, H, W): sigmoid of the mean of both boundary logits (the flipped one flipped back), as IRN's
        EdgeDisplacement. The pair is zero-padded (= the mean colour) at the bottom/right to at least
        pad_to x pad_to (IRN pads VOC images to the 512 training crop, so GroupNorm sees the statistics of
        training); larger images are never cropped."""
        h, w = pair.shape[-2:]
        fh, fw = imutils.strided_size((h, w), 4)
        pad_h, pad_w = max(0, pad_to - h), max(0, pad_to - w)
        if pad_h or pad_w:
            pair = F.pad(pair, (0, pad_w, 0, pad_h))
        edge = self.boundary_logits(pair)
        edge = edge[..., :fh, :fw].float()  # crop before the flip so that both maps align
        return torch.sigmoid(edge[0, 0] / 2 + edge[1, 0].flip(-1) / 2)


class AffinityDisplacementLoss(nn.Module):
    """IRN's training losses on a PathIndex (radius 10) of the stride-4 crop.

    Given boundary logits and displacements (N, *, h, w) of the crop and the affinity labels of its pairs
    (N, n_dirs, n_src): the inter-pixel affinity of each pair from the boundary (1 - max along the path), the
    cross-entropy on positive / negative pairs, and the L1 loss making the displacements of same-class pairs
    differ by their offset (pointing at a common centroid) and of background pairs agree (IRN Eq. 4-7).
    Grids smaller than the PathIndex (tiny test crops) are zero-padded; their padded pairs carry no label.
    """

    def __init__(self, path_index):
        super().__init__()
        self.path_index = path_index
        for i, idx in enumerate(path_index.path_indices):
            self.register_buffer(f"path_indices{i}", torch.from_numpy(idx), persistent=False)
        # (1, 2, n_dirs, 1): the offset (dy, dx) of each direction
        target = torch.from_numpy(path_index.search_dst).float().t()[None, :, :, None]
        self.register_buffer("disp_target", target, persistent=False)

    def _paths(self):
        return [getattr(self, f"path_indices{i}") for i in range(len(self.path_index.path_indices))]

    def _pad(self, x):
        gh, gw = self.path_index.size
        return F.pad(x, (0, gw - x.shape[-1], 0, gh - x.shape[-2]))

    def pair_displacement(self, dp):
        """dp (N, 2, h, w) -> D(src) - D(dst) for every pair: (N, 2, n_dirs, n_src)."""
        h, w = dp.shape[-2:]
        rf = self.path_index.radius_floor
        ch, cw = h - rf, w - 2 * rf
        src = dp[:, :, :ch, rf:rf + cw]
        dst = torch.stack([dp[:, :, dy:dy + ch, rf + dx:rf + dx + cw] for dy, dx in self.path_index.search_dst], 2)
        return (src.unsqueeze(2) - dst).flatten(3)

    def forward(self, edge_logits, dp, bg_pos, fg_pos, neg):
        edge = torch.sigmoid(self._pad(edge_logits.float()))
        aff = irn_affinity.edge_to_affinity(edge.flatten(1), self._paths())
        pos_aff_loss = -torch.log(aff + 1e-5)
        neg_aff_loss = -torch.log(1.0 + 1e-5 - aff)
        bg_pos_aff = (bg_pos * pos_aff_loss).sum() / (bg_pos.sum() + 1e-5)
        fg_pos_aff = (fg_pos * pos_aff_loss).sum() / (fg_pos.sum() + 1e-5)
        neg_aff = (neg * neg_aff_loss).sum() / (neg.sum() + 1e-5)

        pair_disp = self.pair_displacement(self._pad(dp.float()))
        dp_fg = ((pair_disp - self.disp_target).abs() * fg_pos.unsqueeze(1)).sum() / (2 * fg_pos.sum() + 1e-5)
        dp_bg = (pair_disp.abs() * bg_pos.unsqueeze(1)).sum() / (2 * bg_pos.sum() + 1e-5)

        total = (bg_pos_aff / 2 + fg_pos_aff / 2 + neg_aff) / 2 + (dp_fg + dp_bg) / 2
        return {"loss": total, "bg_pos": bg_pos_aff, "fg_pos": fg_pos_aff, "neg": neg_aff, "dp_fg": dp_fg,
                "dp_bg": dp_bg}


def load_irnet(path, device="cpu"):
    """IRNet from sess/res50_irn.pth (weights_only; the backbone's weights are in the checkpoint)."""
    from misc.fileio import load_checkpoint, load_weights
    ckpt = load_checkpoint(path, "IRNet checkpoint", made_by="train_irn")
    model = load_weights(IRNet("none"), ckpt["state_dict"], path, "an IRNet checkpoint", "train_irn")
    return model.to(device).eval()
