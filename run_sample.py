"""RIB pipeline driver (IRN-style): every flag in one place, then the steps in order. Every step is on.

    python run_sample.py --voc12_root VOCdevkit/VOC2012 --backbone_weights imagenet     # the whole VOC pipeline
    python run_sample.py --voc12_root R --only rib,eval_cam                             # just these steps
    python run_sample.py --voc12_root R --train_irn_pass false                          # all but one
    python run_sample.py --voc12_root R --rib_iter 5 --work_dir runs/k5 --only rib,eval_cam
    python run_sample.py --demo          # synthetic data on the CPU, every step, a few minutes
    python run_sample.py --demo coco14   # the same on synthetic COCO-format data (80 classes), prepare first

Defaults reproduce the published numbers: the official code's behaviour where it differs from the paper's text
(--rib_equations paper switches to the paper's equations). Dataset-dependent values come from the preset of
--dataset (voc12/preset.py, coco14/preset.py). Outputs go under --work_dir; a step skips finished work, and stops
when its outputs were made with other settings (another --work_dir, or --overwrite STEP).
"""
import argparse
import importlib
import logging
import os
import sys
import time

from misc import datasets, dist, runlog
from misc.cli import (ArgumentParser, HelpFormatter, device_name, float_in, int_at_least, int_multiple_of, int_range,
                      name_list, pad_size,
                      scale_list, show_all_defaults, str2bool, sweep)

# Steps in execution order: (name, module in step/, on by default?). Each module has run(args). A step whose
# default is a function is on when that function says so (the refinement path chosen by --refine, the DeepLab
# re-training that VOC uses and COCO / saliency runs do not).
STEPS = (
    ("train_cam", "step.train_cam", True),
    ("make_cam", "step.make_cam", True),
    ("rib", "step.rib", True),
    ("eval_cam", "step.eval_cam", True),
    ("cam_to_ir_label", "step.cam_to_ir_label", lambda a: a.refine == "irn"),
    ("train_irn", "step.train_irn", lambda a: a.refine == "irn"),
    ("make_sem_seg", "step.make_sem_seg_labels", lambda a: a.refine == "irn"),
    ("cam_to_psa_label", "step.cam_to_psa_label", lambda a: a.refine == "psa"),
    ("train_aff", "step.train_aff", lambda a: a.refine == "psa"),
    ("make_psa_sem_seg", "step.make_psa_sem_seg", lambda a: a.refine == "psa"),
    ("eval_sem_seg", "step.eval_sem_seg", True),
    ("make_seg_labels", "step.make_seg_labels", True),
    ("train_deeplab", "step.train_deeplab", True),
    ("retrain_deeplab", "step.retrain_deeplab",
     lambda a: getattr(a, "seg_retrain", False) and not getattr(a, "seg_saliency_dir", "")),
    ("infer_deeplab", "step.infer_deeplab", True),
    ("eval_deeplab", "step.eval_deeplab", True),
)
STEP_NAMES = tuple(name for name, _, _ in STEPS)
EVALUATION_STEPS = ("eval_cam", "eval_sem_seg", "eval_deeplab")  # one rank runs them under torchrun

# The paper's equations vs the official code (--rib_equations); the single flags still override.
RIB_EQUATIONS = {"official": {"gndrp_norm": "official", "rib_margin_mode": "official", "rib_aggregate": "official"},
                 "paper": {"gndrp_norm": "paper", "rib_margin_mode": "paper", "rib_aggregate": "paper"}}


def add_environment_args(p, dataset, preset):
    g = p.add_argument_group("environment")
    g.add_argument("--dataset", default=dataset, choices=datasets.DATASETS,
                   help="dataset whose preset (class count, RIB and IRN values) is applied")
    g.add_argument("--voc12_root", default="VOCdevkit/VOC2012",
                   help="VOC2012 folder with JPEGImages/ and SegmentationClass/ (or SegmentationClassAug/)")
    g.add_argument("--coco_root", default="coco2014", help="COCO 2014 root (used with --dataset coco14)")
    g.add_argument("--work_dir", default="work", help="every output goes under it: sess/, result/, run.log")
    g.add_argument("--device", default="auto", type=device_name,
                   help="cpu, cuda, cuda:N, or auto (cuda when available)")
    g.add_argument("--num_workers", type=int_at_least(0), default=max(1, (os.cpu_count() or 2) // 2),
                   help="data-loading worker processes (CPU processes for the CRF steps); 0 loads in-process")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="seed of every random draw of the pipeline")
    g.add_argument("--amp", type=str2bool, default=True, help="bf16 autocast on CUDA (ignored on CPU)")
    g.add_argument("--channels_last", type=str2bool, default=True, help="channels-last tensors on CUDA")
    g.add_argument("--tensorboard", type=str2bool, default=False,
                   help="TensorBoard scalars (loss, lr, val mIoU) of train_cam, train_irn, train_aff and "
                        "train_deeplab under <work_dir>/tb/ (needs: pip install tensorboard)")
    g.add_argument("--demo", nargs="?", const="voc12", default=None, choices=datasets.DATASETS,
                   help="write a small synthetic VOC-format dataset (4 classes) under <work_dir>/demo_data and run "
                        "every step on it on the CPU; --demo coco14: a COCO-format one (raw instances JSONs, 80 "
                        "classes, coco14/synthetic.py) made ready by coco14/prepare.py, then every step. "
                        "--work_dir defaults to demo_work (demo_work_coco14), and the demo's small "
                        "settings (see DEMO_FLAGS in run_sample.py) replace the paper's unless given on the "
                        "command line")


