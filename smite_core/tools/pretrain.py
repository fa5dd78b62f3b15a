"""Pre-training of the embedded tiny backbone on procedural images (no downloads, CPU).

``python -m smite_core.tools.pretrain --out smite_core/model/weights/tiny.safetensors [--minutes M] [--seed S]``

The tiny backbone has Stable Diffusion's structure and mechanics (``AutoencoderKL`` with scaling
factor 0.18215, ``UNet2DConditionModel`` with cross-attention, a CLIP text encoder with a 77-token
BOS/EOS/pad context, DDIM ``scaled_linear`` schedule, epsilon prediction); see ``configs/tiny``.
Training, all deterministic per seed:

1. **Data.** Annotated stills and video frames of the *training* categories
   (``procedural.TRAIN_CATEGORIES``; never ``HELDOUT_CATEGORIES``) with seeds from
   ``SEED_BASE`` upward (the quality suite uses seeds below it), ``procedural.generic_image``
   pictures, and generic scenes (:func:`generic_scene`: random textured shapes, alone or in touching
   groups, on the procedural cluttered backgrounds) whose shapes are described by colour, texture
   and shape words. Generic pictures are about half of the data. (Background shapes in the colours
   of a category's parts, "part-coloured distractors", were tried and lowered the quality suite;
   see docs/experiments.md.)
2. **VAE**: L1 + image-gradient L1 reconstruction + a small KL on random crops; afterwards the
   latent is rescaled so that ``scaling_factor * latent`` has unit standard deviation.
3. **Text encoder + UNet** on VAE latent crops: the epsilon-prediction loss with captions
   (10 % dropped to the empty prompt) plus two auxiliary losses at low timesteps, where SMITE
   reads the attention maps: cross-entropy of the cross-attention logits (SMITE's capture layers,
   background = BOS position) of each region's word against its mask, and a self-attention
   grouping loss (at latent resolution, -log of the attention mass a pixel gives its own region).
   Crops are 32 latent cells; the last ``final_share`` of the steps uses 48-cell crops, as many
   keys as SMITE's self-attention has at the demo's 192 px.

``--minutes`` is a nominal budget on 2 idle CPU cores: it sets the step counts (so a given
``(seed, minutes)`` always gives the same weights), it is not a wall-clock stop.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from smite_core import procedural as P
from smite_core.errors import InputError
from smite_core.method.losses import class_weights
from smite_core.procedural.geometry import blob, ellipse, poly, rotate, rrect, star, stroke, translate, uniform
from smite_core.procedural.parts import Part, render_part, stamp
from smite_core.procedural.scene import apply_light, make_background, sample_light
from smite_core.procedural.texture import random_texture

SEED_BASE = 1_000_000  # pre-training seeds are SEED_BASE + ...; evaluation seeds stay below it
IGNORE = -1  # region id of pixels no loss looks at

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "grey", "black")
TEXTURE_WORDS = {"stripes": "striped", "checker": "checkered", "dots": "dotted", "noise": "mottled",
                 "gradient": "shaded", "radial": "ringed", "spokes": "spoked", "bricks": "brick",
                 "scales": "scaly", "wood": "wooden"}
SHAPE_WORDS = ("circle", "oval", "square", "rectangle", "star", "blob", "triangle", "polygon", "ring", "line")
EXTRA_WORDS = ("with",)


def vocabulary() -> list[str]:
    """The tiny tokenizer's words in id order (specials first); every word is used in training."""
    from smite_core.model.tokenizer import SPECIALS

    parts = sorted({p for c in P.TRAIN_CATEGORIES for p in P.CATEGORY_PARTS[c]})
    return [*SPECIALS, *EXTRA_WORDS, *COLOURS, *TEXTURE_WORDS.values(), *SHAPE_WORDS, *P.TRAIN_CATEGORIES, *parts]


