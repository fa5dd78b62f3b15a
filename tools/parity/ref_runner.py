"""Run the reference code (alimohammadiamirhossein/smite) on the parity inputs; write its outputs.

Runs in the reference's own virtual environment (see README.md), started by ``generate.py``::

    REFENV/bin/python tools/parity/ref_runner.py --reference CHECKOUT --weights DIR --inputs IN --out OUT

``IN`` and ``OUT`` are safetensors files of named tensors (keys ``<model>.<what>`` and ``formula.<what>``).
Everything the reference computes here goes through its own functions; this file only feeds them the
inputs, sets the switches the reference itself has (``guidance_scale`` 0, ``coef_loss_fourier`` at
epoch 0, ``attention_output_size``, ``mask_patch_size``) and reads the results back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ref_shim  # noqa: E402  (before any reference module)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REF_LAYERS = None  # the reference's default --attention_layers_to_use, filled in main()
# The keys of the reference's hard-coded UNet config (SD 2, D14) that the shim takes from the folder instead.
ARCH_KEYS = ("block_out_channels", "attention_head_dim", "cross_attention_dim", "use_linear_projection")


class Recorder:
    """Stands in for the reference's optimiser: keeps the gradients it sees, steps nothing."""

    def __init__(self, named):
        self.named = list(named)
        self.grads = {}

    def _snapshot(self):
        for name, param in self.named:
            if param.grad is not None and name not in self.grads:
                self.grads[name] = param.grad.detach().clone()

    def zero_grad(self, *args, **kwargs):
        self._snapshot()
        for _, param in self.named:
            param.grad = None

    def step(self, *args, **kwargs):
        self._snapshot()


class EmptyPromptTokenizer:
    """The reference only ever tokenizes ``""`` here: BOS, EOS and SD's padding (no vocabulary ships)."""

    model_max_length = 77

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, text, padding=None, max_length=None, truncation=None, return_tensors=None):
        if text not in ("", [""]):
            raise ValueError(f"the parity tokenizer only knows the empty prompt, not {text!r}")
        ids = self.ids if padding == "max_length" else self.ids[:, :2]
        return types.SimpleNamespace(input_ids=ids.clone(), attention_mask=torch.ones_like(ids))


def load_reference_pipeline(folder: Path, empty_ids: torch.Tensor):
    """The reference's pipeline on a diffusers folder, through its own ``load_unets`` / ``load_vae``.

    Shim (D14): ``UNet3DConditionModel.generate_config`` returns the folder's own UNet config with the
    reference's 3-D block names (what its ``from_pretrained_2d`` does for a path) instead of the
    hard-coded full-size SD 2 config, so that ``transfer_unets`` can copy the reduced-width weights.
    """
    from diffusers import UNet2DConditionModel
    from models import UNet3DConditionModel
    from src import SMITEPipeline
    from transformers import CLIPTextModel
    from utils import setup

    folder_config = json.loads((folder / "unet" / "config.json").read_text())
    hard_coded = UNet3DConditionModel.__dict__["generate_config"].__func__(UNet3DConditionModel)
    config = dict(hard_coded)
    config.update({key: folder_config[key] for key in ARCH_KEYS})
    UNet3DConditionModel.generate_config = classmethod(lambda cls: dict(config))
    unet = setup.load_unets(str(folder), "cpu")
    unet2d = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    ref_sd, sd2 = unet.state_dict(), unet2d.state_dict()
    untransferred = sorted(k for k in sd2 if k not in ref_sd or not torch.equal(ref_sd[k], sd2[k]))
    extra = sorted(k for k in ref_sd if k not in sd2)
    vae = setup.load_vae(str(folder), "cpu")
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    scheduler, inverse = setup.load_schedulers(str(folder))
    pipe = SMITEPipeline(vae=vae, text_encoder=text_encoder, tokenizer=EmptyPromptTokenizer(empty_ids), unet=unet,
                         controlnet=None, scheduler=scheduler, inverse_scheduler=inverse)
    pipe.set_attention_hook(REF_LAYERS)
    processors = ref_shim.install_xformers(pipe.unet)
    pipe.weight_dtype = torch.float32
    pipe.dataset_name = "parity"
    info = {"untransferred_2d_weights": untransferred, "extra_3d_weights": extra, "cross_attn_processors": processors,
            "hard_coded_config_kept": {k: v for k, v in hard_coded.items() if k not in ARCH_KEYS},
            "config_differences_kept": sorted(k for k, v in hard_coded.items() if k not in ARCH_KEYS
                                              and k in folder_config and folder_config[k] != v)}
    return pipe, info


