"""Write the parity goldens: inputs, and the reference implementation's outputs on them.

    python tools/parity/generate.py --reference /path/to/smite-checkout --ref-python /path/to/refenv/bin/python

Runs in the project's environment. It builds the reduced SD 1.5 / SD 2.1 diffusers folders
(``parity_models.py``) in a temporary folder, draws the inputs from fixed seeds, runs
``ref_runner.py`` with the reference's own Python (its pinned diffusers 0.19 era; see README.md),
and writes ``tests/golden/parity_{sd15,sd21,formulas}.safetensors`` (and ``parity_cotracker`` when
the ``cotracker`` package imports in both environments). The files hold numbers only: inputs,
reference outputs and, in their metadata, the reference's repository, commit and package versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import parity_models as pm  # noqa: E402

REPO = "alimohammadiamirhossein/smite"
FRAMES, LATENT, LEARN_LATENT = 6, 16, 64
LEARN_SEED = 314
COTRACKER_SEED, COTRACKER_FRAMES, COTRACKER_GRID, COTRACKER_SIDE = 7, 3, 4, 512


def smooth(gen: torch.Generator, shape, coarse: int) -> torch.Tensor:
    """A smooth random field ``shape = (..., C, H, W)`` (bilinear from a coarse grid) plus fine noise."""
    *lead, c, h, w = shape
    base = torch.randn(int(torch.tensor(lead).prod()) if lead else 1, c, coarse, coarse, generator=gen)
    up = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (up + 0.3 * torch.randn(up.shape, generator=gen)).reshape(shape)


def label_map(side: int, k: int, shift: int = 0) -> torch.Tensor:
    """Background, a disk, a bar and a corner block: every class 0..k-1 present."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    labels = torch.zeros(side, side, dtype=torch.long)
    c = side // 2 + shift
    labels[(yy - c) ** 2 + (xx - side // 2) ** 2 < (side // 4) ** 2] = 1
    labels[(yy > side * 3 // 4) & (xx > side // 8 + shift) & (xx < side * 5 // 8 + shift)] = 2
    if k > 3:
        labels[(yy < side // 5) & (xx > side * 3 // 4)] = 3
    return labels


def model_inputs(name: str, k: int) -> dict:
    gen = torch.Generator().manual_seed({"sd15": 15, "sd21": 21}[name])
    d = pm.MODELS[name]["unet"]["cross_attention_dim"]
    field = smooth(gen, (1, 4, LATENT, LATENT), 4)[0]
    latents = torch.stack([torch.roll(field, shifts=(f, f // 2), dims=(1, 2)) for f in range(FRAMES)])
    latents = latents + 0.1 * torch.randn(latents.shape, generator=gen)
    x = {f"{name}.empty_ids": pm.empty_prompt_ids(name), f"{name}.tokens": torch.randn(k - 1, d, generator=gen),
         f"{name}.unet.latents": latents, f"{name}.unet.t": torch.tensor(101)}
    learn = torch.Generator().manual_seed(LEARN_SEED)  # the draws of smite_core.method.learn._Learner.losses, in order
    t = int(torch.randint(5, 101, (1,), generator=learn))
    noise = torch.randn((1, 4, LEARN_LATENT, LEARN_LATENT), generator=learn)
    x.update({f"{name}.learn.latents": smooth(gen, (1, 4, LEARN_LATENT, LEARN_LATENT), 8),
              f"{name}.learn.noise": noise, f"{name}.learn.t": torch.tensor(t),
              f"{name}.learn.mask": label_map(LEARN_LATENT, k).to(torch.int32)})
    return x


def vote_inputs(gen: torch.Generator, k: int, frames: int = 16, side: int = 16) -> dict:
    """Maps, and tracks of every cell of every frame: a drift plus jitter, some points hidden or outside."""
    maps = torch.randn(frames, k, side, side, generator=gen)
    maps[:, 0] += 0.8 * smooth(gen, (1, side, side), 4)[0]
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # [N,2] (x, y)
    offset = torch.arange(frames)[None, :, None] - torch.arange(frames)[:, None, None]  # [Fq,F,1]
    drift = torch.stack([offset * 0.6, offset * -0.3], dim=-1)
    jitter = torch.randint(-1, 2, (frames, frames, side * side, 2), generator=gen)
    positions = torch.round(cells[None, None] + drift + jitter * (offset != 0)[..., None]).long()
    visible = torch.rand(frames, frames, side * side, generator=gen) < 0.85
    own = torch.arange(frames)
    positions[own, own] = cells
    visible[own, own] = True
    inside = ((positions >= 0) & (positions < side)).all(-1)
    visible &= inside  # what the reference's postprocess_predictions does to points outside the grid
    positions = positions.clamp(-1, side)
    return {"formula.vote.maps": maps, "formula.vote.positions": positions.to(torch.int32),
            "formula.vote.visible": visible.to(torch.uint8)}


def metric_inputs(gen: torch.Generator) -> dict:
    """Ground truth of 6 frames, 5 classes (class 4 never present, class 3 in some frames), and a noisy prediction."""
    frames = []
    for f in range(6):
        lab = label_map(48, 4, shift=f).clone()[:, :48]
        lab = torch.cat([lab, torch.zeros(48, 16, dtype=torch.long)], dim=1)
        if f % 3 == 2:
            lab[lab == 3] = 0
        frames.append(lab)
    gt = torch.stack(frames)
    pred = torch.roll(gt, shifts=(1, -1), dims=(1, 2)).clone()
    flips = torch.rand(gt.shape, generator=gen) < 0.03
    pred[flips] = torch.randint(0, 5, (int(flips.sum()),), generator=gen)
    pred[0, :4, :4] = 4
    pred[4] = 0  # one frame with nothing predicted
    return {"formula.metrics.gt": gt.to(torch.int32), "formula.metrics.pred": pred.to(torch.int32),
            "formula.metrics.k": torch.tensor(5)}


def formula_inputs(k: int) -> dict:
    gen = torch.Generator().manual_seed(2025)
    x = {"formula.k": torch.tensor(k), "formula.sketch": torch.randn(LATENT * LATENT, 8, generator=gen),
         "formula.kv_probes": torch.randn(1024, 4, generator=gen)}
    x.update(vote_inputs(gen, k))
    x.update({"formula.dct.was": torch.randn(4, k, 16, 16, generator=gen),
              "formula.dct.reference": torch.randn(4, k, 16, 16, generator=gen)})
    x.update({"formula.guide.latents": smooth(gen, (8, 4, 8, 8), 4),
              "formula.guide.proj": torch.randn(k * 64, 4 * 64, generator=gen) / 16.0,
              "formula.guide.tracked": torch.randn(8, k, 8, 8, generator=gen),
              "formula.guide.reference": 3 * torch.tanh(torch.randn(8, k, 8, 8, generator=gen)),
              "formula.guide.t": torch.tensor(101)})
    x.update(metric_inputs(gen))
    return x


def cotracker_inputs() -> dict:
    gen = torch.Generator().manual_seed(COTRACKER_SEED)
    base = smooth(gen, (1, 3, 64 + 4 * COTRACKER_FRAMES, 64 + 4 * COTRACKER_FRAMES), 6)[0]
    frames = torch.stack([base[:, 2 * f:2 * f + 64, 3 * f:3 * f + 64] for f in range(COTRACKER_FRAMES)])
    frames = ((torch.sigmoid(frames) * 255).round().to(torch.uint8)).permute(0, 2, 3, 1).contiguous()
    return {"cotracker.frames64": frames, "cotracker.grid": torch.tensor(COTRACKER_GRID),
            "cotracker.interp_shape": torch.tensor([COTRACKER_SIDE, COTRACKER_SIDE])}


def cotracker_frames(frames64: torch.Tensor) -> torch.Tensor:
    """``[T,64,64,3]`` uint8 -> ``[T,512,512,3]`` float 0..1 (nearest, exact on both sides)."""
    scale = COTRACKER_SIDE // frames64.shape[1]
    return frames64.float().div(255).repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def cotracker_state(seed: int = COTRACKER_SEED):
    """A CoTracker3 offline model with deterministic random weights, or None without the package."""
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError:
        return None
    predictor = CoTrackerPredictor(checkpoint=None, offline=True, window_len=60)
    pm.fill_(predictor.model, seed)
    return predictor


def ref_versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['torch', 'diffusers', 'transformers', 'tokenizers', 'huggingface-hub', 'accelerate', 'einops', "
            "'numpy', 'torch-dct', 'scikit-image', 'opencv-python', 'torchvision']}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="a checkout of " + REPO)
    p.add_argument("--ref-python", required=True, help="the Python of the reference's virtual environment")
    p.add_argument("--out", default=str(HERE.parents[1] / "tests" / "golden"))
    p.add_argument("--work", default=None, help="folder for the weights and the raw files (default: a temp dir)")
    a = p.parse_args(argv)
    commit = subprocess.run(["git", "-C", a.reference, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    work = Path(a.work or tempfile.mkdtemp(prefix="smite-parity-"))
    k = pm.K_SEGMENTS
    x = formula_inputs(k)
    checksums = {}
    for name in ("sd15", "sd21"):
        pm.write_folder(name, work / "weights")
        x.update(model_inputs(name, k))
        unet, _, text = pm.build(name)
        checksums[name] = {"unet": pm.checksum(unet), "text_encoder": pm.checksum(text)}
    cot = cotracker_state()
    cmd = [a.ref_python, str(HERE / "ref_runner.py"), "--reference", a.reference, "--weights", str(work / "weights"),
           "--inputs", str(work / "inputs.safetensors"), "--out", str(work / "ref.safetensors")]
    if cot is not None:
        x.update(cotracker_inputs())
        x["cotracker.frames"] = cotracker_frames(x["cotracker.frames64"])
        save_file(cot.model.state_dict(), str(work / "cotracker.safetensors"))
        cmd += ["--cotracker-weights", str(work / "cotracker.safetensors")]
    save_file({n: v.contiguous() for n, v in x.items()}, str(work / "inputs.safetensors"))
    subprocess.run(cmd, check=True)
    ref = load_file(str(work / "ref.safetensors"))
    from safetensors import safe_open

    with safe_open(str(work / "ref.safetensors"), "pt") as f:
        runner_meta = json.loads(f.metadata()["ref_runner"])
    meta = {"reference_repository": REPO, "reference_commit": commit, "reference_env": json.dumps(ref_versions(
        a.ref_python)), "generator": "tools/parity/generate.py", "seed": str(pm.SEED), "k": str(k),
        "reference_layers": json.dumps(runner_meta["reference_layers"])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"sd15": "sd15.", "sd21": "sd21.", "formulas": "formula.", "cotracker": "cotracker."}
    for group, prefix in groups.items():
        tensors = {n: v for n, v in {**x, **ref}.items() if n.startswith(prefix) and n != "cotracker.frames"}
        if group == "cotracker" and not any(n.startswith("cotracker.tracks") for n in tensors):
            continue
        extra = {"runner": json.dumps(runner_meta.get(group, {}))} if group in runner_meta else {}
        if group in checksums:
            extra["weights_checksum"] = json.dumps(checksums[group])
        if group == "cotracker":
            extra["cotracker_seed"] = str(COTRACKER_SEED)
        save_file({n: v.contiguous() for n, v in tensors.items()}, str(out / f"parity_{group}.safetensors"),
                  metadata={**meta, **extra})
        print(f"wrote {out / f'parity_{group}.safetensors'} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
