"""Training batches padded to a few shapes (CPU), and steps replayed from CUDA graphs (GPU only)."""
import dataclasses
import random

import pytest
import torch

from nerbench_core.accel import cuda_graphs, lora_kernels, packing
from nerbench_core.accel.cuda_graphs import BatchShapes, bucket_length
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import plan
from nerbench_core.backends.hf import tokenizer_for
from nerbench_core.data import load_conll_dir
from nerbench_core.features import WordEncoder

from nerbench_core.training import batching
from nerbench_core.training.recipe import training_arguments
from nerbench_core.training.trainer import NerTrainer

from .helpers import build, make_conll_dir, on_device_of, planned, train
from .test_decoder import spec_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_lengths_round_up_a_short_ladder():
    padded = [bucket_length(n) for n in range(1, 129)]
    assert all(p >= n for n, p in zip(range(1, 129), padded)) and padded == sorted(padded)
    assert len(set(padded)) == 16  # 4..32 by 4, 40..64 by 8, 80..128 by 16
    assert (bucket_length(23), bucket_length(33), bucket_length(100), bucket_length(129)) == (24, 40, 112, 192)
    # CoNLL sentences are short: the rounding adds a few percent of positions, not tens
    lengths = [random.Random(i).randint(5, 40) for i in range(1000)]
    assert sum(map(bucket_length, lengths)) / sum(lengths) < 1.15


def test_a_batch_is_padded_to_its_shape_with_masked_unlabelled_rows():
    shapes = BatchShapes(max_rows=4096, max_tokens=64)
    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "labels": torch.tensor([[1, 2, -100], [0, 1, -100]])}
    out = shapes.pad(batch, pad_id=0)
    assert out["input_ids"].shape == (16, 4)  # length 3 -> 4, rows: 64 tokens / 4
    for key in batch:
        assert torch.equal(out[key][:2, :3], batch[key])
    assert (out["labels"][2:] == -100).all() and (out["labels"][:, 3] == -100).all()
    assert out["attention_mask"][2:].sum(1).tolist() == [1] * 14 and out["attention_mask"][2:, 0].all()
    assert out["attention_mask"][:, 3].sum() == 0
    assert BatchShapes(max_rows=32).pad(batch, 0)["input_ids"].shape == (32, 4)  # fixed-size batches: the size


def test_token_budget_batches_cut_by_padded_length_come_in_few_shapes():
    lengths = [random.Random(i).randint(3, 120) for i in range(3000)]
    shapes = BatchShapes(max_rows=4096, max_tokens=1024)
    batches = list(batching.TokenBudgetBatches(lengths, 1024, 4096, seed=0, padded_length=shapes.length))
    assert sorted(i for b in batches for i in b) == list(range(3000))
    seen = set()
    for b in batches:
        length = shapes.length(max(lengths[i] for i in b))
        assert len(b) <= shapes.rows(length) and shapes.rows(length) * length <= 1024
        seen.add((shapes.rows(length), length))
    assert len(seen) <= 16


def test_the_collator_counts_real_positions_before_padding_to_the_shape(qwen_dir):
    tokenizer = tokenizer_for(str(qwen_dir))
    rows = [{"input_ids": [3, 4, 5], "labels": [0, 1, 2]}, {"input_ids": [6], "labels": [1]}]
    plain, shaped = batching.CountingCollator(tokenizer), batching.CountingCollator(tokenizer, BatchShapes(8))
    assert plain(rows)["input_ids"].shape == (2, 3) and shaped(rows)["input_ids"].shape == (8, 4)
    assert plain.real_tokens == shaped.real_tokens == 4
    assert shaped.padding_fraction == 1 - 4 / 32


def test_cuda_graphs_are_off_where_they_cannot_serve(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir, method="lora")
    built = build(spec, ["O", "B-PER"], tmp_path)
    off = dataclasses.replace(spec, train=dataclasses.replace(spec.train, cuda_graphs=False))
    assert plan(off, built, DeviceMemory()).cuda_graphs.why == "not asked for"
    checkpointed = dataclasses.replace(spec, train=dataclasses.replace(spec.train, gradient_checkpointing=True))
    if not torch.cuda.is_available():
        assert plan(spec, built, DeviceMemory()).cuda_graphs.why == "no CUDA"
    else:
        assert plan(checkpointed, built, DeviceMemory()).seeded_dropout  # test_seeded_dropout.py
        assert plan(spec, built, DeviceMemory()).cuda_graphs.on