# ------------------------------------------------------------------------------------------ data


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """Index into ``COLOURS`` of every pixel of ``rgb [...,3]`` (0..1)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3), dtype=np.float32), cv2.COLOR_RGB2HSV)[:, 0]
    h, s, v = hsv[:, 0] / 360.0, hsv[:, 1], hsv[:, 2]
    bins = np.array([0.04, 0.11, 0.19, 0.45, 0.53, 0.72, 0.85, 0.95])  # red orange yellow green cyan blue purple pink
    hue = np.searchsorted(bins, h) % 8  # >= 0.95 wraps to red
    out = hue.copy()
    grey = s < 0.22
    out[grey] = np.where(v[grey] > 0.78, 8, 9)
    out[v < 0.2] = 10
    return out.reshape(rgb.shape[:-1])


def region_colour(image: np.ndarray, mask: np.ndarray) -> str:
    """The most common colour name of ``image`` pixels under ``mask``."""
    names = colour_names(image[mask])
    return COLOURS[int(np.bincount(names, minlength=len(COLOURS)).argmax())]


def _shape_part(rng, r: float, unit: float):
    """A generic textured shape of radius about ``r`` and its shape word."""
    u = uniform
    kind = int(rng.integers(9))
    if kind == 0:
        ar = u(rng, .4, 1)
        prims, word = [poly(ellipse(0, 0, r, r * ar, u(rng, 0, 180)))], "circle" if ar > .85 else "oval"
    elif kind == 1:
        ar = u(rng, .3, 1)
        pts = rrect(-r, -r * ar, r, r * ar, r * u(rng, 0, .3)) @ rotate(u(rng, 0, 90))[:2, :2].T
        prims, word = [poly(pts)], "square" if ar > .85 else "rectangle"
    elif kind == 2:
        prims, word = [poly(star(0, 0, r, r * u(rng, .35, .6), int(rng.integers(4, 9)), u(rng, 0, 90)))], "star"
    elif kind == 3:
        prims, word = [poly(blob(rng, 0, 0, r * .85, u(rng, .2, .6)))], "blob"
    elif kind == 4:
        a = u(rng, 0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-.3, .3, 3)
        prims, word = [poly(np.stack([r * np.cos(a), r * np.sin(a)], 1))], "triangle"
    elif kind == 5:
        n = int(rng.integers(5, 8))
        a = np.linspace(0, 2 * np.pi, n, endpoint=False) + u(rng, 0, 1)
        prims, word = [poly(np.stack([r * np.cos(a), r * np.sin(a)], 1))], "polygon"
    elif kind == 6:
        pts = ellipse(0, 0, r * .8, r * u(rng, .5, .8), u(rng, 0, 180), n=40)
        prims, word = [stroke(np.concatenate([pts, pts[:1]]), max(r * u(rng, .15, .3), 2.0))], "ring"
    else:
        n = int(rng.integers(2, 4))
        pts = np.cumsum(rng.uniform(-r, r, (n, 2)), 0)
        prims, word = [stroke(pts - pts.mean(0), max(r * u(rng, .15, .3), 2.5))], "line"
    ext = (-1.6 * r - 20.0, 1.6 * r + 20.0)
    part = Part(0, prims, random_texture(rng, unit, radius=r, extent=ext), bevel=r * u(rng, .05, .3),
                outline=u(rng, 0, .4))
    return part, word


def _composite(image: np.ndarray, labels: np.ndarray, part, M: np.ndarray, label: int) -> bool:
    """Render ``part``, place it with the 3x3 matrix ``M`` and alpha-blend it into ``image`` (float
    ``[H,W,3]``, in place); pixels it covers (alpha > 0.5) get ``label``. False when it misses the picture."""
    patch, L = render_part(part, 1.0)
    placed = stamp(image, patch, M @ L)
    if placed is None:
        return False
    region, covered = placed
    labels[region][covered] = label
    return True


def generic_scene(seed: int, size: int = 256) -> dict:
    """A generic annotated picture: textured shapes (alone or in touching groups) on a cluttered background.

    Returns ``{"image": float32 [H,W,3], "seg": int16 [H,W] (0 background, i = shape i),
    "regions": [{"colour", "texture", "shape"}, ...]}``. No benchmark category is drawn.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E5C]))
    u = uniform
    m = 8
    img = np.ascontiguousarray(make_background(rng, size + 2 * m, size + 2 * m, size / 256)[m:-m, m:-m])
    seg = np.zeros((size, size), np.int16)
    regions = []

    def stamp(part, word, M):
        if _composite(img, seg, part, M, len(regions) + 1):
            regions.append({"texture": TEXTURE_WORDS[part.tex.kind], "shape": word})

    for _ in range(int(rng.integers(1, 4))):  # groups of touching shapes: generic "parts"
        cx, cy, ang = u(rng, .15, .85) * size, u(rng, .15, .85) * size, u(rng, 0, 360)
        r0 = u(rng, .09, .2) * size
        for k in range(int(rng.integers(1, 4))):
            r = r0 * (1.0 if k == 0 else u(rng, .35, .75))
            off = np.zeros(2) if k == 0 else rng.uniform(-1, 1, 2) * r0
            part, word = _shape_part(rng, r, size / 256)
            stamp(part, word, translate(cx, cy) @ rotate(ang) @ translate(*off) @ rotate(u(rng, 0, 360)))
    for _ in range(int(rng.integers(0, 4))):
        part, word = _shape_part(rng, u(rng, .05, .14) * size, size / 256)
        stamp(part, word, translate(u(rng, 0, size), u(rng, 0, size)))
    X, Y = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    img = apply_light(img, sample_light(rng, True), 0.0, X, Y, rng)
    keep = []
    for i, region in enumerate(regions, start=1):
        mask = seg == i
        if mask.sum() < 24:  # hidden under later shapes: background-like, excluded from losses
            seg[mask] = IGNORE
            region["colour"] = None
        else:
            region["colour"] = region_colour(img, mask)
        keep.append(region)
    return {"image": img, "seg": seg, "regions": keep, "kind": "generic"}


