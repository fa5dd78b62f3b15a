"""The ComfyUI nodes, called directly (no ComfyUI needed), the way ComfyUI calls them.

Nodes run inside ``torch.inference_mode()`` as in ComfyUI. ComfyUI's own helper modules are
replaced by small fakes only where a test is about the ComfyUI integration (folders, progress,
interrupts, memory); the real server test (``test_comfy_server.py``) covers the real ones.
"""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from graph_runner import ROOT, load_pack

from smite_core.errors import InputError, SmiteError
from smite_core.method.embedding import SegmentEmbedding

EXPECTED = {"SMITE_ModelLoader", "SMITE_ModelFromCheckpoint", "SMITE_LoadReferences", "SMITE_LearnSegmentEmbedding",
            "SMITE_SaveEmbedding",
            "SMITE_LoadEmbedding", "SMITE_InvertVideo", "SMITE_InflatedUNetSegment", "SMITE_TrackVote",
            "SMITE_LowPassGuide", "SMITE_MaskToVideo", "SMITE_LabelMapImage", "SMITE_Overlay", "SMITE_LoadExample",
            "SMITE_SegmentVideoToFiles"}
SIZE = 64  # working side of the fast tests


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def example(nodes):
    with torch.inference_mode():
        return nodes["SMITE_LoadExample"].make("car", 0, 6, SIZE)


@pytest.fixture(scope="module")
def model(nodes):
    with torch.inference_mode():
        return nodes["SMITE_ModelLoader"].load("tiny (demo: synthetic examples only)", "fp32", False, "cpu")[0]


@pytest.fixture(scope="module")
def references(nodes, example):
    reference, labels, names, _, _ = example
    with torch.inference_mode():
        return nodes["SMITE_LoadReferences"].load(names, images=reference, label_map=labels)[0]


@pytest.fixture(scope="module")
def embedding(nodes, model, references):
    with torch.inference_mode():  # learning needs gradients: the node must leave inference mode itself
        return nodes["SMITE_LearnSegmentEmbedding"].learn(model, references, steps=2, random_seed=0, size=SIZE)[0]


@pytest.fixture(scope="module")
def segments(nodes, model, embedding, example):
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, example[3], size=SIZE)[0]
        return nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent, window=4, overlap=2)[0]


# ----------------------------------------------------------------------------- registration


def test_pack_registers_every_node_with_native_metadata(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == EXPECTED
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("SMITE_") and cls.CATEGORY.startswith("SMITE/"), node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.DESCRIPTION, node_id
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), node_id
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, node_id
        for group in ("required", "optional"):
            for name, entry in spec.get(group, {}).items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
                assert name not in ("seed", "noise_seed"), "the UI would add a 'randomize' widget to it"
        assert not getattr(cls, "OUTPUT_NODE", False) or node_id in ("SMITE_SaveEmbedding", "SMITE_SegmentVideoToFiles")


