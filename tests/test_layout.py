"""The project's shape: the runtime pipeline apart from its tools, no import cycles, short functions,
nothing done to the host process on import, and documentation that resolves inside the repository."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "smite_core"
TOOLS = "smite_core.tools"
TRAINING = {"smite_core.method.learn", "smite_core.method.learn_state", "smite_core.method.augment"}
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The smite_core modules ``name`` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_walks_real_imports():
    graph = _graph()
    assert "smite_core.model.unet_pass" in graph["smite_core.method.segment"]  # from .unet_pass import ...
    assert "smite_core.tools.bench" in graph["smite_core.commands.cli"]  # from .tools import bench (in a function)
    assert len(graph) > 30


def test_no_import_cycles():
    graph = _graph()
    for name in graph:  # a cycle through a package's __init__ counts too
        assert name not in _closure(graph, name), f"{name} imports itself through {sorted(_closure(graph, name))}"


def test_inference_never_imports_training_code_or_tools():
    graph = _graph()
    for entry in ("smite_core.method.segment", "smite_core.method.export", "smite_core.temporal.voting", "smite_core.evaluation.metrics"):
        reached = _closure(graph, entry)
        assert not reached & TRAINING, f"{entry} reaches training code {sorted(reached & TRAINING)}"
        assert not {m for m in reached if m.startswith(TOOLS)}, entry
    runtime = [m for m in graph if not m.startswith(TOOLS) and m != "smite_core.commands.cli"]
    for name in runtime:  # the tools sit beside the pipeline; only the CLI front end starts them
        assert not {m for m in graph[name] if m.startswith(TOOLS)}, name


# The sub-packages of smite_core from the bottom up (ARCHITECTURE.md): a module imports only modules of its
# own package or of a lower layer. "" is the package's face and the cross-cutting top-level modules.
LAYERS = [{""}, {"io", "model"}, {"procedural", "temporal"}, {"method"}, {"evaluation"}, {"batch"}, {"tools"},
          {"commands"}]
TOP_LEVEL = {"__init__", "errors", "settings", "checks"}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (CORE / parts[1]).is_dir()) else ""


def _layer(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if _package(module) in layer)


def test_the_tree_shows_the_layers():
    """Only the package's face and the cross-cutting modules sit at the top; every sub-package has a layer."""
    top = {p.stem for p in CORE.glob("*.py")}
    assert top == TOP_LEVEL, sorted(top - TOP_LEVEL)
    packages = {p.parent.relative_to(CORE).parts[0] for p in CORE.rglob("__init__.py") if p.parent != CORE}
    assert packages == set().union(*LAYERS) - {""}, packages


def test_layers_import_downward_only():
    graph = _graph()
    upward = [f"{name} -> {target}" for name, targets in graph.items() for target in targets
              if _package(target) != _package(name) and _layer(target) >= _layer(name)]
    assert not upward, upward


def test_the_public_names_import_from_the_package():
    """README and docs import the library's public names from ``smite_core`` itself, each from its module."""
    import smite_core

    for name in smite_core.__all__:
        value = getattr(smite_core, name)
        module = getattr(value, "__module__", None)
        assert name == "__version__" or (module or "").startswith("smite_core."), (name, module)
    assert smite_core.segment_many.__module__ == "smite_core.batch.many"
    with pytest.raises(AttributeError):
        smite_core.segment  # an old module path is not a public name
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"from smite_core import \(([^)]*)\)", readme)[1]
    assert {n.strip() for n in shown.split(",")} <= set(smite_core.__all__)


def test_tools_use_only_public_names():
    for path in (CORE / "tools").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smite_core"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in {"P", "procedural"}:
                    pytest.fail(f"{path.name} uses the private {base.id}.{node.attr}")


