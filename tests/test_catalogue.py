"""The catalogue of bad and unusual inputs (issue #7): each entry, what happens, and the test that shows it.

Layers: ``library`` (``smite_core`` called from Python), ``CLI`` (the ``smite`` command: exit code and
one ``error: ...`` line, never a traceback), ``nodes`` (the ComfyUI nodes called as ComfyUI calls them:
a ``SmiteError`` becomes a readable node error). A test named ``file.py::name`` lives in another test
file; the rest are below. ``test_catalogue_points_at_real_tests`` keeps this table honest.
"""

# fmt: off
CATALOGUE = [
    # ---- empty or missing inputs
    ("reference folder missing, or without images/ or labels/", "InputError naming the path",
     "library", "test_references.py::test_folder_errors_name_the_path"),
    ("reference folder missing or empty", "exit 2, one line naming the folder, nothing written",
     "CLI", "test_cli.py::test_bad_inputs_name_the_culprit_and_write_nothing"),
    ("empty frames tensor [0,H,W,3]; empty or 0-byte video file", "InputError: empty batch / naming the file",
     "library", "test_empty_frames_and_video_files"),
    ("required option missing; missing video / embedding / --model path", "exit 2, one line, no traceback",
     "CLI", "test_cli_missing_inputs_one_line"),
    ("LoadReferences with nothing connected; empty IMAGE/MASK batch; no embedding or model chosen",
     "InputError naming the input (readable node error)", "nodes", "test_nodes_empty_and_missing_inputs"),
    ("label map with no foreground", "InputError naming the label file",
     "library", "test_references.py::test_bad_reference_contents"),
    # ---- mismatched sizes
    ("label PNG of another size than its image", "InputError naming the label file and both sizes",
     "library", "test_references.py::test_bad_reference_contents"),
    ("mask tensor of another size than its image", "InputError naming the mask",
     "library", "test_references.py::test_segment_masks_two_dimensional_and_threshold"),
    ("label PNG of another size than its image", "exit 2, one line naming the label file",
     "CLI", "test_cli.py::test_bad_inputs_name_the_culprit_and_write_nothing"),
    ("label_map / mask_N of another size or count than the images; TrackVote masks vs frames",
     "InputError naming the input", "nodes", "test_nodes_mismatched_sizes_and_counts"),
    ("frames of different sizes in one video folder", "InputError naming the first odd frame",
     "library", "test_video_io.py::test_folder_errors"),
    # ---- how masks may be coded
    ("label PNGs: palette, greyscale, 16-bit, 1-bit, grey saved as RGB(A)", "accepted: ids = indices/values",
     "library", "test_label_png.py::test_reads_grey_values"),
    ("label PNGs of mixed codings incl. colour-coded RGB (black background)",
     "accepted; ReferenceSet.notes say how each coding and colour -> id was read",
     "library", "test_label_codings_are_accepted_and_explained"),
    ("colour-coded RGB + 16-bit label, RGBA + greyscale images", "accepted; the CLI prints how labels were read",
     "CLI", "test_cli_label_codings_and_skipped_ids"),
    ("black-and-white masks: 0/255 (or 0 and any one value), 0/1, 1-bit", "one segment; the note says so",
     "library", "test_newcomer.py::test_black_and_white_masks_are_one_segment"),
    ("a 0/255 mask as the reference label", "learned as one segment; the CLI says how it read it",
     "CLI", "test_newcomer.py::test_cli_says_how_it_read_a_binary_mask"),
    ("a photo (colour or grey) given as a label", "InputError / exit 2: 'looks like a photo', naming the file",
     "CLI", "test_newcomer.py::test_a_photo_given_as_a_label_is_called_a_photo"),
    ("label_map IMAGE: palette colours, greyscale ids, 1-channel, colour-coded; one MASK per segment",
     "accepted; the coding is logged", "nodes", "test_nodes_label_map_codings"),
    # ---- ids and segment counts
    ("label ids that skip numbers (0, 2, 5)", "accepted: ids kept, unused ids are empty segments 'segment<i>'",
     "library", "test_skipped_label_ids_are_kept_as_empty_segments"),
    ("label ids that skip numbers", "accepted with a note naming the unused ids",
     "CLI", "test_cli_label_codings_and_skipped_ids"),
    ("more segments than an embedding holds (id > 75, 77+ names, embedding file with K > 77)",
     "InputError / EmbeddingError naming the file", "library", "test_too_many_segments"),
    ("label id above the limit in a reference folder", "exit 2, one line naming the label file",
     "CLI", "test_cli_too_many_segments"),
    ("label_map with more colours than segments; MaskToVideo segment index out of range",
     "InputError", "nodes", "test_nodes_too_many_segments"),
    # ---- settings out of range
    ("size not a multiple of the backbone's, too small or too large; window, overlap, weights, steps, epochs, "
     "seeds, vote window out of range", "exit 2, one line naming the option, nothing written",
     "CLI", "test_newcomer.py::test_segment_refuses_out_of_range_options"),
    ("the same in LearnConfig / SegmentConfig; node widgets", "InputError; widget min/max from the same ranges",
     "library", "test_newcomer.py::test_library_configs_and_node_widgets_share_one_range"),
    # ---- video length
    ("video of 1 frame", "one window of 1 frame, labels at the frame size",
     "library", "test_segment.py::test_any_length_streams_in_order"),
    ("video of 1 frame", "segmented; one label PNG", "CLI", "test_cli_one_frame_video"),
    ("one IMAGE [H,W,3] (a single frame, odd size)", "treated as T=1; masks at its size",
     "nodes", "test_nodes_single_odd_frame"),
    ("video of thousands of frames", "streamed window by window: flat memory, every frame once and in order",
     "library", "test_thousands_of_frames_stream_with_flat_memory"),
    ("video file of 1200 frames", "opened by demuxing, decoded forward with a bounded buffer",
     "library", "test_long_video_file_is_decoded_forward_with_a_bounded_buffer"),
    # ---- frame sizes
    ("odd frame sizes", "labels at the frame's own size", "library",
     "test_segment.py::test_non_square_odd_frames_give_labels_of_their_own_size"),
    ("tiny frames (1x1, 2x3)", "resized up to the working size; labels back at 1x1 / 2x3",
     "library", "test_tiny_and_large_frames"),
    ("large frame (1000x1400)", "processed at the working size; labels at full size",
     "library", "test_tiny_and_large_frames"),
    ("decompression-bomb image header (30000x30000)", "InputError naming the file, nothing decoded",
     "library", "test_decompression_bomb_images_are_refused"),
    ("odd-sized frames (37x23) in grey, RGBA and 16-bit PNGs", "segmented; labels 37x23; overlay padded",
     "CLI", "test_cli_odd_sized_mixed_mode_frames"),
    # ---- channels and depth
    ("greyscale, RGBA, 16-bit image files", "read as RGB 0..1 (alpha dropped, 16-bit scaled)",
     "library", "test_references.py::test_load_image_modes"),
    ("tensor frames / reference images with 1 or 4 channels, uint8 frames", "accepted as RGB 0..1",
     "library", "test_grey_rgba_and_uint8_tensors"),
    ("IMAGE with 1 or 4 channels into InvertVideo / LoadReferences", "accepted",
     "nodes", "test_nodes_grey_and_rgba_images"),
    # ---- NaN / inf
    ("NaN or inf in images, masks, label maps, frames, latents, embedding tokens",
     "InputError / EmbeddingError naming the input and frame", "library", "test_nan_and_inf_are_refused"),
    ("NaN or inf in IMAGE / MASK wires", "InputError naming the input and frame",
     "nodes", "test_nodes_refuse_nan_and_inf"),
    ("learning diverges (non-finite loss)", "SmiteError: one line, lower the learning rates",
     "library", "test_diverging_learning_is_a_clean_error"),
    # ---- embedding files
    ("garbage, truncated, foreign, mismatched-K, NaN embedding files", "EmbeddingError naming the file",
     "library", "test_embedding.py::test_garbage_truncated_and_foreign_files"),
    ("garbage / truncated / other-backbone embedding file", "exit 2, one line naming the file",
     "CLI", "test_cli.py::test_bad_inputs_name_the_culprit_and_write_nothing"),
    ("garbage embedding file; embedding of another backbone", "EmbeddingError / InputError",
     "nodes", "test_nodes_bad_embeddings"),
    ("arbitrary bytes, mutated files, random metadata", "only EmbeddingError (fuzzed)",
     "library", "test_fuzz.py::test_embedding_loader_random_bytes"),
    # ---- checkpoints
    ("SDXL, LoRA-like, inpainting-shaped, garbage, truncated checkpoints", "BackboneError naming the file",
     "library", "test_checkpoints.py::test_foreign_layouts"),
    (".ckpt holding a pickled object that would run code", "refused by torch.load(weights_only=True), no code run",
     "library", "test_pickled_checkpoint_payload_never_runs"),
    ("SDXL-like or garbage checkpoint as --model", "exit 2, one line naming the file",
     "CLI", "test_cli_unsupported_checkpoint"),
    ("unsupported checkpoint in the Model Loader", "BackboneError naming the file",
     "nodes", "test_nodes_unsupported_checkpoint"),
    ("SDXL / SD3 / Flux / unCLIP / inpainting MODEL into SMITE Model From Checkpoint",
     "BackboneError, one line: 'SMITE supports Stable Diffusion 1.x and 2.x checkpoints; this MODEL is <name> ...'",
     "nodes", "test_nodes.py::test_model_from_checkpoint_refuses_other_models_in_one_line"),
    ("a host's weights in fp8 or mixed dtypes, on several devices, missing or of another shape",
     "BackboneError; nothing stays bound", "library", "test_shared_weights.py::test_bad_host_inputs_are_refused"),
    # ---- paths
    ("model-folder names with '..', absolute paths, drives, NUL; lookups resolving outside",
     "InputError; nothing outside the model folders is read or written", "nodes",
     "test_nodes_names_cannot_leave_model_folders"),
    ("SaveEmbedding file names escaping models/smite", "InputError",
     "nodes", "test_nodes.py::test_learn_save_load_round_trip"),
    ("SaveEmbedding onto an existing file name", "a numbered new file unless overwrite is on; the name is output",
     "nodes", "test_nodes.py::test_learn_save_load_round_trip"),
    ("TrackVote's masks output used while the node is a guide (no frames/masks)",
     "the node using it stops with one line saying why (ExecutionBlocker)", "nodes",
     "test_nodes.py::test_trackvote_alone_deflickers_a_mask_video"),
    # ---- writes
    ("output exists", "refused without --overwrite, before any work", "CLI", "test_cli.py::test_learn_segment_eval"),
    ("output path is a folder where a file is written, or a file where a folder is", "exit 2, one line",
     "CLI", "test_cli_output_of_the_wrong_kind"),
    ("error or interrupt while writing", "nothing under the final name, no temporary left",
     "library", "test_video_io.py::test_writer_is_atomic_and_refuses_existing"),
    ("only safetensors written; nothing unpickled", "no torch.save/pickle/np.save in the code; outputs open "
     "with safe_open", "library", "test_only_safetensors_are_written"),
    ("disk full mid-run (Segment Video To Files, export_segmentation)", "one line 'writing failed (No space left on "
     "device); nothing was kept'; the partial folder removed", "nodes",
     "test_stream.py::test_a_full_disk_mid_run_removes_the_partial_folder"),
    ("output folder name with '/', '\\', '..', a drive or a leading '.'", "refused at validation and at run time, "
     "nothing written", "nodes", "test_stream.py::test_an_output_name_that_leaves_the_folder_is_refused"),
    ("VIDEO that cannot be decoded, has no frames, or changes frame size mid-way; an empty VideoFromComponents",
     "one line naming the video, nothing written", "nodes",
     "test_stream.py::test_bad_videos_are_one_line_and_leave_nothing"),
    ("a video file whose frame size changes mid-way", "InputError naming the frame and both sizes", "library",
     "test_stream.py::test_a_variable_frame_size_stops_the_cli_in_one_line_too"),
    ("part names with accents, non-Latin letters, Windows device names, 300 characters, repeats",
     "safe distinct file names, the mapping in segments.json", "library",
     "test_mattes.py::test_part_names_lose_accents_length_and_reserved_names"),
    ("matte frame numbers longer than --frame-padding; --matte-video naming no segment", "refused in one line "
     "before writing", "library", "test_mattes.py::test_frame_numbers_that_outgrow_the_padding_are_refused_before_writing"),
    # ---- interrupts and memory
    ("learning interrupted (with a learning-state file)", "resumable state saved; resuming gives the same result; "
     "another run's state refused", "library", "test_interrupted_learning_resumes_exactly"),
    ("Ctrl-C during `smite learn --checkpoint`", "exit 130, no output file, state kept; rerun resumes and "
     "removes it", "CLI", "test_cli_learn_checkpoint_interrupt_and_resume"),
    ("Ctrl-C during `smite segment`", "exit 130, no output folder, no temporaries", "CLI",
     "test_cli_interrupted_segmentation_writes_nothing"),
    ("ComfyUI cancel during learning", "stops at the next step", "nodes",
     "test_nodes.py::test_progress_interrupt_and_memory_release_inside_comfyui"),
    ("ComfyUI cancel during segmentation or TrackVote", "stops after the current UNet pass (tracker call); the bar "
     "moved after every pass", "nodes",
     "test_nodes.py::test_segmentation_progress_moves_every_unet_pass_and_cancel_stops_within_one"),
    ("cancel during learning or segmentation", "raised before the next UNet pass (within one pass)",
     "library", "test_newcomer.py::test_learning_stops_within_one_pass"),
    ("out of memory in a window", "retried with half the guide slice, then half the window; said; video "
     "finished; 1-frame failure is a clean error", "library", "test_out_of_memory_retries_with_smaller_slices"),
    ("out of memory while segmenting", "a 'note: out of memory ... retrying' line, then success",
     "CLI", "test_cli_out_of_memory_is_retried_and_said"),
    ("out of memory in InflatedUNetSegment", "retried, logged as a warning, masks for every frame",
     "nodes", "test_nodes_out_of_memory_is_retried"),
    # ---- fuzzing
    ("random bytes / mutated PNGs / random modes as label files; random segments.json",
     "only InputError (fuzzed)", "library", "test_fuzz.py::test_label_reader_random_images"),
]
# fmt: on

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import blob_reference  # noqa: E402
from graph_runner import load_pack  # noqa: E402
from PIL import Image  # noqa: E402

