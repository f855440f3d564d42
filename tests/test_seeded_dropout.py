"""LoRA dropout keyed by a step seed (accel/seeded_dropout.py): the same mask for the same keys, the keep rate asked
for (the hand-written backward over that mask: test_lora_kernels.py), checkpointed layers that recompute it exactly (CPU and GPU), and
graphed checkpointed steps that compute the eager ones (GPU)."""
import dataclasses

import pytest
import torch

from nerbench_core.accel import compiling, cuda_graphs, lora_kernels
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import plan
from nerbench_core.accel.seeded_dropout import DropoutSeed, other_dropout, seeded_dropout

from .helpers import build, planned
from .test_cuda_graphs import batch_of
from .test_decoder import spec_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def seed_on(device: str, value: int) -> DropoutSeed:
    seed = DropoutSeed(torch.device(device))
    seed.value.fill_(value)
    return seed


@pytest.mark.parametrize("device", DEVICES)
def test_the_mask_is_a_function_of_its_keys_at_the_rate_asked_for(device):
    x = torch.randn(300, 1000, device=device, dtype=torch.bfloat16)
    seed, p = seed_on(device, 12345), 0.3

    def kept(salt):  # the mask, read off a tensor of ones (any x could hold a zero)
        return seeded_dropout(torch.ones_like(x), p, seed.value, salt) != 0

    out = seeded_dropout(x, p, seed.value, salt=7)
    torch.testing.assert_close(seeded_dropout(x, p, seed.value, salt=7), out, rtol=0, atol=0)
    mask = kept(7)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.005  # 300,000 draws: the standard error is under 0.001
    torch.testing.assert_close(out[mask], (x[mask].float() / (1 - p)).to(x.dtype), rtol=0, atol=0)
    assert (out[~mask] == 0).all()
    other_salt = kept(8)
    seed.value.fill_(54321)
    other_seed = kept(7)
    for other in (other_salt, other_seed):  # independent masks agree on p^2 + (1-p)^2 of the positions
        assert abs((other == mask).float().mean().item() - (p * p + (1 - p) ** 2)) < 0.01


def lora_dropout_only(model: torch.nn.Module) -> None:
    """Every dropout off but LoRA's (the head's would draw from torch's generator)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in name:
            m.p = 0.0


def built_with_lora_dropout(qwen_dir, tmp_path, seeded: bool):
    spec = spec_for(qwen_dir, method="lora", attention="causal")
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.3))
    model = build(spec, ["O", "B-PER", "I-PER"], tmp_path).model.float()  # float32: no autocast needed
    lora_dropout_only(model)
    torch.manual_seed(0)
    for layer in lora_kernels.lora_linears(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    seed = seed_on(next(model.parameters()).device.type, 2024) if seeded else None
    lora_kernels.install(model, dropout_seed=seed)
    model.train()
    return model


def grads_of_step(model, batch, checkpointing: bool) -> list[torch.Tensor]:
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                           "preserve_rng_state": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    torch.manual_seed(5)
    device = next(model.parameters()).device
    model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("seeded", [True, False])
def test_checkpointed_layers_recompute_the_seeded_masks_without_saving_random_states(qwen_dir, tmp_path, seeded):
    """Checkpointing without saving the generator's state (as graphed steps run it): with seeded masks the
    recomputed layers draw what the forward drew, so the gradients are those of a step without checkpointing;
    with torch's dropout (the control) they are not."""
    model = built_with_lora_dropout(qwen_dir, tmp_path, seeded)
    batch = batch_of(3, 8, 0)
    plain, checkpointed = grads_of_step(model, batch, False), grads_of_step(model, batch, True)
    same = all(torch.allclose(g, h, rtol=1e-5, atol=1e-6) for g, h in zip(plain, checkpointed))
    assert same == seeded


def test_other_randomness_in_the_layers_keeps_checkpointed_steps_eager(qwen_dir, tmp_path):
    model = build(spec_for(qwen_dir, method="lora"), ["O"], tmp_path).model
    base = model.get_base_model()
    layers = compiling.repeated_blocks(base)
    assert other_dropout(layers, base.config) is None  # attention dropout 0; LoRA's and the head's aside
    base.config.attention_dropout = 0.1
    assert other_dropout(layers, base.config) == "attention_dropout 0.1"
    base.config.attention_dropout = 0.0
    layers[0].extra = torch.nn.Dropout(0.2)
    assert other_dropout(layers, base.config).startswith("dropout 0.2 in ")


@needs_cuda
def test_the_plan_graphs_checkpointed_steps_only_with_seeded_lora_dropout(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir)
    checkpointed = dataclasses.replace(spec, train=dataclasses.replace(spec.train, gradient_checkpointing=True))
    built = build(checkpointed, ["O", "B-PER"], tmp_path)
    accel = plan(checkpointed, built, DeviceMemory())
    assert accel.cuda_graphs.on and accel.seeded_dropout and "seeded" in accel.cuda_graphs.detail
    peft_layers = dataclasses.replace(checkpointed, train=dataclasses.replace(checkpointed.train, fused_lora=False))
    assert plan(peft_layers, built, DeviceMemory()).cuda_graphs.why == "gradient checkpointing without fused LoRA"
    assert not plan(spec, built, DeviceMemory()).seeded_dropout  # without checkpointing, torch's dropout


