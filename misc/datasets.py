"""The dataset registry: --dataset picks the package (voc12/ or coco14/) that knows its files, classes and
preset, so that steps never branch on the dataset name."""
import importlib

DATASETS = ("voc12", "coco14")


def preset(name):
    return importlib.import_module(f"{name}.preset").PRESET


def build_spec(args):
    """The DatasetSpec of --dataset, from the root, label file and mask folder flags."""
    module = importlib.import_module(f"{args.dataset}.dataloader")
    return module.make_spec(args.data_root, label_file=args.cls_labels or None, gt_dir=args.gt_dir or None)