def test_nothing_imports_comfyui_at_module_level():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_api|folder_paths|server|execution)\b", re.M)
    offenders = [p.name for p in (ROOT / "nodes").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    assert "comfy.model_management" not in sys.modules and "folder_paths" not in sys.modules


def test_pack_init_loads_the_bundled_library_without_touching_sys_path():
    text = (ROOT / "__init__.py").read_text()
    assert not re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", text)
    assert "spec_from_file_location" in text
    import smite_core

    assert Path(smite_core.__file__).resolve().parent == ROOT / "smite_core"


def test_fresh_interpreter_imports_the_pack_like_comfyui(tmp_path):
    """A new process (smite_core not imported yet): the pack loads its own copy by file location."""
    import subprocess

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('/x/custom_nodes/smite-segment', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
        "import smite_core, smite_core.model.backbone\n"
        "print(smite_core.__file__); print(len(m.NODE_CLASS_MAPPINGS))\n"
        "print(sorted(smite_core.model.backbone.read_family_config('tiny')))\n"
        "print('nodes' in sys.modules and 'smite_core.method.segment' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert Path(lines[0]).resolve() == ROOT / "smite_core" / "__init__.py"
    assert lines[1] == str(len(EXPECTED)) and "unet" in lines[2]
    assert lines[3] == "False"  # our nodes package is not importable as a top-level 'nodes'


def test_a_failing_node_module_is_reported_once_and_the_others_still_load(monkeypatch, caplog):
    import importlib

    pack_nodes = sys.modules["smite_pack_under_test.nodes"]
    real_import = importlib.import_module

    def flaky(name, package=None):
        if name == ".masks":
            raise ImportError("No module named 'something_optional'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", flaky)
    source = (ROOT / "nodes" / "__init__.py").read_text()
    namespace = {"__name__": "smite_pack_under_test.nodes", "__package__": "smite_pack_under_test.nodes"}
    with caplog.at_level("ERROR"):
        exec(compile(source, str(ROOT / "nodes" / "__init__.py"), "exec"), namespace)
    assert "SMITE_MaskToVideo" not in namespace["NODE_CLASS_MAPPINGS"]
    assert "SMITE_InflatedUNetSegment" in namespace["NODE_CLASS_MAPPINGS"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "masks (ImportError: No module named 'something_optional')" in errors[0]
    assert pack_nodes.NODE_CLASS_MAPPINGS  # the imported package itself is untouched


# ----------------------------------------------------------------------------- label maps, references


def test_label_map_images_round_trip_and_other_codings(pack):
    from smite_pack_under_test.nodes.labelmaps import ids_to_image, image_to_ids

    ids = torch.tensor([[[0, 1, 2], [3, 4, 75]]])
    assert torch.equal(image_to_ids(ids_to_image(ids)), ids)
    grey = torch.tensor([[[0, 1, 2]]], dtype=torch.float32)[..., None].expand(1, 1, 3, 3) / 255
    assert image_to_ids(grey).tolist() == [[[0, 1, 2]]]
    mask = torch.tensor([[[0.0, 1.0, 1.0]]])[..., None].expand(1, 1, 3, 3)  # black/white mask -> id 1
    assert image_to_ids(mask).tolist() == [[[0, 1, 1]]]
    colours = torch.tensor([[[[0, 0, 0], [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]]]])  # sorted RGB order
    assert image_to_ids(colours).tolist() == [[[0, 2, 1]]]
    noisy = torch.rand(1, 16, 16, 3)  # a JPEG-like image is not a label map
    with pytest.raises(InputError, match="lossless"):
        image_to_ids(noisy)


def test_load_references_from_masks_label_map_and_folder(nodes, example, tmp_path):
    reference, labels, names, _, _ = example
    node = nodes["SMITE_LoadReferences"]
    with torch.inference_mode():
        refs, preview = node.load(names, images=reference, label_map=labels)
        assert refs.names == ["background", "body", "window", "wheel", "light"]
        assert preview.shape == reference.shape
        ids = refs.labels[0]
        masks = {f"mask_{k}": (ids == k).float()[None] for k in (1, 2, 3)}
        refs2, _ = node.load("body, window; wheel", images=reference, **masks)
        assert refs2.names == ["background", "body", "window", "wheel"]
        assert torch.equal(refs2.labels[0], torch.where(ids <= 3, ids, 0))
        with pytest.raises(InputError, match="not both"):
            node.load("", images=reference, label_map=labels, mask_1=masks["mask_1"])
        with pytest.raises(InputError, match="label map or at least one"):
            node.load("", images=reference)
        with pytest.raises(InputError, match="differs"):
            node.load("", images=reference, label_map=labels[:, :32])
    from smite_core.procedural import write_example

    paths = write_example(tmp_path / "ex", "fish", seed=1, num_refs=2, num_frames=1, size=(48, 48))
    refs3, preview3 = node.load("", folder=str(paths["ref_images"].parent))
    assert len(refs3) == 2 and refs3.names[1:] == ["body", "fin", "tail", "eye"] and preview3.shape[0] == 2
    assert type(node).VALIDATE_INPUTS(folder=str(tmp_path / "missing")) != True  # noqa: E712
    with pytest.raises(InputError, match="either a folder"):
        node.load("", images=reference, folder=str(paths["ref_images"].parent))


# ----------------------------------------------------------------------------- learn, save, load


def test_learn_save_load_round_trip(nodes, model, embedding, tmp_path):
    assert embedding.names == ["background", "body", "window", "wheel", "light"]
    assert embedding.backbone_fingerprint == model.fingerprint and embedding.kv
    save = nodes["SMITE_SaveEmbedding"]
    assert type(save).INPUT_TYPES()["required"]["overwrite"][1]["default"] is False  # never overwrites unasked
    out = save.save(embedding, "parts/car", directory=str(tmp_path))
    assert out["ui"]["text"] == ["parts/car.safetensors"] and out["result"] == ("parts/car.safetensors",)
    before = (tmp_path / "parts" / "car.safetensors").read_bytes()
    again = save.save(embedding, "parts/car", directory=str(tmp_path))  # the default: a numbered new file
    assert again["result"] == ("parts/car_00001.safetensors",)
    assert (tmp_path / "parts" / "car_00001.safetensors").is_file()
    assert (tmp_path / "parts" / "car.safetensors").read_bytes() == before
    replaced = save.save(embedding, "parts/car", overwrite=True, directory=str(tmp_path))
    assert replaced["result"] == ("parts/car.safetensors",)
    for bad in ("../escape", "/abs/path", "", "C:/x"):
        with pytest.raises(InputError, match="filename"):
            save.save(embedding, bad, directory=str(tmp_path))
    with torch.inference_mode():
        loaded = nodes["SMITE_LoadEmbedding"].load(str(tmp_path / "parts" / "car.safetensors"))[0]
    assert loaded.names == embedding.names
    assert torch.allclose(loaded.tokens, embedding.tokens, atol=1e-2)


def test_load_embedding_logs_an_embedding_learned_by_smite_0_1(nodes, embedding, tmp_path, caplog):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = embedding.save(tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**metadata, "format_version": "1"})  # as SMITE 0.1 wrote it
    with caplog.at_level("WARNING"):
        loaded = nodes["SMITE_LoadEmbedding"].load(str(path))[0]
    assert loaded.names == embedding.names
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("old.safetensors was learned with the WAS of SMITE 0.1" in w and "learn it again" in w
               for w in warnings), warnings


def test_bundled_example_embedding_fits_the_embedded_backbone(model):
    from smite_pack_under_test.nodes.build_example import EXAMPLE_EMBEDDING
    from smite_pack_under_test.nodes.host import EXAMPLE_DIR

    path = Path(EXAMPLE_DIR) / EXAMPLE_EMBEDDING
    assert path.is_file(), f"{path} is missing: python -m nodes.build_example"
    assert path.stat().st_size < 600_000
    embedding = SegmentEmbedding.load(path)
    assert embedding.backbone_fingerprint == model.fingerprint, (
        f"{path.name} was learned on another embedded backbone (fingerprint {embedding.backbone_fingerprint}, "
        f"now {model.fingerprint}); rebuild it with: python -m nodes.build_example")
    assert embedding.names == ["background", "body", "window", "wheel", "light"]
    assert embedding.outdated is None, "learned with another WAS: rebuild it with: python -m nodes.build_example"


# ----------------------------------------------------------------------------- segment, masks, guides


def test_invert_and_segment_shapes_and_backbone_check(nodes, model, embedding, example, segments):
    video = example[3]
    assert segments.labels.shape == video.shape[:3] and segments.labels.dtype == torch.uint8
    assert segments.scores.shape[:2] == (video.shape[0], 5) and segments.names == embedding.names
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, video[:2], size=SIZE)[0]
    assert latent.latents.shape[0] == 2 and latent.size == (SIZE, SIZE)
    latent.fingerprint = "0" * 16
    with pytest.raises(InputError, match="another backbone"):
        nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent)
    cls = type(nodes["SMITE_InflatedUNetSegment"])
    assert cls.VALIDATE_INPUTS(window=4, overlap=4, guide_steps=1) != True  # noqa: E712
    assert type(nodes["SMITE_InvertVideo"]).VALIDATE_INPUTS(size=0, timestep_min=100, timestep_max=90) != True  # noqa: E712


