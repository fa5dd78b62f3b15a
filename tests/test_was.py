"""WAS maps: chunked accumulation equals the dense formula (summed over the key index, docs/method.md 4);
inference remap; labels at frame size."""

import torch

from smite_core.method.was import accumulate_self_attention, labels_from_was, was_inference, was_train
from smite_core.model.attention import AttentionRecord


def _record(frames=2, k=3, h=6, w=5, heads=2, d=4, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    rec = AttentionRecord(num_tokens=k, latent_hw=(h, w))
    rec.cross = [torch.randn(frames, k, h, w, generator=g), torch.randn(frames, k, h // 2 * 2, w, generator=g)]
    rec.self_qk = [(torch.randn(frames, heads, h * w, d, generator=g), torch.randn(frames, heads, h * w, d, generator=g), d ** -0.5)
                   for _ in range(layers)]
    return rec


def _dense_sa(rec):
    maps = [torch.softmax(q @ k.transpose(-1, -2) * s, -1).mean(1) for q, k, s in rec.self_qk]
    return torch.stack(maps).mean(0)  # [F, query, key]: rows sum to one


def _dense_was(weights, sa):
    """A[f,k,q] = sum_p SA[f,q,p] W[f,k,p]: each pixel q takes the weights of the pixels p it attends to."""
    return torch.einsum("fkp,fqp->fkq", weights, sa)


def test_chunked_accumulation_equals_dense():
    rec = _record()
    weights = torch.randn(2, 3, 30)
    dense = _dense_was(weights, _dense_sa(rec))
    assert not torch.allclose(torch.einsum("fkp,fpq->fkq", weights, _dense_sa(rec)), dense, atol=1e-2)  # not SA^T
    for chunk in (1, 7, 10 ** 9):
        assert torch.allclose(accumulate_self_attention(weights, rec.self_qk, chunk_elements=chunk), dense, atol=1e-5)


def test_was_train_is_softmax_weighted_and_differentiable():
    rec = _record()
    rec.self_qk = [(q.requires_grad_(), k, s) for q, k, s in rec.self_qk]
    out = was_train(rec)
    ca = torch.stack(rec.cross).mean(0)
    dense = _dense_was(torch.softmax(ca, 1).reshape(2, 3, 30), _dense_sa(rec)).reshape(2, 3, 6, 5)
    assert torch.allclose(out, dense, atol=1e-5)
    out.sum().backward()
    assert rec.self_qk[0][0].grad is not None
    # softmax weights sum to one per pixel and SA rows sum to one: each pixel's classes sum to one
    assert torch.allclose(out.sum(dim=1), torch.ones(2, 6, 5), atol=1e-5)


def test_was_inference_thresholds_background_and_remaps_to_logit_range():
    rec = _record(seed=3)
    out = was_inference(rec)
    ca = torch.stack(rec.cross).mean(0).reshape(2, 3, 30)
    flat = out.reshape(2, 3, 30)
    assert torch.allclose(flat.amin(2), ca.amin(2), atol=1e-5)
    assert torch.allclose(flat.amax(2), ca.amax(2), atol=1e-5)
    bg = ca[:, :1]
    weights = torch.cat([bg * (bg > bg.mean(2, keepdim=True)), ca[:, 1:]], 1)
    acc = _dense_was(weights, _dense_sa(rec))
    unit = (acc - acc.amin(2, keepdim=True)) / (acc.amax(2, keepdim=True) - acc.amin(2, keepdim=True))
    assert torch.allclose((flat - ca.amin(2, keepdim=True)) / (ca.amax(2, keepdim=True) - ca.amin(2, keepdim=True)), unit, atol=1e-4)


def test_labels_come_back_at_any_frame_size():
    was = torch.zeros(2, 3, 4, 4)
    was[:, 2, :, 2:] = 5.0  # right half: class 2
    labels = labels_from_was(was, (7, 13))
    assert labels.shape == (2, 7, 13) and labels.dtype == torch.uint8
    assert (labels[:, :, -3:] == 2).all() and (labels[:, :, :3] == 0).all()


def test_class_argmax_is_torch_argmax_with_ties_and_nans():
    from smite_core.method.was import class_argmax

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 5, 40):
        scores = torch.randn(k, 37, 53, generator=g)
        scores[:, :5] = 0.0  # ties everywhere in these rows: the first class wins
        scores[min(2, k - 1), 10, 10] = float("nan")
        scores[0, 11, 11] = float("nan")
        labels = class_argmax(scores)
        assert labels.dtype == torch.uint8 and torch.equal(labels, scores.argmax(0).to(torch.uint8)), k
