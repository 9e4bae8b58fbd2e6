"""Evaluation metrics (torchmetrics, DDP-safe) for the Florence-2 tasks, each following its benchmark's protocol."""

from f2lightning.evaluation.caption import BLEU, CIDEr, coco_caption_tokenize, ptb_tokenize
from f2lightning.evaluation.detection import DetectionMAP
from f2lightning.evaluation.grounding import PhraseGroundingRecall, RECAccuracy, box_iou, union_box
from f2lightning.evaluation.ocr import OCRMetrics, edit_distance, normalize_ocr_text
from f2lightning.evaluation.segmentation import ReferringSegmentationIoU, polygons_to_rle
from f2lightning.evaluation.vqa import VQAAccuracy, normalize_vqa_answer, vqa_accuracy

__all__ = [
    "BLEU",
    "CIDEr",
    "DetectionMAP",
    "OCRMetrics",
    "PhraseGroundingRecall",
    "RECAccuracy",
    "ReferringSegmentationIoU",
    "VQAAccuracy",
    "box_iou",
    "coco_caption_tokenize",
    "edit_distance",
    "normalize_ocr_text",
    "normalize_vqa_answer",
    "polygons_to_rle",
    "ptb_tokenize",
    "union_box",
    "vqa_accuracy",
]
