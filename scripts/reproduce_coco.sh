#!/usr/bin/env bash
# The paper's MS COCO 2014 results end to end (Tables 1, 4, A3), on every visible GPU.
#
#   scripts/reproduce_coco.sh COCO_ROOT [WORK_DIR] [more run_sample.py flags]
#
# COCO_ROOT holds annotations/instances_{train,val}2014.json, train2014/ and val2014/; the first run writes the
# labels, lists and semantic masks there (coco14/prepare.py, resumable). The COCO preset applies (RIB lambda 5e-6,
# 15 other images, tau 0.5, m 1000; DeepLab 100k iterations, crop 481, no re-training). Rerunning skips finished
# work. Tables and figures end in WORK_DIR/tables.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?usage: scripts/reproduce_coco.sh COCO_ROOT [WORK_DIR] [run_sample flags]}
W=${2:-runs/coco}
shift $(( $# >= 2 ? 2 : 1 ))

python coco14/prepare.py --coco_root "$R"
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then
  RUN=(torchrun --standalone --nproc_per_node "$GPUS" run_sample.py)
else
  RUN=(python run_sample.py)
fi
# seeds and pseudo masks on COCO train (82,783 images), DeepLab-v2 evaluated on COCO val (40,504 images)
"${RUN[@]}" --dataset coco14 --coco_root "$R" --work_dir "$W" --backbone_weights imagenet \
    --seg_backbone_weights imagenet "$@"
python scripts/paper_tables.py "$W" --out "$W/tables"
echo "tables: $W/tables"
