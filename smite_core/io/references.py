"""Stage 1 - the annotated reference images that define the segments (paper Section 3).

A :class:`ReferenceSet` holds N reference images (float32 ``[H,W,3]`` in 0..1, sizes may differ),
their label maps (int64 ``[H,W]``, ids 0..K-1, 0 = background) and the K segment names. It comes
from a folder (:func:`load_reference_folder`) or from tensors given by the ComfyUI nodes
(:func:`reference_set_from_label_maps`, :func:`reference_set_from_segment_masks`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..checks import require_finite
from ..errors import InputError, reason
from .label_png import describe_label_png, is_color_label_png, read_color_label_png, read_label_png

MAX_SEGMENTS = 76  # background + 75 learned tokens fit in CLIP's 77-token context with BOS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_BACKGROUND_ALIASES = ("background", "bg", "_background_", "__background__")


def natural_key(text: str) -> list:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compared as numbers)."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", text) if part]


# ----------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file -> float32 ``[H,W,3]`` in 0..1.

    EXIF orientation is applied; greyscale is replicated to 3 channels, alpha is dropped,
    palette images are expanded and 16-bit images are scaled by 1/65535.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _image_to_array(image)
    except InputError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise InputError(f"{path}: cannot read image ({reason(err)})") from err
    return torch.from_numpy(np.ascontiguousarray(array))


def _image_to_array(image: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 ``[H,W,3]`` in 0..1."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb / 255.0


# ----------------------------------------------------------------------------- the set


@dataclass
class ReferenceSet:
    """N annotated reference images and the K segment names.

    ``images[i]``: float32 ``[H_i,W_i,3]`` in 0..1; ``labels[i]``: int64 ``[H_i,W_i]`` with ids
    0..K-1; ``names``: K names, ``names[0] == "background"``; ``files[i]``: what to name in
    messages (the label file, or ``"reference i"`` for tensors); ``notes``: how the label files were
    read (for the user; see :func:`load_reference_folder`). Validated on construction.
    """

    images: list[torch.Tensor]
    labels: list[torch.Tensor]
    names: list[str]
    files: list[str]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.validate()

    @property
    def num_segments(self) -> int:
        """K, the number of segments including the background."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.images)

    def missing_ids(self) -> list[int]:
        """Segment ids 1..K-1 that no label map uses (label ids that skip numbers).

        They are kept (so outputs use the same ids as the inputs) and learned as empty segments:
        the losses push them to cover nothing.
        """
        seen: set[int] = set()
        for labels in self.labels:
            seen.update(int(v) for v in torch.unique(labels))
        return [i for i in range(1, self.num_segments) if i not in seen]

    def validate(self) -> None:
        """Raise InputError (naming the reference at fault) unless the set is consistent."""
        n = len(self.images)
        if n == 0:
            raise InputError("reference set: no reference images given")
        if len(self.labels) != n or len(self.files) != n:
            raise InputError(
                f"reference set: {n} images but {len(self.labels)} label maps "
                f"and {len(self.files)} file names"
            )
        k = len(self.names)
        if not 1 <= k <= MAX_SEGMENTS:
            raise InputError(f"reference set: {k} segments, must be 1..{MAX_SEGMENTS}")
        if self.names[0] != "background":
            raise InputError(f"reference set: first segment name is {self.names[0]!r}, not 'background'")
        for image, labels, name in zip(self.images, self.labels, self.files):
            _check_pair(image, labels, name, k)


