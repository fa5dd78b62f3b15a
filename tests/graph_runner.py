"""A small runner for ComfyUI API-format workflows, and the UI-format view of them, without ComfyUI.

- :func:`load_pack` imports the pack exactly as ComfyUI does (its ``__init__.py`` by file location).
- :func:`run_api_workflow` validates and executes an API-format graph in topological order, inside
  ``torch.inference_mode()`` as ComfyUI does, with stand-ins for the few core nodes the example
  workflows use (``CORE_NODES``: same input specs as ComfyUI v0.3.x; they write real files; Load
  Checkpoint gives stand-ins of ComfyUI's MODEL, CLIP and VAE holding the file's tensors in the
  original layout, made in inference mode as ComfyUI makes them). An output a node blocked
  (``host.Blocked``, ComfyUI's ``ExecutionBlocker``) stops the node using it with its message.
- UI-only nodes (``Note``, ``MarkdownNote``: text on the canvas) are kept by :func:`api_to_ui` from the
  existing UI file; they are not part of the API graph.
- :func:`api_to_ui` lays an API graph out as a UI-format workflow (what File -> Save writes) and
  :func:`check_ui_workflow` checks one against node specs (types known, links, widget counts).

``python tests/graph_runner.py --write-ui`` rebuilds ``workflows/*.json`` from ``workflows/api/*.json``
(keeping node positions of existing files); the tests check both stay consistent.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
UI_ONLY = ("Note", "MarkdownNote")  # frontend-only nodes: text on the canvas, never queued


# ----------------------------------------------------------------------------- the pack


def load_pack(root: Path = ROOT, name: str = "smite_pack_under_test"):
    """Import the pack's ``__init__.py`` the way ComfyUI's ``load_custom_node`` does."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- core stand-ins


class _Core:
    OUTPUT_DIR: Path | None = None
    CATEGORY = "core stand-in"

    @classmethod
    def _out(cls) -> Path:
        if cls.OUTPUT_DIR is None:
            raise RuntimeError("set _Core.OUTPUT_DIR before running a workflow")
        return cls.OUTPUT_DIR

    @staticmethod
    def _next(folder: Path, prefix: str, ext: str) -> Path:
        target = folder / prefix
        target.parent.mkdir(parents=True, exist_ok=True)
        counter = 1
        while Path(f"{target}_{counter:05d}_{ext}").exists():
            counter += 1
        return Path(f"{target}_{counter:05d}_{ext}")


class SaveImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == torch.float32, images.shape
        files = []
        for image in images:
            path = self._next(self._out(), filename_prefix, ".png")
            Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)
            files.append(str(path))
        return {"ui": {"images": files}}


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, filename_prefix="preview", prompt=None, extra_pnginfo=None):
        assert images.ndim == 4 and images.shape[-1] == 3, images.shape
        return {"ui": {"images": []}}


class MaskToImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"

    def mask_to_image(self, mask):
        return (mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3),)


class CreateVideo(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
                "optional": {"audio": ("AUDIO",)}}

    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    def execute(self, images, fps, audio=None):
        assert images.ndim == 4 and images.shape[-1] == 3, images.shape
        return ({"images": images, "fps": fps},)


