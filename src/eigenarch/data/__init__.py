"""Data: the embedded synthetic shapes sets and COCO-format loading."""