def test_guides_become_segment_config_fields(nodes):
    from smite_pack_under_test.nodes.segment import make_config

    track = nodes["SMITE_TrackVote"].run("static", 0.25, 7, False)[0]
    low = nodes["SMITE_LowPassGuide"].run(3.0, 0.5, 0.9)[0]
    fields = {"window": 8, "overlap": 4, **track.config_fields(), **low.config_fields(), "not_a_field": 1}
    config = make_config(fields)
    assert (config.tracker, config.track_weight, config.vote_window) == ("static", 0.25, 7)
    assert config.temporal  # a static TrackVote still votes (only a missing guide means no vote)
    assert (config.lowpass_weight, config.lowpass_cutoff) == (3.0, 0.5)
    with pytest.raises(SmiteError):
        nodes["SMITE_LowPassGuide"].run(1.0, 0.0, 0.9)


def test_guided_segmentation_runs_in_the_denoising_loop(nodes, model, embedding, example, segments):
    track = nodes["SMITE_TrackVote"].run("flow", 0.1, 3, True)[0]
    low = nodes["SMITE_LowPassGuide"].run(8.0, 0.4, 0.999)[0]
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, example[3][:4], size=SIZE)[0]
        guided = nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent, window=4, overlap=2,
                                                            guide_steps=1, track_vote=track, low_pass=low)[0]
    assert guided.labels.shape == (4, SIZE, SIZE)
    assert not torch.allclose(guided.scores.float(), segments.scores[:4].float(), atol=1e-3)


