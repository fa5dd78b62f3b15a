"""Shared fixtures: the tiny backbone (built once per session) and small synthetic references."""

import os
import re
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as the smite command sets it; before torch computes anything

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# ----------------------------------------------------------------------------- the real-ComfyUI tests

REAL_COMFYUI_TESTS = ("test_comfy_server.py", "test_comfy_browser.py")


def _comfyui_required() -> bool:
    """The real-ComfyUI tests must run, not skip: ``SMITE_REQUIRE_COMFYUI=1`` (tools/comfyui_tests.sh sets it)."""
    return os.environ.get("SMITE_REQUIRE_COMFYUI") == "1"


def _comfyui_deferred() -> bool:
    """In .ci/run's README command (``SMITE_COMFYUI_NEXT=1``, without a ComfyUI): its next step runs these tests in
    a real ComfyUI. Keyed on .ci/run's own variable, not on ``CI``, which every CI service sets for every job."""
    return os.environ.get("SMITE_COMFYUI_NEXT") == "1" and not _comfyui_required()


def _comfyui_version(path: str) -> str:
    try:
        text = Path(path, "comfyui_version.py").read_text()
        return re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)[1]
    except (OSError, TypeError):
        return "of unknown version"


def pytest_collection_modifyitems(config, items):
    if not _comfyui_deferred():
        return
    deferred = [item for item in items if item.path.name in REAL_COMFYUI_TESTS]
    if deferred:
        config.hook.pytest_deselected(items=deferred)
        items[:] = [item for item in items if item.path.name not in REAL_COMFYUI_TESTS]
        config.stash[_DEFERRED] = len(deferred)


_DEFERRED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line on where the real-ComfyUI tests ran (or that CI runs them next)."""
    path = os.environ.get("COMFYUI_PATH")
    if config.stash.get(_DEFERRED, 0):
        terminalreporter.write_line(f"real-ComfyUI tests: {config.stash[_DEFERRED]} deselected here; .ci/run runs "
                                    "them next in a real ComfyUI (tools/comfyui_tests.sh)")
    elif path and any((getattr(r, "nodeid", None) or "").split("::")[0].endswith(REAL_COMFYUI_TESTS)
                      for r in terminalreporter.stats.get("passed", [])):
        terminalreporter.write_line(f"real-ComfyUI tests ran against ComfyUI {_comfyui_version(path)} at {path}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Where the real-ComfyUI tests are required, a skip of one of them is a failure naming why it skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.path.name in REAL_COMFYUI_TESTS and _comfyui_required() and not hasattr(report, "wasxfail"):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        why = why.removeprefix("Skipped: ")
        report.outcome, report.longrepr = "failed", f"{item.nodeid}: must run here, but skipped: {why}"


@pytest.fixture(scope="session")
def tiny_backbone():
    from smite_core.model.backbone import load_backbone

    return load_backbone("tiny", device="cpu", dtype="fp32")


def blob_reference(size=64, seed=0):
    """One synthetic reference: image [H,W,3] with three coloured shapes and their label map [H,W]."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(size, size, 3, generator=g) * 0.2
    labels = torch.zeros(size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size // 2
    disk = (yy - c) ** 2 + (xx - c) ** 2 < (size // 4) ** 2
    labels[disk] = 1
    labels[(yy < size // 4) & (xx > size // 2)] = 2
    image[labels == 1] = torch.tensor([0.9, 0.2, 0.2])
    image[labels == 2] = torch.tensor([0.2, 0.3, 0.9])
    return image, labels
