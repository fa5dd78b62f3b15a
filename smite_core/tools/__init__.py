"""Development tools, apart from the runtime pipeline: benchmarks, the quality suite, pre-training.

- ``bench``: ``smite bench`` - seconds per stage, peak memory, the voting benchmark, SD 2.1 FLOPs;
- ``quality``: ``smite bench --quality`` - the procedural quality suite (docs/quality.md);
- ``pretrain``: ``python -m smite_core.tools.pretrain`` - pre-training of the embedded tiny backbone.

They use only the public names of ``smite_core``; nothing in the runtime pipeline (the CLI's
``learn``/``segment``/``vote``/``eval``/``demo`` commands, the ComfyUI nodes) imports them.
"""