def without_dropout(model: torch.nn.Module) -> None:
    """Every dropout off (LoRA's, the head's), so that two ways of running a step can be compared exactly."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def batch_of(rows: int, length: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # one padded row
    labels = torch.randint(0, 3, (rows, length), generator=g).masked_fill(mask == 0, -100)
    return {"input_ids": torch.randint(1, 200, (rows, length), generator=g), "attention_mask": mask, "labels": labels}


def packed_batch(lengths: list[int], seed: int, pad_id: int, longest: int) -> dict:
    """Sentences of these lengths packed into one row (accel/packing.py), up to the graphs' shapes."""
    rng = random.Random(seed)
    rows = [{"input_ids": [rng.randrange(3, 200) for _ in range(n)], "labels": [rng.randrange(3) for _ in range(n)]}
            for n in lengths]
    return packing.pack(rows, pad_id, longest, BatchShapes(max_rows=4096, max_tokens=256))[0]


@needs_cuda
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_replayed_steps_give_the_eager_gradients(qwen_dir, tmp_path, attention, packed, fp8):
    """QLoRA with the fused projections (dropout off): the first batch of each shape runs eagerly, later ones replay
    its graph; every step's loss and gradients are those of an eager step on the same batch. Packed rows go through
    the variable-length kernel, their segments' starts a graph input and their length bound recorded. With FP8 frozen
    matmuls (forced on: the tiny model is under auto's size), q, k and v share one rounding inside the graph too."""
    spec = spec_for(qwen_dir, attention=attention)
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0), train=dataclasses.replace(
        spec.train, fp8_matmuls=fp8, keep_dequantized=True if fp8 else spec.train.keep_dequantized))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    accel = planned(spec, built)
    if packed and not accel.packed_sequences.on:
        pytest.skip(f"packed sequences off: {accel.packed_sequences.why}")
    if fp8 and not accel.fp8_matmuls.on:
        pytest.skip(f"FP8 matmuls off: {accel.fp8_matmuls.why}")
    model = built.model
    without_dropout(model)  # the head's dropout too: eager and replayed steps draw different masks
    torch.manual_seed(0)
    for layer in lora_kernels.lora_linears(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(**batch).loss

    def eager(batch):
        for p in params:
            p.grad = None
        loss = loss_of(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    graphs = cuda_graphs.GraphedSteps(model)
    if packed:  # rows of 256 positions (the token budget), 16 and 32 segments (sentences and fillers)
        lengths = ([5, 9, 3], [20, 30, 7, 12, 2, 25, 11, 9, 14] + [3] * 12)
        batches = [packed_batch(lengths[i % 2], i, built.tokenizer.pad_token_id, spec.train.max_length)
                   for i in range(5)]
    else:
        batches = [batch_of(4, 8, 0), batch_of(2, 16, 1), batch_of(4, 8, 2), batch_of(2, 16, 3), batch_of(4, 8, 4)]
    for i, cpu_batch in enumerate(batches):
        batch = on_device_of(model, cpu_batch)
        want_loss, want_grads = eager(batch)
        for p in params:
            p.grad = None  # as the Trainer's zero_grad leaves them
        loss = graphs.step(loss_of, batch)
        torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-4, msg=f"batch {i}")
        for p, want in zip(params, want_grads):
            torch.testing.assert_close(p.grad, want, rtol=2e-2, atol=1e-3, msg=f"batch {i}")
    assert len(graphs.graphs) == 2 and graphs.replays == 3


@needs_cuda
def test_a_case_trains_through_cuda_graphs(qwen_dir, tmp_path):
    """The Trainer's whole loop (dev scoring between epochs, best-epoch restore) with replayed steps."""
    dataset = load_conll_dir(make_conll_dir(tmp_path / "data", sizes=(64, 16, 16)))
    spec = spec_for(qwen_dir, method="lora")
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=3, max_tokens_per_batch=128,
                                                               batch_size=4096))
    built = build(spec, dataset.labels, tmp_path)
    train_split = WordEncoder(built.tokenizer, spec.train.max_length).encode(
        dataset["train"], {l: i for i, l in enumerate(dataset.labels)})
    before = {n: p.detach().clone() for n, p in built.model.named_parameters() if p.requires_grad}
    outcome = train(built, spec, train_split, lambda m: {"f1": 0.5}, tmp_path / "out")
    assert outcome.cuda_graphs.startswith("CUDA graphs:") and outcome.steps > len(outcome.dev_history)
    assert outcome.loss_curve and all(torch.isfinite(torch.tensor(p["loss"])) for p in outcome.loss_curve)
    assert outcome.loss_curve[-1]["loss"] < outcome.loss_curve[0]["loss"]
    assert any(not torch.equal(p.detach(), before[n]) for n, p in built.model.named_parameters() if n in before)