def add_dataset_args(p, dataset, preset):
    g = p.add_argument_group("dataset")
    g.add_argument("--train_list", default=preset["train_list"], help="classifier / IRNet training ids")
    g.add_argument("--infer_list", default=preset["infer_list"],
                   help="ids to make CAMs, RIB maps, IR labels and pseudo masks for")
    g.add_argument("--eval_list", default=preset["eval_list"], help="ids with masks to evaluate seeds and masks on")
    g.add_argument("--cls_labels", default="", help="image-level label file (.npz); default: the dataset's")
    g.add_argument("--gt_dir", default="", help="ground-truth mask folder; default: <root>/SegmentationClass, "
                                                "falling back to <root>/SegmentationClassAug")


def add_classifier_args(p, dataset, preset):
    g = p.add_argument_group("classifier (train_cam, make_cam)")
    g.add_argument("--backbone_weights", default="imagenet",
                   help="torchvision-format ResNet-50 state dict PATH, 'imagenet' (download when online), or "
                        "'none' (random init, for tests and demos)")
    g.add_argument("--cam_weights_name", default="",
                   help="the classifier checkpoint (default: <work_dir>/sess/res50_cam.pth); point several work "
                        "dirs at one classifier (scripts/ablations.py does)")
    g.add_argument("--cam_dir", default="",
                   help="folder of the plain CAMs (default: <work_dir>/result/cam)")
    g.add_argument("--cam_num_epoches", type=int_at_least(1), default=5, help="classifier training epochs")
    g.add_argument("--cam_batch_size", type=int_at_least(1), default=16, help="classifier training batch")
    g.add_argument("--cam_crop_size", type=int_at_least(16), default=512, help="classifier training crop")
    g.add_argument("--cam_resize_long", type=int_range, default="320,640",
                   help="random long-side range of the training augmentation (also for RIB's other images)")
    g.add_argument("--cam_learning_rate", type=float_in(0, low_open=True), default=0.1,
                   help="classifier learning rate; 10x on the classifier layer")
    g.add_argument("--cam_weight_decay", type=float_in(0), default=1e-4, help="classifier weight decay")
    g.add_argument("--official_momentum_bug", type=str2bool, default=True,
                   help="reproduce IRN's PolyOptimizer bug (weight decay passed as SGD momentum, i.e. momentum "
                        "1e-4) in every optimiser, as the published numbers were made; false: --momentum")
    g.add_argument("--momentum", type=float_in(0, 1, high_open=True), default=0.9,
                   help="SGD momentum when --official_momentum_bug false")
    g.add_argument("--cam_scales", type=scale_list, default="1.0,0.5,1.5,2.0",
                   help="inference scales of CAMs (each with its flip)")
    g.add_argument("--check_classifier", type=str2bool, default=True,
                   help="after train_cam, check that the classifier's logits on a few training images are finite "
                        "and bounded (a diverged classifier stops here, not later in RIB)")
    g.add_argument("--cam_format", default="compact", choices=("compact", "plain", "float16"),
                   help="CAM records of make_cam and rib: compact (lossless, ~1/50 of plain's bytes, "
                        "misc/cam_format.py), plain (lossless, the official float32 layout), float16 (lossy, "
                        "effect on seed mIoU in docs/benchmarks.md)")


def add_eval_cam_args(p, dataset, preset):
    g = p.add_argument_group("seed evaluation (eval_cam)")
    g.add_argument("--eval_cam_source", default="both", choices=("cam", "rib", "both"),
                   help="evaluate result/cam (plain CAM), result/cam_rib (RIB), or both")
    g.add_argument("--cam_eval_thres", type=float_in(0, 1), default=None,
                   help="one background threshold; default: the sweep --cam_eval_sweep")
    g.add_argument("--cam_eval_sweep", type=sweep, default=preset["cam_eval_sweep"],
                   help="start,stop,step of the background threshold sweep (stop included)")
    g.add_argument("--eval_crf", type=str2bool, default=False,
                   help="also evaluate dense-CRF refined seeds (Table 1's CRF column)")
    g.add_argument("--save_cam_png", type=int_at_least(0), default=8, help="CAM overlay pictures written by eval_cam")


