"""The demo (run_sample.py --demo [voc12|coco14]): synthetic data made once under <work_dir>/demo_data and small
settings for a CPU run of every step. Its settings are layer 2 of the defaults rule (step/flags.py): a flag given
on the command line wins over them; they win over the presets and the flags' own defaults."""
import os

from step.flags import finalize_args

# CPU, random init, small synthetic images (voc12/synthetic.py). Flags given on the command line win over these.
# The classifier trains from scratch here, so the demo uses real SGD momentum (0.9) instead of IRN's momentum bug
# (which the paper's ImageNet-initialised runs reproduce by default).
DEMO_FLAGS = {
    "device": "cpu", "backbone_weights": "none", "num_workers": 1,
    # a classifier from scratch on 200 images: batch 8, lr 0.01 (lr 0.02 with batch 16 and lr 0.1 with 20 output
    # columns sit at the edge of divergence), real momentum instead of IRN's bug, 10 epochs
    "cam_num_epoches": 10, "cam_batch_size": 8, "cam_crop_size": 128, "cam_resize_long": (128, 192),
    "cam_learning_rate": 0.01, "official_momentum_bug": False, "cam_scales": (1.0, 0.5), "eval_cam_source": "both",
    "rib_iter": 3, "rib_batch": 4, "rib_crop_size": 128, "rib_loader_workers": 0, "rib_loss_scales": (1.0,),
    # a random-init classifier's maps are flatter than an ImageNet one's (the seed sweep peaks near 0.55, VOC's
    # near 0.25): sweep the whole range, and raise the IRN thresholds in proportion (VOC: 0.35 / 0.17 / 0.27)
    "cam_eval_sweep": (0.05, 0.95, 0.05), "conf_fg_thres": 0.7, "conf_bg_thres": 0.45, "sem_seg_bg_thres": 0.7,
    "irn_crop_size": 128, "irn_batch_size": 8, "irn_num_epoches": 8, "save_cam_png": 4,
    # DeepLab stage: ResNet-50 on small crops, 60 iterations of 8 images at the paper's lr, one round (re-training
    # would double the stage's time; tests/test_deeplab.py covers it). Without ImageNet weights the demo starts
    # DeepLab's backbone from the classifier it trained (demo_defaults); from scratch a few dozen iterations learn
    # nothing. Batch 8, not 4: 40 iterations of 4 ended half-trained and 120 of 4 still swung one rare class (sheep,
    # in 3 of the 24 images) on or off with the kernels' last bits (mIoU 70.0 / 52.4 under AVX-512 / AVX2); with
    # batch 8 both families learn every class the pseudo masks have (scripts/bench_demo_kernels.py, README). The
    # lr stays: 5e-4 and 1e-3 diverge within 20 iterations.
    "seg_arch": "resnet50", "seg_crop_size": 96, "seg_batch_size": 8, "seg_num_iters": 60, "seg_retrain": False,
    "seg_save_every": 20, "seg_log_every": 10,
}


def demo_args(args):
    """The demo run: synthetic data under <work_dir>/demo_data (made once), the demo's settings where the command
    line did not give a value, every step of the pipeline."""
    from voc12 import synthetic
    given = demo_given(args, ("voc12_root", "coco_root", "cls_labels"))
    if "work_dir" not in given:
        args.work_dir = "demo_work"
    data = synthetic.make_dataset(os.path.join(args.work_dir, "demo_data"))
    args.dataset = "voc12"
    args.voc12_root = data["root"]
    lists = {"train_list": data["train"], "infer_list": data["eval"], "eval_list": data["eval"],
             # the ids with pseudo masks
             "seg_train_list": data["eval"], "seg_infer_list": data["eval"], "seg_eval_list": data["eval"]}
    args.cls_labels = data["labels"]
    return demo_defaults(args, {**DEMO_FLAGS, **lists}, given)


def demo_given(args, refused):
    """The flags the command line gave (they win over the demo's values); the demo's own data flags are refused."""
    given = {a.lstrip("-").split("=")[0] for a in args._argv if a.startswith("--")}
    clash = [name for name in refused if name in given]
    if clash:
        raise SystemExit(f"error: --demo writes and uses its own dataset, so --{clash[0]} cannot apply; drop it, or "
                         f"run without --demo (the demo's data is under <work_dir>/demo_data)")
    return given


def demo_defaults(args, flags, given):
    """The demo's values where the command line gave none; DeepLab's backbone starts from the demo's classifier."""
    for name, value in flags.items():
        if name not in given:
            setattr(args, name, value)
    args = finalize_args(args)
    if "seg_backbone_weights" not in given:
        args.seg_backbone_weights = args.cam_weights_path
    return args


# The COCO demo (coco14/synthetic.py: 80 classes, 4 of them drawn, images of 120 x 160): the VOC demo's settings;
# the RIB and IRN values are the COCO preset's. RIB, the IRN stage and the evaluations run on 24 training images.
# DeepLab's rate is lower: the 80-output classifier trained from scratch ends with layer4 features about 20x larger
# than the VOC demo's (mean |activation| 7.9 vs 0.36), and at the preset's 2.5e-4 the ASPP diverges in 5 iterations.
# At that rate 40 iterations of 4 images hold across kernel families (mIoU 24.19 / 26.68 under AVX-512 / AVX2,
# docs/coco.md); the VOC demo's 60 of 8 fell to 18.33 / 18.95, barely above all-background, in 3x the time.
COCO_DEMO_FLAGS = {**DEMO_FLAGS, "seg_learning_rate": 2e-5, "seg_batch_size": 4, "seg_num_iters": 40}


def coco_demo_args(args):
    """The COCO demo run: raw COCO-format data under <work_dir>/demo_data, made ready by coco14/prepare.py (both
    once), the demo's settings where the command line did not give a value, every step at 80 classes."""
    from coco14 import prepare, synthetic
    given = demo_given(args, ("voc12_root", "coco_root", "cls_labels"))
    if "work_dir" not in given:
        args.work_dir = "demo_work_coco14"
    data = synthetic.make_dataset(os.path.join(args.work_dir, "demo_data"))
    print(prepare.describe(prepare.prepare(data["root"], workers=max(1, args.num_workers))))
    args.dataset, args.coco_root = "coco14", data["root"]
    # train_list, seg_infer_list and seg_eval_list: ROOT's train14.txt / val14.txt, by finalize_args (unless given)
    lists = {"infer_list": data["subset"], "eval_list": data["subset"],
             "seg_train_list": data["subset"]}  # the ids with pseudo masks
    return demo_defaults(args, {**COCO_DEMO_FLAGS, **lists}, given)
