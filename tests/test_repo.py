"""Repository rules that keep the project honest."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"^```(?:bash|sh)\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmds = [c for c in _readme_commands() if "pytest" in c and c.startswith("python3 -m venv")]
    assert test_cmds, "README has no test command"
    assert test_cmds[0] in ci


def test_core_never_imports_comfyui():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [p.name for p in (ROOT / "smite_core").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_nothing_unpickles():
    for path in list((ROOT / "smite_core").rglob("*.py")) + list((ROOT / "nodes").rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|joblib|cloudpickle)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_requirements_never_pin_torch():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        assert not re.match(r"\s*torch(vision|audio)?\b", line), line
