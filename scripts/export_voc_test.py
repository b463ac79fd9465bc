"""Pack predictions of the VOC 2012 test images for the evaluation server.

    python scripts/export_voc_test.py --pred_dir runs/voc/result/deeplab_pred --list voc12/test.txt \
        --out runs/voc/voc12_test.tar.gz [--voc12_root VOCdevkit/VOC2012]

Each <id>.png of --pred_dir (class indices 0..20, as infer_deeplab writes them; run it with --seg_infer_list
voc12/test.txt) becomes results/VOC2012/Segmentation/comp6_test_cls/<id>.png in the archive: an 8-bit palette
PNG with the VOC palette, values 0..20, the original image size (checked against the JPEG when --voc12_root is
given). The devkit names the folder %s_%s_cls with the competition (comp6: own training data) and the class
'cls'. The archive is written atomically; a missing id, a value above 20 or a size mismatch stops with one line.
"""
import io
import os
import sys
import tarfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from misc import imutils  # noqa: E402
from misc.cli import ArgumentParser, HelpFormatter, show_all_defaults  # noqa: E402
from misc.datasets import load_id_list  # noqa: E402
from misc.fileio import DataError, atomic_path, load_label_png  # noqa: E402

NUM_CLASSES = 20


def member_name(img_id, comp="comp6"):
    return f"results/VOC2012/Segmentation/{comp}_test_cls/{img_id}.png"


def palette_png_bytes(pred):
    img = Image.fromarray(pred.astype(np.uint8), mode="L").convert("P")
    img.putpalette(imutils.color_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_prediction(pred_dir, img_id, voc12_root=None):
    path = os.path.join(pred_dir, img_id + ".png")
    if not os.path.isfile(path):
        raise DataError(f"--pred_dir has no prediction for {img_id} ({path}); run infer_deeplab with "
                        f"--seg_infer_list on these ids")
    pred = load_label_png(path)
    if pred.min() < 0 or pred.max() > NUM_CLASSES:
        raise DataError(f"{path} has value {pred.max()}; the server takes class indices 0..{NUM_CLASSES} (a "
                        f"colour PNG or another dataset's prediction?)")
    if voc12_root:
        jpeg = os.path.join(voc12_root, "JPEGImages", img_id + ".jpg")
        try:
            with Image.open(jpeg) as img:
                size = img.size[::-1]
        except FileNotFoundError:
            raise DataError(f"--voc12_root has no image {jpeg} to check {path}'s size against; point --voc12_root "
                            f"at a VOC2012 folder with the test images (VOC2012 test), or drop it") from None
        except OSError as e:
            raise DataError(f"image {jpeg} is unreadable ({e}); replace it, or drop --voc12_root") from None
        if pred.shape != size:
            raise DataError(f"{path} is {pred.shape[0]}x{pred.shape[1]} but image {img_id} is {size[0]}x{size[1]}; "
                            f"the server needs the original size")
    return pred


def export(pred_dir, ids, out, voc12_root=None, comp="comp6"):
    """Write the .tar.gz; returns the number of PNGs."""
    if not out.endswith((".tar.gz", ".tgz")):
        raise DataError(f"--out {out}: the server takes a .tar.gz (or .tgz) archive")
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for img_id in ids:
                data = palette_png_bytes(load_prediction(pred_dir, img_id, voc12_root))
                info = tarfile.TarInfo(member_name(img_id, comp))
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
    return len(ids)


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pred_dir", required=True, help="folder of <id>.png class-index predictions")
    p.add_argument("--list", required=True, help="ids to export (voc12/test.txt: 1,456 images)")
    p.add_argument("--out", required=True, help="the .tar.gz to write")
    p.add_argument("--voc12_root", default="", help="VOC2012 folder: check each prediction's size against its JPEG")
    p.add_argument("--comp", default="comp6", choices=("comp5", "comp6"),
                   help="competition: comp5 = VOC data only, comp6 = own data (the devkit's naming)")
    show_all_defaults(p)
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        n = export(args.pred_dir, load_id_list(args.list, "--list"), args.out, args.voc12_root or None, args.comp)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {n} predictions to {args.out}")


if __name__ == "__main__":
    main()
