"""gradient_checkpointing = "auto": the activation estimate and the decision it drives."""
from types import SimpleNamespace

import pytest

from nerbench_core.activations import activation_bytes, decide, tokens_per_step, use_checkpointing
from nerbench_core.specs import TrainConfig

GiB = 2**30
QWEN_7B = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)


def test_estimate_is_close_to_the_measured_7b_activations():
    # measured on one H100 (docs/PERFORMANCE.md): 4096-token batches without checkpointing took 30.0 GiB,
    # with it 8.2 GiB, of which about 1.7 GiB checkpointed inputs and one recomputed layer: 23.5 GiB
    estimate = activation_bytes(QWEN_7B, 4096) / GiB
    assert 23.5 <= estimate <= 23.5 * 1.2


@pytest.mark.parametrize("free_gib, expected", [(74.0, False), (30.0, True), (18.0, True)])
def test_auto_checkpoints_only_where_the_activations_do_not_fit(free_gib, expected):
    # an 80 GB GPU with the 7B's 4-bit weights loaded has about 74 GiB free; a 40 GB card about 30; 24 GB: 18
    assert use_checkpointing("auto", QWEN_7B, 4096, int(free_gib * GiB)) is expected


def test_explicit_settings_and_unknown_memory():
    assert use_checkpointing(True, QWEN_7B, 16, 10**15) is True
    assert use_checkpointing(False, QWEN_7B, 10**6, 0) is False
    assert use_checkpointing("auto", QWEN_7B, 16, None) is True  # no way to know: the safe choice
    # float32 activations (GPUs without bf16) take twice the memory
    assert activation_bytes(QWEN_7B, 4096, bytes_per_value=4) == 2 * activation_bytes(QWEN_7B, 4096)
    assert use_checkpointing("auto", QWEN_7B, 4096, 50 * GiB) is False
    assert use_checkpointing("auto", QWEN_7B, 4096, 50 * GiB, bytes_per_value=4) is True
    assert tokens_per_step(TrainConfig(batch_size=32, max_length=128)) == 4096
    assert tokens_per_step(TrainConfig(batch_size=4096, max_tokens_per_batch=1024)) == 1024


def test_decide_reads_the_loaded_model_and_its_spec(tmp_path):
    from transformers import AutoModelForTokenClassification

    from nerbench_core.specs import ModelSpec
    from tests.helpers import tiny_bert

    model = AutoModelForTokenClassification.from_pretrained(tiny_bert(tmp_path / "bert"), num_labels=3)

    spec = ModelSpec(name="t", model="x", train=TrainConfig(gradient_checkpointing="auto", batch_size=8, max_length=16))
    assert decide(spec, model) is False  # a tiny model: its activations fit in any memory there is
    assert decide(ModelSpec(name="t", model="x", train=TrainConfig(gradient_checkpointing=True)), model) is True


def test_a_memory_cap_makes_auto_decide_as_on_a_card_of_that_size(monkeypatch):
    from nerbench_core.activations import MEMORY_CAP, capped, memory_cap_bytes

    monkeypatch.delenv(MEMORY_CAP, raising=False)
    assert memory_cap_bytes() is None and capped(70 * GiB, None, 9 * GiB) == 70 * GiB
    monkeypatch.setenv(MEMORY_CAP, "12")  # --gpu-memory 12: a 12 GB card
    assert memory_cap_bytes() == 12 * 10**9
    # Qwen1.5-14B at its 1024-token batches: off on an 80 GB card, on within 12 GB with its 9 GB of weights loaded
    qwen_14b = SimpleNamespace(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40)
    assert use_checkpointing("auto", qwen_14b, 1024, capped(70 * GiB, None, 9 * GiB)) is False
    assert use_checkpointing("auto", qwen_14b, 1024, capped(70 * GiB, memory_cap_bytes(), 9 * GiB)) is True
    assert capped(GiB, 12 * 10**9, 13 * 10**9) == 0  # over the cap already: nothing free


@pytest.mark.parametrize("free_gib, keeps", [(74.0, True), (18.0, False), (6.5, False)])
def test_the_7b_keeps_its_weights_dequantized_only_where_they_fit_beside_its_activations(free_gib, keeps):
    """keep_dequantized "auto" (lora_kernels.keep_weights) is given this room: the 7B's 6.5e9 projection weights in
    bf16 (13 GB) beside its 1024-token activations fit on an 80 GB GPU, not on a 24 or 12 GB card."""
    from nerbench_core.activations import room_beside_activations

    room = room_beside_activations(QWEN_7B, 1024, int(free_gib * GiB))
    assert (room >= 13e9) is keeps
    assert room_beside_activations(QWEN_7B, 1024, None) is None
    # the room is what checkpointing "auto" reads too: it stays off wherever the weights are kept
    assert use_checkpointing("auto", QWEN_7B, 1024, int(free_gib * GiB)) is (room < 0)
