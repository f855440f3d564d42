"""bitsandbytes' optimizer step without its synchronization after each parameter (bnb_without_syncs, accel/bnb_step.py):
the plan's decision, the synchronization left out only on the default stream and put back after the block, and (GPU)
the same parameters as the synchronized step's."""
import dataclasses

import pytest
import torch

from nerbench_core.accel import bnb_step
from nerbench_core.accel import plan as plan_module
from nerbench_core.accel.memory import DeviceMemory

from .helpers import build
from .test_decoder import spec_for

bnb_optimizer = pytest.importorskip("bitsandbytes.optim.optimizer")


def test_the_lever_is_asked_for_and_needs_cuda_and_an_unpaged_bitsandbytes_optimizer(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir)
    built = build(spec, ["O"], tmp_path)

    def lever(cuda=torch.cuda.is_available(), **train):
        case = plan_module._Case(dataclasses.replace(spec, train=dataclasses.replace(spec.train, **train)), built,
                                 DeviceMemory().free_bytes())
        case.cuda = cuda
        return case.bnb_without_syncs()

    assert spec.train.bnb_without_syncs and lever(bnb_without_syncs=False).why == "not asked for"
    assert lever(cuda=False, bnb_without_syncs=True, optimizer="adamw_bnb_8bit").why == "no CUDA"
    on = lever(cuda=True, bnb_without_syncs=True, optimizer="adamw_bnb_8bit")
    assert (on.on, on.why) == (True, "asked for")
    for other in ("paged_adamw_8bit", "adamw_torch_fused"):
        assert lever(cuda=True, bnb_without_syncs=True, optimizer=other).why == (
            f"optimizer {other}: not one of bitsandbytes' unpaged ones")
    # the same arithmetic: the switch leaves run keys as they were
    synced = dataclasses.replace(spec, train=dataclasses.replace(spec.train, bnb_without_syncs=False))
    assert synced.hash() == spec.hash()


def test_the_synchronization_is_left_out_only_on_the_default_stream_and_put_back_after(monkeypatch):
    calls = []

    def record(t):
        calls.append(t)

    monkeypatch.setattr(bnb_optimizer, "sync_gpu", record)
    with bnb_step.without_syncs():
        assert bnb_optimizer.sync_gpu is not record
        bnb_optimizer.sync_gpu(torch.zeros(1))  # not on CUDA: bitsandbytes' own function decides (a CPU no-op)
        if torch.cuda.is_available():
            on_gpu = torch.zeros(1, device="cuda")
            bnb_optimizer.sync_gpu(on_gpu)  # the default stream: left out
            with torch.cuda.stream(torch.cuda.Stream()):
                bnb_optimizer.sync_gpu(on_gpu)  # another stream: synchronized
    assert bnb_optimizer.sync_gpu is record
    assert len(calls) == (2 if torch.cuda.is_available() else 1)
    with pytest.raises(RuntimeError), bnb_step.without_syncs():
        raise RuntimeError("a training that fails")
    assert bnb_optimizer.sync_gpu is record


def test_a_bitsandbytes_step_goes_through_the_name_the_lever_replaces(monkeypatch):
    """A real 8-bit AdamW step (bitsandbytes' CPU kernels) asks the patched name once a parameter: the lever reaches
    the synchronization it means to leave out (here, off CUDA, it hands the call on)."""
    import bitsandbytes as bnb

    calls = []
    monkeypatch.setattr(bnb_optimizer, "sync_gpu", calls.append)
    params = [torch.randn(16, 64, requires_grad=True), torch.randn(64, 16, requires_grad=True)]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3, min_8bit_size=1)
    with bnb_step.without_syncs():
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape)
            optimizer.step()
    assert len(calls) == 6 and all(optimizer.state[p]["state1"].dtype == torch.uint8 for p in params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the synchronizations left out are CUDA's")
def test_steps_without_the_synchronizations_give_the_same_parameters(monkeypatch):
    """Three 8-bit AdamW steps on LoRA-shaped parameters, the gradients written by kernels queued just before each step
    (as a replayed graph's are): bit for bit the parameters of the synchronized steps, with none of their 48
    synchronizations."""
    import bitsandbytes as bnb

    synchronize, syncs = torch.cuda.synchronize, []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(1) or synchronize(device))

    def train(unsynced: bool) -> list[torch.Tensor]:
        g = torch.Generator(device="cuda").manual_seed(0)
        params = [torch.randn(shape, device="cuda", generator=g).requires_grad_() for shape in
                  [(16, 4096), (4096, 16)] * 8]
        optimizer = bnb.optim.AdamW8bit(params, lr=1e-3, min_8bit_size=1)
        with bnb_step.without_syncs() if unsynced else torch.no_grad():
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, device="cuda", generator=g).mul_(2).sin_()
                optimizer.step()
        assert all(optimizer.state[p]["state1"].dtype == torch.uint8 for p in params)  # 8-bit states
        return [p.detach().clone() for p in params]

    synced = train(False)
    made = len(syncs)
    assert made >= 48  # one a parameter a step
    unsynced = train(True)
    assert len(syncs) == made
    for a, b in zip(synced, unsynced):
        assert torch.equal(a, b)