def add_rib_args(p, dataset, preset):
    g = p.add_argument_group("RIB (paper Sec. 3.2; official obtain_RIB_CAM.py)")
    g.add_argument("--rib_iter", type=int_at_least(0), default=10, help="K, fine-tuning iterations per image")
    g.add_argument("--rib_learning_rate", type=float_in(0), default=preset["rib_learning_rate"],
                   help="lambda; 10x on the classifier layer")
    g.add_argument("--rib_weight_decay", type=float_in(0), default=1e-4, help="weight decay of RIB's optimiser")
    g.add_argument("--rib_batch", type=int_at_least(0), default=preset["rib_batch"],
                   help="other images per iteration besides the target, i.e. B-1 in the paper's notation "
                        "(the paper's B = 20 is the batch; the official code draws 20 others, which this "
                        "default follows)")
    g.add_argument("--rib_crop_size", type=int_at_least(16), default=512, help="crop of the other images")
    g.add_argument("--rib_disjoint_prob", type=float_in(0, 1), default=1.0,
                   help="probability that an other image shares no class with the target (official: 1)")
    g.add_argument("--rib_pooling", default="gndrp", choices=("gndrp", "gap"), help="pooling of the class maps")
    g.add_argument("--rib_score_th", type=float_in(0, 1), default=preset["rib_score_th"], help="tau of GNDRP")
    g.add_argument("--rib_equations", default="official", choices=tuple(RIB_EQUATIONS),
                   help="official: the official code's behaviour, which made the published numbers (sets "
                        "--gndrp_norm, --rib_margin_mode and --rib_aggregate to official); paper: the paper's "
                        "equations (Eq. 3, min(m, y_c), k = 0..K). The three flags override it one by one")
    g.add_argument("--gndrp_norm", default=None, choices=("paper", "official"),
                   help="paper: mean over kept locations (Eq. 3); official: zero dropped ones, mean over all "
                        "(default: from --rib_equations)")
    g.add_argument("--rib_margin", type=float_in(0, low_open=True), default=preset["rib_margin"],
                   help="margin m of L_RIB")
    g.add_argument("--rib_margin_mode", default=None, choices=("paper", "official"),
                   help="paper: -sum t_c min(m, y_c); official: -sum t_c y_c and stop once the target's "
                        "summed logit exceeds m (default: from --rib_equations)")
    g.add_argument("--rib_explode_stop", type=str2bool, default=True,
                   help="official early stop (k >= 1) when the scale-1.0 CAM covers too much of the image")
    g.add_argument("--rib_explode_th", type=float_in(0, 1), default=0.3,
                   help="a pixel is covered when a true class exceeds this fraction of its max")
    g.add_argument("--rib_explode_ratio", type=float_in(0, 1), default=preset["rib_explode_ratio"],
                   help="stop when the covered share of the pixels exceeds this")
    g.add_argument("--rib_aggregate", default=None, choices=("paper", "official"),
                   help="paper: M = sum of CAM(theta_k), k = 0..K (final model included), and a model whose "
                        "CAM exploded adds nothing; official: k = 0..K-1, and an exploded step still adds its "
                        "scale-1.0 CAM (the official code's order) (default: from --rib_equations)")
    g.add_argument("--rib_loss", default="rib", choices=("rib", "bce_sigmoid", "bce_tanh", "bce_softsign"),
                   help="fine-tuning loss (Table 5a ablations: BCE on a saturating activation)")
    g.add_argument("--rib_loss_scales", type=scale_list, default="1.0,1.5,2.0",
                   help="target scales whose logits enter the loss (official: all but 0.5)")
    g.add_argument("--rib_save_iters", type=str2bool, default=False,
                   help="also save the CAM accumulated up to each k to <rib_out_dir>_iters/kNN (Fig. 5's "
                        "mIoU-vs-K curve; score them with scripts/eval_rib_iters.py)")
    g.add_argument("--rib_workers", type=int_at_least(0), default=0,
                   help="worker processes on this machine (0: one per visible GPU, 1 on CPU; more than the GPU "
                        "count shares GPUs round-robin, the official COCO run used 3 per GPU)")
    g.add_argument("--rib_loader_workers", type=int_at_least(0), default=2,
                   help="DataLoader workers per RIB worker that prepare the other images (0: in-process, "
                        "faster on a few-core CPU; a GPU at the paper's settings likely needs more than 2, "
                        "see docs/benchmarks.md)")
    g.add_argument("--rib_compile", type=str2bool, default=False, help="torch.compile the model (CUDA)")


