"""Resumable learning: the state of an unfinished :func:`learn.learn_embedding` run in one safetensors file.

The file holds what the next step needs to continue exactly where the run stopped: the segment
tokens and K/V weights, both Adam optimisers' moments and step counts, the random generator's state
and the remaining reference order, plus a key of the run (backbone fingerprint, references, every
learning setting). A run resumes only from a file with the same key; any other file is refused
rather than replaced (a learning state of another run only when the caller allows it). Written
atomically, so an interrupt while saving leaves the previous state intact. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError, reason
from ..io.fileio import atomic_path

FORMAT = "smite-learn-state"
FORMAT_VERSION = 2  # 2: SMITE 0.2's WAS (docs/method.md 4, C17); a version-1 state was learned with another one


def run_key(backbone, references, config) -> str:
    """What must match for a saved state to be resumed: backbone, references, names and settings."""
    h = hashlib.sha256()
    h.update(str(backbone.fingerprint).encode())
    h.update(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    h.update(json.dumps(list(references.names)).encode())
    for image, labels in zip(references.images, references.labels):
        h.update(str(tuple(image.shape)).encode())
        h.update(image.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


SAVE_EVERY = 25  # steps between saves of the learning state (0: only when interrupted)


class LearnState:
    """Loads, checks and saves the learning state file ``path`` for the run identified by ``key``.

    ``every``: save after every ``every`` completed steps (0: only when interrupted).
    ``replace_other_run``: a learning state of *another* run is ignored (and replaced at the next save)
    instead of refused. ``say`` receives one-line messages.
    """

    def __init__(self, path: str | os.PathLike, key: str, every: int = SAVE_EVERY, replace_other_run: bool = False,
                 say: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.key = key
        self.every = max(0, int(every))
        self.replace_other_run = replace_other_run
        self.say = say or (lambda message: None)
        self.saved_step: int | None = None
        if self.path.suffix != ".safetensors":
            raise InputError(f"{self.path}: the learning state file must end in .safetensors")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder; give the name of the learning state file")

    # ------------------------------------------------------------------ reading

    def load(self, total_steps: int) -> dict | None:
        """The saved state of this run, or None when there is none to resume (no file, or another run's
        file with ``replace_other_run``). Raises InputError for a damaged or foreign file."""
        if not self.path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # damaged, truncated or not safetensors at all
            raise InputError(f"{self.path}: not a readable learning state ({reason(err, 160)}); delete it or "
                             "choose another checkpoint path") from None
        if metadata.get("format") != FORMAT:
            raise InputError(f"{self.path}: not a SMITE learning state (format {metadata.get('format')!r}); "
                             "it is left alone: choose another checkpoint path")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            what = (f"{self.path}: learning state of format {metadata.get('format_version')!r}, made by another SMITE "
                    f"version (this one resumes format {FORMAT_VERSION}; docs/changes.md)")
            if self.replace_other_run:
                self.say(f"{what}; starting afresh, it will be replaced")
                return None
            raise InputError(f"{what}; delete it, or pass --overwrite to start afresh and replace it")
        if metadata.get("key") != self.key:
            if self.replace_other_run:
                self.say(f"{self.path}: learning state of another run (other references, settings or backbone); "
                         "starting afresh, it will be replaced")
                return None
            raise InputError(f"{self.path}: learning state of another run (other references, settings or "
                             "backbone); delete it, or pass --overwrite to start afresh and replace it")
        try:
            step = int(metadata["step"])
        except (KeyError, ValueError) as err:
            raise InputError(f"{self.path}: damaged learning state ({reason(err, 160)})") from None
        if not 0 <= step <= total_steps or "tokens" not in tensors or "rng" not in tensors or "order" not in tensors:
            raise InputError(f"{self.path}: damaged learning state (step {step} of {total_steps})")
        return {"step": step, "tensors": tensors}

    def restore(self, state: dict, tokens: torch.Tensor, kv: dict, optimizers: dict,
                generator: torch.Generator) -> tuple[int, list[int]]:
        """Copy a loaded state into the run's tensors, optimisers and generator -> (step, order)."""
        tensors = state["tensors"]
        try:
            with torch.no_grad():
                tokens.copy_(tensors["tokens"])
                for name, value in kv.items():
                    value.copy_(tensors[f"kv.{name}"])
            for label, optimizer in optimizers.items():
                if optimizer is None:
                    continue
                saved = optimizer.state_dict()
                params = [p for group in optimizer.param_groups for p in group["params"]]
                saved["state"] = {}
                for i, _ in enumerate(params):
                    prefix = f"opt.{label}.{i}."
                    entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                    if entry:
                        saved["state"][i] = entry
                optimizer.load_state_dict(saved)
            generator.set_state(tensors["rng"].to(torch.uint8).contiguous())
        except (KeyError, RuntimeError, ValueError) as err:
            raise InputError(f"{self.path}: damaged learning state ({reason(err, 160)})") from None
        self.saved_step = state["step"]
        return state["step"], [int(i) for i in tensors["order"].tolist()]

    # ------------------------------------------------------------------ writing

    def due(self, completed: int, total: int) -> bool:
        """Whether a periodic save is due after ``completed`` steps (never after the last one)."""
        return self.every > 0 and completed < total and completed % self.every == 0

    def save(self, completed: int, tokens: torch.Tensor, kv: dict, optimizers: dict, rng_state: torch.Tensor,
             order: list[int]) -> Path:
        """Write the state after ``completed`` steps (atomically, replacing this run's previous state)."""
        from safetensors.torch import save_file

        def plain(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu").clone().contiguous()

        tensors = {"tokens": plain(tokens), "rng": plain(rng_state),
                   "order": torch.tensor(list(order), dtype=torch.int64)}
        tensors.update({f"kv.{name}": plain(value) for name, value in kv.items()})
        for label, optimizer in optimizers.items():
            if optimizer is None:
                continue
            for i, entry in optimizer.state_dict()["state"].items():
                for k, v in entry.items():
                    tensors[f"opt.{label}.{i}.{k}"] = plain(v if torch.is_tensor(v) else torch.tensor(v))
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "key": self.key,
                    "step": str(int(completed))}
        with atomic_path(self.path, overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        self.saved_step = completed
        return self.path
