"""Every flag of the pipeline, grouped by step (run_sample.py parses them, the steps read them).

Where a value comes from: the first of
  1. the command line;
  2. with --demo, the demo's settings (DEMO_FLAGS / COCO_DEMO_FLAGS in step/demo.py);
  3. for --gndrp_norm, --rib_margin_mode and --rib_aggregate, the choice of --rib_equations (RIB_EQUATIONS);
  4. the preset of --dataset (voc12/preset.py, coco14/preset.py), for the flags it names;
  5. the default written beside the flag here.
The same rule is printed at the end of --help (DEFAULTS_RULE) and in the README.
"""
import argparse
import os
import sys

from misc import datasets
from misc.cli import (ArgumentParser, HelpFormatter, device_name, float_in, int_at_least, int_multiple_of, int_range,
                      name_list, pad_size, scale_list, show_all_defaults, str2bool, sweep)
from step import STEPS, STEP_NAMES

DESCRIPTION = """RIB pipeline driver (IRN-style): every flag in one place, then the steps in order. Every step is on.

    python run_sample.py --voc12_root VOCdevkit/VOC2012 --backbone_weights imagenet     # the whole VOC pipeline
    python run_sample.py --voc12_root R --only rib,eval_cam                             # just these steps
    python run_sample.py --voc12_root R --train_irn_pass false                          # all but one
    python run_sample.py --voc12_root R --rib_iter 5 --work_dir runs/k5 --only rib,eval_cam
    python run_sample.py --demo          # synthetic data on the CPU, every step, a few minutes
    python run_sample.py --demo coco14   # the same on synthetic COCO-format data (80 classes), prepare first

Defaults reproduce the published numbers: the official code's behaviour where it differs from the paper's text
(--rib_equations paper switches to the paper's equations). Outputs go under --work_dir; a step skips finished
work, and stops when its outputs were made with other settings (another --work_dir, or --overwrite STEP)."""

DEFAULTS_RULE = """Where a value comes from: the first of
  1. the command line;
  2. with --demo, the demo's settings (DEMO_FLAGS / COCO_DEMO_FLAGS in step/demo.py);
  3. for --gndrp_norm, --rib_margin_mode and --rib_aggregate, the choice of --rib_equations (RIB_EQUATIONS);
  4. the preset of --dataset (voc12/preset.py, coco14/preset.py), for the flags it names;
  5. the default written beside the flag in step/flags.py.
The defaults shown above are those of layers 4-5 (--dataset chooses the preset, so --dataset coco14 --help shows
COCO's). Paths under --work_dir are derived after parsing (finalize_args)."""

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
                        "settings (DEMO_FLAGS in step/demo.py) replace the paper's unless given on the "
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
    p = ArgumentParser(description=DESCRIPTION, epilog=DEFAULTS_RULE, formatter_class=HelpFormatter)
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
