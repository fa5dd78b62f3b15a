"""Scores of predicted label maps against ground truth: J, F, mIoU, per-class IoU, flicker (``metrics``)."""