from smite_core.commands import cli  # noqa: E402
from smite_core.errors import BackboneError, EmbeddingError, InputError, SmiteError  # noqa: E402
from smite_core.io.label_png import save_label_png  # noqa: E402
from smite_core.io.references import (  # noqa: E402
    ReferenceSet,
    load_image,
    load_reference_folder,
    reference_set_from_label_maps,
    reference_set_from_segment_masks,
)
from smite_core.io.video_io import FrameSource, open_frames, open_video_writer  # noqa: E402
from smite_core.method.embedding import SegmentEmbedding  # noqa: E402
from smite_core.method.learn import LearnConfig, learn_embedding  # noqa: E402
from smite_core.method.segment import SegmentConfig, segment_frames, segment_stream, window_spans  # noqa: E402

TESTS = Path(__file__).resolve().parent
SIZE = 16  # working side of every real model call here (the smallest the tiny backbone takes)
PLAIN = dict(tracker="none", track_weight=0.0, lowpass_weight=0.0, guide_steps=0)  # no temporal stages: fast
PLAIN_ARGS = ["--tracker", "none", "--lowpass-weight", "0", "--track-weight", "0", "--guide-steps", "0",
              "--size", str(SIZE), "--device", "cpu"]


def test_catalogue_points_at_real_tests():
    here = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    listed = set()
    for entry in CATALOGUE:
        assert len(entry) == 4 and entry[2] in ("library", "CLI", "nodes"), entry
        ref = entry[3]
        if "::" in ref:
            file, name = ref.split("::")
            text = (TESTS / file).read_text()
            assert re.search(rf"^def {name}\(", text, re.M), f"{ref} does not exist"
        else:
            assert ref in here, f"{ref} is not a test in this file"
            listed.add(ref)
    unlisted = here - listed - {"test_catalogue_points_at_real_tests"}
    assert not unlisted, f"tests missing from the catalogue: {sorted(unlisted)}"


