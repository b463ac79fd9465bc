"""MS COCO 2014 values of the official RIB code (obtain_RIB_CAM_coco.py, run_sample_coco.py)."""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

PRESET = {
    "train_list": os.path.join(_HERE, "train14.txt"),
    "infer_list": os.path.join(_HERE, "train14.txt"),
    "eval_list": os.path.join(_HERE, "train14.txt"),
    "rib_learning_rate": 5e-6,
    "rib_batch": 15,
    "rib_score_th": 0.5,
    "rib_margin": 1000.0,
    "rib_explode_ratio": 0.8,
    "cam_eval_sweep": "0.10,0.50,0.01",
    "conf_fg_thres": 0.35,
    "conf_bg_thres": 0.17,
    "sem_seg_bg_thres": 0.22,
    "sem_seg_power": 1.3,
    "sem_seg_pad_to": 0,  # official make_sem_seg_labels_coco: no padding
    # DeepLab-v2 stage (appendix S1: 100K iterations, lr 2.5e-4, no re-training; paper Sec. 4.1: crop 481; the
    # author's config in RIB issue #2: scales 0.5..2.0); scored on val2014
    "seg_train_list": os.path.join(_HERE, "train14.txt"),
    "seg_infer_list": os.path.join(_HERE, "val14.txt"),
    "seg_eval_list": os.path.join(_HERE, "val14.txt"),
    "seg_num_iters": 100000,
    "seg_learning_rate": 2.5e-4,
    "seg_crop_size": 481,
    "seg_scales": "0.5,0.75,1.0,1.25,1.5,1.75,2.0",
    "seg_retrain": False,
}