def test_mask_label_map_and_overlay_outputs(nodes, segments):
    node = nodes["SMITE_MaskToVideo"]
    t, h, w = segments.labels.shape
    (mask,) = node.convert(segments, "wheel")
    assert mask.shape == (t, h, w) and mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.bool(), segments.labels == 3)
    (label_map,) = nodes["SMITE_LabelMapImage"].convert(segments)
    (painted,) = nodes["SMITE_Overlay"].paint(segments, 0.5)
    assert label_map.shape == painted.shape == (t, h, w, 3)
    from smite_pack_under_test.nodes.labelmaps import image_to_ids

    assert torch.equal(image_to_ids(label_map), segments.labels.long())
    with pytest.raises(InputError, match="overlay_alpha"):
        nodes["SMITE_Overlay"].paint(segments, 1.5)
    assert torch.equal(node.convert(segments, "3")[0], mask)
    assert torch.equal(node.convert(segments, "all")[0].bool(), segments.labels > 0)
    soft = node.convert(segments, "WHEEL", soft=True)[0]
    assert soft.shape == (t, h, w) and 0 <= float(soft.min()) and float(soft.max()) <= 1
    # soft masks are upsampled as the labels are (along the frames' edges): their argmax is the labels
    probs = torch.stack([segments.probabilities(k, 0, t) for k in range(segments.num_segments)], 1)
    assert (probs.argmax(1) == segments.labels).float().mean() > 0.999
    for bad in ("tyre", "9"):
        with pytest.raises(InputError, match="segment"):
            node.convert(segments, bad)


def _flicker(masks: torch.Tensor) -> float:
    return float((masks[1:] != masks[:-1]).float().mean())


def test_trackvote_alone_deflickers_a_mask_video(nodes):
    with torch.inference_mode():
        _, _, _, video, flickery = nodes["SMITE_LoadExample"].make("car", 0, 12, SIZE)
        guide, voted = nodes["SMITE_TrackVote"].run("flow", 0.1, 7, True, frames=video, masks=flickery)
    assert voted.shape == flickery.shape and guide.tracker == "flow"
    assert _flicker(voted) < 0.8 * _flicker(flickery)
    guide, blocked = nodes["SMITE_TrackVote"].run()  # a guide: its masks output stops whoever uses it, saying why
    assert "connect frames and masks" in blocked.message and guide.tracker == "flow"
    with pytest.raises(InputError, match="both frames and masks"):
        nodes["SMITE_TrackVote"].run(masks=flickery)


def test_load_example_is_deterministic(nodes):
    a = nodes["SMITE_LoadExample"].make("fish", 3, 2, 64)
    b = nodes["SMITE_LoadExample"].make("fish", 3, 2, 64)
    assert a[2] == "body, fin, tail, eye"
    for x, y in zip(a[:2] + a[3:], b[:2] + b[3:]):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- inside ComfyUI (fakes)


