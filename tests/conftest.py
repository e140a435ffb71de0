"""Shared test helpers: small seeded models and the model-untouched invariant."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn

# vizcnn signs its manifests with a per-user key made on first use; the tests' key lives in a
# temporary folder (children inherit the variable), never in the real home.
os.environ["VIZCNN_CONFIG_DIR"] = tempfile.mkdtemp(prefix="vizcnn-test-config-")


def snapshot(model: nn.Module) -> dict:
    """Everything vizcnn promises to leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": hook_count(model),
        "grads": [p.grad for p in model.parameters()],
    }


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert all(g is None for g in after["grads"]), "parameter gradients were computed"


@pytest.fixture(scope="session")
def samples_dir():
    from vizcnn.io.sources import SAMPLES_DIR

    return SAMPLES_DIR


def image(c: int, size: int, seed: int = 0) -> torch.Tensor:
    """A seeded random (1, c, size, size) input."""
    return torch.randn(1, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one intra-op thread, and far faster when the machine's
    cores are shared (no waiting on a descheduled sibling thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
