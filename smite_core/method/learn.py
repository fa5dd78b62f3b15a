"""Learning stage: optimise the segment embedding on the annotated reference images (docs/method.md 3).

Each step takes one augmented reference, noises its VAE latent to a random t in [5, 100], runs the
UNet once on the *conditional* branch only (the reference's CFG-100 branch is dropped) and
minimises::

    L = L_CE(CA, mask) + L_MSE(WAS_train, one-hot mask) + 0.005 * L_SD

Phase 1 (the first ``token_phase`` of the steps) trains only the K-1 segment tokens; phase 2
fine-tunes every cross-attention ``to_k``/``to_v`` together with the tokens at a lower rate (the
paper's wording; the reference code's permanent freeze, D9, is not copied).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import InputError, SmiteError
from ..io.references import ReferenceSet
from ..model.backbone import Backbone
from ..model.memory_budget import autocast, flushed_denormals
from ..model.unet_pass import unet_forward
from ..settings import MAX_SEED, check_ranges, check_side, range_of, ranged
from .augment import AugmentConfig, augment_pair
from .embedding import MAX_SEGMENTS, SegmentEmbedding, build_context, initial_tokens
from .inversion import check_timesteps, encode_frames
from .learn_state import SAVE_EVERY, LearnState, run_key
from .losses import class_weights
from .was import cross_attention_logits, was_train


@dataclass
class LearnConfig:
    """Learning hyper-parameters; defaults follow the reference recipe (docs/method.md 3.3-3.5)."""

    # optimisation steps (one augmented reference each); None: epochs x references
    steps: int | None = ranged(None, 1, 100_000, optional=True)
    epochs: int = ranged(300, 1, 10_000)  # passes over the references when ``steps`` is None (the paper's 300)
    token_phase: float = ranged(0.17, 0.0, 1.0)  # share of the steps that train the tokens alone
    lr_tokens: float = ranged(0.1, 0.0, 100.0)
    lr_tokens_joint: float = ranged(0.01, 0.0, 100.0)  # token learning rate while K/V are fine-tuned
    lr_kv: float = ranged(1e-6, 0.0, 1.0)
    train_kv: bool = True
    timesteps: tuple[int, int] = (5, 100)  # inclusive training range of t
    weight_ce: float = ranged(1.0, 0.0, 1000.0)
    weight_mse: float = ranged(1.0, 0.0, 1000.0)
    weight_sd: float = ranged(0.005, 0.0, 1000.0)
    grad_clip_tokens: float = ranged(1000.0, 0.0, 1e9)
    size: int | None = None  # training image side; None = the backbone's resolution (checked: check_side)
    seed: int = ranged(0, 0, MAX_SEED)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def for_backbone(cls, backbone: Backbone, **overrides) -> "LearnConfig":
        """Defaults adjusted by the backbone's recommendations (``smite.json`` ``"learn"``), then ``overrides``."""
        recommended = dict(backbone.components.extra.get("learn", {}))
        recommended.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **recommended)

    def validate(self, backbone: Backbone | None = None) -> None:
        """Refuse a setting outside its range (one line naming it); with ``backbone`` also the image size."""
        check_ranges(self)
        check_timesteps(self.timesteps, "learning timesteps")
        if backbone is not None:
            check_side(self.size, backbone.size_multiple)

    def resolved(self, num_references: int) -> "LearnConfig":
        """This config, checked, with ``steps`` fixed: ``epochs x num_references`` when ``steps`` is None."""
        self.validate()
        if self.steps is not None:
            return self
        steps, most = self.epochs * max(1, num_references), range_of(LearnConfig, "steps")[1]
        if steps > most:
            raise InputError(f"epochs: {self.epochs} epochs x {num_references} references = {steps} steps, more than "
                             f"{most}; lower epochs or give steps")
        return replace(self, steps=steps)


