"""RIB pipeline driver (IRN-style): parses every flag in one place, then runs the enabled steps in order.

    python run_sample.py --voc12_root VOCdevkit/VOC2012 --work_dir runs/voc --backbone_weights imagenet \
        --train_cam_pass true --rib_pass true --eval_cam_pass true --eval_cam_source rib ...
    python run_sample.py --demo          # synthetic data, CPU, a few minutes

Every default is the paper's (or the official code's where the paper is silent); dataset-dependent values come
from the preset of --dataset (voc12/preset.py, coco14/preset.py). `python run_sample.py --help` lists them all.
"""
import argparse
import importlib
import logging
import os
import sys
import time

from misc import datasets, runlog

# Steps in execution order: (flag name, module in step/). Each module has run(args).
STEPS = (
    ("train_cam", "step.train_cam"),
    ("make_cam", "step.make_cam"),
    ("rib", "step.rib"),
    ("eval_cam", "step.eval_cam"),
    ("cam_to_ir_label", "step.cam_to_ir_label"),
    ("train_irn", "step.train_irn"),
    ("make_sem_seg", "step.make_sem_seg_labels"),
    ("eval_sem_seg", "step.eval_sem_seg"),
)


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("true", "1", "yes", "y", "on"):
        return True
    if v.lower() in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def float_tuple(v):
    try:
        return tuple(float(x) for x in v.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {v!r}") from None


def get_args_parser(dataset="voc12"):
    preset = datasets.preset(dataset)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = p.add_argument_group("environment")
    g.add_argument("--dataset", default=dataset, choices=datasets.DATASETS,
                   help="dataset whose preset (class count, RIB and IRN values) is applied")
    g.add_argument("--voc12_root", default="VOCdevkit/VOC2012",
                   help="VOC2012 folder with JPEGImages/ and SegmentationClass/ (or SegmentationClassAug/)")
    g.add_argument("--coco_root", default="coco2014", help="COCO 2014 root (used with --dataset coco14)")
    g.add_argument("--work_dir", default="work", help="every output goes under it: sess/, result/, run.log")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    g.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="data-loading worker processes (CPU processes for the CRF step)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--amp", type=str2bool, default=True, help="bf16 autocast on CUDA (ignored on CPU)")
    g.add_argument("--channels_last", type=str2bool, default=True, help="channels-last tensors on CUDA")
    g.add_argument("--demo", action="store_true",
                   help="make a small synthetic VOC-format dataset and run the pipeline on it on CPU")

    g = p.add_argument_group("dataset")
    g.add_argument("--train_list", default=preset["train_list"], help="classifier / IRNet training ids")
    g.add_argument("--infer_list", default=preset["infer_list"],
                   help="ids to make CAMs, RIB maps, IR labels and pseudo masks for")
    g.add_argument("--eval_list", default=preset["eval_list"], help="ids with masks to evaluate on")
    g.add_argument("--cls_labels", default="", help="image-level label file (.npz); default: the package's")
    g.add_argument("--gt_dir", default="", help="ground-truth mask folder; default: <root>/SegmentationClass, "
                                                "falling back to <root>/SegmentationClassAug")

    g = p.add_argument_group("classifier (train_cam, make_cam)")
    g.add_argument("--backbone_weights", default="imagenet",
                   help="torchvision-format ResNet-50 state dict PATH, 'imagenet' (download when online), or "
                        "'none' (random init, for tests and demos)")
    g.add_argument("--cam_num_epoches", type=int, default=5)
    g.add_argument("--cam_batch_size", type=int, default=16)
    g.add_argument("--cam_crop_size", type=int, default=512)
    g.add_argument("--cam_resize_long", type=float_tuple, default=(320, 640),
                   help="random long-side range of the training augmentation (also for RIB's other images)")
    g.add_argument("--cam_learning_rate", type=float, default=0.1, help="10x on the classifier layer")
    g.add_argument("--cam_weight_decay", type=float, default=1e-4)
    g.add_argument("--official_momentum_bug", type=str2bool, default=True,
                   help="reproduce IRN's PolyOptimizer bug (weight decay passed as SGD momentum, i.e. momentum "
                        "1e-4) in every optimiser, as the published numbers were made; false: --momentum")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum when --official_momentum_bug false")
    g.add_argument("--cam_scales", type=float_tuple, default=(1.0, 0.5, 1.5, 2.0),
                   help="inference scales of CAMs (each with its flip)")

    g = p.add_argument_group("seed evaluation (eval_cam)")
    g.add_argument("--eval_cam_source", default="cam", choices=("cam", "rib", "both"),
                   help="evaluate result/cam (plain CAM), result/cam_rib (RIB), or both")
    g.add_argument("--cam_eval_thres", type=float, default=None,
                   help="one background threshold; default: the sweep --cam_eval_sweep")
    g.add_argument("--cam_eval_sweep", type=float_tuple, default=float_tuple(preset["cam_eval_sweep"]),
                   help="start,stop,step of the background threshold sweep (stop included)")
    g.add_argument("--eval_crf", type=str2bool, default=False,
                   help="also evaluate dense-CRF refined seeds (Table 1's CRF column)")
    g.add_argument("--save_cam_png", type=int, default=8, help="CAM overlay pictures written by eval_cam")

    g = p.add_argument_group("RIB (paper Sec. 3.2; official obtain_RIB_CAM.py)")
    g.add_argument("--rib_iter", type=int, default=10, help="K, fine-tuning iterations per image")
    g.add_argument("--rib_learning_rate", type=float, default=preset["rib_learning_rate"],
                   help="lambda; 10x on the classifier layer")
    g.add_argument("--rib_weight_decay", type=float, default=1e-4)
    g.add_argument("--rib_batch", type=int, default=preset["rib_batch"],
                   help="other images per iteration besides the target, i.e. B-1 in the paper's notation "
                        "(the paper's B = 20 is the batch; the official code draws 20 others, which this "
                        "default follows)")
    g.add_argument("--rib_crop_size", type=int, default=512, help="crop of the other images")
    g.add_argument("--rib_disjoint_prob", type=float, default=1.0,
                   help="probability that an other image shares no class with the target (official: 1)")
    g.add_argument("--rib_pooling", default="gndrp", choices=("gndrp", "gap"))
    g.add_argument("--rib_score_th", type=float, default=preset["rib_score_th"], help="tau of GNDRP")
    g.add_argument("--gndrp_norm", default="paper", choices=("paper", "official"),
                   help="paper: mean over kept locations (Eq. 3); official: zero dropped ones, mean over all")
    g.add_argument("--rib_margin", type=float, default=preset["rib_margin"], help="margin m of L_RIB")
    g.add_argument("--rib_margin_mode", default="paper", choices=("paper", "official"),
                   help="paper: -sum t_c min(m, y_c); official: -sum t_c y_c and stop once the target's "
                        "summed logit exceeds m")
    g.add_argument("--rib_explode_stop", type=str2bool, default=True,
                   help="official early stop (k >= 1) when the scale-1.0 CAM covers too much of the image")
    g.add_argument("--rib_explode_th", type=float, default=0.3,
                   help="a pixel is covered when a true class exceeds this fraction of its max")
    g.add_argument("--rib_explode_ratio", type=float, default=preset["rib_explode_ratio"],
                   help="stop when the covered share of the pixels exceeds this")
    g.add_argument("--rib_aggregate", default="paper", choices=("paper", "official"),
                   help="paper: M = sum of CAM(theta_k), k = 0..K (final model included), and a model whose "
                        "CAM exploded adds nothing; official: k = 0..K-1, and an exploded step still adds its "
                        "scale-1.0 CAM (the official code's order)")
    g.add_argument("--rib_loss", default="rib", choices=("rib", "bce_sigmoid", "bce_tanh", "bce_softsign"),
                   help="fine-tuning loss (Table 5a ablations: BCE on a saturating activation)")
    g.add_argument("--rib_loss_scales", type=float_tuple, default=(1.0, 1.5, 2.0),
                   help="target scales whose logits enter the loss (official: all but 0.5)")
    g.add_argument("--rib_save_iters", type=str2bool, default=False,
                   help="also save the CAM accumulated up to each k to <rib_out_dir>_iters/kNN (Fig. 5's "
                        "mIoU-vs-K curve; score them with scripts/eval_rib_iters.py)")
    g.add_argument("--rib_workers", type=int, default=0,
                   help="worker processes on this machine (0: one per visible GPU, 1 on CPU; more than the GPU "
                        "count shares GPUs round-robin, the official COCO run used 3 per GPU)")
    g.add_argument("--rib_loader_workers", type=int, default=2,
                   help="DataLoader workers per RIB worker that prepare the other images (0: in-process, "
                        "faster on a few-core CPU; a GPU at the paper's settings likely needs more than 2, "
                        "see docs/benchmarks.md)")
    g.add_argument("--rib_compile", type=str2bool, default=False, help="torch.compile the model (CUDA)")

    g = p.add_argument_group("inter-pixel relations (cam_to_ir_label, train_irn)")
    g.add_argument("--ir_cam_source", default="rib", choices=("cam", "rib"),
                   help="CAMs the IRN stage starts from (result/cam or result/cam_rib)")
    g.add_argument("--conf_fg_thres", type=float, default=preset["conf_fg_thres"],
                   help="confident foreground threshold (IRN's own: 0.30)")
    g.add_argument("--conf_bg_thres", type=float, default=preset["conf_bg_thres"],
                   help="confident background threshold (IRN's own: 0.05)")
    g.add_argument("--irn_crop_size", type=int, default=512)
    g.add_argument("--irn_batch_size", type=int, default=32)
    g.add_argument("--irn_num_epoches", type=int, default=3)
    g.add_argument("--irn_learning_rate", type=float, default=0.1, help="edge branch; 10x on displacement")
    g.add_argument("--irn_weight_decay", type=float, default=1e-4)

    g = p.add_argument_group("random walk (make_sem_seg)")
    g.add_argument("--beta", type=float, default=10.0, help="affinity exponent")
    g.add_argument("--exp_times", type=int, default=8, help="the transition matrix is raised to 2^exp_times")
    g.add_argument("--sem_seg_power", type=float, default=preset["sem_seg_power"],
                   help="CAM ** power before the walk (official RIB: 1.3)")
    g.add_argument("--sem_seg_bg_thres", type=float, default=preset["sem_seg_bg_thres"])
    g.add_argument("--save_palette", type=str2bool, default=True, help="also write colour PNGs of the masks")

    g = p.add_argument_group("steps (true/false)")
    for name, _ in STEPS:
        g.add_argument(f"--{name}_pass", type=str2bool, default=False)
    for action in p._actions:  # argparse shows a default only next to help text: show every default
        if action.help is None:
            action.help = "(default: %(default)s)"
    return p