def _check_pair(image: torch.Tensor, labels: torch.Tensor, name: str, k: int) -> None:
    """Check one reference image / label map pair (shapes, dtypes, ids, foreground)."""
    if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == torch.float32):
        raise InputError(f"{name}: reference image must be a float32 [H,W,3] tensor")
    if not (isinstance(labels, torch.Tensor) and labels.ndim == 2 and labels.dtype == torch.int64):
        raise InputError(f"{name}: label map must be an int64 [H,W] tensor")
    if not bool(torch.isfinite(image).all()):
        raise InputError(f"{name}: reference image holds NaN or infinite values")
    if tuple(labels.shape) != tuple(image.shape[:2]):
        raise InputError(
            f"{name}: label map is {labels.shape[1]}x{labels.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise InputError(f"{name}: label ids {low}..{high} outside 0..{k - 1}")
    if high == 0:
        raise InputError(f"{name}: label map has no foreground (every pixel is background)")


def complete_names(names: list[str] | None, num_ids: int) -> list[str]:
    """Segment names for ids 0..K-1, K = max(len(names incl. background), num_ids).

    If the first given name is a background alias (background/bg/_background_/__background__,
    any case) it becomes ``"background"``; otherwise the list names the foreground ids 1.. and
    ``"background"`` is put in front. Missing names become ``"segment<i>"``.
    """
    names = [str(n).strip() for n in (names or [])]
    if names and names[0].lower() in _BACKGROUND_ALIASES:
        names = ["background"] + names[1:]
    else:
        names = ["background"] + names
    k = max(len(names), num_ids)
    return names + [f"segment{i}" for i in range(len(names), k)]


# ----------------------------------------------------------------------------- folders


def _list_images(folder: Path) -> dict[str, Path]:
    """Map stem -> image path of the supported images in ``folder`` (hidden files ignored)."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if entry.stem in found:
            raise InputError(f"{entry}: two images named {entry.stem!r} in {folder}")
        found[entry.stem] = entry
    return found


def _list_labels(folder: Path) -> dict[str, Path]:
    """Map stem -> label PNG path in ``folder``."""
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png"}


def _parse_colors(raw, source: Path) -> dict[tuple[int, int, int], int]:
    """``[[r,g,b], ...]`` (index = id) -> {colour: id}."""
    if not isinstance(raw, list):
        raise InputError(f"{source}: 'colors' must be a list of [r, g, b]")
    table: dict[tuple[int, int, int], int] = {}
    for i, colour in enumerate(raw):
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
            raise InputError(f"{source}: colors[{i}] must be [r, g, b] with values 0..255")
        key = tuple(colour)
        if key in table:
            raise InputError(f"{source}: colour {list(key)} listed twice in 'colors'")
        table[key] = i
    return table


def read_segments_json(path: str | os.PathLike) -> tuple[list[str], dict | None]:
    """Read ``segments.json`` -> (names, colour map or None).

    Accepted: a JSON list of names, or ``{"segments": [...], "colors": [[r,g,b], ...]}`` where
    ``colors[i]`` is the colour of id ``i`` in colour-coded label PNGs (``colors`` optional).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read segments file ({reason(err)})") from err
    colors = None
    if isinstance(data, dict):
        if "colors" in data:
            colors = _parse_colors(data["colors"], path)
        data = data.get("segments", [])
    if not (isinstance(data, list) and all(isinstance(n, str) for n in data)):
        raise InputError(f"{path}: expected a list of segment names or {{\"segments\": [...]}}")
    return data, colors


def _auto_colors(paths: list[Path]) -> dict[tuple[int, int, int], int]:
    """Ids 1.. for the distinct non-black colours of the given colour-coded labels, sorted. A file with
    more colours than segments can have is refused as what it most likely is: a photo."""
    found: set[tuple[int, int, int]] = set()
    for path in paths:
        colours = {tuple(int(v) for v in c) for c in np.unique(read_color_label_png(path).reshape(-1, 3), axis=0)}
        if len(colours - {(0, 0, 0)}) > MAX_SEGMENTS - 1:
            raise InputError(f"{path}: {len(colours)} different colours: this looks like a photo, not a label map "
                             "(a label paints each segment in one flat colour, black = background)")
        found.update(colours)
    found.discard((0, 0, 0))
    return {colour: i + 1 for i, colour in enumerate(sorted(found))}


def _binary_masks(maps: list[np.ndarray]) -> tuple[list[np.ndarray], str | None]:
    """Masks whose only values, over all files, are 0 and one value v > 1 (a 0/255 mask, the most common
    mask format) are one segment: v becomes id 1. Returns the maps and a note saying so (or None)."""
    values = set()
    for m in maps:
        values.update(np.unique(m).tolist())
        if len(values) > 2:
            return maps, None
    other = sorted(values - {0})
    if len(other) != 1 or other[0] < 2:
        return maps, None
    note = f"binary masks: value {other[0]} read as one segment (id 1), 0 as background"
    return [(m == other[0]).astype(np.int64) for m in maps], note


def _read_labels(paths: list[Path], colors: dict | None, names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """Read every label file; colour-coded ones via ``colors`` or automatic colour ids; black-and-white
    masks as one segment unless ``names`` (from segments.json) name more than one.

    Returns the id maps and notes saying how the files were read (codings and colour -> id table).
    """
    codings: dict[str, int] = {}
    for p in paths:
        coding = describe_label_png(p)
        codings[coding] = codings.get(coding, 0) + 1
    notes = ["label files: " + ", ".join(f"{n} {coding}" for coding, n in codings.items())]
    if colors is not None:
        maps = [read_label_png(p, colors=colors) for p in paths]
        table, origin = colors, "segments.json 'colors'"
    else:
        coded = [p for p in paths if is_color_label_png(p)]
        table = _auto_colors(coded) if coded else None
        maps = [read_label_png(p, colors=table if p in coded else None) for p in paths]
        origin = "sorted RGB order"
    if table and any("colour-coded" in c for c in codings):
        pairs = ", ".join(f"{list(colour)}={i}" for colour, i in sorted(table.items(), key=lambda kv: kv[1]))
        notes.append(f"colour -> id ({origin}; black = background): {pairs}")
    elif table is None and len(complete_names(names, 0)) <= 2:  # names with or without the background
        maps, binary = _binary_masks(maps)
        notes += [binary] if binary else []
    return maps, notes


def load_reference_folder(path: str | os.PathLike) -> ReferenceSet:
    """Load ``DIR/images/<stem>.{png,jpg,jpeg,webp,bmp}`` + ``DIR/labels/<stem>.png``.

    Pairs are matched by stem and naturally sorted by stem; 1-10 references are typical (more
    are accepted). Label PNGs hold ids (palette/greyscale/16-bit), or are colour-coded RGB.
    Optional ``DIR/segments.json``: a list of names (index = id) or
    ``{"segments": [...], "colors": [[r,g,b], ...]}`` (``colors[i]`` = colour of id i).
    Without ``colors``, colour-coded labels get ids 1.. for their distinct non-black colours
    across all references, sorted lexicographically by (r, g, b). K = max(len(names), max id+1);
    unnamed ids become ``"segment<i>"``; see :func:`complete_names` for the background name.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: reference folder does not exist")
    image_dir, label_dir = root / "images", root / "labels"
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: folder missing (expected images/ and labels/ in {root})")
    images = _list_images(image_dir)
    if not images:
        raise InputError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not label_dir.is_dir():
        raise InputError(f"{label_dir}: folder missing (expected a label PNG per image)")
    labels = _list_labels(label_dir)
    for stem in sorted(images, key=natural_key):
        if stem not in labels:
            raise InputError(f"{images[stem]}: no label file {label_dir / (stem + '.png')}")
    for stem in sorted(labels, key=natural_key):
        if stem not in images:
            raise InputError(f"{labels[stem]}: label without an image {stem}.* in {image_dir}")

    names, colors = [], None
    if (root / "segments.json").exists():
        names, colors = read_segments_json(root / "segments.json")
    stems = sorted(images, key=natural_key)
    label_paths = [labels[s] for s in stems]
    maps, notes = _read_labels(label_paths, colors, names)
    tensors = [load_image(images[s]) for s in stems]
    num_ids = max(int(m.max()) for m in maps) + 1
    _check_segment_count(num_ids, maps, label_paths)
    all_names = complete_names(names, num_ids)
    if len(all_names) > MAX_SEGMENTS:
        raise InputError(f"{root / 'segments.json'}: {len(all_names)} segments named, at most {MAX_SEGMENTS} "
                         "(background included)")
    return ReferenceSet(
        images=tensors,
        labels=[torch.from_numpy(m.astype(np.int64)) for m in maps],
        names=all_names,
        files=[str(p) for p in label_paths],
        notes=notes,
    )


def _check_segment_count(num_ids: int, maps: list, files: list) -> None:
    """Name the reference whose ids exceed the segment limit, and say what the file most likely is."""
    if num_ids <= MAX_SEGMENTS:
        return
    worst = int(np.argmax([int(m.max()) for m in maps]))
    levels = len(np.unique(maps[worst]))
    if levels > MAX_SEGMENTS:
        raise InputError(f"{files[worst]}: {levels} different grey levels: this looks like a photo or a soft "
                         "(anti-aliased) mask, not a label map (ids 0 = background, 1, 2, ... one per segment)")
    raise InputError(
        f"{files[worst]}: label id {num_ids - 1} too large (at most {MAX_SEGMENTS - 1} segments besides the "
        "background; ids are 0 = background, 1, 2, ...; a 0/255 mask is read as one segment when every label "
        "file holds only 0 and that one value)"
    )


# ----------------------------------------------------------------------------- tensors


def _as_list(batch, ndim_item: int, what: str) -> list[torch.Tensor]:
    """A tensor ``[N,...]`` / single item ``[...]`` / list of items -> list of tensors."""
    if isinstance(batch, (list, tuple)):
        items = [torch.as_tensor(x) for x in batch]
    else:
        batch = torch.as_tensor(batch)
        items = [batch] if batch.ndim == ndim_item else list(batch)
    for i, item in enumerate(items):
        if item.ndim != ndim_item:
            raise InputError(f"reference {i}: {what} has shape {tuple(item.shape)}")
    return items


def _as_images(images) -> list[torch.Tensor]:
    """Images ``[N,H,W,C]`` (or a list of ``[H,W,C]``) -> float32 ``[H,W,3]`` in 0..1.

    C = 3 (RGB), 1 (grey: replicated), 4 (RGBA: alpha dropped); integer images are read as 0..255.
    NaN or infinite values are refused (naming the reference).
    """
    items = _as_list(images, 3, "image (expected [N,H,W,3])")
    out = []
    for i, image in enumerate(items):
        channels = image.shape[2]
        if channels not in (1, 3, 4):
            raise InputError(f"reference {i}: image has {channels} channels, expected 3 (RGB), 1 (grey) or 4 (RGBA)")
        image = image.detach().cpu()
        if image.dtype == torch.bool:
            image = image.to(torch.float32)
        elif not image.is_floating_point():
            image = image.to(torch.float32) / 255.0
        require_finite(image, f"reference {i}: image", None)
        image = image.to(torch.float32)
        image = image.expand(-1, -1, 3) if channels == 1 else image[..., :3]
        out.append(image.clamp(0.0, 1.0).contiguous())
    return out


def _as_label_map(labels: torch.Tensor, i: int) -> torch.Tensor:
    """Integer (or integral float) ``[H,W]`` -> int64."""
    labels = labels.detach().cpu()
    if labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()):
            raise InputError(f"reference {i}: label map holds NaN or infinite values")
        if not torch.equal(labels, labels.round()):
            raise InputError(f"reference {i}: label map has non-integer values")
    elif labels.dtype == torch.bool:
        labels = labels.to(torch.int64)
    return labels.to(torch.int64)


def reference_set_from_label_maps(images, labels, names: list[str] | None = None) -> ReferenceSet:
    """References from tensors: images ``[N,H,W,3]`` (or a list of ``[H,W,3]``) in 0..1 and
    label maps ``[N,H,W]`` (or a list of ``[H,W]``) with ids 0..; a single ``[H,W]`` is N=1.

    ``names`` as in :func:`complete_names`.
    """
    image_list = _as_images(images)
    label_list = [_as_label_map(m, i) for i, m in enumerate(_as_list(labels, 2, "label map"))]
    if len(label_list) != len(image_list):
        raise InputError(f"references: {len(image_list)} images but {len(label_list)} label maps")
    files = [f"reference {i}" for i in range(len(image_list))]
    num_ids = max(int(m.max()) for m in label_list) + 1 if label_list else 1
    _check_segment_count(num_ids, label_list, files)
    return ReferenceSet(image_list, label_list, complete_names(names, num_ids), files)


def _masks_to_labels(masks: list[torch.Tensor]) -> torch.Tensor:
    """S boolean masks ``[H,W]`` -> int64 ``[H,W]``: mask s is id s+1; the smallest mask wins
    where masks overlap (ties: the lower s)."""
    labels = torch.zeros(masks[0].shape, dtype=torch.int64)
    areas = [int(m.sum()) for m in masks]
    order = sorted(range(len(masks)), key=lambda s: (-areas[s], -s))  # paint largest first
    for s in order:
        labels[masks[s]] = s + 1
    return labels


def reference_set_from_segment_masks(images, masks, names: list[str] | None = None) -> ReferenceSet:
    """References from per-segment masks: images ``[N,H,W,3]`` in 0..1 and a list of S masks,
    each ``[N,H,W]`` (or ``[H,W]`` for N=1) in 0..1, thresholded at > 0.5.

    Segment s gets id s+1; pixels in no mask are background; where masks overlap, the mask with
    the fewest pixels in that image wins. ``names`` (one per mask, or with "background" first)
    as in :func:`complete_names`.
    """
    image_list = _as_images(images)
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    if len(masks) == 0:
        raise InputError("references: no segment masks given")
    per_mask = []
    for s, mask in enumerate(masks):
        items = _as_list(mask, 2, f"mask {s}")
        for i, item in enumerate(items):
            require_finite(item, f"mask {s} of reference {i}", None)
        if len(items) != len(image_list):
            raise InputError(f"mask {s}: {len(items)} masks for {len(image_list)} images")
        per_mask.append(items)
    label_list = []
    for i, image in enumerate(image_list):
        binary = [per_mask[s][i].detach().cpu().float() > 0.5 for s in range(len(masks))]
        for s, b in enumerate(binary):
            if tuple(b.shape) != tuple(image.shape[:2]):
                raise InputError(
                    f"mask {s}: size {b.shape[1]}x{b.shape[0]} differs from reference {i} "
                    f"({image.shape[1]}x{image.shape[0]})"
                )
        label_list.append(_masks_to_labels(binary))
    files = [f"reference {i}" for i in range(len(image_list))]
    _check_segment_count(len(masks) + 1, label_list, files)
    return ReferenceSet(image_list, label_list, complete_names(names, len(masks) + 1), files)
