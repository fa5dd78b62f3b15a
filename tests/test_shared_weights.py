"""smite_core.model.shared_weights: a backbone on a host's LDM-layout tensors (ComfyUI's MODEL and VAE), no copy.

No ComfyUI here: the host's tensors are the state dicts of a small SD-shaped single file, made in
inference mode as ComfyUI makes its weights. The real ComfyUI path is in ``test_comfy_server.py``.
"""

import pytest
import torch
from ldm_layout import UNET_PREFIX, VAE_PREFIX, to_ldm_checkpoint
from test_checkpoints import tiny_models, write_single

from smite_core.errors import BackboneError
from smite_core.model.backbone import backbone_fingerprint, load_backbone
from smite_core.model.shared_weights import (
    SUPPORTED,
    PromptEncoding,
    alias,
    bind,
    empty_prompt_ids,
    family_of,
    is_bound,
    shared_components,
    shared_storage,
    unbind,
)


def _host_states(models, family):
    """The UNet and VAE state dicts as a host holds them: LDM keys without prefixes, inference tensors."""
    state = to_ldm_checkpoint(*models, family)
    with torch.inference_mode():
        unet = {k[len(UNET_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(UNET_PREFIX)}
        vae = {k[len(VAE_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(VAE_PREFIX)}
    return unet, vae


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def setup(request, tmp_path_factory):
    family = request.param
    models = tiny_models(family, text_overrides={"vocab_size": 49408})
    path = write_single(tmp_path_factory.mktemp(family), models, family)
    loader = load_backbone(str(path), device="cpu", dtype="fp32")
    unet, vae = _host_states(models, family)
    return family, loader, unet, vae


def test_bound_modules_alias_the_host_tensors_and_compute_as_the_loader(setup):
    family, loader, unet_state, vae_state = setup
    prompt = loader.encode_empty_prompt()
    components = shared_components(unet_state, vae_state, prompt, "epsilon", "host")
    assert components.family == family and not is_bound(components)
    assert torch.equal(components.empty_prompt_ids, loader.components.empty_prompt_ids)
    device, dtype = bind(components, unet_state, vae_state)
    assert (device, dtype) == (torch.device("cpu"), torch.float32)
    assert shared_storage(components.unet, unet_state) == [] and shared_storage(components.vae, vae_state) == []
    weight = components.vae.encoder.mid_block.attentions[0].to_q.weight  # a 1x1 conv seen as linear: a view
    assert weight.ndim == 2 and weight.untyped_storage().data_ptr() == \
        vae_state["encoder.mid.attn_1.q.weight"].untyped_storage().data_ptr()
    assert backbone_fingerprint(components) == loader.fingerprint
    g = torch.Generator().manual_seed(0)
    x, image = torch.randn(2, 4, 8, 8, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    context = prompt.expand(2, -1, -1)
    with torch.no_grad():
        for ours, theirs in ((components.unet(x, torch.tensor([50]), encoder_hidden_states=context).sample,
                              loader.unet(x, torch.tensor([50]), encoder_hidden_states=context).sample),
                             (components.vae.encode(image).latent_dist.mean,
                              loader.vae.encode(image).latent_dist.mean)):
            assert torch.equal(ours, theirs)
    tokens = prompt.clone().requires_grad_(True)  # gradients flow although the host's tensors are inference tensors
    out = components.unet(x, torch.tensor([50]), encoder_hidden_states=tokens.expand(2, -1, -1)).sample
    out.square().sum().backward()
    assert tokens.grad is not None and float(tokens.grad.abs().sum()) > 0
    unbind(components)
    assert not is_bound(components) and all(p.is_meta for p in components.vae.parameters())


def test_an_alias_is_a_plain_tensor_on_the_same_storage():
    with torch.inference_mode():
        host = torch.randn(4, 6, 1, 1)[:, :3]
    same = alias(host)
    assert not same.is_inference() and same.data_ptr() == host.data_ptr() and torch.equal(same, host)
    assert same.stride() == host.stride()


def test_v_prediction_sd2_matches_the_loader_told_so(tmp_path):
    models = tiny_models("sd2", text_overrides={"vocab_size": 49408})
    path = write_single(tmp_path, models, "sd2")
    loader = load_backbone(str(path), device="cpu", dtype="fp32", prediction_type="v_prediction")
    unet, vae = _host_states(models, "sd2")
    components = shared_components(unet, vae, loader.encode_empty_prompt(), "v_prediction", "host")
    assert components.unet.config.upcast_attention and components.scheduler.config.prediction_type == "v_prediction"
    bind(components, unet, vae)
    assert backbone_fingerprint(components) == loader.fingerprint


def test_other_models_are_refused_in_one_line():
    conv = torch.zeros(320, 4, 3, 3)
    cases = {
        "SDXL": {"input_blocks.0.0.weight": conv, "label_emb.0.0.weight": torch.zeros(1)},
        "Flux": {"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3)},
        "SD15_instructpix2pix": {"input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3)},
        "Odd": {"input_blocks.0.0.weight": conv, "x.attn2.to_k.weight": torch.zeros(320, 4096)},
    }
    for name, state in cases.items():
        with pytest.raises(BackboneError, match=f"^{SUPPORTED}; this MODEL is {name} ") as info:
            family_of(state, name)
        assert "\n" not in str(info.value)
    assert family_of({"input_blocks.0.0.weight": conv, "a.attn2.to_k.weight": torch.zeros(320, 1024)}) == "sd2"


def test_bad_host_inputs_are_refused(setup):
    family, loader, unet_state, vae_state = setup
    prompt = loader.encode_empty_prompt()
    with pytest.raises(BackboneError, match="width"):
        shared_components(unet_state, vae_state, torch.zeros(1, 77, 512), "epsilon", "host")
    with pytest.raises(BackboneError, match="objective"):
        shared_components(unet_state, vae_state, prompt, "flow", "host")
    components = shared_components(unet_state, vae_state, prompt, "epsilon", "host")
    mixed = dict(unet_state, **{"out.2.bias": unet_state["out.2.bias"].half()})
    with pytest.raises(BackboneError, match="float16.*float32"):
        bind(components, mixed, vae_state)
    missing = {k: v for k, v in unet_state.items() if k != "out.2.weight"}
    with pytest.raises(BackboneError):
        bind(components, missing, vae_state)
    assert not is_bound(components)
    encoder = PromptEncoding(empty_prompt_ids(family), prompt)
    assert torch.equal(encoder(empty_prompt_ids(family))[0], prompt)
    with pytest.raises(BackboneError, match="empty prompt"):
        encoder(torch.zeros(1, 77, dtype=torch.long))