def category_samples(category: str, seed: int, stills: int, videos: int, frames_per_video: int,
                     size: int = 256) -> list[dict]:
    """Annotated stills and video frames of a *training* category (``seg`` = part labels)."""
    if category not in P.TRAIN_CATEGORIES:
        raise InputError(f"category {category!r}: only training categories may be used for pre-training")
    pictures = []
    images, labels, names = P.make_references(category, seed, stills, (size, size))
    pictures += zip(images, labels)
    for v in range(videos):
        video = P.make_video(category, seed + 1 + v, num_frames=frames_per_video * 4, size=(size, size))
        pictures += [(video.frames[t], video.labels[t]) for t in range(0, frames_per_video * 4, 4)]
    return [_category_record(category, image, lab, names) for image, lab in pictures]


def _category_record(category, image, labels, names) -> dict:
    regions = []
    for i, name in enumerate(names[1:], start=1):
        mask = labels == i
        regions.append({"name": name, "colour": region_colour(image, mask) if mask.sum() >= 12 else None})
    return {"image": image, "seg": labels.astype(np.int16), "regions": regions, "kind": category}


def sample_caption(rng: np.random.Generator, record: dict) -> tuple[list[str], dict[int, int]]:
    """Random caption words and ``{region id: token position}`` (position 0 is BOS).

    Category pictures: the part names alone in their fixed order (SMITE's initial prompt), or a
    shuffled ``[category] [colour] part ...`` description; generic scenes: shuffled
    ``[colour] [texture] shape`` phrases (identical phrases share one token).
    """
    words: list[str] = []
    where: dict[int, int] = {}
    regions = record["regions"]
    if record["kind"] != "generic":
        present = [i for i, r in enumerate(regions, start=1) if r["colour"] is not None]
        if rng.random() < 0.4:
            for i, r in enumerate(regions, start=1):
                words.append(r["name"])
                where[i] = len(words)
            return words, where
        if rng.random() < 0.5:
            words += [record["kind"], "with"] if rng.random() < 0.5 else [record["kind"]]
        for i in rng.permutation(present):
            r = regions[i - 1]
            if rng.random() < 0.6:
                words.append(r["colour"])
            words.append(r["name"])
            where[int(i)] = len(words)
        return words, where
    seen: dict[tuple, int] = {}
    for i in rng.permutation(len(regions)) + 1:
        r = regions[i - 1]
        if r["colour"] is None:
            continue
        phrase = tuple(w for w, p in ((r["colour"], 0.7), (r["texture"], 0.6)) if rng.random() < p) + (r["shape"],)
        if phrase in seen:
            where[int(i)] = seen[phrase]
            continue
        if len(words) + len(phrase) > 70:
            continue
        words += phrase
        seen[phrase] = where[int(i)] = len(words)
    return words, where