class _Interrupted(Exception):
    pass


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    """Minimal stand-ins for ComfyUI's folder_paths, comfy.utils and comfy.model_management."""
    calls = {"progress": [], "interrupt_checks": 0, "empty_cache": 0, "interrupt_after": None}
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(tmp_path / "models")
    folder_paths.folder_names_and_paths = {
        "checkpoints": ([str(tmp_path / "models" / "checkpoints")], {".safetensors", ".ckpt"}),
        "diffusers": ([str(tmp_path / "models" / "diffusers")], {"folder"}),
        "smite": ([str(tmp_path / "user_smite")], set()),  # as extra_model_paths.yaml would register it
    }

    def add_model_folder_path(name, path, is_default=False):
        paths, _ = folder_paths.folder_names_and_paths.setdefault(name, ([], set()))
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    def get_folder_paths(name):
        return list(folder_paths.folder_names_and_paths[name][0])

    def get_filename_list(name):
        out = []
        for folder in get_folder_paths(name):
            root = Path(folder)
            if root.is_dir():
                out += [str(p.relative_to(root)).replace("\\", "/") for p in root.rglob("*") if p.is_file()]
        return sorted(out)

    def get_full_path(name, filename):
        for folder in get_folder_paths(name):
            if (Path(folder) / filename).is_file():
                return str(Path(folder) / filename)
        return None

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = get_folder_paths
    folder_paths.get_filename_list = get_filename_list
    folder_paths.get_full_path = get_full_path

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total or self.total))

    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")

    def throw():
        calls["interrupt_checks"] += 1
        if calls["interrupt_after"] is not None and calls["interrupt_checks"] > calls["interrupt_after"]:
            raise _Interrupted()

    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.should_use_fp16 = mm.should_use_bf16 = lambda *a, **k: False
    mm.free_memory = lambda *a, **k: None
    mm.soft_empty_cache = lambda force=False: calls.__setitem__("empty_cache", calls["empty_cache"] + 1)
    mm.current_loaded_models = []

    class Loaded:  # comfy.model_management.LoadedModel, as far as unloading goes
        def __init__(self, model):
            self.model = model

        def model_unload(self):
            calls["unloads"].append(self.model)
            return True

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        calls["loads"].append((list(models), force_full_load))
        for model in models:
            if not any(loaded.model is model for loaded in mm.current_loaded_models):
                mm.current_loaded_models.insert(0, Loaded(model))

    mm.load_models_gpu = load_models_gpu
    calls.update(loads=[], unloads=[])
    comfy_pkg = types.ModuleType("comfy")
    for name, module in (("folder_paths", folder_paths), ("comfy", comfy_pkg), ("comfy.utils", utils),
                         ("comfy.model_management", mm)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_model_folders_respect_user_paths_and_list_models(pack, fake_comfy, tmp_path, nodes):
    from smite_pack_under_test.nodes import host
    from smite_pack_under_test.nodes.model import model_choices, resolve_model

    host.register_model_folders()
    fp = sys.modules["folder_paths"]
    smite_paths = fp.get_folder_paths("smite")
    assert smite_paths[0] == str(tmp_path / "user_smite")  # the user's configured path stays the default
    assert str(tmp_path / "models" / "smite") in smite_paths and host.EXAMPLE_DIR in smite_paths
    assert fp.get_folder_paths("cotracker") == [str(tmp_path / "models" / "cotracker")]
    assert not (tmp_path / "models" / "smite").exists()  # nothing is created at start-up
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sd15.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "diffusers" / "sd21" / "unet").mkdir(parents=True)
    (tmp_path / "models" / "diffusers" / "sd21" / "model_index.json").write_text("{}")
    choices = model_choices()
    assert choices == ["tiny (demo: synthetic examples only)", "checkpoints/sd15.safetensors", "diffusers/sd21"]
    assert resolve_model("tiny (embedded)") == resolve_model(choices[0]) == "tiny"  # the earlier name works too
    assert type(nodes["SMITE_ModelLoader"]).VALIDATE_INPUTS("tiny (embedded)") is True
    expected = str(tmp_path / "models" / "checkpoints" / "sd15.safetensors")
    assert resolve_model("checkpoints/sd15.safetensors") == expected
    assert resolve_model("diffusers/sd21") == str(tmp_path / "models" / "diffusers" / "sd21")
    with pytest.raises(InputError, match="not found"):
        resolve_model("checkpoints/missing.safetensors")
    listed = type(nodes["SMITE_LoadEmbedding"]).INPUT_TYPES()["required"]["embedding"][0]
    assert "smite_example_car.safetensors" in listed
    assert host.save_directory() == str(tmp_path / "user_smite")


def test_learn_steps_zero_means_300_per_reference(nodes, model, references, embedding, monkeypatch):
    learn = nodes["SMITE_LearnSegmentEmbedding"]
    steps = []

    def fake_learn(backbone, refs, config, progress=None, **hooks):  # records the resolved step count, learns nothing
        steps.append(config.steps)
        return embedding

    monkeypatch.setattr(sys.modules[type(learn).__module__], "learn_embedding", fake_learn)
    with torch.inference_mode():
        learn.learn(model, references, steps=0, size=SIZE)
        learn.learn(model, references, steps=5, size=SIZE)
    assert steps == [300 * len(references.images), 5]


