"""Decoders as token classifiers on CPU: a tiny Qwen2 with a byte-level BPE tokenizer, built in the test."""
import dataclasses

import pytest
import torch

from nerbench_core.backends.base import load_case, save_case
from nerbench_core.data import load_conll_dir
from nerbench_core.features import WordEncoder
from nerbench_core.options import RunOptions
from nerbench_core.prediction.head import predict_tags
from nerbench_core.scoring import score
from nerbench_core.specs import ModelSpec, TrainConfig

from nerbench_core.training import batching
from nerbench_core.training.recipe import training_arguments
from nerbench_core.training.trainer import NerTrainer

from .helpers import build, make_conll_dir, on_device_of, planned, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_conll_dir(make_conll_dir(tmp_path_factory.mktemp("data"), sizes=(64, 16, 16)))


def spec_for(qwen_dir, **kw):
    base = ModelSpec(name="tiny", model=str(qwen_dir), family="decoder", method="qlora", backend="hf",
                     train=TrainConfig(learning_rate=5e-3, epochs=1, batch_size=8, max_length=32, warmup_ratio=0.0))
    return dataclasses.replace(base, **kw)


def logits(model, ids, mask=None):
    model.eval()
    # these CPU tests also run on a GPU machine
    batch = on_device_of(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask})
    mixed = any(p.dtype == torch.bfloat16 for p in model.parameters())  # bf16 frozen weights, fp32 trained ones
    with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=mixed):
        return model(**batch).logits.float().cpu()


def test_qlora_trains_only_lora_and_head(qwen_dir, dataset, tmp_path):
    import bitsandbytes as bnb

    spec = spec_for(qwen_dir)
    built = build(spec, dataset.labels, tmp_path)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in built.model.modules()), "weights are not 4-bit"
    assert built.model.get_base_model().score.weight.dtype == torch.float32  # the head is not quantized
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}  # 4-bit weights included
    label2id = {l: i for i, l in enumerate(dataset.labels)}
    enc = WordEncoder(built.tokenizer, spec.train.max_length)
    train_split, dev_split = enc.encode(dataset["train"], label2id), enc.encode(dataset["dev"], label2id)
    collate = batching.CountingCollator(built.tokenizer).pad
    gold = [list(s.tags) for s in dataset["dev"]]
    evaluate = lambda m: score(gold, predict_tags(m, dev_split, dict(enumerate(dataset.labels)), collate, 16).tags)
    # two epochs: training goes on after a dev evaluation (bitsandbytes' CPU repack once broke exactly that)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=2))
    outcome = train(built, spec, train_split, evaluate, tmp_path / "out")
    assert outcome.steps == 16 and outcome.real_tokens > 0 and [h["epoch"] for h in outcome.dev_history] == [1.0, 2.0]
    changed = {n for n, p in built.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "nothing was trained"
    assert all("lora_" in n or ".score." in n for n in changed), sorted(changed)
    assert any("lora_" in n for n in changed) and any(".score." in n for n in changed)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or ".score." in n}


@pytest.mark.parametrize("mode, last_k, sees_right", [("causal", None, False), ("bidirectional", None, True),
                                                      ("bidirectional", 1, True)])
