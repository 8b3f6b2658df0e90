"""COCO evaluation of detections with pycocotools' ``COCOeval``."""

from eigenarch.evaluation.coco import (
    COCO_METRICS,
    evaluate_detections,
    load_detections,
    predictions_to_coco,
)

__all__ = ["COCO_METRICS", "evaluate_detections", "load_detections", "predictions_to_coco"]
