"""The pipeline's steps: one module per step, each with run(args), listed in execution order in STEPS.

Three modules here are not steps: flags.py (every flag of the pipeline and the rule for where a default comes
from), demo.py (the demo's data and settings) and rib_reference.py (the official RIB loop's structure, which the
tests and scripts/bench_rib.py compare rib.py with). run_sample.py parses the flags and runs the enabled steps.
"""

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