def segmentation_losses(record, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """L_CE on the cross-attention logits and L_MSE on the training WAS. ``labels [h,w]`` at latent size."""
    ca = cross_attention_logits(record)  # [1,K,h,w]
    target = labels[None].to(ca.device)
    ce = F.cross_entropy(ca, target, weight=class_weights(target[0], num_classes))
    was = was_train(record)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    mse = num_classes * F.mse_loss(was, onehot)
    return {"ce": ce, "mse": mse}


def _training_target(backbone: Backbone, latents, noise, t):
    if backbone.components.prediction_type == "v_prediction":
        return backbone.scheduler.get_velocity(latents, noise, t)
    return noise


@dataclass
class _Learner:
    """The state of one learning run: the trainable tokens (and K/V), their optimisers, the generator."""

    backbone: Backbone
    references: ReferenceSet
    config: LearnConfig
    side: int  # training image side (a multiple of the backbone's)
    gen: torch.Generator
    empty: torch.Tensor  # text-encoder output of "" [1,77,D]
    tokens: torch.Tensor  # [K-1,D] float32, trainable
    kv: dict[str, torch.Tensor]  # trainable cross-attention to_k/to_v (empty: tokens only)
    phase1_steps: int  # steps that train the tokens alone
    optimizers: dict

    @classmethod
    def start(cls, backbone: Backbone, references: ReferenceSet, config: LearnConfig) -> "_Learner":
        side = config.size or backbone.resolution
        side = max(backbone.size_multiple, side // backbone.size_multiple * backbone.size_multiple)
        gen = torch.Generator().manual_seed(config.seed)
        empty = backbone.encode_empty_prompt()
        tokens = initial_tokens(backbone, references.names).to(backbone.device, torch.float32).requires_grad_(True)
        kv_names = backbone.cross_attention_kv_names() if config.train_kv else []
        params = dict(backbone.unet.named_parameters())
        kv = {n: params[n].detach().to(torch.float32).clone().requires_grad_(True) for n in kv_names}
        phase1_steps = min(config.steps, max(1, round(config.steps * config.token_phase))) if kv else config.steps
        optimizers = {"tokens": torch.optim.Adam([tokens], lr=config.lr_tokens),
                      "kv": torch.optim.Adam(list(kv.values()), lr=config.lr_kv) if kv else None}
        return cls(backbone, references, config, side, gen, empty, tokens, kv, phase1_steps, optimizers)

    def losses(self, step: int, index: int) -> dict[str, torch.Tensor]:
        """The losses of step ``step`` on reference ``index`` (augmented, noised at a random t)."""
        backbone, config, k = self.backbone, self.config, self.references.num_segments
        device, side = backbone.device, self.side
        latent_side = side // backbone.latent_factor
        image = self.references.images[index].permute(2, 0, 1)
        image, labels = augment_pair(image, self.references.labels[index], (side, side), self.gen, config.augment,
                                     part_index=step % k)
        latents = encode_frames(backbone, image.permute(1, 2, 0)[None], (side, side))
        small = F.interpolate(labels[None, None].float(), size=(latent_side, latent_side),
                              mode="nearest")[0, 0].long()
        t = int(torch.randint(config.timesteps[0], config.timesteps[1] + 1, (1,), generator=self.gen))
        noise = torch.randn(latents.shape, generator=self.gen).to(device, latents.dtype)
        t_tensor = torch.tensor([t], device=device)
        noisy = backbone.scheduler.add_noise(latents, noise, t_tensor)
        joint = step >= self.phase1_steps
        with autocast(backbone):  # fp16/bf16 on GPUs; the UNet checkpoints its ResNets there (unet_forward)
            out, record = unet_forward(backbone, noisy, t, build_context(self.empty, self.tokens), k,
                                       kv=self.kv if joint else None, inflate=False, pool_norm=False)
            losses = segmentation_losses(record, small.to(device), k)
            losses["sd"] = F.mse_loss(out.float(), _training_target(backbone, latents, noise, t_tensor).float())
        losses["total"] = (config.weight_ce * losses["ce"] + config.weight_mse * losses["mse"]
                           + config.weight_sd * losses["sd"])
        if not torch.isfinite(losses["total"]):
            raise SmiteError(f"learning diverged at step {step} (loss {losses['total'].item()}); "
                             "lower the learning rates")
        return losses

    def backward(self, total: torch.Tensor) -> None:
        """Gradients of ``total`` on the trainable weights (the token gradient norm clipped)."""
        for optimizer in self.optimizers.values():
            if optimizer:
                optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([self.tokens], self.config.grad_clip_tokens)

    def update(self, step: int) -> None:
        """The optimiser steps of step ``step``: the tokens, and K/V in the joint phase."""
        opt_tokens, opt_kv = self.optimizers["tokens"], self.optimizers["kv"]
        if step >= self.phase1_steps:
            for group in opt_tokens.param_groups:
                group["lr"] = self.config.lr_tokens_joint
            opt_kv.step()
        opt_tokens.step()

    def embedding(self) -> SegmentEmbedding:
        config = self.config
        trained_kv = {n: v.detach() for n, v in self.kv.items()} if self.kv and config.steps > self.phase1_steps else {}
        meta = {
            "smite_version": __version__, "backbone": self.backbone.components.source, "family": self.backbone.family,
            "resolution": self.side, "steps": config.steps, "seed": config.seed, "references": len(self.references),
            "learn_config": {k2: v for k2, v in asdict(config).items() if k2 != "augment"},
        }
        return SegmentEmbedding(tokens=self.tokens.detach(), names=list(self.references.names),
                                backbone_fingerprint=self.backbone.fingerprint, kv=trained_kv, meta=meta)


def learn_embedding(backbone: Backbone, references: ReferenceSet, config: LearnConfig | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    on_step: Callable[[int, dict], None] | None = None, *,
                    checkpoint: str | os.PathLike | None = None, checkpoint_every: int = SAVE_EVERY,
                    replace_other_checkpoint: bool = False, say: Callable[[str], None] | None = None,
                    interrupt: Callable[[], None] | None = None) -> SegmentEmbedding:
    """Learn a :class:`SegmentEmbedding` for ``references`` on ``backbone``. Deterministic per seed.

    ``config.steps`` None: ``config.epochs`` passes over the references (300 x their number by default).

    ``progress(done, total)`` is called after every step; ``on_step(step, losses)`` receives floats.

    ``checkpoint``: a ``.safetensors`` file for the resumable learning state (``learn_state``). If it
    holds the state of this very run (same backbone, references and settings) learning continues from
    it, with the same result as an uninterrupted run; the state is saved every ``checkpoint_every``
    steps and when the run stops with an exception (Ctrl-C, ComfyUI's cancel raised in ``progress``). A
    state of another run is refused unless ``replace_other_checkpoint``. ``say`` gets one-line notes.

    ``interrupt()`` is called after every forward and every backward pass and stops learning by raising
    (ComfyUI's Cancel; Ctrl-C needs no hook), so a stop takes effect within one pass.
    """
    interrupt = interrupt or (lambda: None)
    references.validate()
    config = (config or LearnConfig()).resolved(len(references))
    config.validate(backbone)
    k = references.num_segments
    if not 2 <= k <= MAX_SEGMENTS + 1:
        raise InputError(f"references: {k} segments; between 2 and {MAX_SEGMENTS + 1} (background included) "
                         "are supported")
    run = _Learner.start(backbone, references, config)
    order: list[int] = []
    start, state = 0, None
    if checkpoint is not None:
        state = LearnState(checkpoint, run_key(backbone, references, config), checkpoint_every,
                           replace_other_checkpoint, say)
        saved = state.load(config.steps)
        if saved is not None:
            start, order = state.restore(saved, run.tokens, run.kv, run.optimizers, run.gen)
            if say:
                say(f"resuming from {state.path} after step {start} of {config.steps}")
    # (completed steps, generator state, order) of the last consistent point: what an interrupt saves
    consistent = (start, run.gen.get_state(), list(order))
    try:
        with flushed_denormals(backbone.device):  # CPU speed; no-op on GPUs
            for step in range(start, config.steps):
                if not order:
                    order = torch.randperm(len(references), generator=run.gen).tolist()
                losses = run.losses(step, order.pop())
                interrupt()
                run.backward(losses["total"])
                interrupt()
                consistent = None  # the optimisers are changing the weights: nothing to save until they are done
                run.update(step)
                consistent = (step + 1, run.gen.get_state(), list(order))
                if state is not None and state.due(step + 1, config.steps):
                    state.save(step + 1, run.tokens, run.kv, run.optimizers, consistent[1], consistent[2])
                if on_step:
                    on_step(step, {name: float(v.detach()) for name, v in losses.items()})
                if progress:
                    progress(step + 1, config.steps)
    except BaseException:  # interrupted (Ctrl-C, ComfyUI's cancel) or failed: keep what is resumable
        _keep_resumable(state, consistent, run, config.steps, say)
        raise
    return run.embedding()


def _keep_resumable(state, consistent, run: _Learner, steps: int, say) -> None:
    """After an interrupt or failure: save the last consistent point (if newer than the saved one) and say where."""
    if state is not None and consistent is not None and 0 < consistent[0] != state.saved_step:
        try:
            state.save(consistent[0], run.tokens, run.kv, run.optimizers, consistent[1], consistent[2])
        except Exception as err:  # never hide the original exception
            if say:
                say(f"could not save the learning state to {state.path}: {err}")
    if state is not None and state.saved_step is not None and say:
        say(f"learning state after step {state.saved_step} of {steps} is in {state.path}; "
            "run the same command again to resume")