def add_irn_args(p, dataset, preset):
    g = p.add_argument_group("inter-pixel relations (cam_to_ir_label, train_irn)")
    g.add_argument("--ir_cam_source", default="rib", choices=("cam", "rib"),
                   help="CAMs the IRN stage starts from (result/cam or result/cam_rib)")
    g.add_argument("--conf_fg_thres", type=float_in(0, 1), default=preset["conf_fg_thres"],
                   help="confident foreground threshold (IRN's own: 0.30)")
    g.add_argument("--conf_bg_thres", type=float_in(0, 1), default=preset["conf_bg_thres"],
                   help="confident background threshold (IRN's own: 0.05)")
    g.add_argument("--irn_crop_size", type=int_at_least(16), default=512, help="IRNet training crop")
    g.add_argument("--irn_batch_size", type=int_at_least(1), default=32, help="IRNet training batch")
    g.add_argument("--irn_num_epoches", type=int_at_least(1), default=3, help="IRNet training epochs")
    g.add_argument("--irn_learning_rate", type=float_in(0, low_open=True), default=0.1,
                   help="edge branch; 10x on displacement")
    g.add_argument("--irn_weight_decay", type=float_in(0), default=1e-4, help="IRNet weight decay")

    g = p.add_argument_group("random walk (make_sem_seg)")
    g.add_argument("--beta", type=float_in(0, low_open=True), default=10.0, help="affinity exponent")
    g.add_argument("--exp_times", type=int_at_least(0), default=8,
                   help="the transition matrix is raised to 2^exp_times")
    g.add_argument("--sem_seg_power", type=float_in(0, low_open=True), default=preset["sem_seg_power"],
                   help="CAM ** power before the walk (official RIB: 1.3)")
    g.add_argument("--sem_seg_bg_thres", type=float_in(0, 1), default=preset["sem_seg_bg_thres"],
                   help="background score of the walked maps")
    g.add_argument("--sem_seg_pad_to", type=pad_size, default=preset["sem_seg_pad_to"],
                   help="IRNet sees each image zero-padded to at least N x N: 'crop' = --irn_crop_size (IRN's "
                        "EdgeDisplacement pads VOC to its 512 training crop), 0 = no padding (official COCO)")
    g.add_argument("--save_palette", type=str2bool, default=True, help="also write colour PNGs of the masks")


