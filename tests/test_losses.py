import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from openrecog.losses import (
    ArcFace,
    CombinedMarginLoss,
    CosFace,
    NormalizedSoftmax,
    PartialFC,
    SoftmaxHead,
    build_head,
    shard_range,
)
from openrecog.losses.partial_fc import _distributed_softmax_ce

S = 64.0


def _cos(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- margins


def test_cosface_hand_values():
    cos = _cos([[0.5, 0.2, -0.3], [0.1, 0.9, 0.4], [0.7, 0.6, 0.5]])
    out = CosFace(s=S, m=0.4)(cos, torch.tensor([0, 1, -1]))
    expected = S * cos.clone()
    expected[0, 0] = S * (0.5 - 0.4)
    expected[1, 1] = S * (0.9 - 0.4)
    torch.testing.assert_close(out, expected)


def test_arcface_hand_values_and_input_untouched():
    cos = _cos([[0.5, 0.2, -0.3], [0.1, 0.9, 0.4], [0.7, 0.6, 0.5]])
    before = cos.clone()
    out = ArcFace(s=S, m=0.5)(cos, torch.tensor([0, 2, -1]))
    expected = S * before
    expected[0, 0] = S * math.cos(math.acos(0.5) + 0.5)
    expected[1, 2] = S * math.cos(math.acos(0.4) + 0.5)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(cos, before)


def test_arcface_fallback_when_theta_plus_m_exceeds_pi():
    m = 0.5
    # cos(pi - m) ~ -0.8776: -0.95 is beyond, -0.5 is not.
    cos = _cos([[-0.95, 0.1], [-0.5, 0.1]])
    out = ArcFace(s=S, m=m)(cos, torch.tensor([0, 0]))
    assert out[0, 0].item() == pytest.approx(S * (-0.95 - math.sin(math.pi - m) * m))
    assert out[1, 0].item() == pytest.approx(S * math.cos(math.acos(-0.5) + m))


def test_arcface_easy_margin():
    cos = _cos([[-0.95, 0.1], [-0.2, 0.1], [0.3, 0.1]])
    out = ArcFace(s=S, m=0.5, easy_margin=True)(cos, torch.tensor([0, 0, 0]))
    assert out[0, 0].item() == pytest.approx(S * -0.95)
    assert out[1, 0].item() == pytest.approx(S * -0.2)
    assert out[2, 0].item() == pytest.approx(S * math.cos(math.acos(0.3) + 0.5))


def test_combined_margin_hand_value():
    cos = _cos([[0.5, 0.2], [0.3, -0.1]])
    out = CombinedMarginLoss(S, 0.9, 0.4, 0.15)(cos, torch.tensor([0, 1]))
    assert out[0, 0].item() == pytest.approx(S * (math.cos(0.9 * math.acos(0.5) + 0.4) - 0.15))
    assert out[1, 1].item() == pytest.approx(S * (math.cos(0.9 * math.acos(-0.1) + 0.4) - 0.15))
    assert out[0, 1].item() == pytest.approx(S * 0.2)


def test_normalized_softmax_is_scaled_cosine():
    cos = _cos([[0.5, 0.2], [0.3, -0.1]])
    torch.testing.assert_close(NormalizedSoftmax(s=10.0)(cos, torch.tensor([0, 1])), 10 * cos)


def test_arcface_gradient_is_finite_at_cos_one():
    cos = _cos([[1.0, -1.0], [-1.0, 0.0]]).requires_grad_()
    ArcFace()(cos, torch.tensor([0, 0])).sum().backward()
    assert torch.isfinite(cos.grad).all()


def test_set_margin_updates_active_margin():
    arc, cosf = ArcFace(s=1.0, m=0.5), CosFace(s=1.0, m=0.4)
    arc.set_margin(0.2)
    cosf.margin = 0.1
    assert (arc.m2, arc.margin, cosf.m3, cosf.margin) == (0.2, 0.2, 0.1, 0.1)
    cos, labels = _cos([[0.5, 0.0]]), torch.tensor([0])
    assert arc(cos, labels)[0, 0].item() == pytest.approx(math.cos(math.acos(0.5) + 0.2))
    assert cosf(cos, labels)[0, 0].item() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        NormalizedSoftmax().set_margin(0.1)


def test_margin_runs_in_fp32_under_autocast():
    cos = torch.tensor([[0.5, 0.2]], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ArcFace()(cos, torch.tensor([0]))
    assert out.dtype == torch.float32
    assert out[0, 0].item() == pytest.approx(S * math.cos(math.acos(0.5) + 0.5), rel=1e-5)


# ---------------------------------------------------------------- PartialFC


def _reference_loss(margin, emb, weight, labels):
    logits = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1, 1)
    return F.cross_entropy(margin(logits, labels), labels)


@pytest.mark.parametrize("margin", [ArcFace(), CosFace(), CombinedMarginLoss(S, 0.9, 0.4, 0.15)])
def test_partial_fc_full_matches_reference_loss_and_grads(margin):
    torch.manual_seed(0)
    pfc = PartialFC(margin, 16, 10, seed=0).double()
    emb = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 10, (8,))
    loss = pfc(emb, labels)
    g_emb, g_w = torch.autograd.grad(loss, (emb, pfc.weight))

    weight = pfc.weight.detach().clone().requires_grad_()
    ref = _reference_loss(margin, emb, weight, labels)
    r_emb, r_w = torch.autograd.grad(ref, (emb, weight))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g_emb, r_emb)
    torch.testing.assert_close(g_w, r_w)


