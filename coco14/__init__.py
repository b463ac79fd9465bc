"""MS COCO 2014: class names and file layout (dataloader), the preset, the one-command preparation of labels,
lists and masks from the instances JSONs (prepare), the full id lists, and a synthetic COCO-format set (synthetic)."""
