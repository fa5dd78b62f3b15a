"""CI runs the real-ComfyUI tests: tools/comfyui_tests.sh names a missing piece in one line, and under CI the
server and browser tests never pass by skipping."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "comfyui_tests.sh"


def _script(*args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "SMITE_BROWSER", "CI")}
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=full,
                          timeout=120)


def test_ci_runs_the_comfyui_tests_after_the_readme_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    comfy = next(i for i, line in enumerate(lines) if line.startswith("bash tools/comfyui_tests.sh "))
    assert comfy > readme


def test_a_missing_vendor_folder_is_one_line(tmp_path):
    for vendor, named in ((tmp_path / "none", "no such folder"), (tmp_path, "ComfyUI/main.py: missing")):
        result = _script(vendor)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {vendor}") and named in result.stderr


def test_a_missing_browser_is_one_line(tmp_path):
    (tmp_path / "ComfyUI").mkdir()
    (tmp_path / "ComfyUI" / "main.py").write_text("")
    (tmp_path / "setup-comfyui.sh").write_text("echo must not run; exit 1\n")
    result = _script(tmp_path, SMITE_BROWSER=str(tmp_path / "no-chromium"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: Chromium:"), result.stderr


def _pytest(test_file: str, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "SMITE_REQUIRE_COMFYUI", "CI",
                                                            "SMITE_COMFYUI_NEXT")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{test_file}"],
                          capture_output=True, text=True, env=full, cwd=ROOT, timeout=300)


def test_real_comfyui_tests_skip_for_users_and_never_skip_where_required():
    user = _pytest("test_comfy_server.py")  # a user's run without ComfyUI: skipped, as before
    count = int(re.search(r"(\d+) skipped", user.stdout)[1])
    assert user.returncode == 0 and count >= 10 and "failed" not in user.stdout and "passed" not in user.stdout
    another_ci = _pytest("test_comfy_server.py", CI="true")  # a CI service's job that is not .ci/run: skipped
    assert another_ci.returncode == 0 and f"{count} skipped" in another_ci.stdout
    readme_in_ci = _pytest("test_comfy_server.py", SMITE_COMFYUI_NEXT="1")  # .ci/run's README command: next step
    assert readme_in_ci.returncode == 5 and f"{count} deselected" in readme_in_ci.stdout
    assert f"real-ComfyUI tests: {count} deselected here; .ci/run runs them next" in readme_in_ci.stdout
    required = _pytest("test_comfy_server.py", SMITE_REQUIRE_COMFYUI="1")  # tools/comfyui_tests.sh without ComfyUI
    summary = required.stdout.strip().splitlines()[-1]
    assert required.returncode == 1 and f"{count} errors" in summary and "skipped" not in summary, summary
    assert "must run here, but skipped: set COMFYUI_PATH" in required.stdout
