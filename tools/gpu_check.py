"""The prepared GPU check (run through ``tools/gpu_check.sh``): one JSON object per line per check.

Checks, in order (``--small``: reduced sizes so that the whole script runs in about a minute on a CPU):

1. ``environment``: device name, torch / diffusers versions.
2. ``parity`` in fp32, fp16 and bf16: ``tests/test_parity.py`` on the device (``SMITE_PARITY_DEVICE``,
   ``SMITE_PARITY_DTYPE``): fp32 against the goldens at 1e-4, half precision at the tolerances stated in
   that file (model outputs only). ``--small``: fp32 the formula tests, bf16 the SD 2.1 window test.
3. ``bench``: ``smite bench --json`` on the SD 2.1 architecture with random weights (full size, created
   here as a diffusers folder in a temp dir) at 512 px for 16 and 64 frames in fp16, then on the tiny
   backbone; each run in its own process, with every segmentation output (the WAS maps of every frame)
   checked for NaN / inf. ``--small``: the reduced SD 2.1 of ``tools/parity`` and the tiny backbone, at
   64 px for 2 and 18 frames (one window and two), fp32.

Exit status 0 only if every check has ``"ok": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def child(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """This file in a fresh process: the parent never imports torch, so a child's peak RSS (which Linux carries
    over from the parent at fork) is the child's own."""
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess, count: int = 1) -> list[dict]:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines[-count:]] if len(lines) >= count else [{}] * count


def environment(device: str) -> dict:
    import diffusers
    import torch

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    ok = not device.startswith("cuda") or torch.cuda.is_available()
    return {"check": "environment", "ok": ok, "device": device, "device_name": name, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": sys.version.split()[0]}


def parity(device: str, dtype: str, small: bool, timeout: int) -> dict:
    """Run tests/test_parity.py on ``device`` in ``dtype``; counts from pytest's JUnit XML."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smite-gpu-check-") as tmp:
        xml = Path(tmp) / "parity.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_parity.py"),
               f"--junitxml={xml}", "-m", "not slow"]
        if small:  # fp32: the model-free formulas; half precision: one SD 2.1 window (the HALF_TOL path)
            cmd += ["-k", "dct or metrics or voting" if dtype == "fp32" else "sd21 and noise_prediction"]
        env = dict(os.environ, SMITE_PARITY_DEVICE=device, SMITE_PARITY_DTYPE=dtype)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if xml.is_file():
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in counts}
    failed = counts["failures"] + counts["errors"]
    record = {"check": "parity", "ok": proc.returncode == 0 and failed == 0 and counts["tests"] > 0, "device": device,
              "dtype": dtype, **counts, "seconds": round(time.perf_counter() - start, 1)}
    if not record["ok"]:
        record["tail"] = (proc.stdout + proc.stderr)[-1500:]
    return record


def write_sd21_folder(root: Path, small: bool) -> Path:
    """SD 2.1 with random weights as a diffusers folder: full size, or the reduced parity one with ``small``."""
    import torch

    if small:
        sys.path.insert(0, str(ROOT / "tools" / "parity"))
        import parity_models as pm

        unet, vae, text = pm.build("sd21")
        scheduler = dict(pm.SCHEDULER_CONFIG)
    else:
        from smite_core.model.checkpoints import random_components
        from smite_core.model.components import read_family_config

        comp = random_components("sd2", seed=0)
        unet, vae, text = comp.unet, comp.vae, comp.text_encoder
        scheduler = {"_class_name": "DDIMScheduler", **read_family_config("sd2")["scheduler"]}
    folder = root / "sd21-random"
    for sub, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        model.to(torch.float16).save_pretrained(folder / sub, safe_serialization=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def bench(model: str, label: str, frames: int, side: int, device: str, dtype: str, timeout: int,
          vote: bool = True) -> dict:
    """``smite bench --json`` in a child process that also checks every segmentation output for NaN / inf."""
    start = time.perf_counter()
    args = ["bench", "--model", model, "--frames", str(frames), "--frame-size", str(side), "--size", str(side),
            "--dtype", dtype, "--device", device, "--json"] + (["--no-vote"] if vote is False else [])
    proc = child("--bench-child", *args, timeout=timeout)
    result, finite = last_json(proc, 2)
    keep = ("frames", "frame_size", "size", "device", "dtype", "windows", "load_s", "total_s", "s_per_frame",
            "unet_calls", "tracker_calls", "peak_rss_mb", "peak_cuda_mb", "vote_speedup")
    record = {"check": "bench", "model": label, **{k: result[k] for k in keep if k in result}, **finite}
    record["ok"] = proc.returncode == 0 and bool(result) and finite.get("nonfinite_frames", 1) == 0 \
        and finite.get("frames_checked", 0) == frames
    record["seconds"] = round(time.perf_counter() - start, 1)
    if not record["ok"]:
        record["tail"] = (proc.stdout + proc.stderr)[-1500:]
    return record


def bench_child(argv: list[str]) -> int:
    """Run the ``smite`` CLI in this process with every (frame, WAS) output checked; print a summary line."""
    import torch

    import smite_core.method.export as export
    from smite_core.commands import cli

    seen = {"frames_checked": 0, "nonfinite_frames": 0}
    original = export.export_segmentation

    def checked(out_dir, maps, *args, **kwargs):
        def stream():
            for index, was in maps:
                seen["frames_checked"] += 1
                seen["nonfinite_frames"] += int(not bool(torch.isfinite(was).all()))
                yield index, was

        return original(out_dir, stream(), *args, **kwargs)

    export.export_segmentation = checked
    code = cli.main(argv)
    print(json.dumps(seen), flush=True)
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the prepared GPU check; one JSON line per check")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--small", action="store_true", help="reduced sizes: about a minute on a CPU")
    a = p.parse_args(argv)
    device, small = a.device, a.small
    records = [emit(last_json(child("--env-child", device))[0] or {"check": "environment", "ok": False})]
    if not records[0]["ok"]:
        return 1
    for dtype in (("fp32", "bf16") if small else ("fp32", "fp16", "bf16")):
        records.append(emit(parity(device, dtype, small, timeout=300)))
    half = "fp32" if device == "cpu" else "fp16"
    frames = (2, 18) if small else (16, 64)
    side = 64 if small else 512
    with tempfile.TemporaryDirectory(prefix="smite-gpu-check-") as tmp:
        start = time.perf_counter()
        made = child("--folder-child", tmp, "small" if small else "full", timeout=600)
        folder = Path(tmp) / "sd21-random"
        records.append(emit({"check": "sd21_random_folder", "ok": made.returncode == 0 and folder.is_dir(),
                             "small": small, "seconds": round(time.perf_counter() - start, 1)}))
        for n in frames:
            records.append(emit(bench(str(folder), "sd21-random", n, side, device, half, timeout=420, vote=not small)))
    for n in frames:
        records.append(emit(bench("tiny", "tiny", n, side if small else 256, device, half, timeout=300,
                                  vote=not small)))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench-child":
        sys.exit(bench_child(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "--env-child":
        sys.exit(0 if emit(environment(sys.argv[2]))["ok"] else 1)
    if len(sys.argv) > 1 and sys.argv[1] == "--folder-child":
        write_sd21_folder(Path(sys.argv[2]), sys.argv[3] == "small")
        sys.exit(0)
    sys.exit(main())
