"""DeepLab-v2 (ResNet-101/50, ASPP, MSC) trained on the pseudo masks, with re-training: the network
(model.py), the losses (losses.py), augmentation and batch order (data.py), the training loop (train.py), and
checkpoints, prediction and CRF workers (predict.py). The steps are step/make_seg_labels.py, train_deeplab.py,
retrain_deeplab.py, infer_deeplab.py and eval_deeplab.py; docs/deeplab.md maps every setting to its source."""