def add_deeplab_args(p, dataset, preset):
    g = p.add_argument_group("DeepLab-v2 segmentation (make_seg_labels, train_deeplab, retrain_deeplab, "
                             "infer_deeplab, eval_deeplab; appendix S1, deeplab-pytorch; docs/deeplab.md)")
    g.add_argument("--seg_arch", default="resnet101", choices=("resnet101", "resnet50"),
                   help="DeepLab-v2 backbone (output stride 8, frozen BN); resnet50 for tests and the demo")
    g.add_argument("--seg_backbone_weights", default="imagenet",
                   help="torchvision-format ResNet state dict PATH of --seg_arch, 'imagenet' (download when "
                        "online), or 'none' (random init with calibrated BN: tests, demo). The paper: ImageNet "
                        "(deeplab-pytorch's VOC config starts from a COCO segmentation model instead)")
    g.add_argument("--seg_train_list", default=preset["seg_train_list"],
                   help="ids to make training labels for and train on (they need pseudo masks)")
    g.add_argument("--seg_infer_list", default=preset["seg_infer_list"], help="ids infer_deeplab predicts")
    g.add_argument("--seg_eval_list", default=preset["seg_eval_list"],
                   help="ids eval_deeplab (and the periodic val mIoU) scores")
    g.add_argument("--seg_retrain", type=str2bool, default=preset["seg_retrain"],
                   help="re-training (appendix S1; VOC only): round-one labels keep confident pixels of the "
                        "random walk, and retrain_deeplab fills the rest with the round-one model's predictions; "
                        "false: train once on the plain pseudo masks")
    g.add_argument("--seg_retrain_fg", type=float_in(0, 1), default=0.3,
                   help="round-one labels: foreground where the walk's score > this")
    g.add_argument("--seg_retrain_bg", type=float_in(0, 1), default=0.2,
                   help="round-one labels: background where the walk's score < this (255 between)")
    g.add_argument("--seg_saliency_dir", default="",
                   help="RIB-Sal (Table 3): folder of <id>.png saliency maps (0-255); pixels where mask and "
                        "saliency disagree become 255; no re-training")
    g.add_argument("--seg_saliency_thres", type=float_in(0, 255), default=32.0,
                   help="a pixel is salient where its saliency value (0-255) is >= this (GWSM and NSROM, whose "
                        "saliency maps the paper uses, binarise at 32)")
    g.add_argument("--seg_num_iters", type=int_at_least(1), default=preset["seg_num_iters"],
                   help="training iterations (appendix S1)")
    g.add_argument("--seg_batch_size", type=int_at_least(1), default=10, help="images per iteration (all processes)")
    g.add_argument("--seg_iter_size", type=int_at_least(1), default=1,
                   help="batches accumulated per iteration (deeplab-pytorch ITER_SIZE; effective batch = "
                        "batch x iter_size)")
    g.add_argument("--seg_learning_rate", type=float_in(0, low_open=True), default=preset["seg_learning_rate"],
                   help="backbone learning rate; ASPP weights 10x, ASPP biases 20x (appendix S1)")
    g.add_argument("--seg_momentum", type=float_in(0, 1, high_open=True), default=0.9, help="SGD momentum")
    g.add_argument("--seg_weight_decay", type=float_in(0), default=5e-4,
                   help="weight decay (none on the ASPP biases)")
    g.add_argument("--seg_poly_power", type=float_in(0), default=0.9, help="poly learning-rate decay power")
    g.add_argument("--seg_lr_step", type=int_at_least(1), default=10,
                   help="the poly rate is updated every this many iterations (deeplab-pytorch LR_DECAY)")
    g.add_argument("--seg_crop_size", type=int_at_least(16), default=preset["seg_crop_size"],
                   help="training crop (padded with the mean colour / 255 when the image is smaller)")
    g.add_argument("--seg_scales", type=scale_list, default=preset["seg_scales"],
                   help="training scales, one drawn per image")
    g.add_argument("--seg_loss", default="balanced", choices=("balanced", "ce"),
                   help="balanced: mean CE over background + mean CE over foreground pixels per image (the "
                        "paper's 'balanced cross-entropy, as DSRG'); ce: plain CE (deeplab-pytorch)")
    g.add_argument("--seg_loss_smoothing", type=float_in(0, 0.1), default=0.0,
                   help="balanced loss on softmax + this, renormalised (DSRG's SoftmaxLayer: 1e-4); 0: the exact "
                        "log-softmax (docs/deeplab.md)")
    g.add_argument("--seg_save_every", type=int_at_least(1), default=1000,
                   help="write a resume checkpoint (model and optimiser state) every this many iterations")
    g.add_argument("--seg_log_every", type=int_at_least(1), default=50, help="log the mean loss every N iterations")
    g.add_argument("--seg_eval_every", type=int_at_least(0), default=0,
                   help="score the model on --seg_eval_list every N iterations (0: never)")
    g.add_argument("--seg_compile", type=str2bool, default=False, help="torch.compile the training model (CUDA)")
    g.add_argument("--seg_retrain_init", default="imagenet", choices=("imagenet", "round1"),
                   help="init of the second round: imagenet = the round-one init (--seg_backbone_weights), "
                        "round1 = the round-one model (the paper does not say)")
    g.add_argument("--seg_retrain_crf", type=str2bool, default=False,
                   help="dense CRF on the round-one predictions that fill the ignored pixels")
    g.add_argument("--seg_test_scales", type=scale_list, default="1.0,0.75,0.5",
                   help="inference scales (MSC: max over the scales' logits)")
    g.add_argument("--seg_test_flip", type=str2bool, default=False,
                   help="also predict the flipped image and average the logits (deeplab-pytorch: no flip)")
    g.add_argument("--seg_crf", type=str2bool, default=True, help="dense CRF on the predictions of infer_deeplab")
    g.add_argument("--seg_crf_iters", type=int_at_least(1), default=10, help="CRF mean-field iterations")
    g.add_argument("--seg_crf_pos_xy", type=float_in(0, low_open=True), default=1.0, help="CRF Gaussian sxy")
    g.add_argument("--seg_crf_pos_w", type=float_in(0), default=3.0, help="CRF Gaussian compat")
    g.add_argument("--seg_crf_bi_xy", type=float_in(0, low_open=True), default=67.0, help="CRF bilateral sxy")
    g.add_argument("--seg_crf_bi_rgb", type=float_in(0, low_open=True), default=3.0, help="CRF bilateral srgb")
    g.add_argument("--seg_crf_bi_w", type=float_in(0), default=4.0, help="CRF bilateral compat")
    g.add_argument("--seg_save_logits", type=str2bool, default=False,
                   help="also write the pre-CRF class probabilities, result/deeplab_pred/<id>_prob.npz")
    g.add_argument("--seg_save_png", type=int_at_least(0), default=8,
                   help="overlay pictures (image | prediction | ground truth) written by eval_deeplab")


