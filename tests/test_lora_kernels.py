"""The fused LoRA projection computes what peft's LoRA layer computes: outputs and every gradient (CPU)."""
import dataclasses

import pytest
import torch

from nerbench_core.accel import lora_kernels
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import plan
from nerbench_core.accel.seeded_dropout import DropoutSeed, seeded_dropout
from nerbench_core.specs import TrainConfig

from .helpers import build, on_device_of, planned
from .test_decoder import spec_for


def one_step(model, ids, labels, autocast: bool):
    """Loss and gradients of one training step (LoRA dropout off; the head's dropout draws the same mask)."""
    torch.manual_seed(1)
    model.train()
    model.zero_grad(set_to_none=True)
    batch = on_device_of(model, {"input_ids": ids, "labels": labels})
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def built_with_lora_in_use(qwen_dir, tmp_path, **spec_fields):
    """A tiny decoder with LoRA (dropout off) whose B matrices are not zero, so that the LoRA path counts."""
    spec = spec_for(qwen_dir, attention="bidirectional", **spec_fields)
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    torch.manual_seed(0)
    for layer in lora_kernels.lora_linears(built.model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    return spec, built


BATCH = (torch.randint(0, 200, (3, 9), generator=torch.Generator().manual_seed(0)),
         torch.randint(0, 3, (3, 9), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_fused_lora_gives_peft_loss_and_gradients(qwen_dir, tmp_path, method):
    """float32 throughout (4-bit weights dequantized to float32): the same numbers as peft's layers."""
    no_bf16 = TrainConfig(**{**dataclasses.asdict(spec_for(qwen_dir).train), "bf16": False})
    spec, built = built_with_lora_in_use(qwen_dir, tmp_path, method=method, train=no_bf16)
    model = built.model
    peft_loss, peft_grads = one_step(model, *BATCH, autocast=False)
    assert planned(spec, built).fused_lora.detail == "21 projections"  # 3 layers x 7
    fused_loss, fused_grads = one_step(model, *BATCH, autocast=False)
    torch.testing.assert_close(fused_loss, peft_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == peft_grads.keys() and any("lora_A" in n for n in fused_grads)
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], peft_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_in_bf16_is_as_close_to_float32_as_peft(qwen_dir, tmp_path):
    """Under bf16 autocast both paths round differently; against float32 arithmetic the fused one is no worse."""
    import copy

    spec, built = built_with_lora_in_use(qwen_dir, tmp_path, method="lora")
    model = built.model
    _, exact = one_step(copy.deepcopy(model).float(), *BATCH, autocast=False)
    _, peft_grads = one_step(model, *BATCH, autocast=True)
    planned(spec, built)
    _, fused_grads = one_step(model, *BATCH, autocast=True)

    def error(grads):
        return sum((grads[n].float() - exact[n]).norm() ** 2 for n in exact) ** 0.5 / sum(g.norm() ** 2 for g in exact.values()) ** 0.5

    assert error(fused_grads) <= 1.25 * error(peft_grads)


@pytest.mark.parametrize("kernel", [False, True], ids=["torch-grad", "kernel-grad"])
@pytest.mark.parametrize("masks", ["torch", "seeded"])
def test_fused_lora_with_dropout_has_the_gradients_of_its_mask(qwen_dir, tmp_path, masks, kernel):
    """With dropout the mask is random: check the hand-written backward against autograd over the same mask: torch's
    (the same generator state) or the seeded one (seeded_dropout.py, the same keys: on a GPU machine its kernel);
    the input gradient through torch's operations or through the Triton kernel (fused_lora_backward, CUDA)."""
    if kernel and not torch.cuda.is_available():
        pytest.skip("the LoRA gradient kernel runs on CUDA")
    spec = spec_for(qwen_dir, method="lora")
    layer = lora_kernels.lora_linears(build(spec, ["O"], tmp_path).model)[0]
    base, name = layer.get_base_layer().float(), layer.active_adapters[0]
    torch.nn.init.normal_(layer.lora_B[name].weight)  # B starts at zero: give A a gradient to compare
    a, b, p, s = layer.lora_A[name].weight, layer.lora_B[name].weight, 0.3, layer.scaling[name]
    x = torch.randn(2, 5, base.in_features, generator=torch.Generator().manual_seed(0))  # whatever ran before
    x = x.to(base.weight.device).requires_grad_()
    seed = DropoutSeed(x.device)
    seed.value.fill_(99)
    keys = (seed.value, 3) if masks == "seeded" else ()

    torch.manual_seed(7)
    fused = lora_kernels.LoraProjection.apply(x, a, b, lora_kernels.FrozenWeight(base), s, p, torch.float32,
                                              *(keys or (None, 0)), kernel)
    grads = torch.autograd.grad(fused.square().sum(), (x, a, b))

    if keys:
        mask = (seeded_dropout(torch.ones_like(x.detach()), p, *keys) != 0).float()
    else:
        torch.manual_seed(7)  # the same mask: the function's first random draw is its dropout
        _, mask = torch.native_dropout(x.detach(), p, True)
    assert 0 < mask.float().mean().item() < 1
    ref = torch.nn.functional.linear(x, base.weight, base.bias) + s * (x * mask * (1.0 / (1 - p))) @ a.t() @ b.t()
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, a, b))
    torch.testing.assert_close(fused, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_peft_forward_runs_where_the_fused_one_does_not_apply(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir, method="lora")
    model = build(spec, ["O", "B-PER"], tmp_path).model.float()
    lora_kernels.install(model)
    layer = lora_kernels.lora_linears(model)[0]
    x = torch.randn(1, 4, layer.get_base_layer().in_features, device=layer.get_base_layer().weight.device)
    assert lora_kernels.plain_adapter(layer, x, (), {}) == "default"
    with model.disable_adapter():
        assert lora_kernels.plain_adapter(layer, x, (), {}) is None  # peft's forward: the base layer alone
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x))
    assert lora_kernels.plain_adapter(layer, x, (), {"adapter_names": ["default"]}) is None
    assert lora_kernels.plain_adapter(layer, x.bfloat16(), (), {}) is None  # mixed dtypes without autocast


