"""DeepLab-v2 (ResNet-101, ASPP) training on the pseudo masks, with retraining: not implemented yet."""