def add_psa_args(p, dataset, preset):
    g = p.add_argument_group("PSA / AffinityNet (cam_to_psa_label, train_aff, make_psa_sem_seg; --refine psa; "
                             "official defaults of jiwoon-ahn/psa, see docs/psa.md)")
    g.add_argument("--psa_cam_source", default="rib", choices=("cam", "rib"),
                   help="CAMs the PSA stage starts from (result/cam or result/cam_rib)")
    g.add_argument("--psa_low_alpha", type=float_in(0, low_open=True), default=4.0,
                   help="background (1 - max CAM)^alpha of the confident-foreground CRF (infer_cls.py --low_alpha)")
    g.add_argument("--psa_high_alpha", type=float_in(0, low_open=True), default=32.0,
                   help="background power of the confident-background CRF (infer_cls.py --high_alpha)")
    g.add_argument("--psa_backbone", default="resnet50", choices=("resnet50", "resnet38"),
                   help="AffinityNet backbone: resnet50 (dilated to stride 8, torchvision ImageNet weights) or PSA's "
                        "own wide ResNet-38, which the paper's PSA numbers used")
    g.add_argument("--psa_backbone_weights", default="",
                   help="AffinityNet backbone weights; default: --backbone_weights (resnet50). resnet38: a PyTorch "
                        "state dict in PSA's naming (its ImageNet .params converted with PSA's "
                        "convert_mxnet_to_torch), or none")
    g.add_argument("--psa_crop_size", type=int_multiple_of(8, 72), default=448,
                   help="AffinityNet training crop, a multiple of the stride 8 (train_aff.py --crop_size)")
    g.add_argument("--psa_batch_size", type=int_at_least(1), default=8,
                   help="AffinityNet training batch (all processes; train_aff.py --batch_size)")
    g.add_argument("--psa_num_epoches", type=int_at_least(1), default=8,
                   help="AffinityNet training epochs (train_aff.py --max_epoches)")
    g.add_argument("--psa_learning_rate", type=float_in(0, low_open=True), default=0.1,
                   help="backbone weights; 2x backbone biases, 10x / 20x the new layers' weights / biases "
                        "(train_aff.py --lr)")
    g.add_argument("--psa_weight_decay", type=float_in(0), default=5e-4,
                   help="weight decay of the weights, none on biases (train_aff.py --wt_dec)")
    g.add_argument("--psa_alpha", type=float_in(0, low_open=True), default=16.0,
                   help="background power (1 - max CAM)^alpha of the random walk (infer_aff.py --alpha)")
    g.add_argument("--psa_beta", type=float_in(0, low_open=True), default=8.0,
                   help="affinity exponent of the transition matrix (infer_aff.py --beta)")
    g.add_argument("--psa_logt", type=int_at_least(0), default=8,
                   help="the walk takes t = 2^logt steps (infer_aff.py --logt)")


def add_step_args(p, dataset, preset):
    g = p.add_argument_group("steps (every step of the chosen pipeline is on by default)")
    g.add_argument("--refine", default="irn", choices=("irn", "psa"),
                   help="refinement of the seeds into pseudo masks: IRN (result/sem_seg) or PSA "
                        "(result/sem_seg_psa); eval_sem_seg and the DeepLab stage read the chosen one")
    g.add_argument("--only", type=name_list(STEP_NAMES), default=(),
                   help="run just these steps (comma-separated), e.g. --only rib,eval_cam")
    g.add_argument("--overwrite", type=name_list(STEP_NAMES), default=(),
                   help="delete these steps' outputs and remake them (comma-separated); without it a step whose "
                        "outputs were made with other settings stops")
    for name, _, _ in STEPS:
        g.add_argument(f"--{name}_pass", type=str2bool, default=None,
                       help=f"true/false: run the {name} step (default: on)")


ARG_GROUPS = [add_environment_args, add_dataset_args, add_classifier_args, add_eval_cam_args, add_rib_args,
              add_irn_args, add_psa_args, add_deeplab_args, add_step_args]


def get_args_parser(dataset="voc12"):
    preset = datasets.preset(dataset)
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    for add in ARG_GROUPS:
        add(p, dataset, preset)
    show_all_defaults(p)
    return p