@needs_cuda
def test_replayed_checkpointed_steps_give_the_eager_checkpointed_gradients(qwen_dir, tmp_path):
    """QLoRA, LoRA dropout 0.3 keyed by step, checkpointed layers: each graphed step (eager for a shape's first
    batch, replayed after) computes what an eager checkpointed step computes with the seed that step drew."""
    spec = spec_for(qwen_dir, attention="causal")
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.3),
                               train=dataclasses.replace(spec.train, gradient_checkpointing=True))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    accel = planned(spec, built)
    assert accel.seeded_dropout
    model = built.model
    lora_dropout_only(model)
    torch.manual_seed(0)
    for layer in lora_kernels.lora_linears(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                       "preserve_rng_state": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    seed = model.nerbench_dropout_seed

    def loss_of(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(**batch).loss

    graphs = cuda_graphs.GraphedSteps(model, seed)
    seeds = set()
    for i, cpu_batch in enumerate([batch_of(4, 8, 0), batch_of(4, 8, 1), batch_of(2, 16, 2), batch_of(4, 8, 3)]):
        batch = {k: v.cuda() for k, v in cpu_batch.items()}
        for p in params:
            p.grad = None
        loss = graphs.step(loss_of, batch)
        got = [p.grad.clone() for p in params]
        seeds.add(seed.value.item())  # the seed this step drew stays in place: the eager step reads it
        for p in params:
            p.grad = None
        want_loss = loss_of(batch)
        want_loss.backward()
        want_loss = want_loss.detach()  # an eager step's autograd graph kept alive would break the next capture
        torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-4, msg=f"batch {i}")
        for g, p in zip(got, params):
            torch.testing.assert_close(g, p.grad, rtol=2e-2, atol=1e-3, msg=f"batch {i}")
    assert graphs.replays == 2 and len(graphs.graphs) == 2 and not graphs.failed
    assert len(seeds) == 4  # every step, replayed or not, drew its own seed


def test_seeded_dropout_needs_every_lora_layer_computed_by_the_fused_projection(qwen_dir, tmp_path):
    """A LoRA layer left to peft's forward would draw torch's dropout inside checkpointed graphed layers: the plan
    refuses (all_plain), and should one fall back while training anyway, it stops instead of training wrongly."""
    model = built_with_lora_dropout(qwen_dir, tmp_path, seeded=True)
    layers = lora_kernels.lora_linears(model)
    assert lora_kernels.all_plain(model)
    layers[0].get_base_layer().weight.requires_grad_(True)  # a trained base weight: peft's forward
    assert not lora_kernels.all_plain(model)
    layers[0].get_base_layer().weight.requires_grad_(False)
    layers[1]._disable_adapters = True  # falls back at run time
    with pytest.raises(RuntimeError, match="fell back to peft's forward"):
        grads_of_step(model, batch_of(2, 4, 0), checkpointing=False)
    model.eval()  # without training dropout the fallback is peft's exact forward
    device = next(model.parameters()).device
    with torch.no_grad():
        model(**{k: v.to(device) for k, v in batch_of(2, 4, 0).items()})


def test_the_trainer_saves_no_random_state_exactly_where_the_dropout_is_seeded(qwen_dir, tmp_path):
    """The wiring (CPU): checkpointing keeps torch's state saving unless the plan graphs checkpointed steps; a model
    the plan did not give its seed is refused before training."""
    from nerbench_core.accel.plan import Lever
    from nerbench_core.training.recipe import train, training_arguments

    spec = spec_for(qwen_dir, method="lora")
    built = build(spec, ["O", "B-PER"], tmp_path)
    accel = plan(spec, built, DeviceMemory())
    on, off = Lever(True, "asked for"), Lever(False, "not asked for")
    cases = {(True, True): False, (True, False): True, (False, True): None}  # (checkpointing, graphs): preserve
    for (checkpointing, graphs), preserve in cases.items():
        planned_ = dataclasses.replace(accel, gradient_checkpointing=on if checkpointing else off,
                                       cuda_graphs=on if graphs else off)
        assert planned_.seeded_dropout == (checkpointing and graphs)
        kwargs = training_arguments(spec, planned_, tmp_path / "out", 10, False).gradient_checkpointing_kwargs
        assert (kwargs or {}).get("preserve_rng_state") == preserve
    seeded = dataclasses.replace(accel, gradient_checkpointing=on, cuda_graphs=on)
    with pytest.raises(RuntimeError, match="no dropout seed"):
        train(built.model, built.tokenizer, spec, seeded, None, lambda m: {}, tmp_path / "out")
