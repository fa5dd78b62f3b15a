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
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from graph_runner import API_WORKFLOWS, ROOT, WORKFLOWS, check_ui_workflow

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI or not (Path(COMFYUI) / "main.py").is_file(),
                                reason="set COMFYUI_PATH to a ComfyUI checkout to run the server test")
PACK_NAME = "smite-segment"
EXPECTED = {"SMITE_ModelLoader", "SMITE_ModelFromCheckpoint", "SMITE_LoadReferences", "SMITE_LearnSegmentEmbedding",
            "SMITE_SaveEmbedding",
            "SMITE_LoadEmbedding", "SMITE_InvertVideo", "SMITE_InflatedUNetSegment", "SMITE_TrackVote",
            "SMITE_LowPassGuide", "SMITE_MaskToVideo", "SMITE_LabelMapImage", "SMITE_Overlay", "SMITE_LoadExample",
            "SMITE_SegmentVideoToFiles"}
TIMEOUT = float(os.environ.get("SMITE_SERVER_TIMEOUT", "1800"))
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # the name core templates use; here random weights
LORA = "smite_test_lora.safetensors"
MERGED = "sd15_with_lora_merged.safetensors"


# A websocket client as the frontend is one: connect with a client id, queue, print each JSON message
# (type, data) until the prompt's run ends (an "executing" message with no node, or an error).
WS_CLIENT = """
import asyncio, json, aiohttp

async def main():
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect("{url}/ws?clientId={client}") as ws:
            async with session.post("{url}/prompt", json={{"prompt": json.loads({prompt!r}),
                                                           "client_id": "{client}"}}) as response:
                prompt_id = (await response.json())["prompt_id"]
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                kind, data = event.get("type"), event.get("data", {{}})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                print(json.dumps([kind, data]), flush=True)
                if kind == "execution_success" or kind == "execution_interrupted" or (
                        kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id):
                    return

asyncio.run(asyncio.wait_for(main(), {timeout}))
"""


# ----------------------------------------------------------------------------- a random SD 1.5 file and a LoRA


def write_random_sd15(path: Path, seed: int = 0) -> Path:
    """The full SD 1.5 architecture (UNet, VAE, CLIP ViT-L text tower) with random fp16 weights, in the original
    single-file layout ComfyUI's Load Checkpoint detects as SD 1.5 (about 2.1 GB; written once per run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from ldm_layout import to_ldm_checkpoint
    from safetensors.torch import save_file

    from smite_core.model.checkpoints import random_components

    if not path.exists():
        components = random_components("sd1", seed=seed, dtype=torch.float16)
        state = to_ldm_checkpoint(components.unet, components.vae, components.text_encoder, "sd1", extras=False)
        del components
        save_file(state, str(path) + ".part")
        os.replace(str(path) + ".part", path)
    return path


LORA_LAYERS = [f"{block}.1.transformer_blocks.0.{name}" for block in ("input_blocks.1", "input_blocks.4",
                                                                       "middle_block", "output_blocks.11")
               for name in ("attn2.to_k", "attn2.to_v", "attn1.to_q")]


def write_lora_and_merged(checkpoint: Path, lora_path: Path, merged_path: Path, rank: int = 4, alpha: float = 2.0):
    """A small random LoRA in the kohya LDM key format (``lora_unet_<ldm key>``) that ComfyUI's LoraLoader reads,
    and the checkpoint with it merged in (``W + alpha / rank * up @ down``, the patched weights kept in fp32 as
    ComfyUI computes them on a CPU) for the SMITE loader."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint))
    g = torch.Generator().manual_seed(7)
    lora = {}
    for layer in LORA_LAYERS:
        weight = state["model.diffusion_model." + layer + ".weight"]
        down = (torch.randn(rank, weight.shape[1], generator=g) * 0.05).half()
        up = (torch.randn(weight.shape[0], rank, generator=g) * 0.05).half()
        name = "lora_unet_" + layer.replace(".", "_")
        lora.update({name + ".lora_down.weight": down, name + ".lora_up.weight": up,
                     name + ".alpha": torch.tensor(alpha, dtype=torch.float16)})
        delta = torch.mm(up.float(), down.float())
        state["model.diffusion_model." + layer + ".weight"] = weight.float() + (1.0 * (alpha / rank)) * delta
    save_file(lora, str(lora_path))
    save_file(state, str(merged_path))