def set_tokens(pipe, tokens: torch.Tensor, k: int):
    pipe.num_parts = k
    pipe.part_names = [f"part{i}" for i in range(k)]
    pipe.embeddings_to_optimize = torch.nn.ParameterList(
        [torch.nn.Parameter(tokens[i][None, None].clone()) for i in range(k - 1)])


def unet_and_maps(pipe, x: dict, out: dict, name: str, k: int):
    """Noise prediction, per-layer and averaged maps and the inference WAS of one latent window."""
    from src.inference import _process_timestep
    from src.was_attention import calculate_was_mask, get_attention_map

    latents = x[f"{name}.unet.latents"]  # [F,4,h,w]
    frames, _, h, w = latents.shape
    t = int(x[f"{name}.unet.t"])
    context = out[f"{name}.context"]
    with torch.no_grad():
        pred = pipe.unet(latents.permute(1, 0, 2, 3)[None], torch.tensor([t]), encoder_hidden_states=context).sample
    out[f"{name}.noise_pred"] = pred[0].permute(1, 0, 2, 3).contiguous()
    raw = dict(pipe.attention_maps)
    args = dict(output_size=(h, w), token_ids=list(range(k)), average_layers=True, train=True, apply_softmax=False,
                video_length=frames, guidance_scale=0, inflated_unet=True)
    cross = [n for n in REF_LAYERS if n.endswith("attn2")]
    selfs = [n for n in REF_LAYERS if n.endswith("attn1")]
    with torch.no_grad():
        for i, layer in enumerate(cross):
            _, ca, _ = get_attention_map(pipe, {layer: raw[layer], selfs[0]: raw[selfs[0]]}, **args)
            out[f"{name}.ca_layer{i}"] = ca.float()
        for i, layer in enumerate(selfs):
            _, _, sa = get_attention_map(pipe, {cross[0]: raw[cross[0]], layer: raw[layer]}, **args)
            out[f"{name}.sa_layer{i}_sketch"] = sketch(sa, x["formula.sketch"])
        _, ca, sa = get_attention_map(pipe, raw, **args)
        out[f"{name}.ca"] = ca.float()
        out[f"{name}.sa_ends"] = sa[[0, -1]].reshape(2, h * w, h * w).float()  # [2, key, query]
        out[f"{name}.was_inference"] = calculate_was_mask(pipe, ca, sa, mask_patch_size=h)
        pipe.attention_maps = {}
        maps = _process_timestep(pipe, context, latents.permute(1, 0, 2, 3)[None], depth_input=None,
                                 t=torch.tensor([t]), return_latent=False, cross_attention_kwargs=None,
                                 controlnet_keep=None, controlnet_conditioning_scale=None, extra_step_kwargs={},
                                 **{k2: v for k2, v in args.items() if k2 not in ("output_size", "train")},
                                 attention_output_size=(h, w))
        pipe.attention_maps = {}
    out[f"{name}.was_64"] = maps["was_64_attention_maps"].float()


