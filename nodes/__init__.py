"""SMITE's ComfyUI nodes: thin adapters from ComfyUI types to ``smite_core``.

Each node module is imported on its own; a module that fails (e.g. a missing optional dependency)
only removes its own nodes, and one summary names every failure. Nothing here imports ComfyUI:
``host`` finds ComfyUI's modules lazily and falls back to plain behaviour outside ComfyUI, so the
classes can be imported and called directly (tests, scripts).
"""

from __future__ import annotations

import importlib
import logging

from .host import register_model_folders

log = logging.getLogger(__name__)

NODE_MODULES = ("model", "comfy_model", "references", "embedding", "segment", "stream", "guides", "masks", "examples")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
IMPORT_FAILURES: dict[str, str] = {}

for _name in NODE_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except Exception as _exc:  # keep the other modules' nodes available; report once below
        IMPORT_FAILURES[_name] = f"{type(_exc).__name__}: {_exc}"
        continue
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

if IMPORT_FAILURES:
    log.error("SMITE: %d of %d node modules failed to import, their nodes are missing: %s",
              len(IMPORT_FAILURES), len(NODE_MODULES),
              "; ".join(f"{name} ({reason})" for name, reason in IMPORT_FAILURES.items()))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folders"]
