"""The pack inside a real ComfyUI server: import, /object_info, templates, every API workflow queued.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI checkout (skipped otherwise). ComfyUI is started
with ``COMFYUI_PYTHON`` (default: this interpreter; use the Python of the environment that has
ComfyUI's requirements) as ``main.py --cpu --listen 127.0.0.1`` with a fresh ``--base-directory`` in
a temporary folder, whose ``custom_nodes/`` holds a link to this pack: nothing in the checkout is
touched, and the models folder starts empty (as on a fresh install); an ``extra_model_paths.yaml``
with a ``smite:`` folder checks that user-configured model paths are listed and used. ``SMITE_SERVER_TIMEOUT``
(seconds, default 1800) bounds each workflow.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from graph_runner import API_WORKFLOWS, ROOT, WORKFLOWS, check_ui_workflow

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI or not (Path(COMFYUI) / "main.py").is_file(),
                                reason="set COMFYUI_PATH to a ComfyUI checkout to run the server test")
PACK_NAME = "smite-segment"
EXPECTED = {"SMITE_ModelLoader", "SMITE_LoadReferences", "SMITE_LearnSegmentEmbedding", "SMITE_SaveEmbedding",
            "SMITE_LoadEmbedding", "SMITE_InvertVideo", "SMITE_InflatedUNetSegment", "SMITE_TrackVote",
            "SMITE_LowPassGuide", "SMITE_MaskToVideo", "SMITE_LoadExample"}
TIMEOUT = float(os.environ.get("SMITE_SERVER_TIMEOUT", "1800"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        (base / "custom_nodes").mkdir(parents=True)
        os.symlink(ROOT, base / "custom_nodes" / PACK_NAME, target_is_directory=True)
        for sub in ("models", "input", "output", "user", "temp"):
            (base / sub).mkdir()
        # a user's extra_model_paths.yaml with its own 'smite' folder: listed, and the default save place
        (base / "shared_smite").mkdir()
        shutil.copy(ROOT / "example_inputs" / "smite_example_car.safetensors",
                    base / "shared_smite" / "shared_copy.safetensors")
        (base / "extra_model_paths.yaml").write_text(f"shared:\n    base_path: {base}\n    smite: shared_smite\n")
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
             "--extra-model-paths-config", str(base / "extra_model_paths.yaml"), "--disable-auto-launch"],
            cwd=COMFYUI, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return response.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def wait_ready(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({self.process.returncode}):\n{self.text()[-6000:]}")
            try:
                return self.get("/object_info")
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(1)
        raise AssertionError(f"ComfyUI did not answer within {timeout} s:\n{self.text()[-6000:]}")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "smite-test-" + uuid.uuid4().hex[:8]})
        assert status == 200 and "prompt_id" in body, f"queueing failed ({status}): {json.dumps(body)[:3000]}"
        return body["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited while running:\n{self.text()[-6000:]}")
            time.sleep(2)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.text()[-4000:]}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    srv = Server(base)
    try:
        srv.object_info = srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        keep = os.environ.get("SMITE_SERVER_LOG")
        if keep:
            shutil.copy(srv.log_path, keep)


def _infos(object_info: dict) -> dict:
    return {name: {"input": info["input"], "input_order": info.get("input_order", {}), "output": info["output"],
                   "output_name": info["output_name"]} for name, info in object_info.items()}


def test_pack_imports_cleanly_and_every_node_appears(server):
    log = server.text()
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line], log[-6000:]
    assert "node modules failed to import" not in log, log[-6000:]
    assert any(PACK_NAME in line and "seconds" in line for line in log.splitlines()), "no import-time line"
    info = server.object_info
    assert EXPECTED <= set(info)
    for name in EXPECTED:
        assert info[name]["category"].startswith("SMITE/") and info[name]["python_module"].startswith("custom_nodes")
    assert "tiny (embedded)" in info["SMITE_ModelLoader"]["input"]["required"]["model"][0]
    embeddings = info["SMITE_LoadEmbedding"]["input"]["required"]["embedding"][0]
    assert "smite_example_car.safetensors" in embeddings  # bundled with the pack
    assert "shared_copy.safetensors" in embeddings  # from the user's extra_model_paths.yaml


def test_ui_workflows_are_templates_without_missing_nodes(server):
    infos = _infos(server.object_info)
    listed = server.get("/workflow_templates")
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(listed.get(PACK_NAME, [])) == names
    for name in names:
        served = server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert served == json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert check_ui_workflow(served, infos) == [], name


def test_bad_widget_value_fails_validation(server):
    api = json.loads((API_WORKFLOWS / "smite_3_trackvote_deflicker_masks.json").read_text())
    api["1"]["inputs"]["frames"] = 100000
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"


@pytest.mark.parametrize("name", sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
def test_api_workflow_runs_to_success(server, name):
    api = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
    started = time.time()
    entry = server.wait_history(server.queue(api))
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status)[:4000] + "\n" + server.text()[-4000:]
    outputs = entry["outputs"]
    saved = [f for node in outputs.values() for kind in ("images", "videos", "gifs") for f in node.get(kind, [])]
    assert saved, outputs
    for item in saved:
        if item.get("type") == "output":
            assert (server.base / "output" / item.get("subfolder", "") / item["filename"]).is_file(), item
    sys.stderr.write(f"\n{name}: {time.time() - started:.0f} s\n")
    if name.startswith("smite_1"):  # saved where the user's extra_model_paths.yaml puts 'smite' files
        assert (server.base / "shared_smite" / "smite_my_car_parts.safetensors").is_file()
        assert not (server.base / "models" / "smite").exists()


def test_a_running_workflow_can_be_interrupted(server):
    api = json.loads((API_WORKFLOWS / "smite_1_learn_from_reference_and_segment.json").read_text())
    learn = next(k for k, v in api.items() if v["class_type"] == "SMITE_LearnSegmentEmbedding")
    api[learn]["inputs"]["steps"] = 5000
    api[learn]["inputs"]["random_seed"] = 12345  # not cached from the earlier run
    prompt_id = server.queue(api)
    deadline = time.time() + 300
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(1)
    time.sleep(15)  # inside the learning loop by now
    server.post("/interrupt", {})
    entry = server.wait_history(prompt_id, timeout=300)
    messages = [m[0] for m in entry["status"].get("messages", [])]
    assert "execution_interrupted" in messages, entry["status"]
