"""Step train_deeplab: round one of the DeepLab-v2 training, on the labels of make_seg_labels (result/seg_label).

MSC DeepLab-v2 (deeplab/model.py) from --seg_backbone_weights, --seg_num_iters iterations of --seg_batch_size
random --seg_crop_size crops (deeplab/data.py), the --seg_loss of the four MSC outputs, SGD with deeplab-pytorch's
parameter groups and poly decay (deeplab/train.py). Writes sess/deeplab.pth; a resume checkpoint
sess/deeplab.resume.pth every --seg_save_every iterations lets a killed run continue where it stopped.
"""
from deeplab.train import train_segmentation


def run(args):
    return train_segmentation(args, "train_deeplab", args.seg_label_dir, args.deeplab_weights_path,
                              label_step="make_seg_labels", init=args.seg_backbone_weights)
