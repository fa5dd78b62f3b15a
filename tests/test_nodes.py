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

from smite_core.embedding import SegmentEmbedding
from smite_core.errors import InputError, SmiteError

EXPECTED = {"SMITE_ModelLoader", "SMITE_LoadReferences", "SMITE_LearnSegmentEmbedding", "SMITE_SaveEmbedding",
            "SMITE_LoadEmbedding", "SMITE_InvertVideo", "SMITE_InflatedUNetSegment", "SMITE_TrackVote",
            "SMITE_LowPassGuide", "SMITE_MaskToVideo", "SMITE_LoadExample"}
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
        return nodes["SMITE_ModelLoader"].load("tiny (embedded)", "fp32", False, "cpu")[0]


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
        assert not getattr(cls, "OUTPUT_NODE", False) or node_id == "SMITE_SaveEmbedding"


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
        "import smite_core, smite_core.backbone\n"
        "print(smite_core.__file__); print(len(m.NODE_CLASS_MAPPINGS))\n"
        "print(sorted(smite_core.backbone.read_family_config('tiny')))\n"
        "print('nodes' in sys.modules and 'smite_core.segment' in sys.modules)\n"
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
    out = save.save(embedding, "parts/car", overwrite=True, directory=str(tmp_path))
    assert out["ui"]["text"] == ["parts/car.safetensors"] and out["result"] == ()
    save.save(embedding, "parts/car", overwrite=False, directory=str(tmp_path))
    assert (tmp_path / "parts" / "car_00001.safetensors").is_file()
    for bad in ("../escape", "/abs/path", "", "C:/x"):
        with pytest.raises(InputError, match="filename"):
            save.save(embedding, bad, directory=str(tmp_path))
    with torch.inference_mode():
        loaded = nodes["SMITE_LoadEmbedding"].load(str(tmp_path / "parts" / "car.safetensors"))[0]
    assert loaded.names == embedding.names
    assert torch.allclose(loaded.tokens, embedding.tokens, atol=1e-2)


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


def test_mask_to_video_outputs(nodes, segments):
    node = nodes["SMITE_MaskToVideo"]
    t, h, w = segments.labels.shape
    mask, label_map, painted = node.convert(segments, "wheel")
    assert mask.shape == (t, h, w) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.bool(), segments.labels == 3)
    assert label_map.shape == painted.shape == (t, h, w, 3)
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
    empty = nodes["SMITE_TrackVote"].run()[1]
    assert empty.shape[0] == 0
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
    assert choices == ["tiny (embedded)", "checkpoints/sd15.safetensors", "diffusers/sd21"]
    assert resolve_model("checkpoints/sd15.safetensors") == str(tmp_path / "models" / "checkpoints" / "sd15.safetensors")
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
    assert type(nodes["SMITE_ModelLoader"]).IS_CHANGED("tiny (embedded)") == type(nodes["SMITE_ModelLoader"]).IS_CHANGED(
        "tiny (embedded)")


def test_example_flicker_is_actually_flickery():
    from smite_pack_under_test.nodes.examples import flicker

    labels = np.zeros((6, 64, 64), np.uint8)
    labels[:, 20:44, 20:44] = 1
    out = flicker(labels, 0)
    assert out.shape == labels.shape and _flicker(torch.from_numpy(out)) > 0
