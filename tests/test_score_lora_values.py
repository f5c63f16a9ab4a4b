"""VSD's camera-conditioned LoRA (distill/score/lora.py) by value, written against the survivors of a mutation run
(tests/MUTANTS.md): the camera features, the camera MLP, the time-embedding width, what attach_lora refuses, the
LoRA's scale alpha / r (no dropout, also in training mode), and the camera embedding's width, dtype and placement.

Most tests use a network of a few Linear layers with diffusers' peft adapter support (a stand-in UNet: one attention
projection ``to_q`` and a time embedding), so that every value has a closed form."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.loaders.peft import PeftAdapterMixin
from torch import nn

from priorkit.distill.core.cameras import Camera
from priorkit.distill.score.lora import (
    CameraEmbedding,
    LoRAConfig,
    attach_lora,
    camera_features,
    lora_named_parameters,
    time_embedding_dim,
)


class TinyNet(nn.Module, PeftAdapterMixin):
    """The parts of a diffusers UNet that attach_lora reads: an attention projection ``attn.to_q`` (3 -> 3) and a time
    embedding whose ``linear_2`` outputs 5; no ``class_embedding`` attribute at all unless ``class_attr``."""

    def __init__(self, class_attr: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.Module()
        self.attn.to_q = nn.Linear(3, 3)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_2 = nn.Linear(4, 5)
        if class_attr:
            self.class_embedding = None


def test_camera_features_are_the_camera_to_world_matrix_with_the_eye_on_the_unit_sphere() -> None:
    # azimuth 0: eye (2, 0, 0), looking along -x; right = forward x z = (0, 1, 0), up = right x forward = (0, 0, 1)
    front = torch.tensor([[0.0, 0.0, -1.0, 1.0],
                          [1.0, 0.0, 0.0, 0.0],
                          [0.0, 1.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 1.0]])
    # azimuth 90: eye (0, 3, 0), forward (0, -1, 0), right (-1, 0, 0), up (0, 0, 1); the eye / distance = (0, 1, 0)
    side = torch.tensor([[-1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, -1.0, 1.0],
                         [0.0, 1.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])
    f = camera_features([Camera(0.0, 0.0, distance=2.0), Camera(90.0, 0.0, distance=3.0)])
    assert f.shape == (2, 16) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.stack([front.reshape(-1), side.reshape(-1)]), rtol=0, atol=1e-6)


def test_camera_features_of_no_cameras_are_an_empty_batch_of_16_features() -> None:
    f = camera_features([])
    assert f.shape == (0, 16) and f.dtype == torch.float32


def test_camera_embedding_is_linear_silu_linear_of_hidden_width_64_and_starts_at_zero() -> None:
    emb = CameraEmbedding(7)
    assert (emb.net[0].in_features, emb.net[0].out_features, emb.net[-1].out_features) == (16, 64, 7)
    assert torch.equal(emb(torch.randn(3, 16)), torch.zeros(3, 7))  # the last layer starts at zero
    small = CameraEmbedding(1, in_dim=1, hidden=2)
    with torch.no_grad():
        small.net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        small.net[0].bias.zero_()
        small.net[-1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    # silu(2) + silu(-2) = 2 sigmoid(2) - 2 sigmoid(-2) = 2 tanh(1)  (a linear MLP would give 2 - 2 = 0)
    out = small(torch.tensor([[2.0]]))
    assert float(out.detach()) == pytest.approx(2 * math.tanh(1.0), rel=1e-6)


def test_time_embedding_dim_reads_linear_2_and_refuses_networks_without_one() -> None:
    assert time_embedding_dim(TinyNet()) == 5
    message = r"^the UNet has no time_embedding\.linear_2; camera conditioning needs a diffusers UNet$"
    with pytest.raises(ValueError, match=message):
        time_embedding_dim(nn.Linear(2, 2))  # no time_embedding at all
    half = nn.Module()
    half.time_embedding = nn.Module()  # a time embedding without linear_2
    with pytest.raises(ValueError, match=message):
        time_embedding_dim(half)


def test_attach_lora_refuses_a_network_without_adapter_support_or_the_targets_and_a_second_attach() -> None:
    with pytest.raises(ValueError, match=r"^VSD needs a diffusers UNet \(with peft adapter support\)$"):
        attach_lora(nn.Linear(3, 3))
    # "q" is not "to_q": a target must be a whole module name or its last dotted part(s)
    with pytest.raises(ValueError, match=r"^none of the target modules \('q',\) exists in the UNet$"):
        attach_lora(TinyNet(), LoRAConfig(target_modules=("q",)))
    net = TinyNet()
    attach_lora(net, LoRAConfig(target_modules=("to_q",)))
    with pytest.raises(ValueError, match=r"^this UNet already has a VSD LoRA and camera embedding attached$"):
        attach_lora(net, LoRAConfig(target_modules=("to_q",)))


def _lora_delta(rank: int, alpha: float | None, train: bool) -> torch.Tensor:
    """to_q(x) - base(x) with A = [[1, 0, 0], [0, 1, 0]] (rank 2) and B = [[1, 0], [0, 1], [1, 1]], at x = (1, 2, 3)."""
    net = TinyNet()
    attach_lora(net, LoRAConfig(rank=rank, alpha=alpha, target_modules=("to_q",)))
    layer = net.attn.to_q
    with torch.no_grad():
        layer.lora_A["vsd"].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        layer.lora_B["vsd"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    net.train(train)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    with torch.no_grad():
        return layer(x) - layer.base_layer(x)


@pytest.mark.parametrize("train", [False, True])
def test_lora_adds_alpha_over_rank_times_b_a_without_dropout(train: bool) -> None:
    """W' x = W x + (alpha / r) B A x, with B A x = (1, 2, 3) here; alpha = None means alpha = r (scale 1). No dropout
    on the LoRA input: the same in training mode as in eval mode."""
    ba_x = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(_lora_delta(2, None, train), ba_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(_lora_delta(2, 1.0, train), 0.5 * ba_x, rtol=0, atol=1e-6)


def test_attach_lora_freezes_all_but_the_lora_and_the_camera_embedding() -> None:
    net = TinyNet()
    trainable = attach_lora(net, LoRAConfig(rank=2, target_modules=("to_q",)))
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == ["attn.to_q.lora_A.vsd.weight", "attn.to_q.lora_B.vsd.weight", "class_embedding.net.0.weight",
                     "class_embedding.net.0.bias", "class_embedding.net.2.weight", "class_embedding.net.2.bias"]
    assert [id(p) for p in trainable] == [id(p) for _, p in lora_named_parameters(net)]


def test_the_camera_embedding_gets_the_configured_width_and_the_networks_dtype() -> None:
    net = TinyNet(class_attr=True).double()
    attach_lora(net, LoRAConfig(rank=2, target_modules=("to_q",), camera_hidden=12))
    emb = net.class_embedding
    assert isinstance(emb, CameraEmbedding)
    assert (emb.net[0].in_features, emb.net[0].out_features, emb.net[-1].out_features) == (16, 12, 5)
    assert {p.dtype for p in emb.parameters()} == {torch.float64}
    assert emb(torch.zeros(2, 16, dtype=torch.float64)).dtype == torch.float64  # float64 labels run
    default = TinyNet(class_attr=True)
    attach_lora(default, LoRAConfig(target_modules=("to_q",)))
    assert default.class_embedding.net[0].out_features == 64  # LoRAConfig.camera_hidden = 64


def test_a_network_without_a_class_embedding_attribute_gets_the_camera_embedding() -> None:
    net = TinyNet(class_attr=False)
    assert not hasattr(net, "class_embedding")
    attach_lora(net, LoRAConfig(rank=2, target_modules=("to_q",)))
    assert isinstance(net.class_embedding, CameraEmbedding) and net.class_embedding.net[-1].out_features == 5
