"""SMITE: Segment Me In TimE - few-shot, any-granularity video segmentation on Stable Diffusion features.

The pipeline, in the order of the paper's Figure 2 (one module per stage, see ARCHITECTURE.md):
``backbone`` -> ``references`` -> ``learn``/``embedding`` -> ``inversion`` -> ``unet_pass``
(inflated UNet with ``attention`` capture) -> ``was`` -> ``tracking``/``voting``/``guidance`` ->
``segment`` (masks). This package never imports ComfyUI, and importing it changes nothing in the
host process (no environment variables, threads or torch flags); see ARCHITECTURE.md.
"""

__version__ = "0.1.0"