@needs_cuda
def test_a_model_that_cannot_be_captured_trains_eagerly_and_says_why():
    """A forward that waits on the GPU (here .item()) breaks a capture: the case goes on eagerly, gradients intact."""

    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x):
            y = self.linear(x).sum()
            return y * (2.0 if y.item() > 0 else 1.0)  # a host decision on a GPU value

    model = Syncing().cuda()
    graphs = cuda_graphs.GraphedSteps(model)
    for seed in range(3):
        x = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed)).cuda()
        model.linear.weight.grad = None
        want = torch.autograd.grad(model(x), model.linear.weight)[0]
        model.linear.weight.grad = None
        graphs.step(lambda batch: model(batch["x"]), {"x": x})
        torch.testing.assert_close(model.linear.weight.grad, want)
    assert graphs.failed and not graphs.graphs
    assert graphs.describe().startswith("CUDA graphs failed, eager steps:")
    # random draws (dropout masks) still work after the failed capture
    torch.cuda.manual_seed(3)
    want = torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.5)
    torch.cuda.manual_seed(3)
    torch.testing.assert_close(torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.5), want)


def loss_and_grads(model, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**on_device_of(model, batch)).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_padding_a_batch_to_its_shape_changes_neither_loss_nor_gradients(qwen_dir, tmp_path, attention):
    """The added positions and rows are masked and unlabelled: what the model learns from a batch is the same."""
    spec = spec_for(qwen_dir, method="lora", attention=attention)
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0),
                               train=dataclasses.replace(spec.train, bf16=False))  # float32: exact enough to compare
    model = build(spec, ["O", "B-PER", "I-PER"], tmp_path).model
    model.train()
    without_dropout(model)
    batch = batch_of(3, 7, seed=5)
    padded = BatchShapes(max_rows=4096, max_tokens=64).pad(batch, pad_id=0)
    assert padded["input_ids"].shape == (8, 8)
    want_loss, want_grads = loss_and_grads(model, batch)
    loss, grads = loss_and_grads(model, padded)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


class EagerSteps:
    """GraphedSteps' interface, run eagerly: the Trainer's side of graphed steps, on a CPU."""

    def __init__(self):
        self.inputs: list[dict] = []

    def step(self, loss_of, inputs):
        self.inputs.append(inputs)
        loss = loss_of(inputs)
        loss.backward()
        return loss.detach()


def test_the_trainers_graphed_step_computes_its_own_step(qwen_dir, tmp_path):
    """NerTrainer.graphed_step hands GraphedSteps the Trainer's compute_loss, with the batch's label count as an
    input: the loss and gradients of the Trainer's own training_step."""
    dataset = load_conll_dir(make_conll_dir(tmp_path / "data", sizes=(16, 4, 4)))
    spec = spec_for(qwen_dir, method="lora")
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0))
    built = build(spec, dataset.labels, tmp_path)
    without_dropout(built.model)
    rows = WordEncoder(built.tokenizer, spec.train.max_length).encode(
        dataset["train"], {l: i for i, l in enumerate(dataset.labels)})
    collator = batching.CountingCollator(built.tokenizer)
    args = training_arguments(spec, plan(spec, built, DeviceMemory()), tmp_path, epoch_steps=2, checkpoints=False)
    graphs = EagerSteps()
    trainer = NerTrainer(model=built.model, args=args, train_dataset=batching.ListDataset(rows),
                         data_collator=collator, graphs=graphs)
    batch = collator(trainer.train_dataset.rows[:8])
    items = (batch["labels"] != -100).sum()
    params = [p for p in built.model.parameters() if p.requires_grad]
    results = []
    for use in (graphs, None):
        trainer.graphs = use
        built.model.zero_grad(set_to_none=True)
        loss = trainer.training_step(built.model, dict(batch), num_items_in_batch=items)
        results.append((loss, [p.grad.clone() for p in params]))
    (graphed_loss, graphed_grads), (loss, grads) = results
    assert len(graphs.inputs) == 1 and int(graphs.inputs[0]["num_items_in_batch"]) == int(items)
    torch.testing.assert_close(graphed_loss, loss)
    for got, want in zip(graphed_grads, grads):
        torch.testing.assert_close(got, want)