def test_progress_interrupt_and_memory_release_inside_comfyui(nodes, model, references, fake_comfy):
    learn = nodes["SMITE_LearnSegmentEmbedding"]
    with torch.inference_mode():
        learn.learn(model, references, steps=2, size=SIZE)
    assert fake_comfy["progress"] == [(1, 2), (2, 2)]
    assert fake_comfy["empty_cache"] >= 1  # released after use (keep_loaded off)
    fake_comfy["interrupt_after"] = fake_comfy["interrupt_checks"] + 1
    with pytest.raises(_Interrupted), torch.inference_mode():
        learn.learn(model, references, steps=50, size=SIZE)  # cancelled at the first step's backward pass
    assert len(fake_comfy["progress"]) == 2  # the first step never finished: no progress reported


def test_keep_loaded_skips_the_release(model, fake_comfy):
    import dataclasses

    kept = dataclasses.replace(model, keep_loaded=True)
    before = fake_comfy["empty_cache"]
    with kept.use() as backbone:
        assert backbone.device == kept.load_device
    assert fake_comfy["empty_cache"] == before
    with model.use():
        pass
    assert fake_comfy["empty_cache"] == before + 1


def test_model_loader_offloads_to_comfyui_devices(nodes, fake_comfy):
    from smite_pack_under_test.nodes import host

    assert host.inside_comfyui() and host.compute_device("auto") == torch.device("cpu")
    assert host.auto_dtype(torch.device("cpu")) == torch.float32
    loader = type(nodes["SMITE_ModelLoader"])
    assert loader.IS_CHANGED("tiny (embedded)") == loader.IS_CHANGED("tiny (embedded)")


def test_model_loader_accepts_the_tiny_choice_under_its_earlier_names(nodes, fake_comfy):
    from smite_pack_under_test.nodes.model import OLD_TINY, TINY, resolve_model

    loader = type(nodes["SMITE_ModelLoader"])
    assert set(OLD_TINY) == {"tiny (embedded)", "tiny"}  # saved workflows hold these; the list shows TINY only
    for name in (TINY, *OLD_TINY):
        assert loader.VALIDATE_INPUTS(name) is True, name
        assert resolve_model(name) == "tiny", name
    refused = loader.VALIDATE_INPUTS("tiny (something else)")
    assert isinstance(refused, str) and "not in the list" in refused
    with pytest.raises(InputError, match="not the embedded model"):
        resolve_model("tiny (something else)")
    with pytest.raises(InputError, match="no backbone chosen"):
        resolve_model("")


def test_loading_the_tiny_backbone_warns_once_that_it_is_a_demo(nodes, caplog):
    from smite_pack_under_test.nodes.model import DEMO_NOTE, OLD_TINY

    with caplog.at_level("WARNING"), torch.inference_mode():
        nodes["SMITE_ModelLoader"].load(OLD_TINY[0], "fp32", False, "cpu")
    notes = [r for r in caplog.records if r.getMessage() == DEMO_NOTE]
    assert len(notes) == 1 and notes[0].levelname == "WARNING" and "\n" not in DEMO_NOTE  # one line
    assert "synthetic examples" in DEMO_NOTE and "SMITE Model From Checkpoint" in DEMO_NOTE


def test_example_flicker_is_actually_flickery():
    from smite_pack_under_test.nodes.examples import flicker

    labels = np.zeros((6, 64, 64), np.uint8)
    labels[:, 20:44, 20:44] = 1
    out = flicker(labels, 0)
    assert out.shape == labels.shape and _flicker(torch.from_numpy(out)) > 0


# ----------------------------------------------------------------------------- progress and Cancel per UNet pass


@pytest.fixture
def counted_passes(monkeypatch, fake_comfy):
    """Counts the UNet passes of segmentation and how many progress updates preceded each; ``cancel_at``:
    the pass during which the user presses Cancel."""
    import smite_core.method.segment as segment_module

    real = segment_module.unet_forward
    seen = {"passes": 0, "progress_before": [], "cancel_at": None}

    def counting(*args, **kwargs):
        seen["passes"] += 1
        seen["progress_before"].append(len(fake_comfy["progress"]))
        if seen["passes"] == seen["cancel_at"]:
            fake_comfy["interrupt_after"] = fake_comfy["interrupt_checks"]  # the next check raises
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "unet_forward", counting)
    return seen