# ------------------------------------------------------------------------------------------ config


@dataclass
class PretrainConfig:
    """Pre-training settings. Step counts scale with ``minutes`` (see :meth:`schedule`)."""

    seed: int = 0
    minutes: float = 30.0  # the shipped weights: about 21 min wall on 2 idle cores
    size: int = 256
    stills_per_category: int = 260
    videos_per_category: int = 24
    frames_per_video: int = 4
    generic_scenes: int = 1500
    generic_images: int = 250
    vae_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 2e-3
    vae_kl: float = 1e-4
    unet_batch: int = 8
    unet_crop: int = 32  # latent cells (the VAE downsamples 4x: 48 cells at 192 px, 64 at 256 px)
    unet_lr: float = 1e-3
    weight_ce: float = 0.5
    weight_sa: float = 0.2
    weight_col: float = 0.5
    weight_was: float = 0.5
    aux_t_max: int = 300
    scales: tuple[int, ...] = (192, 256)  # pictures are encoded at these sides in turn
    final_share: float = 0.15  # share of UNet steps on final_crop crops
    final_crop: int = 48
    final_batch: int = 4
    caption_dropout: float = 0.1
    vae_steps: int | None = None
    unet_steps: int | None = None
    threads: int = 2

    def schedule(self) -> tuple[int, int, float]:
        """``(vae_steps, unet_steps, data_scale)`` for the nominal ``minutes`` (data about 10 %, VAE 12 %,
        UNet the rest). 30 nominal minutes (the shipped weights) took 21 minutes of wall time on 2 idle CPU
        cores; 40 took 41 (59 when the cores were shared) and 54 took 58, about the most that fits the
        60-minute limit."""
        scale = min(1.0, self.minutes / 50.0)
        vae = self.vae_steps if self.vae_steps is not None else int(self.minutes * 24)
        unet = self.unet_steps if self.unet_steps is not None else int(self.minutes * 75)
        return vae, unet, scale


# ------------------------------------------------------------------------------------------ training


