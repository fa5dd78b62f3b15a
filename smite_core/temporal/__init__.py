"""Temporal consistency by point tracking: ``tracking`` (flow, CoTracker or static tracks on a grid) and
``voting`` (each pixel's classes voted along its track over a window of frames)."""
