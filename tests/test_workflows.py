"""The example workflows: API format executed by the small graph runner, UI format checked for the editor.

The API graphs run exactly as shipped except for a few size knobs (fewer frames, smaller working
size, fewer learning steps) so the whole file stays fast on a CPU; the real ComfyUI server test runs
them unchanged.
"""

import json
from pathlib import Path

import pytest
import torch
from graph_runner import (
    API_WORKFLOWS,
    CORE_NODES,
    WORKFLOWS,
    api_to_ui,
    check_ui_workflow,
    load_pack,
    pack_infos,
    run_api_workflow,
    topological_order,
    ui_to_api,
)

NAMES = ["SMITE 1 - Learn parts from one reference and segment a video",
         "SMITE 2 - Segment a video with a saved embedding",
         "SMITE 3 - De-flicker a mask video with TrackVote",
         "SMITE 4 - Learn and segment with your Stable Diffusion checkpoint",
         "SMITE 5 - Stream a long video into mattes for compositing"]
FAST = 64


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test: the workflows must run offline."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def infos(pack):
    return pack_infos(pack)


def _api(name):
    return json.loads((API_WORKFLOWS / f"{name}.json").read_text())


def _node_of(api, class_type):
    ids = [nid for nid, node in api.items() if node["class_type"] == class_type]
    assert len(ids) == 1, class_type
    return ids[0]


def test_workflow_files_are_where_comfyui_finds_them():
    ui = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    api = sorted(p.stem for p in API_WORKFLOWS.glob("*.json"))
    assert ui == api == NAMES  # UI files are listed by the template browser; API files sit one level down
    for name in NAMES:  # the template browser shows the file name as the title and <name>.jpg as the picture
        thumbnail = WORKFLOWS / f"{name}.jpg"
        assert thumbnail.is_file() and thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", thumbnail
        assert thumbnail.stat().st_size < 150_000


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_note_leading_to_real_checkpoints(name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    notes = [" ".join(n["widgets_values"]) for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and "Stable Diffusion 1.x or 2.x" in notes[0], notes
    assert "SMITE 4" in notes[0] or "SDXL" in notes[0]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_without_missing_nodes_and_matches_its_api_twin(name, infos):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = _api(name)
    assert check_ui_workflow(ui, infos) == []
    assert ui["version"] == 0.4 and ui["last_node_id"] >= max(int(n) for n in api)
    queued = ui_to_api(ui, infos)
    assert queued == {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in api.items()}
    rebuilt = api_to_ui(api, infos, previous=ui)
    assert rebuilt == ui, "run: python tests/graph_runner.py --write-ui"


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_uses_only_smite_and_core_nodes(name, pack):
    api = _api(name)
    topological_order(api)
    for node in api.values():
        assert node["class_type"] in pack.NODE_CLASS_MAPPINGS or node["class_type"] in CORE_NODES
        assert set(node) == {"class_type", "inputs", "_meta"} and node["_meta"]["title"]  # the frontend's API schema


def test_workflow_4_runs_on_the_checkpoint_load_checkpoint_gives(pack, tmp_path):
    import graph_runner
    from test_checkpoints import tiny_models, write_single

    api = _api(NAMES[3])
    loader = _node_of(api, "CheckpointLoaderSimple")
    name = api[loader]["inputs"]["ckpt_name"]
    path = write_single(tmp_path, tiny_models("sd1", text_overrides={"vocab_size": 49408}), "sd1")
    kinds = ("SMITE_LoadExample", "SMITE_LearnSegmentEmbedding", "SMITE_InvertVideo")
    example, learn, invert = (_node_of(api, t) for t in kinds)
    segment, save = _node_of(api, "SMITE_InflatedUNetSegment"), _node_of(api, "SMITE_SaveEmbedding")
    overrides = {example: {"frames": 4, "size": FAST}, learn: {"steps": 2, "size": 32}, invert: {"size": 32},
                 segment: {"window": 4, "overlap": 2}}
    graph_runner.CheckpointLoaderSimple.FILES = {name: path}
    try:
        results = run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, tmp_path / "output", overrides,
                                   extra={save: {"directory": str(tmp_path / "smite")}})
    finally:
        graph_runner.CheckpointLoaderSimple.FILES = {}
    assert results[save] == ("smite_sd_car_parts.safetensors",)
    assert (tmp_path / "smite" / "smite_sd_car_parts.safetensors").is_file()
    assert results[segment][0].labels.shape == (4, FAST, FAST)
    assert list((tmp_path / "output" / "smite" / "checkpoint").glob("overlay_*.mp4"))


def test_workflow_1_learns_segments_and_saves(pack, tmp_path):
    api = _api(NAMES[0])
    example, learn, invert = (_node_of(api, t) for t in ("SMITE_LoadExample", "SMITE_LearnSegmentEmbedding",
                                                           "SMITE_InvertVideo"))
    segment, save = _node_of(api, "SMITE_InflatedUNetSegment"), _node_of(api, "SMITE_SaveEmbedding")
    overrides = {example: {"frames": 4, "size": FAST}, learn: {"steps": 2, "size": FAST},
                 invert: {"size": FAST}, segment: {"window": 4, "overlap": 2}}
    out = tmp_path / "output"
    results = run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, out, overrides,
                               extra={save: {"directory": str(tmp_path / "models" / "smite")}})
    assert (tmp_path / "models" / "smite" / "smite_my_car_parts.safetensors").is_file()
    masks = sorted((out / "smite" / "learned").glob("wheel_mask_*.png"))
    labels = sorted((out / "smite" / "learned").glob("labels_*.png"))
    assert len(masks) == len(labels) == 4
    assert list((out / "smite" / "learned").glob("overlay_*.mp4"))
    segments = results[segment][0]
    assert segments.names == ["background", "body", "window", "wheel", "light"]
    assert segments.labels.shape == (4, FAST, FAST)