def test_partial_fc_sampling_keeps_positives_and_remaps_labels():
    pfc = PartialFC(CosFace(), 8, 100, sample_rate=0.1, seed=1)
    labels = torch.tensor([3, 97, 3, 50, 12, 61, 88, 7, 40, 22, 19, 5])  # 11 distinct
    index, local = pfc.sample(labels)
    assert index.numel() == 11  # max(#positives, int(0.1 * 100))
    torch.testing.assert_close(index[local], labels)  # class_start == 0
    assert torch.all(index[1:] > index[:-1])

    index, local = pfc.sample(torch.tensor([3, 97, 3]))
    assert index.numel() == 10
    assert set(index.tolist()) >= {3, 97}
    torch.testing.assert_close(index[local], torch.tensor([3, 97, 3]))


def test_partial_fc_sampled_loss_matches_reference_on_sampled_columns():
    torch.manual_seed(0)
    pfc = PartialFC(ArcFace(), 16, 50, sample_rate=0.3, seed=3).double()
    emb = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([4, 4, 17, 33, 49, 0])
    state = pfc.state_dict()
    index, local = pfc.sample(labels)
    assert index.numel() == 15
    pfc.load_state_dict(state)  # rewind the RNG so forward draws the same sample

    loss = pfc(emb, labels)
    loss.backward()
    weight = pfc.weight.detach()[index].clone().requires_grad_()
    ref = _reference_loss(pfc.margin_loss, emb, weight, local)
    torch.testing.assert_close(loss, ref)
    (g_w,) = torch.autograd.grad(ref, weight)
    torch.testing.assert_close(pfc.weight.grad[index], g_w)
    unsampled = torch.ones(50, dtype=torch.bool)
    unsampled[index] = False
    assert torch.all(pfc.weight.grad[unsampled] == 0)


def test_partial_fc_sampling_reproducible_and_state_round_trips():
    labels = torch.tensor([1, 2, 3])
    a = PartialFC(CosFace(), 4, 200, sample_rate=0.1, seed=7)
    b = PartialFC(CosFace(), 4, 200, sample_rate=0.1, seed=7)
    assert torch.equal(a.sample(labels)[0], b.sample(labels)[0])

    state = a.state_dict()
    assert "_extra_state" in state
    nxt = a.sample(labels)[0]
    assert not torch.equal(nxt, a.sample(labels)[0])  # the stream moves on

    c = PartialFC(CosFace(), 4, 200, sample_rate=0.1, seed=123)
    c.load_state_dict(state)
    assert torch.equal(c.weight, state["weight"])
    assert torch.equal(c.sample(labels)[0], nxt)

    other_shard = PartialFC(CosFace(), 4, 200, sample_rate=0.1, rank=1, world_size=2)
    with pytest.raises(ValueError):
        other_shard.load_state_dict(state, strict=False)


@pytest.mark.parametrize("num_classes", [10, 11])
def test_partial_fc_sharding_without_process_group(num_classes):
    shards = [PartialFC(CosFace(), 4, num_classes, rank=r, world_size=2) for r in range(2)]
    ranges = [(p.class_start, p.num_local) for p in shards]
    assert ranges == ([(0, 5), (5, 5)] if num_classes == 10 else [(0, 6), (6, 5)])
    assert [tuple(p.weight.shape) for p in shards] == [(n, 4) for _, n in ranges]

    labels = torch.tensor([0, 5, 9, 6])
    _, local0 = shards[0].sample(labels)
    _, local1 = shards[1].sample(labels)
    if num_classes == 10:
        assert local0.tolist() == [0, -1, -1, -1] and local1.tolist() == [-1, 0, 4, 1]
    else:
        assert local0.tolist() == [0, 5, -1, -1] and local1.tolist() == [-1, -1, 3, 0]
    assert torch.isfinite(shards[1](torch.randn(4, 4), labels))


def test_shard_range_covers_all_classes():
    for n, w in [(7, 3), (10, 4), (4, 4), (1000, 7)]:
        parts = [shard_range(n, r, w) for r in range(w)]
        assert parts[0][0] == 0 and sum(k for _, k in parts) == n
        assert all(parts[i][0] + parts[i][1] == parts[i + 1][0] for i in range(w - 1))
        assert max(k for _, k in parts) - min(k for _, k in parts) <= 1


def test_distributed_ce_ignores_rows_without_target():
    logits = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([1, -1, 4, 0])
    keep = labels != -1
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(_distributed_softmax_ce(logits, labels), expected)


_W, _B, _D, _C = 2, 5, 8, 11


