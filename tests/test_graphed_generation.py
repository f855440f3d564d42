"""Graphed greedy decoding (accel/graphed_generation.py) writes what transformers' generate writes: on CPU its steps
eagerly, on a GPU replayed from CUDA graphs; the speed plan decides it and its off switch holds."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from nerbench_core.accel import graphed_generation
from nerbench_core.accel.graphed_generation import GraphedGreedy, cache_length, common_prefix, kv_bytes_per_token
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import decoder, plan
from nerbench_core.data import load_conll_dir
from nerbench_core.prediction.generative import GenerativeTask, until_eos

from .helpers import build, make_conll_dir
# one_thread: an autouse fixture, here too (hundreds of tiny forward passes: tests/test_generative.py says why)
from .test_generative import one_thread, perturbed, spec_for, tiny_causal_lm, with_train  # noqa: F401

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_conll_dir(make_conll_dir(tmp_path_factory.mktemp("data"), sizes=(24, 10, 10)))


@pytest.fixture(scope="module")
def case(tmp_path_factory, dataset):
    """A tiny generative LoRA case with non-trivial adapters, one sentence of context (prompts of many lengths),
    and the answers transformers' generate writes for its dev windows (one at a time: no padding at all)."""
    folder = tiny_causal_lm(tmp_path_factory.mktemp("lm"), chat=True)
    spec = spec_for(folder, context_sentences=1)
    built = build(spec, dataset.labels, tmp_path_factory.mktemp("cache"))
    perturbed(built)
    built.model.eval()
    task = GenerativeTask(spec, built, dataset)
    windows = task.windows["dev"]
    expected = [task.generate(built.model, [w])[0][0] for w in windows]
    return task, built, expected


def answers(task, built, decode) -> list[str]:
    task.decoder = decode
    try:
        return task.generate(built.model, task.windows["dev"])[0]
    finally:
        task.decoder = None


def test_the_decoding_steps_write_what_generate_writes(case):
    task, built, expected = case
    decode = GraphedGreedy(max_rows=4, graphs=False)
    assert answers(task, built, decode) == expected
    assert len(decode.shapes_seen) > 1  # batches of several cache lengths, a last batch of fewer rows
    # the chat template and the instruction were read once a batch, for one row
    assert common_prefix([w.prompt for w in task.windows["dev"]]) > 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="in bf16 on a GPU, attention over a static cache and over "
                    "generate's growing one round differently (test_replayed_steps_under_bf16_... holds there)")
def test_under_autocast_over_float32_weights_the_steps_write_what_generate_writes(case):
    """bf16 autocast over a float32 model: keys leave the rotary embedding in float32, values in bf16 (the static
    cache keeps both as the keys)."""
    task, built, _ = case
    task.spec = with_train(task.spec, bf16=True)
    try:
        windows = task.windows["dev"]
        expected = [task.generate(built.model, [w])[0][0] for w in windows]
        assert answers(task, built, GraphedGreedy(max_rows=4, graphs=False)) == expected
    finally:
        task.spec = with_train(task.spec, bf16=False)


def test_a_shapes_cache_is_let_go_when_the_next_shape_begins(case, monkeypatch):
    """By reference counting alone (a static cache holds up to tens of GB: it must not wait for the collector)."""
    import gc
    import weakref

    task, built, expected = case
    caches = []
    shape = graphed_generation.Shape

    def kept(config, rows, length, device):
        made = shape(config, rows, length, device)
        caches.append(weakref.ref(made.cache))
        return made

    monkeypatch.setattr(graphed_generation, "Shape", kept)
    gc.disable()
    try:
        assert answers(task, built, GraphedGreedy(max_rows=4, graphs=False)) == expected
        assert len(caches) > 1 and all(ref() is None for ref in caches)
    finally:
        gc.enable()


def test_the_common_beginning_of_prompts_leaves_each_its_last_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4, 7]]) == 3
    assert common_prefix([[1, 2], [1, 2, 3]]) == 1  # the shorter prompt keeps its last token
    assert common_prefix([[1, 2], [3, 2]]) == 0
    assert common_prefix([[1, 2, 3]]) == 2


