"""The SMITE method (docs/method.md), one module per stage of the paper's Figure 2.

Learning: ``augment`` -> ``learn`` (+ ``learn_state``, ``losses``) -> ``embedding`` (the learned tokens and
cross-attention K/V). Segmentation: ``inversion`` (VAE encode, noise) -> ``model.unet_pass`` -> ``was``
(weighted accumulated self-attention) -> ``guidance`` (tracking and low-pass energies) -> ``segment``
(windows, cross-fade, the stream of WAS maps) -> ``export`` (``edges``-aware labels, PNGs, overlay).
``profiling`` is the stage-timing hook they report to."""