def test_attention_mode_decides_whether_tokens_see_the_right(qwen_dir, tmp_path, mode, last_k, sees_right):
    built = build(spec_for(qwen_dir, method="lora", attention=mode, bidirectional_layers=last_k),
                           ["O", "B-PER", "I-PER"], tmp_path)
    torch.manual_seed(0)
    ids = torch.randint(5, len(built.tokenizer), (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % len(built.tokenizer)  # change token j = 7
    a, b = logits(built.model, ids), logits(built.model, changed)
    left = (a[0, :7] - b[0, :7]).abs().max().item()  # tokens i < j
    assert (left > 1e-5) is sees_right, f"max change left of j: {left}"
    assert built.details["bidirectional_layers"] == (0 if mode == "causal" else (last_k or 3))


@pytest.mark.parametrize("mode, last_k", [("causal", None), ("bidirectional", None), ("bidirectional", 2)])
def test_attention_ignores_right_padding(qwen_dir, tmp_path, mode, last_k):
    """Real positions get the same logits with pads on their right, whether or not a layer is handed a padding mask
    (the causal layers are not: their windows hold no pad)."""
    built = build(spec_for(qwen_dir, method="lora", attention=mode, bidirectional_layers=last_k),
                           ["O", "B-PER"], tmp_path)
    ids = torch.randint(5, len(built.tokenizer), (1, 6))
    padded = torch.cat([ids, torch.full((1, 3), built.tokenizer.pad_token_id)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    torch.testing.assert_close(logits(built.model, ids), logits(built.model, padded, mask)[:, :6], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode, last_k, masked", [("causal", None, [False] * 3), ("bidirectional", 1, [False, False, True])])
def test_causal_layers_get_no_padding_mask(qwen_dir, tmp_path, mode, last_k, masked):
    """So that SDPA runs its causal kernel rather than a masked one over a 4-D mask built every forward."""
    built = build(spec_for(qwen_dir, method="lora", attention=mode, bidirectional_layers=last_k),
                           ["O", "B-PER"], tmp_path)
    from nerbench_core.backends.attention import decoder_layers

    seen = []
    for layer in decoder_layers(built.model)[1]:  # registered after attention.apply's hooks: sees what they hand on
        layer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask") is not None),
                                        with_kwargs=True)
    ids = torch.randint(5, len(built.tokenizer), (2, 6))
    logits(built.model, ids, torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    assert seen == masked


@pytest.mark.parametrize("method, mode", [("qlora", "causal"), ("lora", "bidirectional")])
def test_saved_adapter_and_head_reload_to_the_same_predictions(qwen_dir, tmp_path, method, mode):
    spec = spec_for(qwen_dir, method=method, attention=mode)
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    with torch.no_grad():  # make the adapter and head non-trivial, as after training
        for n, p in built.model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(5, len(built.tokenizer), (2, 9))
    expected = logits(built.model, ids)
    folder = save_case(built, spec, ["O", "B-PER", "I-PER"], tmp_path / "saved")
    reloaded = load_case(folder, RunOptions(tmp_path))
    torch.testing.assert_close(logits(reloaded.model, ids), expected)


def test_a_killed_lora_case_resumes_from_its_last_epoch(qwen_dir, dataset, tmp_path):
    spec = spec_for(qwen_dir, method="lora")
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=2))
    label2id = {l: i for i, l in enumerate(dataset.labels)}

    def run(work, evaluate_fails_at=None):
        torch.manual_seed(0)
        built = build(spec, dataset.labels, tmp_path)
        enc = WordEncoder(built.tokenizer, spec.train.max_length)
        train_split, dev_split = enc.encode(dataset["train"], label2id), enc.encode(dataset["dev"], label2id)
        collate = batching.CountingCollator(built.tokenizer).pad
        gold = [list(s.tags) for s in dataset["dev"]]
        calls = []

        def evaluate(m):
            calls.append(1)
            if len(calls) == evaluate_fails_at:
                raise RuntimeError("killed")  # as if the process died during epoch 2
            return score(gold, predict_tags(m, dev_split, dict(enumerate(dataset.labels)), collate, 16).tags)

        outcome = train(built, spec, train_split, evaluate, work, checkpoints=True)
        return outcome, {n: p.detach().clone() for n, p in built.model.named_parameters() if p.requires_grad}

    straight, straight_weights = run(tmp_path / "straight")
    assert straight.checkpoint_seconds > 0  # both epochs' checkpoints, timed apart from training
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "crashy", evaluate_fails_at=2)
    assert (tmp_path / "crashy" / "checkpoint-8").is_dir()  # epoch 1 was saved
    resumed, resumed_weights = run(tmp_path / "crashy")
    assert resumed.resumed_from == "checkpoint-8" and straight.resumed_from is None
    assert resumed.seconds > 0  # epoch 1's dev scoring was timed by the killed run, not subtracted here
    assert [h["epoch"] for h in resumed.dev_history] == [1.0, 2.0]
    assert [h["dev_f1"] for h in resumed.dev_history] == [h["dev_f1"] for h in straight.dev_history]
    assert resumed.best["epoch"] == straight.best["epoch"]
    for name, value in straight_weights.items():  # the same model as a run that was never interrupted
        torch.testing.assert_close(resumed_weights[name], value)


def test_max_steps_caps_training_and_the_steady_rate_leaves_out_the_first_steps(qwen_dir, dataset, tmp_path):
    spec = spec_for(qwen_dir, method="qlora")
    # eager steps: under CUDA graphs (on a GPU) the profile would wait for replayed steps, from step 40
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=3, max_steps=5, batch_size=4,
                                                               cuda_graphs=False))
    label2id = {l: i for i, l in enumerate(dataset.labels)}
    built = build(spec, dataset.labels, tmp_path)
    train_split = WordEncoder(built.tokenizer, spec.train.max_length).encode(dataset["train"], label2id)
    accel = planned(spec, built)
    from nerbench_core.training.recipe import train as recipe

    outcome = recipe(built.model, built.tokenizer, spec, accel, train_split, lambda m: {"f1": 0.0},
                     tmp_path / "work", profile=tmp_path / "profile.txt")
    assert outcome.steps == 5  # 16 steps an epoch without the cap
    assert outcome.steady_tokens_per_second and outcome.steady_tokens_per_second > 0
    assert (tmp_path / "profile.txt").read_text().startswith("steps 4-5")  # the profiler stops at the last step
    assert "by the host's own time" in (tmp_path / "profile.txt").read_text()
    assert "function calls" in (tmp_path / "profile.python.txt").read_text()  # cProfile's stats of the same steps
    # the tiny model's dequantized weights fit beside its activations
    assert accel.fused_lora.detail == "21 projections" and accel.keep_dequantized.on


