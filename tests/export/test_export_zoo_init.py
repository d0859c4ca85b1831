"""The zoo's stand-in init is deterministic: BatchNorm recalibration ignores the global RNG."""

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from batchforge.export.zoo.init import recalibrate_batchnorm


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.depth = StochasticDepth(0.5, "row")
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.norm(self.depth(self.drop(self.conv(x))))


def stats_after_recalibration(rng_seed: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = Block()
    batches = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    torch.manual_seed(rng_seed)  # whatever drew from the global RNG before
    recalibrate_batchnorm(model, batches)
    assert not model.training and not model.norm.training
    return torch.cat([model.norm.running_mean, model.norm.running_var])


def test_recalibration_does_not_depend_on_the_global_rng_and_runs_dropout_off():
    first, second = stats_after_recalibration(1), stats_after_recalibration(2)
    assert torch.equal(first, second)
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():  # the eval-mode forward's conv outputs: what the statistics must describe
        outs = torch.cat([model.conv(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)))
                          for i in range(3)])
    assert torch.allclose(first[:4], outs.mean(dim=(0, 2, 3)), atol=1e-6)


SEEN_THREADS: list[tuple[bool, int]] = []


def recording_factory(initialise: bool = True) -> nn.Module:
    """A zoo-style factory that records the torch threads its init runs on."""
    SEEN_THREADS.append((initialise, torch.get_num_threads()))
    return Block()


def test_zoo_init_runs_on_fixed_threads_whatever_the_machine_has():
    from batchforge.export.reference import build_module
    from batchforge.export.zoo.init import INIT_THREADS

    before = torch.get_num_threads()
    SEEN_THREADS.clear()
    try:
        for machine_threads in (1, 3):
            torch.set_num_threads(machine_threads)
            build_module(f"{__name__}:recording_factory")
            assert torch.get_num_threads() == machine_threads  # restored after the init
        build_module(f"{__name__}:recording_factory", initialise=False)
    finally:
        torch.set_num_threads(before)
    assert SEEN_THREADS == [(True, INIT_THREADS), (True, INIT_THREADS), (False, 3)]