def test_rows_the_memory_cannot_hold_go_to_later_batches_with_the_same_answers(case, monkeypatch):
    task, built, expected = case
    decode = GraphedGreedy(max_rows=8, graphs=False)
    monkeypatch.setattr(GraphedGreedy, "rows_that_fit", lambda self, config, length: 3)
    assert answers(task, built, decode) == expected
    assert max(rows for rows, _ in decode.shapes_seen) == 3


def test_a_batch_out_of_memory_is_decoded_again_in_halves(case, monkeypatch):
    task, built, expected = case
    made = []
    shape = graphed_generation.Shape

    def short_of_memory(config, rows, length, device):
        made.append(rows)
        if len(made) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return shape(config, rows, length, device)

    monkeypatch.setattr(graphed_generation, "Shape", short_of_memory)
    assert answers(task, built, GraphedGreedy(max_rows=8, graphs=False)) == expected
    assert made[:2] == [8, 4]


def test_a_row_ends_at_its_eos_or_bound_and_a_batch_when_all_have(case):
    task, built, _ = case
    model, eos = built.model, task.prompts.eos
    prompts = [w.prompt for w in task.windows["dev"][:3]]
    rows = GraphedGreedy(max_rows=8, graphs=False)(model, prompts, [1, 5, 20], eos, task.tokenizer.pad_token_id)
    assert len(rows[0]) >= 1 and len(rows[1]) >= 5
    # the batch ran until every row had ended, never beyond the longest bound
    assert len(rows[2]) <= 20 and all(len(r) == len(rows[0]) for r in rows)
    ended = [until_eos(r[:bound], eos)[1] for r, bound in zip(rows, [1, 5, 20])]
    assert len(rows[0]) == max(ended)
    assert until_eos(rows[2], eos)[1] <= 20


def test_cache_lengths_and_the_memory_of_a_token():
    assert [cache_length(n) for n in (1, 64, 65, 300)] == [64, 64, 128, 320]
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    assert kv_bytes_per_token(config, torch.bfloat16) == 2 * 32 * 4096 * 2  # Qwen1.5-7B: 512 KiB a token


def test_the_plan_decodes_graphed_only_for_generative_cases_on_cuda_where_asked(case, dataset, tmp_path):
    task, built, _ = case
    spec = task.spec
    planned = plan(spec, built, DeviceMemory())
    off = dataclasses.replace(spec, train=dataclasses.replace(spec.train, graphed_generation=False))
    assert plan(off, built, DeviceMemory()).graphed_generation.why == "not asked for"
    assert decoder(plan(off, built, DeviceMemory()), off, DeviceMemory()) is None
    head = dataclasses.replace(spec, paradigm="head", output_format="inline")
    assert plan(head, built, DeviceMemory()).graphed_generation.why == "head paradigm"
    if torch.cuda.is_available():
        assert planned.graphed_generation.on and isinstance(decoder(planned, spec, DeviceMemory()), GraphedGreedy)
    else:
        assert planned.graphed_generation.why == "no CUDA" and decoder(planned, spec, DeviceMemory()) is None
    # a field added later: at its default, a spec's run key is what it was
    assert with_train(spec, graphed_generation=True).hash() == spec.hash() != off.hash()


@needs_cuda
def test_replayed_steps_write_what_generate_writes(case):
    """float32, no autocast: replayed, eager and transformers' steps give the same argmax."""
    task, built, expected = case
    decode = GraphedGreedy(max_rows=4)
    assert answers(task, built, decode) == expected
    assert decode.replays > 0 and decode.failed is None, decode.describe()


@needs_cuda
def test_replayed_steps_under_bf16_write_what_the_same_steps_write_eagerly(case):
    task, built, _ = case
    task.spec = with_train(task.spec, bf16=True)
    try:
        eager = answers(task, built, GraphedGreedy(max_rows=4, graphs=False))
        decode = GraphedGreedy(max_rows=4)
        assert answers(task, built, decode) == eager and decode.replays > 0
    finally:
        task.spec = with_train(task.spec, bf16=False)
