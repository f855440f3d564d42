"""What a case measures is its own: training's time holds training's GPU work, and its peak memory holds nothing an
earlier case of the same process left behind."""
import gc
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nerbench_core import cost
from nerbench_core.training.callbacks import BestOnDev

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Collator:
    counting = True


def test_dev_scoring_is_timed_after_the_queued_training_steps_have_run():
    """Graph replays let the host run ahead of the GPU; at an epoch's end that queued training work must not be
    timed as dev scoring (training's time would shrink by as much and its rate grow)."""
    model = nn.Linear(2, 2).cuda()

    def evaluate(m):  # prediction waits on the GPU, as copying the predicted labels back does
        torch.cuda.synchronize()
        return {"f1": 0.5}

    selection = BestOnDev(evaluate, Collator())
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000_000)  # GPU clock cycles: a second or so of queued work, for scale
    end.record()
    selection.on_epoch_end(None, SimpleNamespace(global_step=10, epoch=1.0), None, model=model)
    queued = start.elapsed_time(end) / 1000  # the event has completed: the synchronization came first
    assert queued > 0.2
    assert selection.history[0]["seconds"] < queued / 4


def test_an_earlier_case_held_in_reference_cycles_is_not_in_the_next_cases_peak():
    class Model:  # a module and its hooks referring to each other, as models do
        pass

    gc.disable()  # the collector runs only where the code asks for it
    try:
        earlier = Model()
        earlier.me = earlier
        earlier.weights = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 0.25 GiB
        with_it = torch.cuda.memory_allocated() / 2**30
        del earlier  # unreachable, not freed: only the collector frees a cycle
        held = cost.reset_peak_memory()
    finally:
        gc.enable()
    assert held <= with_it - 0.25 + 1e-6
    assert torch.cuda.max_memory_allocated() / 2**30 <= held + 1e-6  # the peak starts from what is held now
