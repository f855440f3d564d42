"""gradient_checkpointing = "auto": the activation estimate and the decision it drives."""
from types import SimpleNamespace

import pytest

from nerbench_core.accel.memory import (DeviceMemory, activation_bytes, capped, room_beside_activations,
                                        tokens_per_step)
from nerbench_core.accel.memory import use_checkpointing as decide_with_room
from nerbench_core.specs import TrainConfig


def use_checkpointing(setting, config, tokens, free, bytes_per_value=2):
    """The decision from the estimate, as accel.plan makes it."""
    return decide_with_room(setting, room_beside_activations(config, tokens, free, bytes_per_value))

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


def test_the_generative_paradigm_counts_the_vocabulary_logits():
    """A causal LM's loss holds logits over its whole vocabulary: Qwen1.5-7B at 4,096 tokens, 151,936 words, bf16
    logits with their float32 copy and gradient: 6.2 GB more than the token classifier's step."""
    qwen = SimpleNamespace(**vars(QWEN_7B), vocab_size=151936)
    head = room_beside_activations(qwen, 4096, 74 * GiB)
    generative = room_beside_activations(qwen, 4096, 74 * GiB, lm_head=True)
    assert abs((head - generative) - 4096 * 151936 * 10 * 1.25) <= 1  # with the estimate's margin


def test_the_plan_reads_the_loaded_model_and_its_spec(tmp_path):
    from nerbench_core.accel.plan import plan
    from nerbench_core.specs import ModelSpec
    from tests.helpers import build, tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    spec = ModelSpec(name="t", model=str(folder),
                     train=TrainConfig(gradient_checkpointing="auto", batch_size=8, max_length=16))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    lever = plan(spec, built, DeviceMemory()).gradient_checkpointing
    assert (lever.on, lever.why) == (False, "activations fit")  # a tiny model: its activations fit anywhere
    forced = ModelSpec(name="t", model=str(folder), train=TrainConfig(gradient_checkpointing=True))
    assert plan(forced, built, DeviceMemory()).gradient_checkpointing.on is True


def test_a_memory_cap_makes_auto_decide_as_on_a_card_of_that_size():
    assert DeviceMemory().cap_bytes is None and capped(70 * GiB, None, 9 * GiB) == 70 * GiB
    card = DeviceMemory(cap_gb=12)  # --gpu-memory 12: a 12 GB card
    assert card.cap_bytes == 12 * 10**9
    # Qwen1.5-14B at its 1024-token batches: off on an 80 GB card, on within 12 GB with its 9 GB of weights loaded
    qwen_14b = SimpleNamespace(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40)
    assert use_checkpointing("auto", qwen_14b, 1024, capped(70 * GiB, None, 9 * GiB)) is False
    assert use_checkpointing("auto", qwen_14b, 1024, capped(70 * GiB, card.cap_bytes, 9 * GiB)) is True
    assert capped(GiB, 12 * 10**9, 13 * 10**9) == 0  # over the cap already: nothing free
    # xdist workers on one GPU each plan with their share of its free memory (on CPU: the system's, unshared)
    assert DeviceMemory(shared_by=2).free_bytes() is not None


@pytest.mark.parametrize("free_gib, keeps", [(74.0, True), (18.0, False), (6.5, False)])
def test_the_7b_keeps_its_weights_dequantized_only_where_they_fit_beside_its_activations(free_gib, keeps):
    """keep_dequantized "auto" (lora_kernels.keep_weights) is given this room: the 7B's 6.5e9 projection weights in
    bf16 (13 GB) beside its 1024-token activations fit on an 80 GB GPU, not on a 24 or 12 GB card."""
    room = room_beside_activations(QWEN_7B, 1024, int(free_gib * GiB))
    assert (room >= 13e9) is keeps
    assert room_beside_activations(QWEN_7B, 1024, None) is None
    # the room is what checkpointing "auto" reads too: it stays off wherever the weights are kept
    assert use_checkpointing("auto", QWEN_7B, 1024, int(free_gib * GiB)) is (room < 0)
