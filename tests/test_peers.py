"""Where vizcnn and its peers disagree, one test per class of disagreement (issue 21): vizcnn's
deconvnet equals a hand-written reference in which every rectifier is its own hooked
module, while captum's Deconvolution equals the plain gradient at the rectifiers it cannot
see. GoogLeNet's F.relu and the per-form rectifiers are in test_deconv.py and
test_rectifiers.py; here: Inception-v3 (F.relu), MobileNet-v2 (ReLU6) and DenseNet-121
(the final functional ReLU in its forward)."""
from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
import torchvision
from conftest import image
from torch import nn

import vizcnn

pytestmark = pytest.mark.usefixtures("one_thread")


class Rule(nn.Module):
    """An out-of-place rectifier whose backward is the deconvnet's R · 1(R > 0), set by a
    module backward hook: independent of vizcnn.core.rules."""

    def __init__(self, upper: float | None = None):
        super().__init__()
        self.upper = upper
        self.register_full_backward_hook(lambda _m, _gin, gout: (gout[0].clamp_min(0),))

    def forward(self, x):
        return x.clamp(0, self.upper) if self.upper is not None else torch.relu(x)


def input_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf)[0, target], leaf)
    return g


def captum(model: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(captum's Deconvolution, captum's plain gradient) of one logit."""
    from captum.attr import Deconvolution, Saliency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about its hooks on every call
        deconv = Deconvolution(model).attribute(x.clone().requires_grad_(), target=target)
        plain = Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False)
    model.zero_grad(set_to_none=True)
    return deconv, plain


def seeded(builder, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = builder(weights=None, **kwargs).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def apart(a: torch.Tensor, b: torch.Tensor) -> None:
    assert float((a - b).norm()) > 0.05 * float(b.norm())


def test_inception_v3_functional_relu():
    from torchvision.models.inception import BasicConv2d

    model = seeded(torchvision.models.inception_v3, aux_logits=False, init_weights=False)
    x, target = image(3, 75), 3
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, BasicConv2d):  # its forward is F.relu(self.bn(self.conv(x)), inplace=True)
            m.rule = Rule()
            m.forward = types.MethodType(lambda self, x: self.rule(self.bn(self.conv(x))), m)
    ours = vizcnn.saliency_map(model, x, "deconvnet", target=target).attribution
    close(ours, input_gradient(reference, x, target)[0])
    deconv, plain = captum(model, x, target)
    assert torch.equal(deconv, plain)  # captum sees no nn.ReLU: its deconvnet is the gradient, to the bit
    apart(ours, plain[0])


def test_mobilenet_v2_relu6():
    model = seeded(torchvision.models.mobilenet_v2)
    x, target = image(3, 32), 5
    reference = copy.deepcopy(model)
    for parent in list(reference.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, Rule(upper=6.0))
    ours = vizcnn.saliency_map(model, x, "deconvnet", target=target).attribution
    close(ours, input_gradient(reference, x, target)[0])
    deconv, plain = captum(model, x, target)
    assert torch.equal(deconv, plain)  # ReLU6 is not an nn.ReLU: no hook, the plain gradient
    apart(ours, plain[0])


def test_densenet121_final_functional_relu():
    """DenseNet's ReLU modules captum hooks; the last one, F.relu in DenseNet.forward, it
    cannot: its map is the deconvnet everywhere but there, where it is the gradient."""
    model = seeded(torchvision.models.densenet121)
    x, target = image(3, 32), 7

    def rewrite(final: nn.Module) -> nn.Module:
        ref = copy.deepcopy(model)
        for parent in list(ref.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, name, Rule())
        ref.final = final
        ref.forward = types.MethodType(
            lambda self, x: self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(
                self.final(self.features(x)), 1), 1)), ref)
        return ref

    every = input_gradient(rewrite(Rule()), x, target)[0]  # every ReLU the forward runs has the rule
    missed = input_gradient(rewrite(nn.ReLU()), x, target)[0]  # all but the final one
    ours = vizcnn.saliency_map(model, x, "deconvnet", target=target).attribution
    close(ours, every)
    deconv, plain = captum(model, x, target)
    close(deconv[0], missed)
    apart(missed, every)
    apart(deconv[0], plain[0])  # captum's hooks do fire on the module ReLUs