class SaveVideo(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4"], {"default": "auto"}),
                             "codec": (["auto", "h264"], {"default": "auto"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "execute"
    OUTPUT_NODE = True

    def execute(self, video, filename_prefix, format, codec, prompt=None, extra_pnginfo=None):
        from smite_core.io.video_io import open_video_writer

        path = self._next(self._out(), filename_prefix, ".mp4")
        with open_video_writer(path, fps=video["fps"]) as writer:
            writer.write(video["images"])
        return {"ui": {"videos": [str(path)]}}


class LoadVideo(_Core):
    """Core Load Video: a file of ComfyUI's input folder (here the pack's example_inputs/ and ``INPUT_DIR``) as a
    VIDEO that streams from its file (ComfyUI's ``VideoFromFile``, as far as the pack reads it)."""

    INPUT_DIR: Path | None = None

    @classmethod
    def _folders(cls) -> list[Path]:
        return [p for p in (cls.INPUT_DIR, ROOT / "example_inputs") if p is not None and p.is_dir()]

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted({f.name for folder in cls._folders() for f in folder.iterdir() if f.suffix in (".mp4", ".mov")})
        return {"required": {"file": (files, {"video_upload": True})}}

    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    def execute(self, file):
        path = next(folder / file for folder in self._folders() if (folder / file).is_file())
        return (SimpleNamespace(get_stream_source=lambda: str(path)),)


class PreviewAny(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    RETURN_TYPES = ()
    FUNCTION = "main"
    OUTPUT_NODE = True

    def main(self, source=None):
        return {"ui": {"text": (source if isinstance(source, str) else json.dumps(source),)}}


# ComfyUI's MODEL (a ModelPatcher), CLIP and VAE, as far as the pack reads them (nodes/host.py)


class _StateModule:
    """Stands in for a ComfyUI torch module: only ``state_dict()`` is read."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return dict(self._state)


class StandInModel:
    """ComfyUI's MODEL: ``model.diffusion_model`` (LDM-layout UNet), ``model.model_config`` (its class name says
    what ComfyUI recognised), ``model.model_type`` (EPS / V_PREDICTION)."""

    def __init__(self, unet_state: dict, kind: str = "SD15", model_type: str = "EPS"):
        self.model = SimpleNamespace(diffusion_model=_StateModule(unet_state), model_config=type(kind, (), {})(),
                                     model_type=SimpleNamespace(name=model_type))
        self.load_device = torch.device("cpu")


class StandInVAE:
    def __init__(self, vae_state: dict):
        self.first_stage_model = _StateModule(vae_state)
        self.patcher = None


class StandInCLIP:
    """ComfyUI's CLIP: ``tokenize`` names the text encoder, ``encode_from_tokens`` encodes token ids."""

    def __init__(self, text_encoder, key: str = "l"):
        self.text_encoder, self.key, self.layer_idx = text_encoder, key, None
        self.encoded: list = []

    def clone(self):
        return copy.copy(self)

    def tokenize(self, text: str) -> dict:
        return {self.key: [[(49406, 1.0), (49407, 1.0)]]}

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict=False):
        ids = torch.tensor([[token for token, _ in tokens[self.key][0]]])
        self.encoded.append(ids)
        with torch.no_grad():
            return self.text_encoder(ids)[0].float()


def comfy_objects(path: Path) -> tuple:
    """(MODEL, CLIP, VAE) stand-ins for an SD 1.x/2.x single file, its tensors made in inference mode."""
    from safetensors.torch import load_file

    from smite_core.model.checkpoints import UNET_PREFIX, VAE_PREFIX, load_single_file

    state = load_file(str(path))
    with torch.inference_mode():
        unet = {k[len(UNET_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(UNET_PREFIX)}
        vae = {k[len(VAE_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(VAE_PREFIX)}
    components = load_single_file(path)
    key = "l" if components.family == "sd1" else "h"
    return StandInModel(unet), StandInCLIP(components.text_encoder.eval(), key), StandInVAE(vae)


class CheckpointLoaderSimple(_Core):
    FILES: dict = {}  # name -> path: what the test put in "models/checkpoints"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (sorted(cls.FILES), {})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    def load_checkpoint(self, ckpt_name):
        return comfy_objects(Path(self.FILES[ckpt_name]))


CORE_NODES = {cls.__name__: cls for cls in (SaveImage, PreviewImage, MaskToImage, CreateVideo, SaveVideo, LoadVideo,
                                            PreviewAny, CheckpointLoaderSimple)}


# ----------------------------------------------------------------------------- API format


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def topological_order(api: dict) -> list[str]:
    """Node ids so that every node comes after the nodes it takes inputs from (ties: by id)."""
    deps = {nid: {v[0] for v in node["inputs"].values() if _is_link(v)} for nid, node in api.items()}
    for nid, sources in deps.items():
        missing = sources - set(api)
        assert not missing, f"node {nid} links to missing node(s) {missing}"
    users = {nid: [] for nid in api}
    for nid, sources in deps.items():
        for s in sources:
            users[s].append(nid)
    indegree = {nid: len(s) for nid, s in deps.items()}
    ready = deque(sorted((n for n, d in indegree.items() if d == 0), key=_id_key))
    order = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for user in sorted(users[nid], key=_id_key):
            indegree[user] -= 1
            if indegree[user] == 0:
                ready.append(user)
    assert len(order) == len(api), "the graph has a cycle"
    return order


def _id_key(nid: str):
    return (0, int(nid)) if str(nid).isdigit() else (1, str(nid))


def _spec(cls) -> dict:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def validate_node(nid: str, node: dict, cls, api: dict, classes: dict) -> list[str]:
    """The checks ComfyUI's ``validate_inputs`` makes before running (a useful subset)."""
    errors = []
    spec = cls.INPUT_TYPES()
    required, optional = spec.get("required", {}), spec.get("optional", {})
    inputs = node["inputs"]
    validate_args = set()
    if hasattr(cls, "VALIDATE_INPUTS"):
        import inspect

        validate_args = set(inspect.getfullargspec(cls.VALIDATE_INPUTS).args)
    for name in inputs:
        if name not in required and name not in optional:
            errors.append(f"{nid} {node['class_type']}: unknown input {name!r}")
    for name, entry in {**required, **optional}.items():
        kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
        if name not in inputs:
            if name in required:
                errors.append(f"{nid} {node['class_type']}: required input {name!r} missing")
            continue
        value = inputs[name]
        if _is_link(value):
            source = api[value[0]]
            returned = classes[source["class_type"]].RETURN_TYPES[value[1]]
            want = "COMBO" if isinstance(kind, list) else kind
            if returned != want and want != "*":
                errors.append(f"{nid}.{name}: {source['class_type']} output {value[1]} is {returned}, wants {want}")
            continue
        if name in validate_args:
            continue
        if isinstance(kind, list):
            if value not in kind:
                errors.append(f"{nid}.{name}: {value!r} not in {kind[:20]}")
        elif kind in ("INT", "FLOAT"):
            if "min" in options and value < options["min"]:
                errors.append(f"{nid}.{name}: {value} below min {options['min']}")
            if "max" in options and value > options["max"]:
                errors.append(f"{nid}.{name}: {value} above max {options['max']}")
        elif kind not in WIDGET_TYPES:
            errors.append(f"{nid}.{name}: a {kind} input must be linked, got {value!r}")
    if validate_args and not errors:
        args = {k: inputs[k] for k in validate_args if k in inputs and not _is_link(inputs[k])}
        result = cls.VALIDATE_INPUTS(**args)
        if result is not True:
            errors.append(f"{nid} {node['class_type']}: {result}")
    return errors


def run_api_workflow(api: dict, node_classes: dict, output_dir: Path, overrides: dict | None = None,
                     extra: dict | None = None) -> dict:
    """Validate, then execute every node; returns ``{node id: outputs tuple or ui dict}``.

    ``overrides``: ``{node id: {input: value}}`` applied first (e.g. fewer frames in fast tests).
    ``extra``: ``{node id: {keyword: value}}`` passed to the node function but not part of the graph
    (what ComfyUI's folders would provide, e.g. SaveEmbedding's ``directory`` outside ComfyUI).
    """
    api = json.loads(json.dumps(api))
    for nid, changes in (overrides or {}).items():
        api[nid]["inputs"].update(changes)
    classes = {**CORE_NODES, **node_classes}
    order = topological_order(api)
    errors = []
    for nid in order:
        node = api[nid]
        cls = classes.get(node["class_type"])
        if cls is None:
            errors.append(f"{nid}: unknown node type {node['class_type']}")
            continue
        errors += validate_node(nid, node, cls, api, classes)
    assert not errors, "workflow does not validate:\n" + "\n".join(errors)
    _Core.OUTPUT_DIR = Path(output_dir)
    results: dict = {}
    with torch.inference_mode():
        for nid in order:
            node = api[nid]
            cls = classes[node["class_type"]]
            kwargs = {k: (results[v[0]][v[1]] if _is_link(v) else v) for k, v in node["inputs"].items()}
            blocked = [v for v in kwargs.values() if type(v).__name__ in ("Blocked", "ExecutionBlocker")]
            if blocked:  # as ComfyUI: the node does not run, the prompt fails with the blocking node's message
                raise RuntimeError(f"Execution Blocked: {blocked[0].message}")
            kwargs.update((extra or {}).get(nid, {}))
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                results[nid] = tuple(out.get("result", ())) or out
            else:
                assert isinstance(out, tuple), f"{node['class_type']} returned {type(out).__name__}, not a tuple"
                assert len(out) == len(cls.RETURN_TYPES), f"{node['class_type']}: {len(out)} outputs"
                results[nid] = out
    return results


# ----------------------------------------------------------------------------- UI format


def node_info(cls) -> dict:
    """The parts of ``/object_info`` that the UI format depends on, from a node class."""
    spec = cls.INPUT_TYPES()
    return {"input": {"required": spec.get("required", {}), "optional": spec.get("optional", {})},
            "input_order": {"required": list(spec.get("required", {})), "optional": list(spec.get("optional", {}))},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)}


def _is_widget(entry) -> bool:
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def _widget_slots(entry, name) -> int:
    """Values a widget saves in the UI format: 2 with a control after generate or an upload button (whose
    value, "image", the frontend saves too), else 1."""
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    control = options.get("control_after_generate", name in ("seed", "noise_seed"))
    return 2 if control or _upload(entry) else 1


def _upload(entry) -> bool:
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return any(options.get(key) for key in ("image_upload", "video_upload"))


def _inputs_in_order(info: dict) -> list[tuple[str, list, bool]]:
    out = []
    for group in ("required", "optional"):
        names = info.get("input_order", {}).get(group) or list(info["input"].get(group, {}))
        for name in names:
            out.append((name, info["input"][group][name], group == "optional"))
    return out


def api_to_ui(api: dict, infos: dict, previous: dict | None = None) -> dict:
    """A UI-format workflow (frontend schema 0.4) for an API graph; ``infos``: type -> node info.

    Node ids are the API ids; nodes are laid out in columns by depth unless ``previous`` (an existing
    UI file) gives their positions and sizes.
    """
    order = topological_order(api)
    old = {str(n["id"]): n for n in (previous or {}).get("nodes", [])}
    depth = {}
    for nid in order:
        sources = [v[0] for v in api[nid]["inputs"].values() if _is_link(v)]
        depth[nid] = 1 + max((depth[s] for s in sources), default=-1)
    for nid in order:  # settings-only sources (guides) sit in the column just before their first user
        if not any(_is_link(v) for v in api[nid]["inputs"].values()):
            users = [depth[u] for u in order if any(_is_link(v) and v[0] == nid for v in api[u]["inputs"].values())]
            depth[nid] = max(0, min(users, default=1) - 1)
    links, nodes, column_y = [], {}, {}
    settings_only = {nid for nid in order
                     if depth[nid] > 0 and not any(_is_link(v) for v in api[nid]["inputs"].values())}
    placement = [n for n in order if n not in settings_only] + [n for n in order if n in settings_only]
    for nid in placement:
        index = order.index(nid)
        node = api[nid]
        info = infos[node["class_type"]]
        sockets, widget_links, widgets = [], [], []
        for name, entry, optional in _inputs_in_order(info):
            value = node["inputs"].get(name)
            if _is_widget(entry):
                if _is_link(value):
                    kind = "COMBO" if isinstance(entry[0], list) else entry[0]
                    widget_links.append({"name": name, "type": kind, "widget": {"name": name}, "link": None,
                                         "_from": value})
                    value = (entry[1] or {}).get("default") if len(entry) > 1 else None
                    if value is None:
                        value = entry[0][0] if isinstance(entry[0], list) else ""
                elif value is None:
                    options = entry[1] if len(entry) > 1 else {}
                    value = options.get("default", entry[0][0] if isinstance(entry[0], list) else None)
                widgets.append(value)
                if _widget_slots(entry, name) == 2:
                    widgets.append("image" if _upload(entry) else "fixed")
                continue
            item = {"name": name, "type": entry[0], "link": None, "_from": value if _is_link(value) else None}
            if optional:
                item["shape"] = 7
            sockets.append(item)
        inputs = sockets + widget_links
        outputs = [{"name": n, "type": t, "slot_index": i, "links": []}
                   for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        height = 46 + 22 * max(len(inputs), len(outputs)) + 26 * len(widgets)
        x = 40 + 360 * depth[nid]
        y = column_y.get(depth[nid], 40)
        column_y[depth[nid]] = y + height + 60
        prev = old.get(nid, {})
        nodes[nid] = {"id": int(nid), "type": node["class_type"], "pos": prev.get("pos", [x, y]),
                      "size": prev.get("size", [320, height]), "flags": {}, "order": index, "mode": 0,
                      "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = node.get("_meta", {}).get("title")
        if title and title != node["class_type"]:
            nodes[nid]["title"] = title
    link_id = 0
    for nid in order:
        for slot, item in enumerate(nodes[nid]["inputs"]):
            source = item.pop("_from")
            if source is None:
                continue
            link_id += 1
            kind = item["type"]
            links.append([link_id, int(source[0]), int(source[1]), int(nid), slot, kind])
            item["link"] = link_id
            nodes[source[0]]["outputs"][source[1]]["links"].append(link_id)
    for node in nodes.values():
        for out in node["outputs"]:
            if not out["links"]:
                out["links"] = None
    notes = [n for n in (previous or {}).get("nodes", []) if n["type"] in UI_ONLY]  # kept as they are
    extra = (previous or {}).get("extra") or {"ds": {"scale": 0.8, "offset": [0, 0]}}
    return {"last_node_id": max([int(n) for n in api] + [int(n["id"]) for n in notes]), "last_link_id": link_id,
            "nodes": [nodes[n] for n in order] + notes, "links": links, "groups": [], "config": {},
            "extra": extra, "version": 0.4}


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _vec2(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(_num(v) for v in x)


def _schema_errors(ui: dict) -> list[str]:
    """The frontend's zod schema for workflow version 0.4 (``zComfyWorkflow``), the required parts."""
    errors = []
    if not _num(ui.get("version")):
        errors.append("workflow: no numeric version")
    for key, check in (("last_node_id", lambda v: isinstance(v, (int, str))), ("last_link_id", _num),
                       ("nodes", lambda v: isinstance(v, list)), ("links", lambda v: isinstance(v, list))):
        if not check(ui.get(key)):
            errors.append(f"workflow: bad or missing {key}")
    for node in ui.get("nodes", []):
        where = f"node {node.get('id')}"
        for key, check in (("id", lambda v: isinstance(v, (int, str))), ("type", lambda v: isinstance(v, str)),
                           ("pos", _vec2), ("size", _vec2), ("flags", lambda v: isinstance(v, dict)),
                           ("order", _num), ("mode", _num), ("properties", lambda v: isinstance(v, dict))):
            if not check(node.get(key)):
                errors.append(f"{where}: bad or missing {key}")
        for item in node.get("inputs", []):
            if not (isinstance(item.get("name"), str) and "type" in item and
                    (item.get("link") is None or isinstance(item.get("link"), int))):
                errors.append(f"{where}: bad input {item}")
        for item in node.get("outputs", []):
            if not (isinstance(item.get("name"), str) and "type" in item and
                    (item.get("links") is None or isinstance(item.get("links"), list))):
                errors.append(f"{where}: bad output {item}")
        if not isinstance(node.get("widgets_values", []), (list, dict)):
            errors.append(f"{where}: widgets_values must be a list")
    for link in ui.get("links", []):
        if not (isinstance(link, list) and len(link) == 6 and _num(link[0])):
            errors.append(f"link {link}: must be [id, from, slot, to, slot, type]")
    return errors


def check_ui_workflow(ui: dict, infos: dict) -> list[str]:
    """Problems that would show in the editor: unknown node types, broken links, wrong widget counts."""
    errors = _schema_errors(ui)
    nodes = {n["id"]: n for n in ui.get("nodes", [])}
    for node in nodes.values():
        if node["type"] in UI_ONLY:
            if node.get("inputs") or node.get("outputs"):
                errors.append(f"node {node['id']} {node['type']}: a note has no inputs or outputs")
            continue
        info = infos.get(node["type"])
        if info is None:
            errors.append(f"node {node['id']}: missing node type {node['type']}")
            continue
        expected = sum(_widget_slots(e, n) for n, e, _ in _inputs_in_order(info) if _is_widget(e))
        if len(node.get("widgets_values", [])) != expected:
            errors.append(f"node {node['id']} {node['type']}: {len(node.get('widgets_values', []))} widget values, "
                          f"the node has {expected} widgets")
        names = {n for n, _, _ in _inputs_in_order(info)}
        for item in node.get("inputs", []):
            if item["name"] not in names:
                errors.append(f"node {node['id']} {node['type']}: unknown input {item['name']}")
        if len(node.get("outputs", [])) != len(info["output"]):
            errors.append(f"node {node['id']} {node['type']}: {len(node['outputs'])} outputs, the node has "
                          f"{len(info['output'])}")
    for link in ui.get("links", []):
        link_id, src, src_slot, dst, dst_slot, kind = link
        if src not in nodes or dst not in nodes:
            errors.append(f"link {link_id}: joins a missing node")
            continue
        target = nodes[dst]["inputs"][dst_slot] if dst_slot < len(nodes[dst]["inputs"]) else None
        if target is None or target.get("link") != link_id:
            errors.append(f"link {link_id}: not recorded on node {dst} input {dst_slot}")
        out = nodes[src]["outputs"][src_slot] if src_slot < len(nodes[src]["outputs"]) else None
        if out is None or link_id not in (out.get("links") or []):
            errors.append(f"link {link_id}: not recorded on node {src} output {src_slot}")
        elif out["type"] != kind and not (target and target.get("type") == kind):
            errors.append(f"link {link_id}: type {kind} does not match output type {out['type']}")
    return errors


def ui_to_api(ui: dict, infos: dict) -> dict:
    """The API graph a UI workflow queues (widgets by position, links by slot)."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY:
            continue
        info = infos[node["type"]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        linked = {item["name"]: links[item["link"]] for item in node.get("inputs", []) if item.get("link") is not None}
        for name, entry, _ in _inputs_in_order(info):
            if _is_widget(entry):
                value = values.pop(0)
                if _widget_slots(entry, name) == 2:
                    values.pop(0)
                inputs[name] = value
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def pack_infos(pack) -> dict:
    return {**{k: node_info(v) for k, v in CORE_NODES.items()},
            **{k: node_info(v) for k, v in pack.NODE_CLASS_MAPPINGS.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-ui", action="store_true", help="rebuild workflows/*.json from workflows/api/*.json")
    args = parser.parse_args(argv)
    if not args.write_ui:
        parser.print_help()
        return 0
    infos = pack_infos(load_pack())
    for path in sorted(API_WORKFLOWS.glob("*.json")):
        api = json.loads(path.read_text())
        target = WORKFLOWS / path.name
        previous = json.loads(target.read_text()) if target.exists() else None
        ui = api_to_ui(api, infos, previous)
        problems = check_ui_workflow(ui, infos)
        assert not problems, problems
        target.write_text(json.dumps(ui, indent=1) + "\n")
        sys.stdout.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