def parse_args(argv=None):
    """Parse twice: --dataset first (it chooses the preset that provides defaults), then everything."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default=None, choices=datasets.DATASETS)
    pre.add_argument("--demo", nargs="?", const="voc12", default=None, choices=datasets.DATASETS)
    known, _ = pre.parse_known_args(argv)
    if known.demo and known.dataset and known.demo != known.dataset:
        raise SystemExit(f"error: --demo {known.demo} runs on {known.demo} data; drop --dataset {known.dataset}")
    args = get_args_parser(known.dataset or known.demo or "voc12").parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    return finalize_args(args)


def finalize_args(args):
    """Derived values: the data root, the RIB equation flags, and every output path under --work_dir."""
    args.data_root = args.voc12_root if args.dataset == "voc12" else args.coco_root
    datasets.use_root_files(args)  # e.g. the labels and lists coco14/prepare.py wrote under --coco_root
    for flag, value in RIB_EQUATIONS[args.rib_equations].items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    w = args.work_dir
    args.sess_dir = os.path.join(w, "sess")
    args.result_dir = os.path.join(w, "result")
    args.cam_weights_path = args.cam_weights_name or os.path.join(w, "sess", "res50_cam.pth")
    args.irn_weights_path = os.path.join(w, "sess", "res50_irn.pth")
    args.cam_out_dir = args.cam_dir or os.path.join(w, "result", "cam")
    args.rib_out_dir = os.path.join(w, "result", "cam_rib")
    args.ir_label_out_dir = os.path.join(w, "result", "ir_label")
    args.sem_seg_out_dir = os.path.join(w, "result", "sem_seg")
    args.sem_seg_psa_out_dir = os.path.join(w, "result", "sem_seg_psa")
    args.sem_seg_psa_score_dir = args.sem_seg_psa_out_dir + "_score"
    args.psa_label_out_dir = os.path.join(w, "result", "psa_label")
    args.psa_aff_weights_path = os.path.join(w, "sess", "psa_aff.pth")
    # the pseudo masks eval_sem_seg and the DeepLab stage read
    args.pseudo_mask_dir = args.sem_seg_out_dir if args.refine == "irn" else args.sem_seg_psa_out_dir
    # the walk's confidence beside the masks (result/sem_seg_score), for make_seg_labels' round-one rule
    args.sem_seg_score_dir = args.sem_seg_out_dir + "_score"
    args.pseudo_score_dir = args.pseudo_mask_dir + "_score"
    args.seg_label_dir = os.path.join(w, "result", "seg_label")
    args.seg_label_retrain_dir = os.path.join(w, "result", "seg_label_retrain")
    args.deeplab_weights_path = os.path.join(w, "sess", "deeplab.pth")
    args.deeplab_retrain_weights_path = os.path.join(w, "sess", "deeplab_retrain.pth")
    args.deeplab_pred_dir = os.path.join(w, "result", "deeplab_pred")
    return args


def enabled_steps(args):
    """[(name, module)] to run: --only when given, else every step whose --<step>_pass is not false and whose
    default says on."""
    if args.only:
        explicit_off = [n for n in args.only if getattr(args, f"{n}_pass") is False]
        if explicit_off:
            raise SystemExit(f"error: --only names {explicit_off[0]} but --{explicit_off[0]}_pass is false")
        out = [(n, m) for n, m, _ in STEPS if n in args.only]
    else:
        out = []
        for name, module, default in STEPS:
            flag = getattr(args, f"{name}_pass")
            on = flag if flag is not None else (default(args) if callable(default) else default)
            if on:
                out.append((name, module))
    idle = [n for n in args.overwrite if n not in {name for name, _ in out}]
    if idle:  # an overwrite that would silently do nothing
        chosen = f"--only {','.join(args.only)}" if args.only else "the steps this command runs"
        raise SystemExit(f"error: --overwrite {idle[0]} names a step that is not among {chosen}; add it to --only "
                         f"(or drop it from --overwrite)")
    return out


LIST_FLAGS = ("train_list", "infer_list", "eval_list", "seg_train_list", "seg_infer_list", "seg_eval_list")


def check_given_lists(args):
    """The id lists given on the command line are read now (missing, binary, empty, duplicate ids), not when the
    step that reads one comes, minutes or hours later."""
    from misc.datasets import load_id_list
    given = {a.lstrip("-").split("=")[0] for a in getattr(args, "_argv", ()) if a.startswith("--")}
    for flag in LIST_FLAGS:
        if flag in given:
            load_id_list(getattr(args, flag), f"--{flag}")


# (flag, checkpoint whose settings record holds the value, key in its settings): a later command that does not
# give the flag takes the backbone weights the first one trained with, instead of the default 'imagenet' (which
# downloads, and fails offline). --backbone_weights serves train_irn and train_aff too (PSA's ResNet-50).
RECORDED_WEIGHTS = (("backbone_weights", "cam_weights_path", "backbone_weights"),
                    ("seg_backbone_weights", "deeplab_weights_path", "init"))


def take_recorded_weights(args):
    from misc import provenance
    given = {a.lstrip("-").split("=")[0] for a in getattr(args, "_argv", ()) if a.startswith("--")}
    for flag, path_attr, key in RECORDED_WEIGHTS:
        if flag in given or getattr(args, flag) != "imagenet":
            continue
        record = provenance.read_record(getattr(args, path_attr), "file")
        value = (record or {}).get("settings", {}).get(key)
        if value and value not in ("imagenet", "round1"):
            setattr(args, flag, value)
            logging.getLogger("run_sample").info("--%s %s (from the record of %s; give the flag to change it)",
                                                 flag, value, getattr(args, path_attr))


TRAINING_STEPS = ("train_cam", "train_irn", "train_aff", "train_deeplab", "retrain_deeplab")


def multi_gpu_note(args, step_names, gpu_count=None):
    """What a plain `python run_sample.py` does on a multi-GPU machine (not launched by torchrun): the per-image
    steps start one worker per visible GPU, the training steps train in one process on one GPU."""
    import torch
    if not str(args.device).startswith("cuda") or ":" in str(args.device) or "WORLD_SIZE" in os.environ:
        return None
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    training = [n for n in step_names if n in TRAINING_STEPS]
    if gpu_count < 2 or not training:
        return None
    return (f"{gpu_count} GPUs and no torchrun: the per-image steps use one worker per GPU, but {', '.join(training)} "
            f"train(s) in one process on one GPU; `torchrun --standalone --nproc_per_node {gpu_count} run_sample.py "
            f"...` trains with DDP on all of them")


def import_step(name, module_name, requested):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        if requested:
            from misc.fileio import DataError
            raise DataError(f"step {name} ({module_name}) is not part of this version; drop it from --only")
        logging.getLogger("run_sample").info("step %s: not part of this version, skipped", name)
        return None


def run_steps(args):
    from misc.fileio import check_writable_dir
    from misc.torchutils import resolve_device
    check_writable_dir(args.work_dir)
    runlog.setup(os.path.join(args.work_dir, "run.log"))
    log = logging.getLogger("run_sample")
    args.device = resolve_device(args.device)
    log.info("command: %s", " ".join(sys.argv))
    log.info("dataset %s at %s, device %s, work dir %s", args.dataset, args.data_root, args.device, args.work_dir)
    steps = enabled_steps(args)
    if not steps:
        log.warning("no step enabled")
    check_given_lists(args)
    take_recorded_weights(args)
    note = multi_gpu_note(args, [name for name, _ in steps])
    if note:
        log.warning("%s", note)
    total = time.perf_counter()
    rank, _ = dist.torchrun_rank_world()
    for name, module_name in steps:
        module = import_step(name, module_name, requested=bool(args.only) or getattr(args, f"{name}_pass"))
        if module is None:
            continue
        if name in EVALUATION_STEPS and rank != 0:
            continue  # under torchrun one rank evaluates; the others wait at the barrier
        with runlog.step_timer(name):
            module.run(args)
        dist.step_barrier(args.device)
    log.info("all steps done in %.1f s", time.perf_counter() - total)


# --- the demo ------------------------------------------------------------------------------------------------------

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
    # DeepLab stage: ResNet-50 on small crops, 40 iterations at the paper's lr, one round (re-training would double
    # the stage's time; tests/test_deeplab.py covers it). Without ImageNet weights the demo starts DeepLab's
    # backbone from the classifier it trained (demo_defaults); from scratch a few dozen iterations learn nothing.
    "seg_arch": "resnet50", "seg_crop_size": 96, "seg_batch_size": 4, "seg_num_iters": 40, "seg_retrain": False,
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
COCO_DEMO_FLAGS = {**DEMO_FLAGS, "seg_learning_rate": 2e-5}


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


def main(argv=None):
    from misc.fileio import DataError
    args = parse_args(argv)
    if args.demo:
        if argv is None:  # a command, not a call from Python: pin the CPU kernels (misc/cpu_kernels.py)
            from misc.cpu_kernels import reexec_pinned
            reexec_pinned()
        args = coco_demo_args(args) if args.demo == "coco14" else demo_args(args)
    log = logging.getLogger("run_sample")
    try:
        runlog.check_tensorboard(args)
        run_steps(args)
    except DataError as e:  # printed once, on the console by SystemExit; the log file gets it too
        runlog.log_to_file(log, f"error: {e}")
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        runlog.log_to_file(log, "error: interrupted; finished outputs are kept and a rerun resumes")
        raise SystemExit("error: interrupted; finished outputs are kept and a rerun resumes")
    except Exception as e:  # one line on the console, the traceback in run.log
        log.debug("traceback", exc_info=True)
        runlog.log_traceback_to_file(log)
        lines = str(e).strip().splitlines() or [""]
        first = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        raise SystemExit(f"error: {type(e).__name__}: {first} (traceback in {os.path.join(args.work_dir, 'run.log')})")


if __name__ == "__main__":
    main()