def test_segmentation_progress_moves_every_unet_pass_and_cancel_stops_within_one(
        nodes, model, embedding, example, fake_comfy, counted_passes):
    from smite_pack_under_test.nodes.segment import make_config, planned_unet_passes

    track = nodes["SMITE_TrackVote"].run("static", 0.1, 3, True)[0]
    low = nodes["SMITE_LowPassGuide"].run(8.0, 0.4, 0.999)[0]
    segment = nodes["SMITE_InflatedUNetSegment"]
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, example[3], size=SIZE)[0]
    assert fake_comfy["progress"][-6:] == [(i, 6) for i in range(1, 7)]  # inversion: one update per frame on a CPU
    fake_comfy["progress"].clear()
    args = dict(window=4, overlap=2, guide_steps=1, track_vote=track, low_pass=low)
    with torch.inference_mode():
        segment.segment(model, embedding, latent, **args)
    passes = counted_passes["passes"]  # 2 windows x (reference pass + 1 guided iteration + the pass after it)
    config = make_config({"window": 4, "overlap": 2, "guide_steps": 1, "size": latent.size,
                          **track.config_fields(), **low.config_fields()})
    assert passes == planned_unet_passes(config, 6) == 6
    before = counted_passes["progress_before"] + [len(fake_comfy["progress"])]
    assert all(b > a for a, b in zip(before, before[1:])), before  # the bar moved after every pass
    assert fake_comfy["progress"] == [(i, passes) for i in range(1, passes + 1)]
    counted_passes.update(passes=0, cancel_at=2)  # Cancel pressed during the 2nd pass (a guidance iteration)
    with pytest.raises(_Interrupted), torch.inference_mode():
        segment.segment(model, embedding, latent, **args)
    assert counted_passes["passes"] == 2  # stopped right after that pass: no further UNet pass started


def test_invert_video_cancel_stops_before_the_next_frames_encode(nodes, model, example, fake_comfy, monkeypatch):
    invert_module = sys.modules[type(nodes["SMITE_InvertVideo"]).__module__]
    real = invert_module.encode_frames
    encoded = []

    def counting(backbone, frames, size, *args, **kwargs):
        encoded.append(frames.shape[0])
        if cancel_at == len(encoded):
            fake_comfy["interrupt_after"] = fake_comfy["interrupt_checks"]  # Cancel pressed during this encode
        return real(backbone, frames, size, *args, **kwargs)

    monkeypatch.setattr(invert_module, "encode_frames", counting)
    video = example[3]
    total = video.shape[0]
    cancel_at = 1  # during the first frame (a CPU encodes one frame per batch)
    with pytest.raises(_Interrupted), torch.inference_mode():
        nodes["SMITE_InvertVideo"].invert(model, video, size=SIZE)
    assert encoded == [1] and total > 1  # no further frame was encoded
    encoded.clear()
    cancel_at = None
    fake_comfy["interrupt_after"] = fake_comfy["interrupt_checks"]  # Cancel already pressed when the node starts
    with pytest.raises(_Interrupted), torch.inference_mode():
        nodes["SMITE_InvertVideo"].invert(model, video, size=SIZE)
    assert encoded == []  # checked before the first encode, not only after it
    fake_comfy["interrupt_after"] = None
    with torch.inference_mode():
        nodes["SMITE_InvertVideo"].invert(model, video, size=SIZE)
    assert encoded == [1] * total  # not cancelled: every frame, one at a time


def test_trackvote_progress_per_tracker_call_and_cancel_before_it(nodes, fake_comfy):
    with torch.inference_mode():
        _, _, _, video, flickery = nodes["SMITE_LoadExample"].make("car", 0, 20, SIZE)
        nodes["SMITE_TrackVote"].run("static", 0.1, 3, True, frames=video, masks=flickery)
    assert fake_comfy["progress"] == [(16, 20), (20, 20)]  # after each tracker call (16 frames)
    fake_comfy["interrupt_after"] = fake_comfy["interrupt_checks"]
    with pytest.raises(_Interrupted), torch.inference_mode():
        nodes["SMITE_TrackVote"].run("static", 0.1, 3, True, frames=video, masks=flickery)
    assert len(fake_comfy["progress"]) == 2


# ----------------------------------------------------------------------------- ComfyUI's MODEL, CLIP and VAE


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    """A small SD 1.x-shaped single file (real 768 context width and CLIP vocabulary, few channels)."""
    from test_checkpoints import tiny_models, write_single

    return write_single(tmp_path_factory.mktemp("ckpt"), tiny_models("sd1", text_overrides={"vocab_size": 49408}),
                        "sd1", name="small_sd15.safetensors")


