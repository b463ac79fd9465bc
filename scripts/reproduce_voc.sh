#!/usr/bin/env bash
# The paper's PASCAL VOC 2012 results end to end (Tables 1, 2, 6, 7, A2), on every visible GPU.
#
#   scripts/reproduce_voc.sh VOC_ROOT [WORK_DIR] [more run_sample.py flags]
#
# VOC_ROOT holds JPEGImages/ (train_aug and val), SegmentationClass/ (+ SegmentationClassAug/ for train_aug).
# ImageNet weights are downloaded once into the torch hub cache (pass --backbone_weights PATH and
# --seg_backbone_weights PATH on an offline machine). Rerunning the script skips finished work; a step whose
# outputs were made with other settings stops and says so. Tables and figures end in WORK_DIR/tables.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?usage: scripts/reproduce_voc.sh VOC_ROOT [WORK_DIR] [run_sample flags]}
W=${2:-runs/voc}
shift $(( $# >= 2 ? 2 : 1 ))

GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then  # one process per GPU: DDP for training, disjoint shards for the per-image steps
  RUN=(torchrun --standalone --nproc_per_node "$GPUS" run_sample.py)
else
  RUN=(python run_sample.py)
fi
COMMON=(--voc12_root "$R" --work_dir "$W" --backbone_weights imagenet --seg_backbone_weights imagenet "$@")

# classifier -> CAM -> RIB -> seeds (+ CRF) -> IRN pseudo masks -> DeepLab-v2 (+ re-training) -> VOC val
"${RUN[@]}" "${COMMON[@]}" --eval_crf true
# Table 1's PSA column: PSA on the same RIB seeds
"${RUN[@]}" "${COMMON[@]}" --refine psa --only cam_to_psa_label,train_aff,make_psa_sem_seg,eval_sem_seg
# Table 2's test column: predict VOC test (when its images are in VOC_ROOT) and pack it for the evaluation server
if [ -f "$R/JPEGImages/$(head -n 1 voc12/test.txt).jpg" ]; then
  "${RUN[@]}" "${COMMON[@]}" --only infer_deeplab --seg_infer_list voc12/test.txt
  python scripts/export_voc_test.py --pred_dir "$W/result/deeplab_pred" --list voc12/test.txt \
      --out "$W/voc2012_test_results.tar.gz"
  echo "VOC test predictions for the evaluation server: $W/voc2012_test_results.tar.gz"
else
  echo "no VOC test images in $R/JPEGImages: Table 2's test column is skipped"
fi
python scripts/paper_tables.py "$W" --out "$W/tables"
echo "tables: $W/tables"