def build_dataset(config: PretrainConfig, say: Callable[[str], None] = print) -> list[dict]:
    """Render every training picture (deterministic; order fixed)."""
    _, _, scale = config.schedule()
    n_still = max(1, round(config.stills_per_category * scale))
    n_video = round(config.videos_per_category * scale)
    n_scene = max(1, round(config.generic_scenes * scale))
    n_generic = round(config.generic_images * scale)
    base = SEED_BASE + 10_000 * config.seed
    jobs: list[Callable[[], list[dict]]] = []
    for c in P.TRAIN_CATEGORIES:
        for chunk in range(0, n_still, 20):
            jobs.append(lambda c=c, chunk=chunk: category_samples(c, base + chunk, min(20, n_still - chunk), 0, 0,
                                                                  config.size))
        for v in range(0, n_video, 4):
            jobs.append(lambda c=c, v=v: category_samples(c, base + 5000 + 10 * v, 0, min(4, n_video - v),
                                                          config.frames_per_video, config.size))
    for s in range(0, n_scene, 25):
        jobs.append(lambda s=s: [generic_scene(base + i, config.size) for i in range(s, min(n_scene, s + 25))])
    for s in range(0, n_generic, 25):
        jobs.append(lambda s=s: [{"image": P.generic_image(base + i, config.size), "seg": None, "regions": [],
                                  "kind": "plain"} for i in range(s, min(n_generic, s + 25))])
    with ThreadPoolExecutor(max(1, config.threads)) as pool:
        records = [r for batch in pool.map(lambda job: job(), jobs) for r in batch]
    for r in records:
        r["image"] = (np.clip(r["image"], 0, 1) * 255 + 0.5).astype(np.uint8)
    say(f"data: {len(records)} pictures ({sum(r['kind'] == 'generic' for r in records)} generic scenes, "
        f"{sum(r['kind'] == 'plain' for r in records)} generic_image, "
        f"{sum(r['kind'] in P.TRAIN_CATEGORIES for r in records)} of {', '.join(P.TRAIN_CATEGORIES)})")
    return records


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B,H,W,3]`` -> float ``[B,3,H,W]`` in -1..1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, records: list[dict], config: PretrainConfig, steps: int, gen: torch.Generator,
              say: Callable[[str], None] = print) -> None:
    """Reconstruction training of ``vae`` (in place) on random crops."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0, foreach=True)
    size = config.size
    crop = min(config.vae_crop, size)
    started = time.time()
    for step in range(steps):
        lr = config.vae_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(records), (config.vae_batch,), generator=gen).tolist()
        ys = torch.randint(size - crop + 1, (config.vae_batch,), generator=gen).tolist()
        xs = torch.randint(size - crop + 1, (config.vae_batch,), generator=gen).tolist()
        batch = np.stack([records[i]["image"][y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])
        x = _to_tensor(batch)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        grad = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
        kl = post.kl().mean() / z[0].numel()  # per latent element
        loss = l1 + grad + config.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            say(f"vae {step + 1}/{steps}: l1 {l1.item():.4f} grad {grad.item():.4f} kl {kl.item():.3f} "
                f"({time.time() - started:.0f} s)")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def normalise_latent_scale(vae, latents_mean: torch.Tensor) -> float:
    """Rescale the VAE so ``scaling_factor * mean`` has unit std (``latents_mean``: unscaled means).

    The encoder's ``quant_conv`` (mean rows, and log-variance bias) and the decoder's
    ``post_quant_conv`` are changed together, so reconstructions are unchanged. Returns the factor.
    """
    a = 1.0 / (vae.config.scaling_factor * latents_mean.float().std().item())
    c = vae.config.latent_channels
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    qc.weight[:c] *= a
    qc.bias[:c] *= a
    qc.bias[c:] += 2 * math.log(a)
    pqc.weight /= a
    return a


@torch.no_grad()
def encode_records(vae, records: list[dict], scales: tuple[int, ...], batch: int = 16) -> list[torch.Tensor]:
    """Scaled latent means (fp16 ``[4,h,w]``) of every picture, record ``i`` resized to
    ``scales[i % len(scales)]`` first (antialiased bilinear, as ``inversion.prepare_frames``)."""
    from smite_core.method.inversion import prepare_frames

    out: list[torch.Tensor | None] = [None] * len(records)
    for j, side in enumerate(scales):
        index = list(range(j, len(records), len(scales)))
        for s in range(0, len(index), batch):
            chunk = index[s:s + batch]
            images = torch.from_numpy(np.stack([records[i]["image"] for i in chunk])).float() / 255
            x = prepare_frames(images, (side, side))
            z = (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).half()
            for i, zi in zip(chunk, z):
                out[i] = zi
    return out


def _small_seg(seg: np.ndarray | None, side: int) -> torch.Tensor:
    """Region ids at latent resolution (nearest), IGNORE everywhere for unannotated pictures."""
    if seg is None:
        return torch.full((side, side), IGNORE, dtype=torch.int16)
    t = torch.from_numpy(seg.astype(np.float32))[None, None]
    return F.interpolate(t, size=(side, side), mode="nearest")[0, 0].to(torch.int16)


def self_attention_probs(self_qk) -> torch.Tensor:
    """Self-attention ``[B,n,n]`` (softmax over keys), averaged over heads and layers, as SMITE reads it."""
    probs = 0.0
    for q, k, scale in self_qk:
        probs = probs + torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1).mean(1)
    return probs / len(self_qk)


def _targets(seg: torch.Tensor, where: dict[int, int]) -> tuple[list[int], torch.Tensor]:
    """Token columns ``[BOS, region words...]`` and per-pixel class index (IGNORE for unnamed regions)."""
    regions = sorted(where)
    cols = [0] + [where[r] for r in regions]
    s = seg.long()
    lookup = torch.full((max(int(s.max()), max(regions)) + 1,), IGNORE, dtype=torch.long)
    lookup[0] = 0
    for j, r in enumerate(regions, start=1):
        lookup[r] = j
    return cols, torch.where(s >= 0, lookup[s.clamp_min(0)], torch.full_like(s, IGNORE))


def _named_regions(seg: torch.Tensor, positions: list[dict[int, int]]):
    """Per picture ``b`` with named regions: ``(b, token columns, per-pixel class index, class weights)``
    (the weights of ``losses.class_weights`` over its named pixels, capped at 50)."""
    for b, where in enumerate(positions):
        if not where:
            continue
        cols, target = _targets(seg[b], where)
        valid = target >= 0
        if valid.any():
            yield b, cols, target, class_weights(target[valid], len(cols)).clamp(max=50.0)


def self_attention_losses(probs: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grouping, column)`` losses of self-attention ``probs [B,n,n]`` for region ids ``seg [B,n]``.

    Grouping: ``-log`` of the mass each pixel gives its own region, averaged per region, then over
    regions (small parts count as much as the background). Column: the variance of the attention
    each key receives (rows sum to 1; a few keys drawing most of it would carry their weights into most
    pixels' WAS).
    """
    losses = []
    for b in range(seg.shape[0]):
        s = seg[b].long()
        valid = s >= 0
        if valid.sum() < 2:
            continue
        ids, inv = torch.unique(s.clamp_min(0), return_inverse=True)
        onehot = F.one_hot(inv, len(ids)).float() * valid[:, None].float()  # keys of each region
        nll = -torch.log((probs[b] @ onehot).gather(1, inv[:, None])[:, 0] + 1e-6)
        per_region = (onehot * (nll * valid)[:, None]).sum(0) / onehot.sum(0).clamp_min(1)
        losses.append(per_region[onehot.sum(0) > 0].mean())
    grouping = torch.stack(losses).mean() if losses else probs.sum() * 0
    column = probs.sum(1).var(dim=1).mean()
    return grouping, column


