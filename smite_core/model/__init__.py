"""The Stable Diffusion backbone: what is loaded and how one inflated UNet pass runs.

``backbone`` (name or path -> ``Backbone``), ``checkpoints`` (SD 1.x/2.x files and folders), ``shared_weights``
(a host's loaded tensors), ``components`` + ``configs/`` (architectures), ``tokenizer`` and ``weights/`` (the
embedded tiny backbone), ``attention`` (capture processors, frame-pooled GroupNorm), ``unet_pass`` (one
forward -> ``AttentionRecord``), ``memory_budget`` (free memory, batch sizes, autocast, checkpointing)."""