def parse_args(argv=None):
    """Parse twice: --dataset first (it chooses the preset that provides defaults), then everything."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="voc12", choices=datasets.DATASETS)
    known, _ = pre.parse_known_args(argv)
    args = get_args_parser(known.dataset).parse_args(argv)
    return finalize_args(args)


def finalize_args(args):
    """Derived values: the data root of the chosen dataset and every output path under --work_dir."""
    args.data_root = args.voc12_root if args.dataset == "voc12" else args.coco_root
    w = args.work_dir
    args.sess_dir = os.path.join(w, "sess")
    args.result_dir = os.path.join(w, "result")
    args.cam_weights_path = os.path.join(w, "sess", "res50_cam.pth")
    args.irn_weights_path = os.path.join(w, "sess", "res50_irn.pth")
    args.cam_out_dir = os.path.join(w, "result", "cam")
    args.rib_out_dir = os.path.join(w, "result", "cam_rib")
    args.ir_label_out_dir = os.path.join(w, "result", "ir_label")
    args.sem_seg_out_dir = os.path.join(w, "result", "sem_seg")
    return args


def run_steps(args):
    from misc.fileio import check_writable_dir
    from misc.torchutils import resolve_device
    check_writable_dir(args.work_dir)
    runlog.setup(os.path.join(args.work_dir, "run.log"))
    log = logging.getLogger("run_sample")
    args.device = resolve_device(args.device)
    log.info("command: %s", " ".join(sys.argv))
    log.info("dataset %s at %s, device %s, work dir %s", args.dataset, args.data_root, args.device, args.work_dir)
    enabled = [(n, m) for n, m in STEPS if getattr(args, f"{n}_pass")]
    if not enabled:
        log.warning("no step enabled: pass --<step>_pass true for some of %s", ", ".join(n for n, _ in STEPS))
    total = time.perf_counter()
    for name, module_name in enabled:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                raise SystemExit(f"step {name} ({module_name}) is not implemented yet in this version; "
                                 f"turn it off with --{name}_pass false")
            raise
        with runlog.step_timer(name):
            module.run(args)
    log.info("all steps done in %.1f s", time.perf_counter() - total)


def main(argv=None):
    from misc.fileio import DataError
    args = parse_args(argv)
    if args.demo:
        from voc12 import synthetic
        args = synthetic.demo_args(args, argv)
    try:
        run_steps(args)
    except DataError as e:
        logging.getLogger("run_sample").error("%s", e)
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
