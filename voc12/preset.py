"""Hyper-parameters that differ between datasets (PASCAL VOC 2012 values: paper Sec. 4.1 and the official code).
step/flags.py applies the preset of --dataset as flag defaults (layer 4 of its defaults rule); every value can still be
overridden by its flag."""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

PRESET = {
    "train_list": os.path.join(_HERE, "train_aug.txt"),
    "infer_list": os.path.join(_HERE, "train_aug.txt"),   # RIB processes train_aug (IRN's default is train)
    "eval_list": os.path.join(_HERE, "train.txt"),        # seeds and masks are reported on VOC train (1,464)
    # RIB (paper Sec. 4.1; obtain_RIB_CAM.py)
    "rib_learning_rate": 8e-6,
    "rib_batch": 20,
    "rib_score_th": 0.4,
    "rib_margin": 600.0,
    "rib_explode_ratio": 0.7,
    # seed evaluation: background threshold sweep 0.20..0.49
    "cam_eval_sweep": "0.20,0.49,0.01",
    # IRN stage, RIB's values (official run_sample.py; IRN's own: 0.30 / 0.05 / 0.25 / power 1)
    "conf_fg_thres": 0.35,
    "conf_bg_thres": 0.17,
    "sem_seg_bg_thres": 0.27,
    "sem_seg_power": 1.3,
    "sem_seg_pad_to": "crop",  # IRN's EdgeDisplacement pads VOC images to the 512 training crop
    # DeepLab-v2 stage (appendix S1: 30K iterations, lr 2.0e-4, re-training; deeplab-pytorch voc12.yaml: crop 321,
    # scales 0.5..1.5); trained on train_aug, scored on val
    "seg_train_list": os.path.join(_HERE, "train_aug.txt"),
    "seg_infer_list": os.path.join(_HERE, "val.txt"),
    "seg_eval_list": os.path.join(_HERE, "val.txt"),
    "seg_num_iters": 30000,
    "seg_learning_rate": 2.0e-4,
    "seg_crop_size": 321,
    "seg_scales": "0.5,0.75,1.0,1.25,1.5",
    "seg_retrain": True,
}
