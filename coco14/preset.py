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
}