def test_model_from_checkpoint_shares_comfyui_weights_and_matches_the_loader(nodes, sd1_file, example):
    from graph_runner import comfy_objects
    from smite_pack_under_test.nodes.comfy_model import SharedModel

    from smite_core.model.shared_weights import is_bound, shared_storage

    comfy_model, clip, vae = comfy_objects(sd1_file)
    with torch.inference_mode():
        shared = nodes["SMITE_ModelFromCheckpoint"].convert(comfy_model, clip, vae)[0]
        loaded = nodes["SMITE_ModelLoader"].load(str(sd1_file), "fp32", False, "cpu")[0]
    assert isinstance(shared, SharedModel) and not is_bound(shared.components)
    assert clip.encoded and clip.encoded[0][0, :2].tolist() == [49406, 49407]  # the empty prompt, encoded once
    assert shared.fingerprint == loaded.fingerprint  # embeddings learned either way are interchangeable
    unet_state, vae_state = comfy_model.model.diffusion_model.state_dict(), vae.first_stage_model.state_dict()
    with shared.use() as backbone:
        assert shared_storage(backbone.unet, unet_state) == [] and shared_storage(backbone.vae, vae_state) == []
        conv = backbone.unet.conv_in.weight
        assert conv.data_ptr() == unet_state["input_blocks.0.0.weight"].data_ptr() and not conv.is_inference()
    assert not is_bound(shared.components)  # nothing holds ComfyUI's tensors between uses
    reference, labels, names, video, _ = example
    results = []
    with torch.inference_mode():
        refs = nodes["SMITE_LoadReferences"].load(names, images=reference, label_map=labels)[0]
        for smite_model in (shared, loaded):
            emb = nodes["SMITE_LearnSegmentEmbedding"].learn(smite_model, refs, steps=2, random_seed=0, size=32)[0]
            latent = nodes["SMITE_InvertVideo"].invert(smite_model, video[:4], size=32)[0]
            segments = nodes["SMITE_InflatedUNetSegment"].segment(smite_model, emb, latent, window=4, overlap=2,
                                                                  guide_steps=0)[0]
            results.append((emb, segments))
    (emb_a, seg_a), (emb_b, seg_b) = results
    assert emb_a.backbone_fingerprint == emb_b.backbone_fingerprint
    assert torch.allclose(emb_a.tokens, emb_b.tokens, atol=1e-5)
    assert torch.equal(seg_a.labels, seg_b.labels)


def test_model_from_checkpoint_loads_and_offloads_through_comfyui(nodes, sd1_file, fake_comfy):
    from graph_runner import comfy_objects

    comfy_model, clip, vae = comfy_objects(sd1_file)
    vae.patcher = object()  # ComfyUI's VAE has a ModelPatcher of its own
    with torch.inference_mode():
        shared = nodes["SMITE_ModelFromCheckpoint"].convert(comfy_model, clip, vae)[0]
    with shared.use():
        assert fake_comfy["loads"] == [([comfy_model, vae.patcher], True)]  # whole (force_full_load), patched
    assert {id(m) for m in fake_comfy["unloads"]} == {id(comfy_model), id(vae.patcher)}  # offloaded after use
    kept = nodes["SMITE_ModelFromCheckpoint"].convert(comfy_model, clip, vae, keep_loaded=True)[0]
    with kept.use():
        pass
    assert len(fake_comfy["unloads"]) == 2 and len(fake_comfy["loads"]) == 2


def test_model_from_checkpoint_refuses_other_models_in_one_line(nodes, sd1_file):
    from graph_runner import StandInModel, comfy_objects

    from smite_core.errors import BackboneError

    _, clip, vae = comfy_objects(sd1_file)
    sdxl = StandInModel({"input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3), "label_emb.0.0.weight": torch.zeros(1),
                         "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048)}, "SDXL")
    flux = StandInModel({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3)}, "Flux")
    for other, name in ((sdxl, "SDXL"), (flux, "Flux")):
        with pytest.raises(BackboneError, match=f"^SMITE supports Stable Diffusion 1.x and 2.x checkpoints; "
                                                f"this MODEL is {name} "):
            nodes["SMITE_ModelFromCheckpoint"].convert(other, clip, vae)
    edm = comfy_objects(sd1_file)[0]
    edm.model.model_type.name = "EDM"
    with pytest.raises(BackboneError, match="this MODEL is SD15 with a sampling objective"):
        nodes["SMITE_ModelFromCheckpoint"].convert(edm, clip, vae)
