"""MS COCO 2014: class names, label generation and the preset; datasets are shared with voc12/."""