def test_no_function_over_80_lines_in_the_runtime_pipeline():
    long = []
    for path in CORE.rglob("*.py"):
        if _module_name(path).startswith(TOOLS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


_HOST_STATE = """
import json, os, sys
import torch, cv2, av, numpy, PIL.Image, diffusers, transformers, safetensors  # the host has its dependencies
before = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), list(sys.path),
          torch.is_grad_enabled())
import importlib, pkgutil
import smite_core
names = [m.name for m in pkgutil.walk_packages(smite_core.__path__, "smite_core.")
         if not m.name.startswith("smite_core.tools")]
for name in names:
    importlib.import_module(name)
after = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), list(sys.path), torch.is_grad_enabled())
changed = [k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k)]
print(json.dumps({"modules": len(names), "env": changed, "same": before[1:] == after[1:]}))
"""


def test_importing_the_library_changes_nothing_in_the_host_process():
    """Inside ComfyUI the library is a guest: no environment variables, threads, dtypes or sys.path changes
    (beyond what its dependencies do when they are imported: OpenCV's loader sets LD_LIBRARY_PATH)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", _HOST_STATE], env=env, capture_output=True, text=True, check=True,
                         cwd=str(ROOT))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] > 30 and result["env"] == [] and result["same"], result


# ----------------------------------------------------------------------------- documents

DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "smite_core" / "model" / "weights" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE_PATH = re.compile(r"`((?:smite_core|nodes|tests|tools|workflows|docs|example_inputs)/[\w./-]*)`")


def _anchors(path: Path) -> set[str]:
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_and_module_path_resolves(doc):
    text = doc.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file) if file else doc
        assert resolved.exists(), f"{doc.name}: link to {target} does not resolve"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{doc.name}: no heading #{anchor} in {resolved.name}"
    for path in MODULE_PATH.findall(text):
        assert (ROOT / path.rstrip("/")).exists() or (ROOT / path.rstrip("/")).with_suffix(".py").exists() \
            or any(ROOT.glob(path)), f"{doc.name}: {path} does not exist"


def test_nothing_cites_a_document_outside_the_repository():
    """Code and docs cite the method as docs/method.md (which has the numbered sections and defects)."""
    skipped = {".git", ".venv", "node_modules", ".comfyui-test"}
    files = [p for top in ROOT.iterdir() if top.name not in skipped
             for p in ([top] if top.is_file() else top.rglob("*"))
             if p.suffix in (".py", ".md", ".toml", ".json", ".txt") and p.is_file()
             and not skipped & set(p.parts) and p != Path(__file__)]
    outside = re.compile(r"\.\./shared|shared/reference|shared/data|shared/seed|/work/")
    bare = re.compile(r"(?<![\w/])method\.md")
    for path in files:
        text = path.read_text(errors="ignore")
        assert not outside.search(text), f"{path.relative_to(ROOT)} cites {outside.search(text).group(0)}"
        for match in bare.finditer(text):
            before = text[max(0, match.start() - 5):match.start()]
            as_target = before.endswith("(") and (path.parent / "method.md") == ROOT / "docs" / "method.md"
            opened, closed = text.rfind("[", 0, match.start()), text.find("]", match.end())
            as_link_text = opened >= 0 and "]" not in text[opened:match.start()] and text[closed + 1:closed + 2] == "("
            assert before == "docs/" or as_target or as_link_text, \
                f"{path.relative_to(ROOT)}: cite docs/method.md, not a bare method.md"
    method = (ROOT / "docs" / "method.md").read_text()
    cited = {m for p in files for m in re.findall(r"\bD(\d{1,2})\b", p.read_text(errors="ignore"))}
    for number in cited:
        assert re.search(rf"\bD{number}\b", method), f"defect D{number} is cited but not in docs/method.md"


def test_every_package_of_the_library_is_installed():
    """A non-editable install ships exactly the packages pyproject lists: every one of them."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(p) for p in CORE.rglob("__init__.py")}
    assert listed == packages


def test_the_pack_entry_point_imports_as_a_lone_module_too():
    """pytest imports the checkout's ``__init__.py`` as a lone module when the folder's name is not an
    identifier (``smite-segment``, a CI clone): that must not fail (ComfyUI imports it as a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {}
