import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nerbench_core.training import callbacks
from nerbench_core.training.callbacks import BestOnDev, CheckpointClock, LossCurve, Progress, SteadyRate


class Collator:
    counting = True


def test_best_dev_epoch_weights_are_restored_at_the_end():
    model = nn.Linear(2, 2)
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    scores = iter([0.5, 0.8, 0.6])  # dev F1 after epochs 1, 2, 3: epoch 2 is best
    selection = BestOnDev(lambda m: {"f1": next(scores)}, Collator())
    weights = {}
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights[epoch] = model.weight.detach().clone()
        selection.on_epoch_end(None, SimpleNamespace(global_step=epoch * 10, epoch=float(epoch)), None, model=model)
    selection.on_train_end(None, SimpleNamespace(global_step=30, epoch=3.0), None, model=model)
    assert selection.best["epoch"] == 2.0 and selection.best["dev_f1"] == 0.8
    assert torch.equal(model.weight, weights[2])
    assert [h["dev_f1"] for h in selection.history] == [0.5, 0.8, 0.6]  # no second scoring at train end


def test_checkpoints_are_timed_apart_from_training_as_dev_scoring_is(monkeypatch):
    """Training's time and its steady rate leave out each epoch's checkpoint, from dev scoring's end to the last file
    (BestOnDev's on_save), as they leave out dev scoring; the record keeps their time on its own."""
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    collator = SimpleNamespace(real_tokens=0)
    steady, clock = SteadyRate(collator, warmup=3), CheckpointClock()
    dev_history = []
    for step in range(1, 21):  # 10 steps an epoch, 1 s and 100 tokens each
        now[0] += 1.0
        collator.real_tokens += 100
        steady.on_step_end(None, SimpleNamespace(global_step=step), None)
        if step % 10 == 0:
            clock.on_epoch_end(None, SimpleNamespace(global_step=step), None)
            now[0] += 4.0  # the checkpoint
            clock.on_save(None, SimpleNamespace(global_step=step), None)
            dev_history.append({"step": step, "seconds": 0.0})
    assert clock.saves == [{"step": 10, "seconds": 4.0}, {"step": 20, "seconds": 4.0}] and clock.seconds == 8.0
    assert steady.rate(now[0], dev_history + clock.saves) == pytest.approx(100.0)  # steps 4-20: 1,700 tokens, 17 s
    assert steady.rate(now[0], dev_history) < 100.0  # with the checkpoints counted as training


def test_the_time_left_leaves_out_the_first_steps_that_do_not_recur(monkeypatch):
    """A 7B's first step in a fresh process took about 9 s (Triton's compilations, the first capture) and the next
    70 ms each: the first progress line said 26 minutes left of a 90-second run. The one-off seconds are left out."""
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    events, one_off = [], [0.0, 0]
    progress = Progress(events.append, SimpleNamespace(real_tokens=0), every=10.0, one_off=lambda: tuple(one_off))
    progress.on_train_begin(SimpleNamespace(num_train_epochs=3), SimpleNamespace(global_step=0, max_steps=915), None)
    for step in range(1, 16):
        took = 8.0 if step == 1 else 0.25
        now[0] += took
        if step in (1, 8):  # two shapes' first steps
            one_off[0] += took
            one_off[1] += 1
        progress.on_step_end(None, SimpleNamespace(global_step=step, max_steps=915, epoch=0.0), None)
    step = [e for e in events if e["event"] == "step"][0]
    assert step["step"] == 9  # 10 s in: 8 + 8 x 0.25
    assert step["eta_seconds"] == pytest.approx(0.25 * 906)  # the 7 other steps' time each, 906 to go
    assert Progress(events.append, SimpleNamespace(real_tokens=0)).one_off() == (0.0, 0)  # without graphs


def test_a_nan_loss_stops_the_case_with_its_reason():
    curve = LossCurve()
    curve.on_log(None, SimpleNamespace(global_step=5, epoch=0.1), None, logs={"loss": 1.25})
    with pytest.raises(FloatingPointError, match="training loss is nan at step 6"):
        curve.on_log(None, SimpleNamespace(global_step=6, epoch=0.2), None, logs={"loss": math.nan})
    assert curve.points[0] == {"step": 5, "epoch": 0.1, "loss": 1.25}


def test_token_budget_batches_hold_the_budget_and_give_the_epochs_step_count():
    import random

    from nerbench_core.specs import ModelSpec, TrainConfig
    from nerbench_core.training.batching import TokenBudgetBatches, steps_per_epoch

    lengths = [random.Random(i).randint(3, 60) for i in range(500)]
    batches = list(TokenBudgetBatches(lengths, max_tokens=256, max_sentences=32, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(500))  # every sentence once an epoch
    assert all(max(lengths[i] for i in b) * len(b) <= 256 and len(b) <= 32 for b in batches)
    budget = ModelSpec(name="x", model="x", train=TrainConfig(batch_size=32, max_tokens_per_batch=256))
    assert steps_per_epoch(budget, lengths) == len(batches)  # what logging_steps is worked out from
    sentences = ModelSpec(name="x", model="x", train=TrainConfig(batch_size=32))
    assert steps_per_epoch(sentences, lengths) == 16  # ceil(500 / 32)


def test_a_resumed_run_gets_the_batches_of_its_epoch():
    """The Trainer calls set_epoch before each epoch: a sampler made afresh for a run resumed at epoch 2 hands out
    epoch 2's batches, as the sampler of an uninterrupted run does."""
    import random

    from nerbench_core.training.batching import TokenBudgetBatches

    lengths = [random.Random(i).randint(3, 60) for i in range(300)]
    straight = TokenBudgetBatches(lengths, max_tokens=256, max_sentences=32, seed=5)
    epochs = []
    for epoch in range(3):
        straight.set_epoch(epoch)
        epochs.append(list(straight))
    resumed = TokenBudgetBatches(lengths, max_tokens=256, max_sentences=32, seed=5)
    resumed.set_epoch(2)
    assert list(resumed) == epochs[2] and epochs[2] != epochs[0]


def test_the_trainers_bitsandbytes_overrides_do_not_outlive_the_training(tmp_path):
    """With a bitsandbytes 8-bit optimizer the Trainer registers each embedding with bitsandbytes' process-wide
    manager; left there, the embedding table stayed allocated for the rest of the process (1.45 GiB on Qwen1.5-14B)."""
    import gc
    import weakref

    from bitsandbytes.optim import GlobalOptimManager
    from transformers import TrainingArguments
    from transformers.trainer import Trainer

    from nerbench_core.training.recipe import optimizer_overrides_scoped

    manager = GlobalOptimManager.get_instance()
    before = list(manager.module_weight_config_triple)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_bnb_8bit", use_cpu=True, report_to=[])
    with optimizer_overrides_scoped():
        Trainer(model=model, args=args).create_optimizer()  # what Trainer.train does first
        assert any(m is model[0] for m, _, _ in manager.module_weight_config_triple)  # the registration happened
    assert manager.module_weight_config_triple == before
    gone = weakref.ref(model[0])
    del model
    gc.collect()
    assert gone() is None