def cross_attention_loss(ca: torch.Tensor, seg: torch.Tensor, positions: list[dict[int, int]]) -> torch.Tensor:
    """SMITE's weighted cross-entropy of region-word logits (background = BOS) against the regions.

    ``ca [B,77,h,w]`` head/layer-averaged logits at latent size; ``seg [B,h,w]`` region ids;
    ``positions[b]`` maps region id -> token position. Unnamed regions are ignored.
    """
    losses = [F.cross_entropy(ca[b, cols][None], target[None], weight=w, ignore_index=IGNORE)
              for b, cols, target, w in _named_regions(seg, positions)]
    return torch.stack(losses).mean() if losses else ca.sum() * 0


def was_inference_loss(ca: torch.Tensor, probs: torch.Tensor, seg: torch.Tensor,
                       positions: list[dict[int, int]]) -> torch.Tensor:
    """Weighted cross-entropy of SMITE's *inference* WAS (``was.was_inference``: thresholded background
    weights ``W``, ``A[c,q] = sum_p SA[q,p] W[c,p]`` summed over the key index, remapped into each token's
    logit range) against the regions. ``probs [B,n,n]`` is ``SA`` as ``[query, key]``."""
    losses = []
    for b, cols, target, w in _named_regions(seg, positions):
        flat = ca[b, cols].flatten(1)  # [C,n]
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        bg = flat[:1]
        weights = torch.cat([bg * (bg > bg.mean()).float(), flat[1:]])
        acc = weights @ probs[b].T  # sum over the key index (docs/method.md 4)
        lo_acc, hi_acc = acc.amin(1, keepdim=True), acc.amax(1, keepdim=True)
        unit = (acc - lo_acc) / (hi_acc - lo_acc).clamp_min(1e-6)
        was = unit * (high - low) + low
        losses.append(F.cross_entropy(was.T, target.flatten(), weight=w, ignore_index=IGNORE))
    return torch.stack(losses).mean() if losses else ca.sum() * 0


