"""tools/gpu_check.sh end to end on CPU at reduced size, so that the prepared GPU check cannot fail on a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["environment", "parity", "parity", "sd21_random_folder", "bench", "bench", "bench", "bench"]


@pytest.mark.slow
def test_gpu_check_small_on_cpu_is_green():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--small"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["check"] for r in records] == CHECKS, proc.stdout + proc.stderr[-2000:]
    assert all(r["ok"] is True for r in records), proc.stdout
    assert proc.returncode == 0
    benches = [r for r in records if r["check"] == "bench"]
    assert [(r["model"], r["frames"]) for r in benches] == [("sd21-random", 2), ("sd21-random", 18), ("tiny", 2),
                                                            ("tiny", 18)]
    assert all(r["nonfinite_frames"] == 0 and r["frames_checked"] == r["frames"] for r in benches)
    assert all(r["s_per_frame"] > 0 and r["peak_rss_mb"] > 0 for r in benches)


def test_gpu_check_refuses_a_bad_option():
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--device", "tpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--device must be cuda or cpu" in proc.stderr