def _dist_data():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(_W * _B, _D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 10, 2, -1, 7, 9, 9, 3, 5, 4])
    weight = torch.randn(_C, _D, generator=g, dtype=torch.float64)
    return emb, labels, weight


def _dist_worker(rank, store, sample_rate):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=_W)
    emb, labels, weight = _dist_data()
    margin = CombinedMarginLoss(30.0, 0.9, 0.4, 0.15)
    pfc = PartialFC(margin, _D, _C, sample_rate, rank=rank, world_size=_W, seed=0).double()
    with torch.no_grad():
        pfc.weight.copy_(weight[pfc.class_start : pfc.class_start + pfc.num_local])
    state = pfc.state_dict()
    index, _ = pfc.sample(labels)
    pfc.load_state_dict(state)
    e = emb[rank * _B : (rank + 1) * _B].clone().requires_grad_()
    loss = pfc(e, labels[rank * _B : (rank + 1) * _B])
    loss.backward()
    out = {"loss": loss.detach(), "g_emb": e.grad, "g_w": pfc.weight.grad[index]}
    torch.save({**out, "cols": index + pfc.class_start}, f"{store}.{rank}")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_partial_fc_two_process_gloo_matches_single_process(tmp_path):
    store = tmp_path / "store"
    mp.spawn(_dist_worker, args=(str(store), 0.5), nprocs=_W)
    outs = [torch.load(f"{store}.{r}") for r in range(_W)]
    emb, labels, weight = _dist_data()
    # Reference: one softmax over the union of both ranks' sampled columns.
    cols = torch.cat([o["cols"] for o in outs])
    remap = torch.full((_C,), -1, dtype=torch.long)
    remap[cols] = torch.arange(len(cols))
    local = torch.where(labels >= 0, remap[labels.clamp_min(0)], -1)
    e, w = emb.clone().requires_grad_(), weight[cols].clone().requires_grad_()
    logits = F.linear(F.normalize(e), F.normalize(w)).clamp(-1, 1)
    ref = F.cross_entropy(
        CombinedMarginLoss(30.0, 0.9, 0.4, 0.15)(logits, local), local, ignore_index=-1
    )
    ref.backward()
    n0 = len(outs[0]["cols"])
    for r, o in enumerate(outs):
        torch.testing.assert_close(o["loss"], ref.detach())
        # × world size: DDP will average the replicated backbone's gradients.
        torch.testing.assert_close(o["g_emb"], _W * e.grad[r * _B : (r + 1) * _B])
        torch.testing.assert_close(o["g_w"], w.grad[:n0] if r == 0 else w.grad[n0:])


def test_partial_fc_rejects_bad_arguments():
    with pytest.raises(ValueError):
        PartialFC(CosFace(), 4, 10, sample_rate=0.0)
    with pytest.raises(ValueError):
        PartialFC(CosFace(), 4, 10, rank=2, world_size=2)


# ---------------------------------------------------------------- softmax + factory


def test_softmax_head_matches_cross_entropy():
    torch.manual_seed(0)
    head = SoftmaxHead(8, 5)
    emb, labels = torch.randn(4, 8), torch.tensor([0, 4, 2, 2])
    expected = F.cross_entropy(head.fc(F.normalize(emb)), labels)
    torch.testing.assert_close(head(emb, labels), expected)
    assert head.logits(emb).shape == (4, 5)


@pytest.mark.parametrize(
    ("loss", "margin_cls", "s", "m"),
    [
        ("arcface", ArcFace, 64.0, 0.5),
        ("cosface", CosFace, 64.0, 0.4),
        ("combined", CombinedMarginLoss, 64.0, 0.3),
        ("normsoftmax", NormalizedSoftmax, 64.0, 0.0),
    ],
)
def test_build_head_cosine_heads(loss, margin_cls, s, m):
    head = build_head(loss, 8, 20, sample_rate=0.5, seed=0)
    assert isinstance(head, PartialFC) and type(head.margin_loss) is margin_cls
    assert (head.margin_loss.s, head.margin_loss.margin, head.sample_rate) == (s, m, 0.5)
    emb = torch.randn(3, 8)
    assert head.logits(emb).shape == (3, 20)
    assert torch.isfinite(head(emb, torch.tensor([0, 5, 19])))


def test_build_head_overrides_and_errors():
    head = build_head("arcface", 8, 20, s=30.0, m=0.3, easy_margin=True)
    assert (head.margin_loss.s, head.margin_loss.m2, head.margin_loss.easy_margin) == (
        30.0,
        0.3,
        True,
    )
    combined = build_head("combined", 8, 20, m1=0.9, m2=0.4, m3=0.15).margin_loss
    assert (combined.m1, combined.m2, combined.m3) == (0.9, 0.4, 0.15)
    assert isinstance(build_head("softmax", 8, 20), SoftmaxHead)
    with pytest.raises(ValueError, match="arcface"):
        build_head("sphereface", 8, 20)
    with pytest.raises(ValueError):
        build_head("softmax", 8, 20, sample_rate=0.5)
    with pytest.raises(ValueError):
        build_head("cosface", 8, 20, m2=0.3)