def test_workflow_2_loads_the_bundled_embedding(pack, tmp_path):
    from smite_pack_under_test.nodes.build_example import EXAMPLE_EMBEDDING
    from smite_pack_under_test.nodes.host import EXAMPLE_DIR

    api = _api(NAMES[1])
    kinds = ("SMITE_LoadExample", "SMITE_LoadEmbedding", "SMITE_InvertVideo")
    example, load, invert = (_node_of(api, t) for t in kinds)
    segment = _node_of(api, "SMITE_InflatedUNetSegment")
    assert api[load]["inputs"]["embedding"] == EXAMPLE_EMBEDDING
    assert (Path(EXAMPLE_DIR) / EXAMPLE_EMBEDDING).is_file()
    overrides = {example: {"frames": 4, "size": FAST}, invert: {"size": FAST}, segment: {"window": 4, "overlap": 2}}
    out = tmp_path / "output"
    results = run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, out, overrides)
    assert len(list((out / "smite" / "loaded").glob("car_mask_*.png"))) == 4
    assert list((out / "smite" / "loaded").glob("overlay_*.mp4"))
    assert results[segment][0].labels.shape == (4, FAST, FAST)


def test_workflow_5_streams_a_video_file_into_a_folder_of_mattes(pack, tmp_path, monkeypatch):
    """Core Load Video (the pack's example clip) -> SMITE Segment Video To Files: labels, overlay and 16-bit mattes
    numbered from 1001 in a numbered folder of the output folder, whose path the preview shows."""
    api = _api(NAMES[4])
    load, stream = _node_of(api, "LoadVideo"), _node_of(api, "SMITE_SegmentVideoToFiles")
    assert api[load]["inputs"]["file"] == "smite_example_car.mp4"
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the node writes into ./output
    results = run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, tmp_path / "output",
                               {stream: {"size": FAST, "window": 8, "overlap": 2}})
    folder = tmp_path / "output" / "smite_car_00001"
    assert results[stream][1] == str(folder)
    assert len(list((folder / "labels").glob("*.png"))) == 24 and (folder / "overlay.mp4").is_file()
    assert sorted(p.name for p in (folder / "mattes" / "wheel").iterdir())[:2] == ["1001.png", "1002.png"]


def test_the_bundled_clip_is_the_example_video_as_built(pack, tmp_path):
    """example_inputs/smite_example_car.mp4 is what nodes/build_example.py writes (rebuild it with the embedding)."""
    from smite_pack_under_test.nodes.build_example import EXAMPLE_CLIP, build_example_clip
    from smite_pack_under_test.nodes.host import EXAMPLE_DIR

    from smite_core.io.video_io import open_frames

    bundled, rebuilt = open_frames(Path(EXAMPLE_DIR) / EXAMPLE_CLIP), open_frames(build_example_clip(tmp_path / "c.mp4"))
    assert (bundled.num_frames, bundled.fps) == (rebuilt.num_frames, rebuilt.fps) == (24, 12.0)
    assert torch.allclose(bundled.read(0, 24), rebuilt.read(0, 24), atol=2 / 255)


def test_workflow_3_deflickers_an_external_mask_video(pack, tmp_path):
    api = _api(NAMES[2])
    example, vote = _node_of(api, "SMITE_LoadExample"), _node_of(api, "SMITE_TrackVote")
    out = tmp_path / "output"
    results = run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, out, {example: {"frames": 8, "size": FAST}})
    voted, flickery = results[vote][1], results[example][4]
    assert voted.shape == flickery.shape == (8, FAST, FAST)
    change = lambda m: float((m[1:] != m[:-1]).float().mean())  # noqa: E731
    assert change(voted) < change(flickery)
    assert len(list((out / "smite" / "deflicker").glob("*.mp4"))) == 2


def test_runner_rejects_what_comfyui_rejects(pack, tmp_path):
    api = _api(NAMES[2])
    example = _node_of(api, "SMITE_LoadExample")
    for bad in ({"category": "spaceship"}, {"frames": 0}, {"size": 100000}):
        with pytest.raises(AssertionError, match="does not validate"):
            run_api_workflow(api, pack.NODE_CLASS_MAPPINGS, tmp_path, {example: bad})
    with torch.inference_mode():
        assert torch.is_inference_mode_enabled()