def test_the_trainers_per_step_shortcuts_give_the_trainers_own_numbers(qwen_dir, dataset, tmp_path):
    from transformers import Trainer

    spec = spec_for(qwen_dir)
    built = build(spec, dataset.labels, tmp_path)
    train_split = WordEncoder(built.tokenizer, spec.train.max_length).encode(
        dataset["train"], {l: i for i, l in enumerate(dataset.labels)})
    collator = batching.CountingCollator(built.tokenizer)
    trainer = NerTrainer(model=built.model, args=training_arguments(spec, planned(spec, built), tmp_path, epoch_steps=8,
                                                                    checkpoints=False),
                         train_dataset=batching.ListDataset(train_split), data_collator=collator)
    batch = on_device_of(built.model, collator([r for r in trainer.train_dataset.rows[:8]]))
    theirs = Trainer.floating_point_ops(trainer, batch)
    assert trainer.floating_point_ops(batch) == theirs > 0
    built.model.num_parameters = lambda **kwargs: pytest.fail("the parameters were counted again")
    assert trainer.floating_point_ops(batch) == theirs  # counted once, reused
    del built.model.num_parameters
    built.model(**batch).loss.backward()
    trainer.args.max_grad_norm = float("inf")  # measure the norm without clipping, twice over the same gradients
    ours, theirs = trainer._clip_grad_norm(built.model), Trainer._clip_grad_norm(trainer, built.model)
    assert float(ours) > 0
    torch.testing.assert_close(ours, theirs)
    trainer.zero_trained_grads()  # what the Trainer's model.zero_grad() does after a step, without the module walk
    assert all(p.grad is None for p in built.model.parameters())


def test_every_training_step_runs_every_module_in_training_mode(qwen_dir, dataset, tmp_path, monkeypatch):
    """The Trainer's per-step model.train() walk is skipped once made: dev scoring in between (eval()) and a fresh
    peft wrapper around eval-mode modules must still leave every dropout on in every step."""
    spec = spec_for(qwen_dir, method="lora")
    # eager steps: a step replayed from a CUDA graph (on a GPU) runs no Python, hence no hook
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=2, cuda_graphs=False))
    built = build(spec, dataset.labels, tmp_path)
    train_split = WordEncoder(built.tokenizer, spec.train.max_length).encode(
        dataset["train"], {l: i for i, l in enumerate(dataset.labels)})
    dropouts = [m for m in built.model.modules() if isinstance(m, torch.nn.Dropout)]
    seen = []  # at every training forward pass: are all dropouts on?
    built.model.register_forward_pre_hook(
        lambda m, args: seen.append(all(d.training for d in dropouts)) if torch.is_grad_enabled() else None)
    walks = []  # Module.train calls on the whole model
    original = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train",
                        lambda self, mode=True: (walks.append(mode) if self is built.model else None, original(self, mode))[1])

    def evaluate(model):
        model.eval()
        return {"f1": 0.0}

    outcome = train(built, spec, train_split, evaluate, tmp_path / "out")
    assert outcome.steps == 16 and len(dropouts) > 20
    assert len(seen) == 16 and all(seen)
    # walks: the first step's, and the step after each dev scoring (eval() itself walks with mode False)
    assert walks.count(True) == 2, walks
    assert "zero_grad" not in vars(built.model)  # the shortcut ends with training


def test_regionally_compiled_layers_predict_what_eager_ones_do(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir, method="lora", attention="bidirectional", train=dataclasses.replace(
        spec_for(qwen_dir).train, fused_lora=False))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    ids = torch.randint(0, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    eager = logits(built.model, ids, mask)
    assert not planned(spec, built).torch_compile.on  # not asked for
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, torch_compile=True))
    compiled = planned(spec, built).torch_compile
    assert (compiled.on, compiled.detail) == (True, "3 x Qwen2DecoderLayer")
    torch.testing.assert_close(logits(built.model, ids, mask), eager, rtol=2e-2, atol=2e-2)
    named = {n for n, _ in built.model.named_parameters()}
    assert not any("_orig_mod" in n for n in named)  # compiled in place: saving and checkpoints see the same names
