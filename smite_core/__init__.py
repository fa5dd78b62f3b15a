"""SMITE: Segment Me In TimE - few-shot, any-granularity video segmentation on Stable Diffusion features.

The pipeline, in the order of the paper's Figure 2 (one module per stage, see ARCHITECTURE.md):
``backbone`` -> ``references`` -> ``learn``/``embedding`` -> ``inversion`` -> ``unet_pass``
(inflated UNet with ``attention`` capture) -> ``was`` -> ``tracking``/``voting``/``guidance`` ->
``segment`` (masks). This package never imports ComfyUI.
"""

import os as _os

__version__ = "0.1.0"

# Without it, MKL picks code paths by memory alignment on some CPUs, so two identical runs differ in the
# last bits and learning is not deterministic per seed. Takes effect if MKL has not computed anything yet
# (the CLI, scripts); an explicit MKL_CBWR in the environment wins.
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
