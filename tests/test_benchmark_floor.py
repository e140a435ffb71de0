"""The benchmarks' arithmetic floor is a lower bound: vizcnn's projections do at least
the floor's FLOPs (counted), and take at least the floor's time."""
from __future__ import annotations

import pytest
import torch

import vizcnn
from benchmarks.common import median_seconds
from benchmarks.floor import CountFlops, conv_flops_per_second, floor_ms, projection_flops
from vizcnn.models import load_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_model("alexnet", "fashion-mnist")


@pytest.mark.parametrize("layer, k", [("conv1", 4), ("conv2", 9), ("conv5", 9)])
def test_projections_do_at_least_the_floor_flops(model, layer, k):
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    counter = CountFlops()
    with counter:
        units, _ = vizcnn.project_top(model, x, layer, k)
    assert 0 < projection_flops(model, x, layer, k) <= projection_flops(model, x, layer, k, units) <= counter.total


def test_projections_take_at_least_the_floor_time(model):
    cpu = torch.device("cpu")
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    peak = conv_flops_per_second(model, (3, 96, 96), cpu)  # at most the benchmarks' peak: a stricter floor
    seconds = median_seconds(lambda: vizcnn.project_top(model, x, "conv5", 9), cpu, repeats=3)
    assert floor_ms(projection_flops(model, x, "conv5", 9), peak) <= seconds * 1e3