def test_fused_lora_follows_the_spec(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir, method="lora")
    built = build(spec, ["O"], tmp_path)
    off = dataclasses.replace(spec, train=dataclasses.replace(spec.train, fused_lora=False))
    compiled = dataclasses.replace(spec, train=dataclasses.replace(spec.train, torch_compile=True))
    assert plan(off, built, DeviceMemory()).fused_lora.why == "not asked for"
    assert plan(compiled, built, DeviceMemory()).fused_lora.why == "torch.compile fuses instead"
    planned(off, built)
    assert all("forward" not in vars(layer) for layer in lora_kernels.lora_linears(built.model))


def test_block_scales_kept_or_not_give_the_same_weight(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir)  # qlora: NF4 with double quantization
    bases = [layer.get_base_layer() for layer in lora_kernels.lora_linears(build(spec, ["O"], tmp_path).model)]
    kept, recomputed = lora_kernels.FrozenWeight(bases[0], True), lora_kernels.FrozenWeight(bases[0], False)
    assert kept.absmax is not None and recomputed.absmax is None
    assert torch.equal(kept.weight(torch.bfloat16), recomputed.weight(torch.bfloat16))
    n = lora_kernels.scales_bytes(bases)
    assert n == 4 * sum(b.weight.numel() * 2 // 64 for b in bases)  # one float32 per 64 weights (2 a byte)
    assert lora_kernels.keep_scales(bases, 20 * n) and not lora_kernels.keep_scales(bases, 20 * n - 1)


def test_weights_kept_dequantized_give_the_same_step(qwen_dir, tmp_path):
    """The kept weight is the dequantization every step would compute: the same loss and gradients, exactly."""
    no_bf16 = TrainConfig(**{**dataclasses.asdict(spec_for(qwen_dir).train), "bf16": False})
    spec, built = built_with_lora_in_use(qwen_dir, tmp_path, method="qlora", train=no_bf16)
    model = built.model
    off = dataclasses.replace(spec, train=dataclasses.replace(spec.train, keep_dequantized=False))
    accel = planned(off, built)
    assert accel.fused_lora.on and (accel.keep_dequantized.on, accel.keep_dequantized.why) == (False, "not asked for")
    loss, grads = one_step(model, *BATCH, autocast=False)
    kept = planned(spec, built).keep_dequantized
    assert (kept.on, kept.why, kept.detail) == (True, "fits beside the activations", "float32, 0.0 GB")
    frozen = [layer.nerbench_frozen for layer in lora_kernels.lora_linears(model)]
    assert all(f.kept is not None and f.weight(torch.float32) is f.kept for f in frozen)
    kept_loss, kept_grads = one_step(model, *BATCH, autocast=False)
    assert torch.equal(kept_loss, loss) and all(torch.equal(kept_grads[n], grads[n]) for n in grads)


def test_keeping_dequantized_weights_follows_the_setting_and_the_room(qwen_dir, tmp_path):
    bases = [layer.get_base_layer() for layer in lora_kernels.lora_linears(
        build(spec_for(qwen_dir), ["O"], tmp_path).model)]
    need = lora_kernels.dequantized_bytes(bases, torch.bfloat16)
    assert need == 2 * sum(torch.Size(b.weight.quant_state.shape).numel() for b in bases)
    keep = lora_kernels.keep_weights
    assert keep("auto", bases, torch.bfloat16, need) and not keep("auto", bases, torch.bfloat16, need - 1)
    assert not keep("auto", bases, torch.bfloat16, None)  # memory unknown
    assert keep(True, bases, torch.bfloat16, 0) and not keep(False, bases, torch.bfloat16, 10 * need)
    plain = [layer.get_base_layer() for layer in lora_kernels.lora_linears(
        build(spec_for(qwen_dir, method="lora"), ["O"], tmp_path).model)]
    assert not keep(True, plain, torch.bfloat16, None)  # nothing 4-bit to keep
