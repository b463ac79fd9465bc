"""Pictures of the IRN stage: image | CAM | IR label | pseudo mask (| ground truth), side by side, one PNG per id.

    python scripts/render_masks.py --voc12_root VOCdevkit/VOC2012 --work_dir runs/voc --ir_cam_source rib \
        --infer_list voc12/train.txt --num_images 8

Takes every flag of run_sample.py (paths come from --work_dir and --ir_cam_source) plus the ones below; panels
whose file does not exist (no IR label yet, no mask for the id) are drawn grey. Writes
<work_dir>/result/sem_seg_png/<id>.png unless --out_dir is given.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_sample  # noqa: E402
from misc import cams, imutils  # noqa: E402
from misc.datasets import build_spec  # noqa: E402
from misc.fileio import load_cam_npz, load_image_rgb, load_label_png, save_png  # noqa: E402
from misc.datasets import load_id_list  # noqa: E402

PALETTE = np.array(imutils.color_palette(), dtype=np.uint8).reshape(-1, 3)


def label_panel(path, shape):
    if not os.path.isfile(path):
        return np.full(shape + (3,), 128, np.uint8)
    return PALETTE[np.clip(load_label_png(path), 0, 255)]


def render(args, spec, img_id, out_dir):
    img = load_image_rgb(spec.image_path(img_id))
    shape = img.shape[:2]
    cam_file = os.path.join(cams.cam_dir(args, args.ir_cam_source), img_id + ".npz")
    if os.path.isfile(cam_file):
        record = load_cam_npz(cam_file)
        cam = record["high_res"].max(axis=0) if len(record["keys"]) else np.zeros(shape, np.float32)
        cam_panel = imutils.colorize_cam(img, cam)
    else:
        cam_panel = np.full(shape + (3,), 128, np.uint8)
    panels = [img, cam_panel, label_panel(os.path.join(args.ir_label_out_dir, img_id + ".png"), shape),
              label_panel(os.path.join(args.sem_seg_out_dir, img_id + ".png"), shape)]
    gt_path = spec.gt_path(img_id)
    if os.path.isfile(gt_path):
        panels.append(label_panel(gt_path, shape))
    gap = np.full((shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    path = os.path.join(out_dir, img_id + ".png")
    save_png(path, np.concatenate(row, axis=1))
    return path


def main(argv=None):
    parser = run_sample.get_args_parser()
    g = parser.add_argument_group("render_masks")
    g.add_argument("--ids", default="", help="comma-separated ids (default: the first --num_images of --infer_list)")
    g.add_argument("--num_images", type=int, default=8)
    g.add_argument("--out_dir", default="", help="default: <work_dir>/result/sem_seg_png")
    args = run_sample.finalize_args(parser.parse_args(argv))
    spec = build_spec(args)
    ids = [i for i in args.ids.split(",") if i] or load_id_list(args.infer_list)[:args.num_images]
    out_dir = args.out_dir or os.path.join(args.result_dir, "sem_seg_png")
    for img_id in ids:
        print(render(args, spec, img_id, out_dir))


if __name__ == "__main__":
    main()
