"""Packed training batches (accel/packing.py): one row of sentences, attention per sentence. On a CPU the
segments go through SDPA one at a time (the reference); on a GPU through torch's varlen_attn, tested against it."""
import dataclasses
import random

import pytest
import torch
from transformers import DataCollatorForTokenClassification

from nerbench_core.accel import packing
from nerbench_core.accel.cuda_graphs import BatchShapes, batch_shapes, bucket_length
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import plan
from nerbench_core.training import batching

from .helpers import build, on_device_of, tiny_bert
from .test_decoder import spec_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen attention needs a GPU")


def sentences(n: int, seed: int = 0, vocab: int = 300, longest: int = 30) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(2, longest)
        rows.append({"input_ids": [rng.randrange(3, vocab) for _ in range(length)],
                     "labels": [rng.choice([-100, 0, 1, 2]) for _ in range(length)]})
    return rows


def test_a_packed_row_holds_the_sentences_with_positions_from_zero_and_fillers_attending_to_themselves():
    rows = [{"input_ids": [5, 6, 7], "labels": [1, -100, 2]}, {"input_ids": [8, 9], "labels": [0, 1]}]
    exact, real = packing.pack(rows, pad_id=0, longest=4)
    assert real == 5 and exact["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert exact["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and exact["labels"].tolist() == [[1, -100, 2, 0, 1]]
    assert exact[packing.SEGMENTS].tolist() == [0, 3, 5] and exact[packing.SEGMENTS].dtype == torch.int32
    assert exact[packing.LONGEST] == 4

    shapes = BatchShapes(4096)  # no token budget: up the graphs' length ladder
    shaped, real = packing.pack(rows, pad_id=0, longest=4, shapes=shapes)
    assert real == 5 and shaped["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]  # up the ladder: 8
    # the filler: pad tokens, unlabelled, a segment of their own; then empty segments up to a power of two
    assert shaped[packing.SEGMENTS].tolist() == [0, 3, 5, 8, 8, 8, 8, 8, 8]
    assert shaped["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert (shaped["labels"][0, 5:] == -100).all()
    # a filler longer than `longest`: segments of at most `longest`
    eight = [{"input_ids": [5] * 4, "labels": [0] * 4}] * 8 + [{"input_ids": [6], "labels": [1]}]
    shaped, real = packing.pack(eight, pad_id=0, longest=4, shapes=shapes)
    assert real == 33 and shaped["input_ids"].shape == (1, 40)
    assert shaped[packing.SEGMENTS].tolist()[8:12] == [32, 33, 37, 40]
    # with a token budget, every row is padded to it: one shape for any number of real positions within it
    for n in (3, 9, 12):
        shaped, real = packing.pack([{"input_ids": [5] * n, "labels": [0] * n}], pad_id=0, longest=12,
                                    shapes=BatchShapes(4096, 12))
        assert real == n and shaped["input_ids"].shape == (1, 12) and shaped[packing.SEGMENTS].shape == (9,)
    # a budget the batch size cannot fill (2 sentences of at most 12): to what they fill, up the ladder; a lone
    # sentence over the budget: up the ladder from its length
    assert BatchShapes(2, 100).packed_length(5, longest=12) == bucket_length(24) == 24
    assert BatchShapes(4096, 12).packed_length(30, longest=32) == bucket_length(30) == 32
    with pytest.raises(ValueError, match="5 sub-tokens, over the 4 bound"):
        packing.pack([{"input_ids": [1] * 5, "labels": [0] * 5}], pad_id=0, longest=4)


def test_segment_counts_round_up_to_powers_of_two():
    assert [BatchShapes.segments(n) for n in (1, 8, 9, 33, 64, 65)] == [8, 8, 16, 64, 64, 128]


def test_the_collator_packs_and_counts_the_fillers_as_padding(qwen_dir):
    from nerbench_core.backends.hf import tokenizer_for

    rows = sentences(10)
    collator = batching.CountingCollator(tokenizer_for(str(qwen_dir)), BatchShapes(4096, 1024), packed_longest=32)
    batch = collator(rows)
    real = sum(len(r["input_ids"]) for r in rows)
    assert collator.real_tokens == real and batch["input_ids"].shape == (1, 1024)  # the token budget
    assert collator.padding_fraction == pytest.approx(1 - real / batch["input_ids"].numel())


def padded_and_packed(model, rows: list[dict], pad_id: int, tokenizer, shapes: BatchShapes | None):
    """The loss, the labelled positions' logits and the trained weights' gradients, of ``rows`` as a padded batch
    and as a packed row."""
    padded = DataCollatorForTokenClassification(tokenizer, return_tensors="pt")(
        [{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows])
    packed, _ = packing.pack(rows, pad_id, longest=32, shapes=shapes)
    out = []
    for batch in (padded, packed):
        model.zero_grad()
        result = model(**on_device_of(model, batch))
        result.loss.backward()
        labelled = batch["labels"] != -100
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        out.append((result.loss.detach(), result.logits.detach()[labelled.to(result.logits.device)], grads))
    return out


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("shaped", [False, True], ids=["exact", "graph-shaped"])
def test_a_packed_batch_computes_what_the_padded_batch_does(qwen_dir, tmp_path, attention, shaped):
    spec = spec_for(qwen_dir, method="lora", attention=attention)
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0),  # the same masks: none
                               train=dataclasses.replace(spec.train, bf16=False))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    model = built.model.float()
    packing.install(built.transformers_model)
    model.eval()  # the classifier's dropout off; gradients still flow
    rows = sentences(12, longest=20)
    (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = padded_and_packed(
        model, rows, built.tokenizer.pad_token_id, built.tokenizer, BatchShapes(4096, 512) if shaped else None)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_unpacked_batches_still_go_through_sdpa_unchanged(qwen_dir, tmp_path, attention):
    """Prediction's padded batches: the same logits before and after install (bidirectional layers build their
    padding mask through the mask function registered with the attention one)."""
    spec = spec_for(qwen_dir, method="lora", attention=attention)
    built = build(spec, ["O", "B-PER"], tmp_path)
    model = built.model.eval()
    batch = on_device_of(model, {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]),
                                 "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])})
    with torch.no_grad():
        before = model(**batch).logits
        packing.install(built.transformers_model)
        assert built.transformers_model.config._attn_implementation == packing.ATTENTION
        assert torch.equal(model(**batch).logits, before)


def case_on_a_gpu(monkeypatch, spec, built, free: int | None):
    """The plan's view of a case as a GPU with bf16 would give it, on this machine (the decisions, not the kernels)."""
    from nerbench_core import precision
    from nerbench_core.accel import plan as plan_module

    monkeypatch.setattr(precision, "bf16_available", lambda: True)
    monkeypatch.setattr(packing, "available", lambda: True)
    case = plan_module._Case(spec, built, free)
    case.cuda = True
    return case


def test_the_plan_packs_only_where_the_kernel_serves_and_its_buffer_fits(qwen_dir, tmp_path, monkeypatch):
    spec = spec_for(qwen_dir, method="lora")
    built = build(spec, ["O", "B-PER"], tmp_path)
    off = dataclasses.replace(spec, train=dataclasses.replace(spec.train, packed_sequences=False))
    assert plan(off, built, DeviceMemory()).packed_sequences.why == "not asked for"
    if not torch.cuda.is_available():
        assert plan(spec, built, DeviceMemory()).packed_sequences.why == "no CUDA"
    from nerbench_core.accel.plan import Lever

    kept_none = Lever(False, "")
    need = packing.backward_bytes(built.transformers_model.config, spec.train)
    roomy = case_on_a_gpu(monkeypatch, spec, built, free=100 * 2**30)
    assert roomy.packed_sequences(kept_none) == Lever(True, "asked for")
    # room beside the activations, but less than the buffer: padded, so that packing never turns checkpointing on
    tight = case_on_a_gpu(monkeypatch, spec, built, free=None)
    monkeypatch.setattr(type(tight), "room", lambda self: need - 1)
    assert "does not fit beside the activations" in tight.packed_sequences(kept_none).why
    monkeypatch.setattr(type(tight), "room", lambda self: need)
    assert tight.packed_sequences(kept_none).on
    # a full fine-tune keeps float32 weights: its rotary tables promote q to float32, which the kernel does not take
    full = dataclasses.replace(spec, method="full", lora=None)
    full_case = case_on_a_gpu(monkeypatch, full, build(full, ["O", "B-PER"], tmp_path / "full"), free=100 * 2**30)
    assert full_case.packed_sequences(kept_none).why == "float32 weights, bfloat16 compute"


@pytest.mark.parametrize("kind, why", [
    ("bert", "attention_probs_dropout_prob 0.1 (the kernel has no dropout)"),
    ("gpt2", "attn_pdrop 0.1 (the kernel has no dropout)"),
    ("roberta", "no rotary positions (roberta)"),  # learned positions from padding_idx + 1
    ("qwen2-sliding", "sliding_attention layers"),
    ("qwen2-eager", "eager attention"),
    ("qwen2", None),
])
def test_packing_serves_only_models_whose_every_layer_attends_within_a_sentence(kind, why):
    from transformers import (AutoModelForTokenClassification, BertConfig, GPT2Config, Qwen2Config,
                              RobertaConfig)

    small = dict(num_hidden_layers=2, num_attention_heads=2)
    configs = {
        "bert": BertConfig(hidden_size=32, intermediate_size=64, **small),
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=2),
        "roberta": RobertaConfig(hidden_size=32, intermediate_size=64, attention_probs_dropout_prob=0.0, **small),
        "qwen2-sliding": Qwen2Config(hidden_size=32, intermediate_size=64, use_sliding_window=True,
                                     max_window_layers=1, **small),
        "qwen2-eager": Qwen2Config(hidden_size=32, intermediate_size=64, **small),
        "qwen2": Qwen2Config(hidden_size=32, intermediate_size=64, **small),
    }
    model = AutoModelForTokenClassification.from_config(
        configs[kind], attn_implementation="eager" if kind == "qwen2-eager" else "sdpa")
    assert packing.unsupported(model) == why


@needs_cuda
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_on_a_gpu_a_packed_batch_computes_what_the_padded_batch_does(qwen_dir, tmp_path, attention):
    """The planned path in bf16 (the varlen kernel, fused LoRA on 4-bit weights, the RoPE kernel): a packed row's loss
    and logits are the padded batch's, within bf16 rounding."""
    from .helpers import planned
    from .test_cuda_graphs import without_dropout

    spec = spec_for(qwen_dir, attention=attention)
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    accel = planned(spec, built)
    if not accel.packed_sequences.on:
        pytest.skip(f"packed sequences off: {accel.packed_sequences.why}")
    without_dropout(built.model)
    built.model.eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (loss_a, logits_a, _), (loss_b, logits_b, _) = padded_and_packed(
            built.model, sentences(12, longest=20), built.tokenizer.pad_token_id, built.tokenizer,
            BatchShapes(4096, 512))
    torch.testing.assert_close(loss_b.float(), loss_a.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(logits_b.float(), logits_a.float(), rtol=2e-2, atol=2e-2)


@needs_cuda
@pytest.mark.parametrize("causal", [True, False])
def test_the_varlen_kernel_attends_as_the_reference_does_with_empty_segments(causal):
    if not packing.available():
        pytest.skip("torch has no varlen_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    starts = torch.tensor([0, 7, 40, 41, 100, 128, 128, 128, 128], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(128, heads, 64, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
               for heads in (4, 2, 2))  # grouped-query: two query heads a key and value head
    out = packing.varlen(q, k, v, starts, 64, causal, None)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = packing.reference(q32, k32, v32, starts, 64, causal, None)
    want = torch.autograd.grad(ref, (q32, k32, v32), grad.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


def test_the_backward_buffer_is_flash_attentions_and_bounded_by_the_most_segments_a_row_holds():
    """Flash Attention 2's variable-length backward keeps (positions + 128 x segments) rows of float32 query gradient:
    on an H200 as a 12 GB card, Qwen1.5-14B's row of 512 segments asked for exactly 1.27 GiB (the out-of-memory
    error's "Tried to allocate 1.27 GiB") and failed. The plan's bound takes the largest row a batch can make."""
    from transformers import Qwen2Config

    from nerbench_core.specs import TrainConfig

    qwen14b = Qwen2Config(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)
    assert round(packing.buffer_bytes(qwen14b, 1024, 512) / 2**30, 2) == 1.27
    suite = TrainConfig(batch_size=4096, max_tokens_per_batch=1024, max_length=128)
    assert packing.backward_bytes(qwen14b, suite) == packing.buffer_bytes(qwen14b, 1024, 1024)  # a sub-token each
    # a budget off the ladder: rows are padded to it
    assert packing.backward_bytes(qwen14b, dataclasses.replace(suite, max_tokens_per_batch=1000)) == \
        packing.buffer_bytes(qwen14b, 1000, 1024)
    # 4-sentence batches under a budget they cannot fill: rows padded to 4 x 128; 4 sentences and fillers of up to
    # 511 positions in pieces of 128, 8 segments
    assert packing.backward_bytes(qwen14b, dataclasses.replace(suite, batch_size=4)) == \
        packing.buffer_bytes(qwen14b, 512, 8)
    # a lone sentence longer than the budget: its row up the ladder
    assert packing.backward_bytes(qwen14b, dataclasses.replace(suite, max_tokens_per_batch=100)) == \
        packing.buffer_bytes(qwen14b, 128, 128)
    # 32-sentence batches without a budget: up the ladder, 32 sentences and a filler, 64 segments
    assert packing.backward_bytes(qwen14b, TrainConfig(batch_size=32, max_length=128)) == \
        packing.buffer_bytes(qwen14b, 32 * 128, 64)
    # head_dim rounded up as the kernel does: 80 takes 96 columns
    odd = Qwen2Config(hidden_size=160, num_attention_heads=2, num_key_value_heads=2)
    assert packing.buffer_bytes(odd, 10, 1) == 2 * (10 + 128) * 96 * 4
    assert packing.fits(qwen14b, suite, None) and packing.fits(qwen14b, suite, 2 * 10**9)
    assert packing.fits(qwen14b, suite, 3 * 10**9) is None


def test_no_batch_the_sampler_makes_packs_into_a_row_past_the_bound():
    """backward_bytes against every row the token-budget sampler's batches pack into, over random budgets, batch
    sizes, max lengths (longer than the budget too) and sentence lengths."""
    from transformers import Qwen2Config

    from nerbench_core.specs import TrainConfig

    config = Qwen2Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=2)
    rng = random.Random(0)
    for trial in range(200):
        budget = rng.choice([0, rng.randrange(8, 600)])
        train = TrainConfig(batch_size=rng.randrange(1, 80), max_tokens_per_batch=budget,
                            max_length=rng.randrange(4, 130))
        lengths = [rng.randrange(1, train.max_length + 1) for _ in range(rng.randrange(1, 300))]
        bound = packing.backward_bytes(config, train)
        batches = (list(batching.TokenBudgetBatches(lengths, budget, train.batch_size, seed=trial)) if budget else
                   [list(range(i, min(i + train.batch_size, len(lengths))))
                    for i in range(0, len(lengths), train.batch_size)])
        for batch in batches:
            rows = [{"input_ids": [5] * lengths[i], "labels": [0] * lengths[i]} for i in batch]
            packed, _ = packing.pack(rows, 0, train.max_length, batch_shapes(train))
            positions, segments = packed["input_ids"].shape[1], packed[packing.SEGMENTS].shape[0] - 1
            assert packing.buffer_bytes(config, positions, segments) <= bound, (trial, train, len(batch))


@needs_cuda
def test_packing_is_off_where_its_backward_buffer_does_not_fit(qwen_dir, tmp_path):
    if not packing.available():
        pytest.skip("torch has no varlen_attn")
    spec = spec_for(qwen_dir, method="lora")
    built = build(spec, ["O", "B-PER"], tmp_path)
    lever = plan(spec, built, DeviceMemory(cap_gb=1)).packed_sequences  # the 2 GiB reserve alone is over the card
    assert not lever.on and "does not fit beside the activations" in lever.why