def smite_graph(tag: str, source: str, lora: bool = False, checkpoint: str = CHECKPOINT) -> dict:
    """Learn 2 steps and segment 4 frames at 64 px with the checkpoint ``source``: ``comfy`` (core Load Checkpoint
    -> SMITE Model From Checkpoint, through LoraLoader with ``lora``), or ``loader`` (SMITE Model Loader on
    ``checkpoint``; core Load Checkpoint also loads it, as in a graph that uses it elsewhere). Saves the embedding
    as ``emb_<tag>`` and the label maps as ``labels_<tag>``."""
    api = {
        "1": {"class_type": "SMITE_LoadExample", "inputs": {"category": "car", "variant": 0, "frames": 4, "size": 64}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "5": {"class_type": "SMITE_LoadReferences", "inputs": {"segment_names": ["1", 2], "images": ["1", 0],
                                                               "label_map": ["1", 1], "folder": ""}},
        "6": {"class_type": "SMITE_LearnSegmentEmbedding", "inputs": {"model": ["4", 0], "references": ["5", 0],
                                                                      "steps": 2, "random_seed": 0, "train_kv": True,
                                                                      "size": 64}},
        "7": {"class_type": "SMITE_SaveEmbedding", "inputs": {"embedding": ["6", 0], "filename": f"emb_{tag}",
                                                              "overwrite": True}},
        "8": {"class_type": "SMITE_InvertVideo", "inputs": {"model": ["4", 0], "images": ["1", 3], "size": 64,
                                                            "random_seed": 0, "timestep_min": 95,
                                                            "timestep_max": 104}},
        "9": {"class_type": "SMITE_InflatedUNetSegment", "inputs": {"model": ["4", 0], "embedding": ["6", 0],
                                                                    "latent": ["8", 0], "inflate": True, "window": 4,
                                                                    "overlap": 2, "guide_steps": 0}},
        "10": {"class_type": "SMITE_LabelMapImage", "inputs": {"segments": ["9", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": f"labels_{tag}"}},
    }
    if source == "comfy":
        model = ["2", 0]
        clip = ["2", 1]
        if lora:
            api["3"] = {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["2", 1], "lora_name": LORA,
                                                               "strength_model": 1.0, "strength_clip": 0.0}}
            model = ["3", 0]
        api["4"] = {"class_type": "SMITE_ModelFromCheckpoint", "inputs": {"model": model, "clip": clip,
                                                                          "vae": ["2", 2], "keep_loaded": False}}
    else:
        api["4"] = {"class_type": "SMITE_ModelLoader", "inputs": {"model": "checkpoints/" + checkpoint, "dtype": "auto",
                                                                  "keep_loaded": False, "device": "auto",
                                                                  "prediction_type": "auto"}}
        api["12"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}  # Load Checkpoint runs too
    return api


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path, checkpoints: dict | None = None, loras: dict | None = None):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        (base / "custom_nodes").mkdir(parents=True)
        os.symlink(ROOT, base / "custom_nodes" / PACK_NAME, target_is_directory=True)
        for sub in ("models", "input", "output", "user", "temp"):
            (base / sub).mkdir()
        shutil.copy(ROOT / "example_inputs" / "smite_example_car.mp4", base / "input")  # template 5's Load Video
        for folder, files in (("checkpoints", checkpoints), ("loras", loras)):
            for name, path in (files or {}).items():  # links: the files are large
                (base / "models" / folder).mkdir(exist_ok=True)
                os.symlink(path, base / "models" / folder / name)
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

    def run_listening(self, prompt: dict, timeout: float = 120) -> list:
        """Queue ``prompt`` as a client on ComfyUI's websocket (what the frontend sees) and return the
        ``(type, data)`` messages it gets until the run ends. Runs in ComfyUI's Python (aiohttp)."""
        client = "smite-test-" + uuid.uuid4().hex[:8]
        script = WS_CLIENT.format(url=self.url, client=client, prompt=json.dumps(prompt), timeout=timeout)
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=timeout + 60)
        assert done.returncode == 0, f"websocket client failed:\n{done.stderr[-3000:]}\n{self.text()[-3000:]}"
        return [tuple(json.loads(line)) for line in done.stdout.splitlines() if line.startswith("[")]

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
def sd15_files(tmp_path_factory) -> dict:
    """A random SD 1.5 single file, a small random LoRA for it, and the file with the LoRA merged in."""
    folder = tmp_path_factory.mktemp("sd15")
    started = time.time()
    checkpoint = write_random_sd15(folder / CHECKPOINT)
    write_lora_and_merged(checkpoint, folder / LORA, folder / MERGED)
    sys.stderr.write(f"\nrandom SD 1.5 checkpoint ({checkpoint.stat().st_size / 2**30:.2f} GiB) and LoRA written in "
                     f"{time.time() - started:.0f} s\n")
    return {"checkpoint": checkpoint, "lora": folder / LORA, "merged": folder / MERGED}


def _models(files: dict) -> dict:
    return {"checkpoints": {CHECKPOINT: files["checkpoint"], MERGED: files["merged"]}, "loras": {LORA: files["lora"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, sd15_files):
    base = tmp_path_factory.mktemp("comfy")
    srv = Server(base, **_models(sd15_files))
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
        assert info[name]["display_name"].startswith("SMITE ")
    assert "tiny (demo: synthetic examples only)" in info["SMITE_ModelLoader"]["input"]["required"]["model"][0]
    embeddings = info["SMITE_LoadEmbedding"]["input"]["required"]["embedding"][0]
    assert "smite_example_car.safetensors" in embeddings  # bundled with the pack
    assert "shared_copy.safetensors" in embeddings  # from the user's extra_model_paths.yaml


def _template(server, name: str, suffix: str = ".json"):
    return server.url + f"/api/workflow_templates/{PACK_NAME}/" + urllib.parse.quote(name + suffix)


def test_ui_workflows_are_templates_with_thumbnails_and_a_title(server):
    infos = _infos(server.object_info)
    listed = server.get("/workflow_templates")
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(listed.get(PACK_NAME, [])) == names
    for name in names:
        with urllib.request.urlopen(_template(server, name), timeout=30) as response:
            served = json.loads(response.read())
        assert served == json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert check_ui_workflow(served, infos) == [], name
        with urllib.request.urlopen(_template(server, name, ".jpg"), timeout=30) as response:  # the card's picture
            assert response.status == 200 and response.read(3) == b"\xff\xd8\xff"
    titles = server.get("/i18n")["en"]["templateWorkflows"]["category"]
    assert titles[PACK_NAME].startswith("SMITE")  # the template browser's group title, not the folder's name


def test_bad_widget_value_fails_validation(server):
    api = json.loads((API_WORKFLOWS / "SMITE 3 - De-flicker a mask video with TrackVote.json").read_text())
    example = next(k for k, v in api.items() if v["class_type"] == "SMITE_LoadExample")
    api[example]["inputs"]["frames"] = 100000
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"


FAST = {"SMITE_LoadExample": {"frames": 4, "size": 64}, "SMITE_LearnSegmentEmbedding": {"steps": 2, "size": 64},
        "SMITE_InvertVideo": {"size": 64}, "SMITE_InflatedUNetSegment": {"window": 4, "overlap": 2}}


@pytest.mark.parametrize("name", sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
def test_api_workflow_runs_to_success(server, name):
    api = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
    if any(node["class_type"] == "CheckpointLoaderSimple" for node in api.values()):
        for node in api.values():  # a full-size SD 1.5 on 2 CPU cores: a few frames at 64 px
            node["inputs"].update(FAST.get(node["class_type"], {}))
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
    written = [text for node in outputs.values() for text in node.get("text", []) if text.endswith(".safetensors")]
    for text in written:  # Save Embedding says which file it wrote; it is where extra_model_paths.yaml puts them
        assert (server.base / "shared_smite" / text).is_file(), written
    if name.startswith("SMITE 1"):
        assert written and written[0].startswith("smite_my_car_parts")
        assert not (server.base / "models" / "smite").exists()


def test_trackvote_used_as_a_guide_blocks_its_masks_with_a_message(server):
    api = {"1": {"class_type": "SMITE_TrackVote", "inputs": {"tracker": "flow", "track_weight": 0.1,
                                                             "vote_window": 15, "vote_output": True}},
           "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
           "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    messages = server.run_listening(api)  # ComfyUI sends a blocked input's message to the client, not the history
    errors = [data for kind, data in messages if kind == "execution_error"]
    assert errors and errors[0]["exception_message"].startswith("Execution Blocked: SMITE TrackVote: its masks"), messages
    assert errors[0]["node_id"] == "2"  # the node that uses the masks stops; nothing downstream runs
    assert not [data for kind, data in messages if kind == "executed" and data.get("node") == "3"]
    assert "IndexError" not in server.text()[-3000:]


def test_a_running_workflow_can_be_interrupted(server):
    api = json.loads((API_WORKFLOWS / "SMITE 1 - Learn parts from one reference and segment a video.json").read_text())
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


def _run_paths(base: Path, files: dict, runs: list) -> tuple[int, dict]:
    """A fresh server; queue each ``(tag, source, lora, checkpoint)`` of ``runs`` in turn. Returns the server's
    peak RSS after the first run and ``{tag: (embedding file, label map PNGs)}``."""
    srv = Server(base, **_models(files))
    out, peak = {}, None
    try:
        srv.wait_ready()
        for tag, source, lora, checkpoint in runs:
            started = time.time()
            entry = srv.wait_history(srv.queue(smite_graph(tag, source, lora, checkpoint)))
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000] + srv.text()[-3000:]
            peak = peak or peak_rss(srv.process.pid)
            out[tag] = (base / "shared_smite" / f"emb_{tag}.safetensors",
                        sorted((base / "output").glob(f"labels_{tag}_*.png")))
            sys.stderr.write(f"\n{tag}: {time.time() - started:.0f} s\n")
        return peak, out
    finally:
        srv.stop()


def test_load_checkpoint_path_matches_the_smite_loader_without_a_second_copy(sd15_files, tmp_path_factory):
    """Core Load Checkpoint (and LoraLoader) -> SMITE Model From Checkpoint -> learn -> segment gives the embedding
    and labels of SMITE Model Loader on the same file (with the LoRA merged in), and the server's peak memory is
    lower than with the file loaded twice (Load Checkpoint and SMITE Model Loader) by >= 80 % of the file's size."""
    import numpy as np
    from PIL import Image

    from smite_core.method.embedding import SegmentEmbedding

    shared_peak, shared = _run_paths(tmp_path_factory.mktemp("shared"), sd15_files, [
        ("shared", "comfy", False, CHECKPOINT), ("shared_lora", "comfy", True, CHECKPOINT)])
    twice_peak, loader = _run_paths(tmp_path_factory.mktemp("twice"), sd15_files, [
        ("loader", "loader", False, CHECKPOINT), ("loader_merged", "loader", False, MERGED)])
    size = sd15_files["checkpoint"].stat().st_size
    sys.stderr.write(f"\npeak RSS: Load Checkpoint -> SMITE Model From Checkpoint {shared_peak / 2**30:.2f} GiB; "
                     f"Load Checkpoint + SMITE Model Loader {twice_peak / 2**30:.2f} GiB; checkpoint "
                     f"{size / 2**30:.2f} GiB; saved {(twice_peak - shared_peak) / size:.0%} of its size\n")
    assert twice_peak - shared_peak >= 0.8 * size
    for ours, theirs in (("shared", "loader"), ("shared_lora", "loader_merged")):
        a, b = (SegmentEmbedding.load(shared[ours][0]), SegmentEmbedding.load(loader[theirs][0]))
        assert a.backbone_fingerprint == b.backbone_fingerprint and a.names == b.names, (ours, theirs)
        assert np.allclose(a.tokens.float().numpy(), b.tokens.float().numpy(), atol=2e-3), (ours, theirs)
        assert sorted(a.kv) == sorted(b.kv) and all(np.allclose(a.kv[k].float().numpy(), b.kv[k].float().numpy(),
                                                                atol=1e-5) for k in a.kv)
        labels = [(np.array(Image.open(x)), np.array(Image.open(y)))
                  for x, y in zip(shared[ours][1], loader[theirs][1])]
        assert len(labels) == 4 and all(np.array_equal(x, y) for x, y in labels), (ours, theirs)
    plain, patched = (SegmentEmbedding.load(shared[t][0]) for t in ("shared", "shared_lora"))
    assert plain.backbone_fingerprint != patched.backbone_fingerprint  # the LoRA changed the to_k weights


# ----------------------------------------------------------------------------- streaming a long 1080p video


def write_1080p_clip(path: Path, frames: int, fps: int = 25) -> Path:
    """A synthetic 1920x1080 H.264 clip: a gradient with a moving red box (libx264 ultrafast: seconds to write)."""
    import av
    import numpy as np

    height, width = 1080, 1920
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = background.copy()
            x = (t * 13) % (width - 600)
            image[400:700, x:x + 600] = (200, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def stream_graph(clip: str) -> dict:
    """Core Load Video -> SMITE Segment Video To Files on the tiny backbone at 64 px, label maps only (no overlay, no
    mattes, bilinear upsampling): the settings of the memory test, chosen to fit CI's time."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip}},
        "2": {"class_type": "SMITE_ModelLoader", "inputs": {"model": "tiny (demo: synthetic examples only)",
                                                            "dtype": "auto", "keep_loaded": False, "device": "auto",
                                                            "prediction_type": "auto"}},
        "3": {"class_type": "SMITE_LoadEmbedding", "inputs": {"embedding": "smite_example_car.safetensors"}},
        "4": {"class_type": "SMITE_SegmentVideoToFiles", "inputs": {
            "model": ["2", 0], "embedding": ["3", 0], "video": ["1", 0], "size": 64, "random_seed": 0,
            "timestep_min": 95, "timestep_max": 104, "inflate": True, "window": 16, "overlap": 0, "guide_steps": 0,
            "edge_aware": False, "folder_name": "long", "png8_mattes": False, "png16_mattes": False,
            "exr_mattes": False, "matte_kind": "soft", "start_frame": 0, "frame_padding": 5, "exr_compression": "zip",
            "preview": "none"}},
    }


def _stream_peaks(base: Path, counts: tuple[int, ...]) -> list[tuple[int, Path, float]]:
    """One fresh server segments a 1080p clip of each of ``counts`` frames in turn: after each run its peak RSS so
    far (VmHWM: a later, longer run can only raise it), the output folder and the run's seconds."""
    srv = Server(base)
    out = []
    try:
        srv.wait_ready()
        for n, frames in enumerate(counts, start=1):
            write_1080p_clip(base / "input" / f"long_{frames}.mp4", frames)
            started = time.time()
            entry = srv.wait_history(srv.queue(stream_graph(f"long_{frames}.mp4")))
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000] + srv.text()[-3000:]
            out.append((peak_rss(srv.process.pid), base / "output" / f"long_{n:05d}", time.time() - started))
        return out
    finally:
        srv.stop()


def test_streaming_a_long_1080p_video_keeps_the_server_memory_flat(tmp_path_factory):
    """Core Load Video -> SMITE Segment Video To Files: the server's peak RSS after 600 frames of 1920x1080 H.264 is at
    most 1.25x its peak after 60 (the IMAGE path would hold about 82 MB per frame: 49 GB for 600)."""
    from PIL import Image

    (short_peak, short, short_s), (long_peak, long, long_s) = _stream_peaks(tmp_path_factory.mktemp("stream"),
                                                                            (60, 600))
    sys.stderr.write(f"\nserver peak RSS, 1080p streamed: 60 frames {short_peak / 2**30:.2f} GiB ({short_s:.0f} s), "
                     f"600 frames {long_peak / 2**30:.2f} GiB ({long_s:.0f} s): {long_peak / short_peak:.2f}x\n")
    assert len(list((short / "labels").iterdir())) == 60 and len(list((long / "labels").iterdir())) == 600
    with Image.open(long / "labels" / "00599.png") as last:
        assert last.size == (1920, 1080)
    assert json.loads((long / "segments.json").read_text())["fps"] == 25.0
    assert long_peak <= 1.25 * short_peak
