"""SMITE for ComfyUI: the node pack entry point (ComfyUI imports ``custom_nodes/<pack>/__init__.py``).

How the bundled library is imported: the pack ships the ``smite_core`` package next to this file.
ComfyUI does not put custom-node folders on ``sys.path``, and putting this folder there would also
expose its other top-level names (``nodes``, ``tests``) to every other module, and ComfyUI's own
``nodes`` module would clash with ours. So this file loads exactly one name, ``smite_core``, from
this folder by file location (``importlib``) and registers it in ``sys.modules``; the node modules
then use plain ``import smite_core`` and import each other relatively (``from .host import ...``).
If ``smite_core`` is already imported (tests, or an installed ``smite-segment`` of the same tree),
that module is used as it is.

Registration uses the classic node API (``NODE_CLASS_MAPPINGS``); ``nodes/__init__.py`` imports
each node module on its own and logs one summary of any that failed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)
PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def _load_bundled_core():
    """Import ``smite_core`` from this folder unless it is imported already; return the module."""
    existing = sys.modules.get("smite_core")
    if existing is not None:
        bundled = os.path.join(PACK_DIR, "smite_core")
        found = os.path.dirname(os.path.abspath(getattr(existing, "__file__", "") or ""))
        if os.path.normcase(os.path.realpath(found)) != os.path.normcase(os.path.realpath(bundled)):
            log.warning("SMITE: using the already imported smite_core from %s, not the pack's copy in %s",
                        found, bundled)
        return existing
    init = os.path.join(PACK_DIR, "smite_core", "__init__.py")
    spec = importlib.util.spec_from_file_location("smite_core", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["smite_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("smite_core", None)
        raise
    return module


try:
    _load_bundled_core()
except Exception as exc:  # a broken or missing library: no node can work, so the import fails loudly
    raise ImportError(f"SMITE: cannot import the bundled smite_core library ({type(exc).__name__}: {exc}); "
                      f"install the pack's requirements: pip install -r {os.path.join(PACK_DIR, 'requirements.txt')}"
                      ) from exc

if __package__:  # imported as the pack (ComfyUI gives it its folder's name, hyphens and all)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_model_folders  # noqa: E402

    register_model_folders()
else:  # a lone module without a package (pytest in a checkout whose folder name is not an identifier): no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