def _crop_origin(rng: np.random.Generator, seg: torch.Tensor, side: int, crop: int,
                 object_centred: bool) -> tuple[int, int]:
    if object_centred:
        ys, xs = torch.nonzero(seg > 0, as_tuple=True)
        if len(ys):
            j = int(rng.integers(len(ys)))
            y = int(ys[j]) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
            x = int(xs[j]) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
            return int(np.clip(y, 0, side - crop)), int(np.clip(x, 0, side - crop))
    return int(rng.integers(side - crop + 1)), int(rng.integers(side - crop + 1))


def train_denoiser(components, records: list[dict], latents: list[torch.Tensor], config: PretrainConfig, steps: int,
                   gen: torch.Generator, rng: np.random.Generator, say: Callable[[str], None] = print,
                   crop: int | None = None, batch: int | None = None) -> None:
    """Train the text encoder and UNet (in place) on latent crops; see the module docstring."""
    from smite_core.method.was import cross_attention_logits
    from smite_core.model.attention import AttentionRecord, inflated_unet

    unet, text_encoder, tokenizer = components.unet, components.text_encoder, components.tokenizer
    scheduler = components.scheduler
    crop = min(crop or config.unet_crop, max(z.shape[-1] for z in latents))
    eligible = np.array([i for i, z in enumerate(latents) if z.shape[-1] >= crop])  # pictures the crop fits in
    batch = batch or config.unet_batch
    segs = [_small_seg(r["seg"], z.shape[-1]) for r, z in zip(records, latents)]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    for m in (unet, text_encoder):
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01, foreach=True)
    started = time.time()
    running: dict[str, float] = {}
    for step in range(steps):
        lr = config.unet_lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = eligible[rng.integers(len(eligible), size=batch)]
        zs, ss, ids, positions = [], [], [], []
        for i in idx:
            rec = records[int(i)]
            side = latents[i].shape[-1]
            y, x = _crop_origin(rng, segs[i], side, crop, rec["kind"] != "generic" and rng.random() < 0.8)
            zs.append(latents[i][:, y:y + crop, x:x + crop].float())
            ss.append(segs[i][y:y + crop, x:x + crop])
            if rec["seg"] is None or rng.random() < config.caption_dropout:
                words, where = [], {}
            else:
                words, where = sample_caption(rng, rec)
            ids.append(tokenizer.encode_prompt(" ".join(words)))
            positions.append(where)
        z0 = torch.stack(zs)
        seg = torch.stack(ss)
        low = rng.random(batch) < 0.6
        t = torch.from_numpy(np.where(low, rng.integers(0, config.aux_t_max, batch), rng.integers(0, 1000, batch)))
        noise = torch.randn(z0.shape, generator=gen)
        noisy = scheduler.add_noise(z0, noise, t)
        context = text_encoder(torch.tensor(ids))[0]
        record = AttentionRecord(num_tokens=77, latent_hw=(crop, crop))
        with inflated_unet(unet, 1, record=record, inflate=False, pool_norm=False):
            out = unet(noisy, t, encoder_hidden_states=context).sample
        loss_sd = F.mse_loss(out, noise)
        aux = (t < config.aux_t_max).nonzero()[:, 0].tolist()
        losses = {"sd": loss_sd}
        if aux:
            ca = cross_attention_logits(record)[aux]
            pos = [positions[i] for i in aux]
            losses["ce"] = cross_attention_loss(ca, seg[aux], pos)
            probs = self_attention_probs([(q[aux], k[aux], s) for q, k, s in record.self_qk])
            losses["sa"], losses["col"] = self_attention_losses(probs, seg[aux].reshape(len(aux), -1))
            losses["was"] = was_inference_loss(ca, probs, seg[aux].reshape(len(aux), -1), pos)
        total = loss_sd + sum(getattr(config, f"weight_{k}") * v for k, v in losses.items() if k != "sd")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, v in losses.items():
            v = float(v.detach())
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if step % 100 == 0 or step == steps - 1:
            say(f"unet {step + 1}/{steps} ({crop}x{crop}): " + " ".join(f"{k} {v:.3f}" for k, v in running.items())
                + f" ({time.time() - started:.0f} s)")
    for m in (unet, text_encoder):
        m.eval().requires_grad_(False)