# ----------------------------------------------------------------------------- helpers and fixtures


def _png(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(array, torch.Tensor):
        array = (array.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def _refs_folder(root, size=32):
    image, labels = blob_reference(size)
    _png(root / "images" / "a.png", image)
    save_label_png(root / "labels" / "a.png", labels.numpy())
    return root


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.fixture(scope="module")
def embedding(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    return SegmentEmbedding(tokens=torch.randn(2, tiny_backbone.context_dim, generator=g),
                            names=["background", "a", "b"], backbone_fingerprint=tiny_backbone.fingerprint)


@pytest.fixture(scope="module")
def embedding_file(embedding, tmp_path_factory):
    return embedding.save(tmp_path_factory.mktemp("emb") / "e.safetensors")


@pytest.fixture
def fast_cli(monkeypatch, tiny_backbone):
    """The CLI with the session's tiny backbone instead of a fresh load per command (other models load as usual)."""
    import smite_core.model.backbone as backbone_module

    real = backbone_module.load_backbone

    def load(model="tiny", *args, **kwargs):
        return tiny_backbone if str(model) == "tiny" else real(model, *args, **kwargs)

    monkeypatch.setattr(backbone_module, "load_backbone", load)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def model(pack, tiny_backbone):
    from smite_pack_under_test.nodes.wires import SmiteModel

    cpu = torch.device("cpu")
    return SmiteModel(backbone=tiny_backbone, source="tiny", load_device=cpu, offload_device=cpu)


def _bomb_png(path, side=30000):
    """A valid 1x1 PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb's header)."""
    buf = Path(path)
    Image.new("L", (1, 1)).save(buf)
    data = bytearray(buf.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    buf.write_bytes(bytes(data))
    return buf


def _oom():
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return kind("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


# ----------------------------------------------------------------------------- empty or missing


def test_empty_frames_and_video_files(tmp_path, tiny_backbone, embedding):
    with pytest.raises(InputError, match="empty batch"):
        FrameSource.from_tensor(torch.zeros(0, 8, 8, 3))
    with pytest.raises(InputError, match="empty batch"):
        segment_frames(tiny_backbone, embedding, torch.zeros(0, 8, 8, 3), SegmentConfig(size=SIZE, **PLAIN))
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="zero.mp4"):
        open_frames(tmp_path / "zero.mp4")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "readme.txt").write_text("no frames here")
    with pytest.raises(InputError, match="frames: no frames"):
        open_frames(tmp_path / "frames")


def test_cli_missing_inputs_one_line(tmp_path, capsys, embedding_file):
    with pytest.raises(SystemExit) as info:
        cli.main(["learn", "--refs", str(tmp_path)])  # --out missing: argparse's usage error
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
    video = tmp_path / "video"
    _png(video / "0.png", torch.rand(8, 8, 3))
    assert cli.main(["segment", "--video", str(tmp_path / "gone"), "--embedding", str(embedding_file),
                     "--out", str(tmp_path / "o")]) == 2
    assert "gone" in _error_line(capsys)
    assert cli.main(["segment", "--video", str(video), "--embedding", str(tmp_path / "nope.safetensors"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "nope.safetensors" in _error_line(capsys)
    refs = _refs_folder(tmp_path / "refs")
    assert cli.main(["learn", "--refs", str(refs), "--out", str(tmp_path / "e.safetensors"),
                     "--model", str(tmp_path / "no_model.safetensors"), "--device", "cpu"]) == 2
    assert "no_model.safetensors" in _error_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "e.safetensors").exists()


def test_nodes_empty_and_missing_inputs(nodes, model):
    load_refs = nodes["SMITE_LoadReferences"]
    with pytest.raises(InputError, match="connect the reference images"):
        load_refs.load("")
    with pytest.raises(InputError, match="label map or at least one"):
        load_refs.load("", images=torch.rand(1, 8, 8, 3))
    with pytest.raises(InputError, match="images: empty"):
        nodes["SMITE_InvertVideo"].invert(model, torch.zeros(0, 8, 8, 3), size=SIZE)
    with pytest.raises(InputError, match="masks"):
        nodes["SMITE_TrackVote"].run(frames=torch.rand(2, 8, 8, 3), masks=torch.zeros(0, 8, 8))
    with pytest.raises(InputError, match="smite"):
        nodes["SMITE_LoadEmbedding"].load("")
    with pytest.raises(InputError, match="model: no backbone"):
        nodes["SMITE_ModelLoader"].load("", "fp32", False, "cpu")
    with pytest.raises(InputError, match="label_map: empty"):
        load_refs.load("", images=torch.rand(1, 8, 8, 3), label_map=torch.zeros(1, 0, 8, 3))


# ----------------------------------------------------------------------------- mismatched sizes


def test_nodes_mismatched_sizes_and_counts(nodes):
    load_refs = nodes["SMITE_LoadReferences"]
    images = torch.rand(2, 8, 8, 3)
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:5, 2:5] = 1
    with pytest.raises(InputError, match="mask 0: size 6x8 differs from reference 0"):
        load_refs.load("", images=images, mask_1=mask[:, :, :6])
    with pytest.raises(InputError, match="mask 1: 1 masks for 2 images"):
        load_refs.load("", images=images, mask_1=mask, mask_2=mask[:1])
    with pytest.raises(InputError, match="label_map: 1 label map for 2 images"):
        load_refs.load("", images=images, label_map=mask[:1, ..., None].expand(1, 8, 8, 3))
    with pytest.raises(InputError, match="label_map: size 8x6 differs"):
        load_refs.load("", images=images, label_map=mask[:, :6, :, None].expand(2, 6, 8, 3))
    with pytest.raises(InputError, match="masks: 3 masks for 2 frames"):
        nodes["SMITE_TrackVote"].run(frames=images, masks=torch.zeros(3, 8, 8))


# ----------------------------------------------------------------------------- mask codings


def _coded_folder(root):
    """a: colour-coded RGB label (red, green) + RGBA image; b: 16-bit label with ids 0, 2, 5 + grey image."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., :3] = np.random.default_rng(0).integers(0, 255, (16, 16, 3))
    _png(root / "images" / "a.png", rgba)
    coded = np.zeros((16, 16, 3), np.uint8)
    coded[2:6, 2:6] = (255, 0, 0)
    coded[8:12, 8:12] = (0, 255, 0)
    _png(root / "labels" / "a.png", coded)
    _png(root / "images" / "b.png", np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8))
    deep = np.zeros((16, 16), np.uint16)
    deep[1:4, 1:4] = 2
    deep[10:14, 3:7] = 5
    Image.fromarray(deep).save(root / "labels" / "b.png")
    return root


def test_label_codings_are_accepted_and_explained(tmp_path):
    refs = load_reference_folder(_coded_folder(tmp_path / "refs"))
    assert [tuple(i.shape) for i in refs.images] == [(16, 16, 3), (16, 16, 3)]
    notes = " | ".join(refs.notes)
    assert "colour-coded RGB" in notes and "16/32-bit greyscale" in notes
    assert "[0, 255, 0]=1" in notes and "[255, 0, 0]=2" in notes  # sorted RGB order
    assert int(refs.labels[0][3, 3]) == 2 and int(refs.labels[0][9, 9]) == 1
    root = tmp_path / "pal"
    _refs_folder(root)
    Image.fromarray(np.where(np.asarray(Image.open(root / "labels" / "a.png")) > 0, 255, 0).astype(np.uint8)).convert(
        "1").save(root / "labels" / "a.png")
    one_bit = load_reference_folder(root)
    assert "1-bit" in one_bit.notes[0] and one_bit.num_segments == 2


def test_cli_label_codings_and_skipped_ids(tmp_path, capsys, fast_cli):
    refs = _coded_folder(tmp_path / "refs")
    out = tmp_path / "e.safetensors"
    assert cli.main(["learn", "--refs", str(refs), "--out", str(out), "--steps", "1", "--size", str(SIZE),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "colour-coded RGB" in err and "colour -> id" in err
    assert "label id(s) 3, 4 appear in no reference" in err and "segment3, segment4" in err
    assert SegmentEmbedding.load(out).num_segments == 6


def test_nodes_label_map_codings(nodes, caplog):
    load_refs = nodes["SMITE_LoadReferences"]
    images = torch.rand(1, 6, 6, 3)
    grey = torch.zeros(1, 6, 6, 1)
    grey[0, 1:3, 1:3] = 2 / 255
    grey[0, 4:, 4:] = 5 / 255
    with caplog.at_level("INFO"):
        refs, _ = load_refs.load("", images=images, label_map=grey)  # 1-channel IMAGE, ids skip numbers
    assert refs.names == ["background"] + [f"segment{i}" for i in range(1, 6)] and refs.missing_ids() == [1, 3, 4]
    assert "greyscale ids" in caplog.text
    coded = torch.zeros(1, 6, 6, 3)
    coded[0, :2, :2] = torch.tensor([0.0, 0.0, 1.0])
    coded[0, 3:, 3:] = torch.tensor([1.0, 0.5, 0.0])
    caplog.clear()
    with caplog.at_level("INFO"):
        refs, _ = load_refs.load("hand, cup", images=images, label_map=coded)
    assert refs.names == ["background", "hand", "cup"] and int(refs.labels[0][0, 0]) == 1
    assert "colour-coded" in caplog.text and "[0, 0, 255]=1" in caplog.text


# ----------------------------------------------------------------------------- ids and segment counts


def test_skipped_label_ids_are_kept_as_empty_segments(tiny_backbone):
    image, labels = blob_reference(32)
    labels = torch.where(labels == 1, 2, torch.where(labels == 2, 5, 0))
    refs = reference_set_from_label_maps(image[None], labels[None], ["background", "a", "b"])
    assert refs.names == ["background", "a", "b", "segment3", "segment4", "segment5"]
    assert refs.missing_ids() == [1, 3, 4]
    emb = learn_embedding(tiny_backbone, refs, LearnConfig(steps=1, size=SIZE, train_kv=False))
    assert emb.num_segments == 6 and emb.tokens.shape[0] == 5


def test_too_many_segments(tmp_path):
    image = torch.rand(8, 8, 3)
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[0, 0] = 80
    with pytest.raises(InputError, match="label id 80 too large"):
        reference_set_from_label_maps(image, labels)
    with pytest.raises(InputError, match="77 segments, must be 1..76"):
        ReferenceSet([image], [torch.ones(8, 8, dtype=torch.long)], ["background"] + [f"p{i}" for i in range(76)],
                     ["r.png"])
    from safetensors.torch import save_file

    path = tmp_path / "big.safetensors"
    names = ["background"] + [f"p{i}" for i in range(77)]
    save_file({"tokens": torch.zeros(77, 8)}, str(path), metadata={
        "format": "smite-embedding", "format_version": "1", "num_segments": "78", "names": json.dumps(names),
        "backbone_fingerprint": "x", "meta": "{}"})
    with pytest.raises(EmbeddingError, match="big.safetensors"):
        SegmentEmbedding.load(path)


def test_cli_too_many_segments(tmp_path, capsys):
    root = _refs_folder(tmp_path / "refs")
    labels = np.zeros((32, 32), np.uint8)
    labels[4:8, 4:8] = 99
    labels[10:14, 4:8] = 1  # two ids besides the background: not a black-and-white mask
    save_label_png(root / "labels" / "a.png", labels, overwrite=True)
    assert cli.main(["learn", "--refs", str(root), "--out", str(tmp_path / "e.safetensors")]) == 2
    line = _error_line(capsys)
    assert "labels/a.png" in line and "99" in line


def test_nodes_too_many_segments(nodes, pack):
    many = torch.rand(1, 12, 12, 3)  # 144 colours: not a label map
    with pytest.raises(InputError, match="different colours"):
        nodes["SMITE_LoadReferences"].load("", images=torch.rand(1, 12, 12, 3), label_map=many)
    from smite_pack_under_test.nodes.wires import Segments

    segments = Segments(scores=torch.zeros(1, 3, 2, 2), labels=torch.zeros(1, 4, 4, dtype=torch.uint8),
                        names=["background", "a", "b"], frames=torch.zeros(1, 4, 4, 3))
    with pytest.raises(InputError, match="index 7 outside 0..2"):
        nodes["SMITE_MaskToVideo"].convert(segments, "7")


# ----------------------------------------------------------------------------- video length


def test_cli_one_frame_video(tmp_path, capsys, fast_cli, embedding_file):
    _png(tmp_path / "video" / "only.png", torch.rand(20, 24, 3))
    out = tmp_path / "seg"
    assert cli.main(["segment", "--video", str(tmp_path / "video"), "--embedding", str(embedding_file),
                     "--out", str(out), "--overlay", "gif", *PLAIN_ARGS]) == 0
    assert [p.name for p in (out / "labels").iterdir()] == ["00000.png"] and (out / "overlay.gif").is_file()


def test_nodes_single_odd_frame(nodes, model, embedding):
    frame = torch.rand(13, 7, 3)  # one [H,W,3] image, odd size
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, frame, size=SIZE)[0]
        segments = nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent)[0]
        (mask,) = nodes["SMITE_MaskToVideo"].convert(segments, "all")
        (painted,) = nodes["SMITE_Overlay"].paint(segments)
    assert latent.num_frames == 1 and mask.shape == (1, 13, 7) and painted.shape == (1, 13, 7, 3)


class _LongSource:
    """A lazy FrameSource stand-in of ``n`` tiny frames that records the ranges read."""

    def __init__(self, n):
        self.num_frames, self.height, self.width, self.reads = n, 4, 4, []

    def read(self, start, stop):
        self.reads.append((start, stop))
        return torch.full((stop - start, 4, 4, 3), 0.5)


def _stub_model(monkeypatch, log, fail=None):
    """Replace VAE encoding and the per-window UNet work of ``segment`` by cheap stand-ins.

    ``fail(span_length, config)``: when true the window raises an out-of-memory error instead.
    """
    import smite_core.method.segment as segment

    def encode(backbone, frames, size, batch=8):
        return torch.zeros(frames.shape[0], 4, 2, 2)

    def window(runner, frames, latents=None, carry=None):
        log.append((frames.shape[0], runner.config.window, runner.config.guide_slice))
        if fail is not None and fail(frames.shape[0], runner.config):
            raise _oom()
        return torch.rand(frames.shape[0], runner.embedding.num_segments, 2, 2, generator=runner.generator)

    monkeypatch.setattr(segment, "encode_frames", encode)
    monkeypatch.setattr(segment.WindowRunner, "run", window)


def test_thousands_of_frames_stream_with_flat_memory(tiny_backbone, embedding, monkeypatch):
    log = []
    _stub_model(monkeypatch, log)
    source = _LongSource(3000)
    config = SegmentConfig(window=16, overlap=8, size=SIZE, **PLAIN)
    seen = []
    for index, was in segment_stream(tiny_backbone, embedding, source, config):
        # every frame before the window being read has been handed out: at most one window is held
        assert len(seen) >= source.reads[-1][0]
        seen.append(index)
        assert was.shape == (3, 2, 2)
    assert seen == list(range(3000))
    assert source.reads == window_spans(3000, 16, 8)


def test_long_video_file_is_decoded_forward_with_a_bounded_buffer(tmp_path):
    frames = torch.linspace(0, 1, 1200)[:, None, None, None].expand(1200, 8, 8, 3).contiguous()
    with open_video_writer(tmp_path / "long.mp4", fps=30) as writer:
        for start in range(0, 1200, 100):
            writer.write(frames[start:start + 100])
    source = open_frames(tmp_path / "long.mp4")
    assert source.num_frames == 1200
    last = source.read(1184, 1200)
    assert last.shape == (16, 8, 8, 3) and float(last.mean()) > 0.9
    assert len(source._buffer) <= 16
    source.close()


# ----------------------------------------------------------------------------- frame sizes


def test_tiny_and_large_frames(tiny_backbone, embedding):
    config = SegmentConfig(window=4, overlap=1, size=SIZE, **PLAIN)
    from smite_core.method.was import labels_from_was

    for shape in ((2, 1, 1, 3), (1, 2, 3, 3), (1, 1000, 1400, 3)):
        frames = torch.rand(shape)
        was = segment_frames(tiny_backbone, embedding, frames, config)
        labels = labels_from_was(was, tuple(frames.shape[1:3]))
        assert labels.shape == shape[:3] and int(labels.max()) < 3


def test_decompression_bomb_images_are_refused(tmp_path):
    (tmp_path / "frames").mkdir()
    bomb = _bomb_png(tmp_path / "frames" / "bomb.png")
    with pytest.raises(InputError, match="bomb.png.*exceeds limit"):
        load_image(bomb)
    with pytest.raises(InputError, match="bomb.png"):
        open_frames(tmp_path / "frames")
    from smite_core.io.label_png import read_label_png

    with pytest.raises(InputError, match="bomb.png"):
        read_label_png(bomb)


def test_cli_odd_sized_mixed_mode_frames(tmp_path, capsys, fast_cli, embedding_file):
    video = tmp_path / "video"
    rgb = np.random.default_rng(0).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    _png(video / "f0.png", rgb[..., 0])  # greyscale
    _png(video / "f1.png", np.concatenate([rgb, np.full((23, 37, 1), 128, np.uint8)], 2))  # RGBA
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(video / "f2.png")  # 16-bit greyscale
    out = tmp_path / "seg"
    assert cli.main(["segment", "--video", str(video), "--embedding", str(embedding_file), "--out", str(out),
                     "--window", "3", "--overlap", "0", *PLAIN_ARGS]) == 0
    from smite_core.io.label_png import read_label_png

    labels = sorted((out / "labels").glob("*.png"))
    assert len(labels) == 3 and all(read_label_png(p).shape == (23, 37) for p in labels)
    assert open_frames(out / "overlay.mp4").num_frames == 3


# ----------------------------------------------------------------------------- channels


def test_grey_rgba_and_uint8_tensors():
    grey = torch.rand(2, 5, 6, 1)
    source = FrameSource.from_tensor(grey)
    assert torch.equal(source.read(0, 2), grey.expand(2, 5, 6, 3))
    rgba = torch.rand(1, 5, 6, 4)
    assert torch.equal(FrameSource.from_tensor(rgba).read(0, 1), rgba[..., :3])
    as_bytes = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    assert torch.equal(FrameSource.from_tensor(as_bytes).read(0, 1), torch.ones(1, 2, 2, 3))
    labels = torch.zeros(5, 6, dtype=torch.long)
    labels[1, 1] = 1
    refs = reference_set_from_label_maps(rgba, labels[None])
    assert refs.images[0].shape == (5, 6, 3)
    refs = reference_set_from_label_maps(grey[:1], labels[None])
    assert torch.equal(refs.images[0][..., 0], refs.images[0][..., 2])
    with pytest.raises(InputError, match="2 channels"):
        reference_set_from_label_maps(torch.rand(1, 5, 6, 2), labels[None])


def test_nodes_grey_and_rgba_images(nodes, model):
    mask = torch.zeros(1, 6, 6)
    mask[0, 1:4, 1:4] = 1
    refs, preview = nodes["SMITE_LoadReferences"].load("part", images=torch.rand(1, 6, 6, 4), mask_1=mask)
    assert refs.images[0].shape == (6, 6, 3) and preview.shape == (1, 6, 6, 3)
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, torch.rand(2, 6, 6, 1), size=SIZE)[0]
    assert latent.frames.shape == (2, 6, 6, 3)


# ----------------------------------------------------------------------------- NaN and inf


def test_nan_and_inf_are_refused(tiny_backbone, embedding):
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1, 1] = 1
    bad = torch.rand(1, 4, 4, 3)
    bad[0, 2, 2, 1] = float("nan")
    with pytest.raises(InputError, match="reference 0: image holds 1 NaN"):
        reference_set_from_label_maps(bad, labels)
    inf = torch.rand(1, 4, 4, 3)
    inf[0, 0, 0, 0] = float("inf")  # clamping would have hidden it as 1.0
    with pytest.raises(InputError, match="reference 0: image holds 1 NaN or infinite"):
        reference_set_from_label_maps(inf, labels)
    mask = labels.float()
    mask[0, 3, 3] = float("inf")
    with pytest.raises(InputError, match="mask 0 of reference 0"):
        reference_set_from_segment_masks(torch.rand(1, 4, 4, 3), [mask])
    with pytest.raises(InputError, match="label map holds NaN"):
        reference_set_from_label_maps(torch.rand(1, 4, 4, 3), torch.full((1, 4, 4), float("nan")))
    frames = torch.rand(5, 8, 8, 3)
    frames[3, 0, 0, 0] = float("inf")
    config = SegmentConfig(window=5, overlap=0, size=SIZE, **PLAIN)
    with pytest.raises(InputError, match="frames: frame 3 holds"):
        segment_frames(tiny_backbone, embedding, frames, config)
    latents = torch.zeros(5, 4, SIZE // tiny_backbone.latent_factor, SIZE // tiny_backbone.latent_factor)
    latents[4] = float("nan")
    with pytest.raises(InputError, match="latents: frame 4 holds"):
        segment_frames(tiny_backbone, embedding, frames.nan_to_num(posinf=1.0), config, latents=latents)
    broken = SegmentEmbedding(embedding.tokens.clone(), list(embedding.names), embedding.backbone_fingerprint)
    broken.tokens[0, 0] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        broken.check_backbone(tiny_backbone)


def test_nodes_refuse_nan_and_inf(nodes, model):
    frames = torch.rand(4, 6, 6, 3)
    frames[2, 1, 1] = float("nan")
    with pytest.raises(InputError, match="images: frame 2 holds 3 NaN"):
        nodes["SMITE_InvertVideo"].invert(model, frames, size=SIZE)
    masks = torch.zeros(4, 6, 6)
    masks[1, 0, 0] = float("-inf")
    with pytest.raises(InputError, match="masks: frame 1 holds"):
        nodes["SMITE_TrackVote"].run(frames=frames.nan_to_num(), masks=masks)
    with pytest.raises(InputError, match="frames: frame 2"):
        nodes["SMITE_TrackVote"].run(frames=frames, masks=masks.nan_to_num(neginf=0.0))
    load_refs = nodes["SMITE_LoadReferences"]
    with pytest.raises(InputError, match="reference 0: image"):
        load_refs.load("", images=frames[2:3], mask_1=masks[:1].nan_to_num(neginf=0.0) + 1)
    with pytest.raises(InputError, match="mask 0 of reference 0"):
        load_refs.load("", images=frames[:1], mask_1=masks[1:2])
    with pytest.raises(InputError, match="label_map: image 0"):
        load_refs.load("", images=frames[:1], label_map=frames[2:3])


def test_diverging_learning_is_a_clean_error(tiny_backbone, monkeypatch):
    import smite_core.method.learn as learn

    image, labels = blob_reference(32)
    refs = reference_set_from_label_maps(image[None], labels[None])
    real = learn.segmentation_losses
    monkeypatch.setattr(learn, "segmentation_losses",  # a loss that blows up, as a too-high learning rate makes it
                        lambda *args: {**real(*args), "ce": torch.tensor(float("inf"))})
    with pytest.raises(SmiteError, match="learning diverged at step 0"):
        learn_embedding(tiny_backbone, refs, LearnConfig(steps=1, size=SIZE, train_kv=False))


# ----------------------------------------------------------------------------- embeddings and checkpoints


def test_nodes_bad_embeddings(nodes, model, embedding, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(EmbeddingError, match="garbage.safetensors"):
        nodes["SMITE_LoadEmbedding"].load(str(garbage))
    other = embedding.to("cpu")
    other.backbone_fingerprint = "f" * 16
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, torch.rand(1, 8, 8, 3), size=SIZE)[0]
    with pytest.raises(EmbeddingError, match="another backbone"):
        nodes["SMITE_InflatedUNetSegment"].segment(model, other, latent)


class _Payload:
    """Unpickling this would create the file named in ``MARKER`` (a stand-in for arbitrary code)."""

    MARKER = None

    def __reduce__(self):
        return (Path.touch, (Path(self.MARKER),))


def test_pickled_checkpoint_payload_never_runs(tmp_path):
    from smite_core.model.checkpoints import load_checkpoint
    from smite_core.temporal.tracking import TrackerError, read_state_dict

    _Payload.MARKER = str(tmp_path / "code_ran")
    for name in ("evil.ckpt", "evil.pth"):
        torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _Payload()}, str(tmp_path / name))
    with pytest.raises(BackboneError, match="evil.ckpt.*weights_only"):
        load_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(TrackerError, match="evil.pth"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "code_ran").exists()


def _sdxl_like(path):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "conditioner.embedders.0.transformer.text_model.x": torch.zeros(2)}, str(path))
    return path


def test_cli_unsupported_checkpoint(tmp_path, capsys):
    refs = _refs_folder(tmp_path / "refs")
    for path, words in ((_sdxl_like(tmp_path / "xl.safetensors"), "SDXL"),
                        (tmp_path / "junk.ckpt", "weights_only")):
        if not path.exists():
            path.write_bytes(os.urandom(500))
        assert cli.main(["learn", "--refs", str(refs), "--out", str(tmp_path / "e.safetensors"), "--model",
                         str(path), "--device", "cpu"]) == 2
        line = _error_line(capsys)
        assert path.name in line and words in line
    assert not (tmp_path / "e.safetensors").exists()


def test_nodes_unsupported_checkpoint(nodes, tmp_path):
    path = _sdxl_like(tmp_path / "xl.safetensors")
    with pytest.raises(BackboneError, match="xl.safetensors.*SDXL"):
        nodes["SMITE_ModelLoader"].load(str(path), "fp32", False, "cpu")


# ----------------------------------------------------------------------------- paths


@pytest.fixture
def comfy_folders(monkeypatch, tmp_path):
    """ComfyUI's folder_paths with a deliberately naive get_full_path (joins without any checks), so the
    pack's own checks are what keeps names inside the model folders."""
    roots = {"smite": [str(tmp_path / "models" / "smite")], "checkpoints": [str(tmp_path / "models" / "ckpt")],
             "diffusers": [str(tmp_path / "models" / "diffusers")]}
    for paths in roots.values():
        Path(paths[0]).mkdir(parents=True)
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.get_folder_paths = lambda name: list(roots[name])
    fp.get_filename_list = lambda name: sorted(os.listdir(roots[name][0]))

    def get_full_path(name, filename):
        path = os.path.join(roots[name][0], filename)
        return path if os.path.isfile(path) else None

    fp.get_full_path = get_full_path
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    for name, module in (("folder_paths", fp), ("comfy.model_management", mm)):
        monkeypatch.setitem(sys.modules, name, module)
    return tmp_path


def test_nodes_names_cannot_leave_model_folders(nodes, comfy_folders, embedding):
    from smite_pack_under_test.nodes import host
    from smite_pack_under_test.nodes.model import resolve_model

    secret = comfy_folders / "secret.safetensors"
    embedding.save(secret)
    (comfy_folders / "outside").mkdir()
    os.symlink(secret, comfy_folders / "models" / "smite" / "linked.safetensors")  # a user's symlink: allowed
    assert nodes["SMITE_LoadEmbedding"].load("linked.safetensors")[0].names == embedding.names
    load = nodes["SMITE_LoadEmbedding"]
    for name in ("../../secret.safetensors", str(secret), "sub/../../../secret.safetensors",
                 "..\\..\\secret.safetensors", "C:/secret.safetensors", "a\x00b.safetensors"):
        with pytest.raises(InputError, match="not a name inside ComfyUI's 'smite' model folders"):
            load.load(name)
    with pytest.raises(InputError, match="not a name inside"):
        resolve_model("checkpoints/../../secret.safetensors")
    with pytest.raises(InputError, match="not a name inside"):
        resolve_model("diffusers/../../outside")
    with pytest.raises(InputError, match="not a name inside"):
        nodes["SMITE_ModelLoader"].load("checkpoints//etc/passwd", "fp32", False, "cpu")

    def leaky(name, filename):  # a host lookup that lets a name escape: the result is still checked
        return str(secret)

    sys.modules["folder_paths"].get_full_path = leaky
    with pytest.raises(InputError, match="resolves outside"):
        host.full_path("smite", "innocent.safetensors")
    with pytest.raises(InputError, match="NUL"):
        nodes["SMITE_SaveEmbedding"].save(embedding, "a\x00b", directory=str(comfy_folders / "models" / "smite"))


# ----------------------------------------------------------------------------- writes


def test_cli_output_of_the_wrong_kind(tmp_path, capsys, embedding_file):
    refs = _refs_folder(tmp_path / "refs")
    (tmp_path / "dir.safetensors").mkdir()
    assert cli.main(["learn", "--refs", str(refs), "--out", str(tmp_path / "dir.safetensors"), "--overwrite"]) == 2
    assert "is a folder" in _error_line(capsys)
    _png(tmp_path / "video" / "0.png", torch.rand(8, 8, 3))
    (tmp_path / "file_out").write_text("keep me")
    assert cli.main(["segment", "--video", str(tmp_path / "video"), "--embedding", str(embedding_file),
                     "--out", str(tmp_path / "file_out"), "--overwrite"]) == 2
    assert "is a file" in _error_line(capsys)
    assert (tmp_path / "file_out").read_text() == "keep me"


def test_only_safetensors_are_written(tmp_path, embedding):
    root = TESTS.parent
    writers = re.compile(r"torch\.save\(|pickle\.dump|\.to_pickle\(|joblib\.dump|np\.savez")
    for path in list((root / "smite_core").rglob("*.py")) + list((root / "nodes").rglob("*.py")):
        text = path.read_text()
        assert not writers.search(text), f"{path}: writes tensors other than as safetensors"
        for call in re.findall(r"np\.save\((.*?)\)\n", text, re.S):  # ground-truth arrays only, never pickled
            assert "allow_pickle=False" in call, f"{path}: np.save without allow_pickle=False"
    from safetensors import safe_open

    path = embedding.save(tmp_path / "e.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "smite-embedding"


# ----------------------------------------------------------------------------- interrupts


def _rewrite_metadata(path, **changes):
    """Rewrite some metadata fields of a safetensors file (as another SMITE version wrote it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**metadata, **changes})


class _StopAt:
    """A progress callback that raises ``exc`` when ``done`` reaches ``at``."""

    def __init__(self, at, exc=KeyboardInterrupt):
        self.at, self.exc = at, exc

    def __call__(self, done, total):
        if done == self.at:
            raise self.exc()


def test_interrupted_learning_resumes_exactly(tiny_backbone, tmp_path):
    image, labels = blob_reference(32)
    refs = reference_set_from_label_maps(image[None], labels[None], ["background", "disk", "corner"])
    config = LearnConfig(steps=3, token_phase=0.34, lr_kv=1e-3, size=SIZE, seed=1)  # step 0 tokens, 1-2 with K/V
    whole = learn_embedding(tiny_backbone, refs, config)
    state = tmp_path / "state.safetensors"
    notes, saved = [], []

    def saved_step(step, losses):
        from safetensors import safe_open

        with safe_open(str(state), framework="pt") as f:
            saved.append(int(f.metadata()["step"]))

    with pytest.raises(KeyboardInterrupt):  # stopped after step 2: K/V and their Adam moments are in play
        learn_embedding(tiny_backbone, refs, config, on_step=saved_step, progress=_StopAt(2), checkpoint=state,
                        checkpoint_every=1, say=notes.append)
    assert saved == [1, 2] and "after step 2 of 3" in notes[-1]  # saved every step
    resumed = learn_embedding(tiny_backbone, refs, config, checkpoint=state, say=notes.append)
    assert "resuming" in notes[-1] and "after step 2 of 3" in notes[-1]
    assert torch.equal(resumed.tokens, whole.tokens)
    assert resumed.kv.keys() == whole.kv.keys() and all(torch.equal(resumed.kv[k], whole.kv[k]) for k in whole.kv)

    other = LearnConfig(steps=1, size=SIZE, seed=2, train_kv=False)
    with pytest.raises(InputError, match="state.safetensors: learning state of another run"):
        learn_embedding(tiny_backbone, refs, other, checkpoint=state)
    learn_embedding(tiny_backbone, refs, other, checkpoint=state, replace_other_checkpoint=True, say=notes.append)
    assert "another run" in notes[-1] and "starting afresh" in notes[-1]
    state.unlink(missing_ok=True)
    with pytest.raises(KeyboardInterrupt):
        learn_embedding(tiny_backbone, refs, config, progress=_StopAt(2), checkpoint=state, checkpoint_every=1)
    _rewrite_metadata(state, format_version="1")  # a state saved by SMITE 0.1 (another WAS): never resumed
    with pytest.raises(InputError, match="state.safetensors: learning state of format '1', made by another SMITE"):
        learn_embedding(tiny_backbone, refs, config, checkpoint=state)
    notes.clear()
    again = learn_embedding(tiny_backbone, refs, config, checkpoint=state, replace_other_checkpoint=True,
                            say=notes.append)
    assert any("another SMITE version" in n and "starting afresh" in n for n in notes), notes
    assert torch.equal(again.tokens, whole.tokens)  # learned from the start, not from the old state
    foreign = whole.save(tmp_path / "emb.safetensors")
    before = foreign.read_bytes()
    with pytest.raises(InputError, match="not a SMITE learning state"):
        learn_embedding(tiny_backbone, refs, config, checkpoint=foreign, replace_other_checkpoint=True)
    assert foreign.read_bytes() == before


def test_cli_learn_checkpoint_interrupt_and_resume(tmp_path, capsys, fast_cli, monkeypatch, tiny_backbone):
    refs = _refs_folder(tmp_path / "refs")
    out, state = tmp_path / "e.safetensors", tmp_path / "state.safetensors"
    args = ["learn", "--refs", str(refs), "--out", str(out), "--steps", "2", "--size", str(SIZE), "--device", "cpu",
            "--checkpoint", str(state), "--checkpoint-every", "0"]
    monkeypatch.setattr(cli, "_progress_bar", lambda desc, total, unit: _StopAt(1))
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "after step 1 of 2" in err
    assert not out.exists() and state.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refs", "state.safetensors"]  # no temporaries
    monkeypatch.setattr(cli, "_progress_bar", lambda desc, total, unit: (lambda done, total: None))
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "after step 1" in err and not state.exists()
    config = LearnConfig.for_backbone(tiny_backbone, steps=2, seed=0, size=SIZE)
    whole = learn_embedding(tiny_backbone, load_reference_folder(refs), config)
    assert torch.equal(SegmentEmbedding.load(out).tokens, whole.tokens.half().float())
    same = str(tmp_path / "same.safetensors")
    assert cli.main(["learn", "--refs", str(refs), "--out", same, "--checkpoint", same]) == 2
    assert "own file" in _error_line(capsys)


def test_cli_interrupted_segmentation_writes_nothing(tmp_path, capsys, fast_cli, monkeypatch, embedding_file):
    for t in range(3):
        _png(tmp_path / "video" / f"{t}.png", torch.rand(8, 8, 3))
    monkeypatch.setattr(cli, "_progress_bar", lambda desc, total, unit: _StopAt(2))
    assert cli.main(["segment", "--video", str(tmp_path / "video"), "--embedding", str(embedding_file),
                     "--out", str(tmp_path / "seg"), "--window", "1", "--overlap", "0", *PLAIN_ARGS]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video"]


# ----------------------------------------------------------------------------- out of memory


def test_out_of_memory_retries_with_smaller_slices(tiny_backbone, embedding, monkeypatch):
    log = []
    _stub_model(monkeypatch, log, fail=lambda n, config: config.guide_slice > 1 or n > 3)
    config = SegmentConfig(window=8, overlap=4, size=SIZE, tracker="none", lowpass_weight=1.0, guide_steps=1,
                           guide_slice=4)
    said = []
    got = list(segment_stream(tiny_backbone, embedding, _LongSource(20), config, say=said.append))
    assert [i for i, _ in got] == list(range(20)) and all(torch.isfinite(w).all() for _, w in got)
    assert said[:2] == ["out of memory on frames 0-7; retrying with guidance sub-slices of 2 frame(s)",
                        "out of memory on frames 0-7; retrying with guidance sub-slices of 1 frame(s)"]
    assert said[2] == "out of memory on frames 0-7; retrying with windows of 4 frame(s), overlap 2"
    assert len(said) == 4 and "windows of 2" in said[3]
    assert all(n <= 3 for n, window, slice_ in log[4:])
    _stub_model(monkeypatch, log, fail=lambda n, config: n > 2)
    with pytest.warns(RuntimeWarning, match="out of memory"):  # without say: a warning
        list(segment_stream(tiny_backbone, embedding, _LongSource(3), SegmentConfig(window=3, overlap=0, **PLAIN)))

    _stub_model(monkeypatch, log, fail=lambda n, config: True)
    with pytest.raises(SmiteError, match="out of memory on frame 0 even with 1-frame windows"):
        list(segment_stream(tiny_backbone, embedding, _LongSource(4), SegmentConfig(window=4, overlap=1, **PLAIN),
                            say=said.append))
    import smite_core.method.segment as segment

    def other_error(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(segment.WindowRunner, "run", other_error)
    said.clear()
    with pytest.raises(RuntimeError, match="shape mismatch"):  # only out-of-memory is retried
        list(segment_stream(tiny_backbone, embedding, _LongSource(4), SegmentConfig(window=4, overlap=1, **PLAIN),
                            say=said.append))
    assert said == []


def _oom_once_above(monkeypatch, frames_limit):
    """Make the real window runner run out of memory (once) on windows longer than ``frames_limit``."""
    import smite_core.method.segment as segment

    real = segment.WindowRunner.run
    calls = {"failed": 0}

    def window(runner, frames, *args, **kwargs):
        if frames.shape[0] > frames_limit and not calls["failed"]:
            calls["failed"] += 1
            raise RuntimeError("CUDA error: out of memory (injected by the test)")
        return real(runner, frames, *args, **kwargs)

    monkeypatch.setattr(segment.WindowRunner, "run", window)
    return calls


def test_cli_out_of_memory_is_retried_and_said(tmp_path, capsys, fast_cli, monkeypatch, embedding_file):
    for t in range(4):
        _png(tmp_path / "video" / f"{t}.png", torch.rand(8, 8, 3))
    calls = _oom_once_above(monkeypatch, 2)
    out = tmp_path / "seg"
    assert cli.main(["segment", "--video", str(tmp_path / "video"), "--embedding", str(embedding_file),
                     "--out", str(out), "--window", "4", "--overlap", "0", "--overlay", "none", *PLAIN_ARGS]) == 0
    assert calls["failed"] == 1
    err = capsys.readouterr().err
    assert "note: out of memory on frames 0-3; retrying with windows of 2 frame(s), overlap 0" in err
    assert len(list((out / "labels").glob("*.png"))) == 4


def test_nodes_out_of_memory_is_retried(nodes, model, embedding, monkeypatch, caplog):
    calls = _oom_once_above(monkeypatch, 1)
    with torch.inference_mode():
        latent = nodes["SMITE_InvertVideo"].invert(model, torch.rand(3, 8, 8, 3), size=SIZE)[0]
        with caplog.at_level("WARNING"):
            segments = nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent, window=3, overlap=1)[0]
    assert calls["failed"] == 1 and segments.labels.shape == (3, 8, 8)
    assert "out of memory on frames 0-2; retrying with windows of 1 frame(s)" in caplog.text