def sketch(sa: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """``[F, n, n]`` self-attention (reference layout ``[key, query]``) -> ``[F, 2, n, p]``: ``SA^T P`` and ``SA P``."""
    frames = sa.shape[0]
    mat = sa.reshape(frames, sa.shape[1], -1).float()  # [F, key, query]
    return torch.stack([mat.transpose(1, 2) @ probes, mat @ probes], dim=1)


def learning_step(pipe, x: dict, out: dict, name: str, k: int):
    """One ``training_step`` of the reference (text_embeds+crossattn_kv, epoch 0), gradients recorded."""
    import src.training as training

    captured = {}
    compute_loss = training.compute_loss

    def capture(**kw):
        captured.update({k2: v for k2, v in kw.items() if torch.is_tensor(v)})
        return compute_loss(**kw)

    training.compute_loss = capture
    training.visualize_attention_maps = lambda *a, **kw: None
    training.process_and_save_images = lambda *a, **kw: None
    latents = x[f"{name}.learn.latents"]  # [1,4,64,64]
    set_tokens(pipe, x[f"{name}.tokens"], k)
    pipe.configure_optimizers(learning_rate=1e-6, training_mode="text_embeds+crossattn_kv")
    kv = [(n, p) for n, p in pipe.unet.named_parameters() if p.requires_grad]
    tokens = [(f"token{i}", p) for i, p in enumerate(pipe.embeddings_to_optimize)]
    pipe.optimizer = (Recorder(tokens), Recorder(kv))
    pipe.prepare_video_latents = lambda *a, **kw: latents.permute(1, 0, 2, 3)[None]  # D16: given latents
    pipe.noise = x[f"{name}.learn.noise"].permute(1, 0, 2, 3)[None]
    pipe.writer = types.SimpleNamespace(add_image=lambda *a, **kw: None)
    mask = x[f"{name}.learn.mask"]
    side = mask.shape[-1] * 8
    pipe.train_dataloader = [{"image": torch.zeros(1, 1, 3, side, side), "mask": mask[None, None].float(),
                              "prompt": [""]}]
    losses = training.training_step(
        pipe, prompt="", mode="train", epoch=0, height=side, width=side, guidance_scale=0,
        attention_output_size=(side // 8, side // 8), token_ids=list(range(k)), average_layers=True,
        apply_softmax=False, generate_new_noise=False, time_interval=torch.tensor([int(x[f"{name}.learn.t"])]),
        training_mode="text_embeds+crossattn_kv", coef_loss_sd=0.005, coef_loss_fourier=0.001)
    for key in ("total", "loss1", "loss2", "loss_sd", "loss_freq"):
        out[f"{name}.learn.{key}"] = torch.tensor(float(losses[key]), dtype=torch.float64)
    out[f"{name}.learn.cross_attention"] = captured["cross_attention"].detach().float()
    out[f"{name}.learn.was_train"] = captured["was_attention"].detach().float()
    out[f"{name}.learn.noise_pred"] = captured["noise"].detach().float()[0].permute(1, 0, 2, 3).contiguous()
    grads_t, grads_kv = pipe.optimizer[0].grads, pipe.optimizer[1].grads
    out[f"{name}.learn.grad_tokens"] = torch.cat([grads_t[f"token{i}"].reshape(1, -1) for i in range(k - 1)])
    probes = x["formula.kv_probes"]
    names = sorted(grads_kv)
    out[f"{name}.learn.grad_kv_sketch"] = torch.cat([grads_kv[n] @ probes[: grads_kv[n].shape[1]] for n in names])
    out[f"{name}.learn.grad_kv_norms"] = torch.tensor([float(grads_kv[n].norm()) for n in names], dtype=torch.float64)
    for n in names[:2]:
        out[f"{name}.learn.grad_kv.{n}"] = grads_kv[n]
    training.compute_loss = compute_loss
    return names


def formulas(x: dict, out: dict, k: int, weights: Path):
    """Voting, the DCT low-pass energy, the guided latent update and the metrics."""
    import torch_dct
    from diffusers import DDIMScheduler
    from src.frequency_filter import dct_loss
    from src.latent_optimization import _compute_loss, _update_latent_with_gradient
    from src.metrics import calculate_metrics
    from src.slicing import create_slices
    from src.tracking import apply_voting

    # bidirectional voting (Algorithm 1) on given tracks: list over query frames of [F, N, 2] ints, [F, N] visibility
    maps = x["formula.vote.maps"]
    tracks = [x["formula.vote.positions"][i].numpy() for i in range(maps.shape[0])]
    visible = [x["formula.vote.visible"][i].numpy().astype("float32") for i in range(maps.shape[0])]
    out["formula.vote.voted"] = apply_voting(maps, tracks, visible)

    # DCT and E_reg
    pred, ref = x["formula.dct.was"], x["formula.dct.reference"]
    out["formula.dct.coefficients"] = torch_dct.dct_3d(pred.transpose(0, 1)[None], norm="ortho")[0].transpose(0, 1)
    for cutoff in (0.999, 0.4, 0.1):
        loss, low = dct_loss(pred, ref, low_pass=True, threshold=cutoff)
        out[f"formula.dct.loss_{cutoff}"] = loss.double()
        out[f"formula.dct.lowpassed_{cutoff}"] = low

    # guided latent update (E_track + E_reg, Adam-style) on a differentiable stand-in for the UNet's WAS
    sched_cfg = json.loads((weights / "sd21" / "scheduler" / "scheduler_config.json").read_text())
    sched_cfg = {k2: v for k2, v in sched_cfg.items() if not k2.startswith("_")}
    pipe = types.SimpleNamespace(num_parts=k, device=torch.device("cpu"), scheduler=DDIMScheduler(**sched_cfg))
    proj, z = x["formula.guide.proj"], x["formula.guide.latents"].clone()
    tracked, refmaps, t = x["formula.guide.tracked"], x["formula.guide.reference"], int(x["formula.guide.t"])
    frames = z.shape[0]

    def was_of(lat5):  # [1,4,f,h,w] -> [f,K,h,w]
        f = lat5.shape[2]
        flat = lat5[0].permute(1, 0, 2, 3).reshape(f, -1)
        return 3 * torch.tanh(flat @ proj.T).reshape(f, k, lat5.shape[3], lat5.shape[4])

    latents = z.permute(1, 0, 2, 3)[None]
    for g in range(2):
        slices = create_slices(frames, 4)
        m1 = [torch.zeros_like(latents[:, :, slices[0]]) for _ in slices]
        m2 = [torch.zeros_like(latents[:, :, slices[0]]) for _ in slices]
        for iter_ in range(15):
            parts = [latents[:, :, s] for s in slices]
            for i, s in enumerate(slices):
                lat = parts[i].clone().requires_grad_(True)
                with torch.enable_grad():
                    inputs = {"latent": lat, "was_tracked": tracked[s], "was_refrence": refmaps[s]}
                    loss, _, _ = _compute_loss(pipe, inputs, was_of(lat), regularization_weight=8.0, track_weight=0.1,
                                               i=g, dct_threshold=0.4)
                    parts[i], m1[i], m2[i] = _update_latent_with_gradient(pipe, lat, loss, t, m1=m1[i], m2=m2[i],
                                                                           iter_=iter_)
            latents = torch.cat(parts, dim=2)
        out[f"formula.guide.after_step{g}"] = latents[0].permute(1, 0, 2, 3).contiguous()

    # metrics: J, F, IoU per part and mIoU (absent classes as 0), MAE
    y_true, y_pred = x["formula.metrics.gt"].numpy(), x["formula.metrics.pred"]
    stub = types.SimpleNamespace(part_names=[f"part{i}" for i in range(int(x["formula.metrics.k"]))])
    folder = tempfile.mkdtemp(prefix="metrics-")
    calculate_metrics(stub, y_true, y_pred, output_path=folder)  # returns nothing; writes metrics.json
    m = json.loads((Path(folder) / "metrics.json").read_text())
    out["formula.metrics.J"] = torch.tensor(float(m["jaccard"]), dtype=torch.float64)
    out["formula.metrics.F"] = torch.tensor(float(m["f_measure"]), dtype=torch.float64)
    out["formula.metrics.mean_iou"] = torch.tensor(float(m["mean_iou"]), dtype=torch.float64)
    out["formula.metrics.iou_per_part"] = torch.tensor([float(m["iou_per_part"][f"iou_{n}"]) for n in stub.part_names],
                                                       dtype=torch.float64)
    out["formula.metrics.mae"] = torch.tensor(float(m["mae"]), dtype=torch.float64)


def cotracker(x: dict, out: dict, weights: Path):
    """The reference's ``apply_tracker`` per query frame with the real CoTracker3 class (if installed)."""
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError:
        return False
    from src.tracking import apply_tracker

    predictor = CoTrackerPredictor(checkpoint=None, offline=True, window_len=60)
    predictor.model.load_state_dict(load_file(str(weights)))
    predictor.interp_shape = tuple(int(v) for v in x["cotracker.interp_shape"])
    raw = {}

    def tracker(video, queries, backward_tracking=False):
        tracks, visible = predictor(video, queries, backward_tracking=backward_tracking)
        raw.update(queries=queries.clone(), tracks=tracks.clone(), visible=visible.clone())
        return tracks, visible

    predictor.eval()
    pipe = types.SimpleNamespace(tracker=tracker)
    frames = x["cotracker.frames"]  # [T,H,W,3] 0..1
    video = (frames * 510.0 - 1.0).permute(3, 0, 1, 2)[None]  # so that its (x+1)/2 gives 0..255 (D2 isolated)
    grid = int(x["cotracker.grid"])
    for q in range(frames.shape[0]):
        with torch.no_grad():
            idx, vis = apply_tracker(pipe, video, query_frame=q, interpolate_size=grid, batching_ratio=None)
        out[f"cotracker.indices{q}"] = torch.from_numpy(idx).long()
        out[f"cotracker.visible{q}"] = torch.from_numpy(vis).bool()
        out[f"cotracker.queries{q}"] = raw["queries"][0].float()
        out[f"cotracker.tracks{q}"] = raw["tracks"][0].float()
        out[f"cotracker.raw_visible{q}"] = raw["visible"][0].bool()
    return True


def main(argv=None) -> int:
    global REF_LAYERS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="sd15,sd21")
    p.add_argument("--cotracker-weights", default=None)
    a = p.parse_args(argv)
    reference = Path(a.reference).resolve()
    sys.path.insert(0, str(reference))
    os.chdir(tempfile.mkdtemp(prefix="smite-ref-"))  # the reference writes vis/ and logs/ into the cwd
    torch.manual_seed(0)
    import utils  # noqa: F401  (the reference imports utils before src, as its run.py does)
    from utils import args as ref_args

    saved_argv, sys.argv = sys.argv, ["run.py"]
    REF_LAYERS = list(ref_args.get_args().attention_layers_to_use)
    sys.argv = saved_argv
    x = load_file(a.inputs)
    k = int(x["formula.k"])
    out: dict[str, torch.Tensor] = {}
    meta: dict = {"reference_layers": [n.replace("[", ".").replace("]", "") for n in REF_LAYERS]}
    for name in a.models.split(","):
        pipe, info = load_reference_pipeline(Path(a.weights) / name, x[f"{name}.empty_ids"])
        meta[name] = info
        set_tokens(pipe, x[f"{name}.tokens"], k)
        with torch.no_grad():
            out[f"{name}.context"] = pipe._encode_prompt("", "cpu", 1, False, use_tokens=True).float()
        unet_and_maps(pipe, x, out, name, k)
        meta[name]["kv_names"] = learning_step(pipe, x, out, name, k)
        print(f"reference: {name} done", flush=True)
    formulas(x, out, k, Path(a.weights))
    if a.cotracker_weights:
        meta["cotracker"] = cotracker(x, out, Path(a.cotracker_weights))
    save_file({n: v.contiguous() for n, v in out.items()}, a.out, metadata={"ref_runner": json.dumps(meta)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