def pretrain(config: PretrainConfig, say: Callable[[str], None] = print):
    """Run the whole pre-training; returns the trained :class:`~smite_core.model.components.Components`."""
    from smite_core.model.memory_budget import flushed_denormals

    with flushed_denormals(torch.device("cpu")):  # pre-training runs on the CPU
        return _pretrain(config, say)


def _pretrain(config: PretrainConfig, say: Callable[[str], None]):
    from smite_core.model.backbone import build_tiny_components

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5E7]))
    vae_steps, unet_steps, _ = config.schedule()
    t0, c0 = time.time(), time.process_time()
    records = build_dataset(config, say)
    components = build_tiny_components(weights_path=False)
    say(f"data ready ({time.time() - t0:.0f} s)")
    train_vae(components.vae, records, config, vae_steps, gen, say)
    latents = encode_records(components.vae, records, config.scales)
    factor = normalise_latent_scale(components.vae, torch.cat([z.flatten() for z in latents]).float()
                                    / components.vae.config.scaling_factor)
    latents = [(z.float() * factor).half() for z in latents]
    say(f"latents at {sorted({z.shape[-1] for z in latents})} cells, rescaled by {factor:.3f} "
        f"({time.time() - t0:.0f} s)")
    final = round(unet_steps * config.final_share)
    train_denoiser(components, records, latents, config, unet_steps - final, gen, rng, say)
    if final:  # larger crops: as many keys as SMITE's self-attention has at the working resolution
        train_denoiser(components, records, latents, config, final, gen, rng, say, crop=config.final_crop,
                       batch=config.final_batch)
    components.extra["pretrain"] = {**asdict(config), "vae_steps": vae_steps, "unet_steps": unet_steps,
                                    "wall_s": round(time.time() - t0), "cpu_s": round(time.process_time() - c0)}
    return components


def save_weights(components, path: str | Path, overwrite: bool = True) -> Path:
    """Write the UNet, VAE and text encoder as one fp16 safetensors file (keys ``unet.``, ``vae.``,
    ``text_encoder.``)."""
    from safetensors.torch import save_file

    from smite_core.io.fileio import atomic_path

    tensors = {}
    models = (("unet.", components.unet), ("vae.", components.vae), ("text_encoder.", components.text_encoder))
    for prefix, model in models:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                tensors[prefix + k] = v.detach().to("cpu", torch.float16).contiguous()
            else:
                tensors[prefix + k] = v.detach().cpu().contiguous()
    meta = {"format": "smite-tiny-backbone", "pretrain": json.dumps(components.extra.get("pretrain", {}))}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smite_core.tools.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="nominal budget on 2 idle CPU cores (sets the steps; 30, the shipped weights, "
                             "takes about 21 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads and rendering threads")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        print(f"error: {args.out}: the weights file must end in .safetensors", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    config = PretrainConfig(seed=args.seed, minutes=args.minutes, threads=args.threads)

    def say(message):
        print(message, file=sys.stderr, flush=True)

    components = pretrain(config, say)
    save_weights(components, args.out)
    info = components.extra["pretrain"]
    say(f"wrote {args.out} (wall {info['wall_s']} s, cpu {info['cpu_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
