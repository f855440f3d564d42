"""nerbench's Triton kernels compute what the torch operations they replace compute (accel/triton_kernels.py): the
LoRA input gradient through the dropout mask (fused_lora_backward) and the rotary embedding (fused_rope, accel/rope.py);
the plan's decisions; and a training step with both levers gives the step without them.

The kernels run on a GPU, or on a CPU through Triton's interpreter where triton is installed (CUDA builds of torch
bring it, the CPU build does not; CI installs it): tests/conftest.py turns the interpreter on there. Elsewhere those tests
are skipped, and the plan's and install's tests still run.
"""
import dataclasses
import importlib.util
import os

import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2

from nerbench_core.accel import lora_kernels, rope
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import plan
from nerbench_core.accel.seeded_dropout import MAX_SALTS

from .helpers import build, on_device_of, planned, tiny_bert
from .test_decoder import spec_for

if torch.cuda.is_available():
    KERNEL_DEVICE = "cuda"
elif importlib.util.find_spec("triton") and os.environ.get("TRITON_INTERPRET") == "1":  # (tests/conftest.py)
    KERNEL_DEVICE = "cpu"
else:
    KERNEL_DEVICE = None
needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="Triton kernels need CUDA, or triton installed for "
                                                                 "its interpreter")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="a training step on the GPU")


def kernels():
    from nerbench_core.accel import triton_kernels

    return triton_kernels


def torch_lora_grad(grad_x, grad_down, a, p, keep):
    """What LoraProjection.backward computes without the kernel (its mask scaled at the add)."""
    return grad_x.clone().add_(torch.mm(grad_down, a).mul_(keep), alpha=1.0 / (1.0 - p))


@needs_kernels
@pytest.mark.parametrize("masks", ["stored", "seeded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, cols, rank", [(70, 300, 16), (33, 129, 8), (64, 128, 32), (65, 257, 12),
                                              (130, 70, 100)])
def test_the_lora_grad_kernel_adds_the_masked_product(masks, dtype, rows, cols, rank):
    """float32: torch's numbers; bfloat16: at most torch's distance from the float64 result (the kernel rounds once,
    torch after the matmul and after the add). Ranks under 16 and not powers of two, shapes off the kernel's tiles."""
    if dtype == torch.bfloat16 and KERNEL_DEVICE == "cpu":
        pytest.skip("Triton's interpreter computes bfloat16 through numpy, without it")
    g = torch.Generator().manual_seed(rows)
    grad_x, grad_down, a = (torch.randn(*shape, generator=g).to(KERNEL_DEVICE, dtype)
                            for shape in ((rows, cols), (rows, rank), (rank, cols)))
    p, seed, salt = 0.3, torch.tensor([12345], device=KERNEL_DEVICE), 7
    if masks == "seeded":  # the forward's keyed dropout draws the same mask over x
        keep = kernels().keyed_dropout(torch.ones(rows, cols, device=KERNEL_DEVICE), p, seed, salt, MAX_SALTS) != 0
        got = kernels().masked_lora_grad_(grad_x.clone(), grad_down, a, p, seed=seed, salt=salt, salts=MAX_SALTS)
    else:
        keep = torch.rand(rows, cols, generator=g).to(KERNEL_DEVICE) >= p
        got = kernels().masked_lora_grad_(grad_x.clone(), grad_down, a, p, mask=keep)
    assert 0.5 < keep.float().mean().item() < 0.9
    want = torch_lora_grad(grad_x, grad_down, a, p, keep)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        exact = torch_lora_grad(*(t.double() for t in (grad_x, grad_down, a)), p, keep)
        assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max()


@needs_kernels
def test_the_kernels_refuse_what_they_would_get_wrong():
    grad_x, grad_down, a = torch.zeros(8, 32, device=KERNEL_DEVICE), torch.zeros(8, 4), torch.zeros(4, 32)
    grad_down, a = grad_down.to(KERNEL_DEVICE), a.to(KERNEL_DEVICE)
    keep = torch.ones(8, 32, dtype=torch.bool, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="unit column stride"):
        kernels().masked_lora_grad_(torch.zeros(32, 8, device=KERNEL_DEVICE).t(), grad_down, a, 0.1, mask=keep)
    with pytest.raises(ValueError, match="one of them"):
        kernels().masked_lora_grad_(grad_x, grad_down, a, 0.1)
    with pytest.raises(ValueError, match="rank 200"):
        kernels().masked_lora_grad_(torch.zeros(8, 32, device=KERNEL_DEVICE), torch.zeros(8, 200, device=KERNEL_DEVICE),
                                    torch.zeros(200, 32, device=KERNEL_DEVICE), 0.1, mask=keep)
    with pytest.raises(ValueError, match="even head_dim"):
        cos = torch.zeros(1, 3, 5, device=KERNEL_DEVICE)
        kernels().rotary(torch.zeros(1, 2, 3, 5, device=KERNEL_DEVICE), cos, cos)


ROPE_SHAPES = {  # heads, kv heads, head_dim, positions
    "qwen-like": (4, 2, 16, 11),
    "odd heads, head_dim 80": (5, 1, 80, 7),
    "head_dim 96, one position": (3, 3, 96, 1),
}


def rope_inputs(dtype, heads=4, kv_heads=2, dim=16, positions=11, rows=3, shared_positions=False):
    """q and k as the attention modules pass them (transposed views of the projections' outputs) and cos, sin as
    the model's rotary embedding makes them (a batch of one where every row has the same positions)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, positions, heads, dim, generator=g).to(KERNEL_DEVICE, dtype).transpose(1, 2)
    k = torch.randn(rows, positions, kv_heads, dim, generator=g).to(KERNEL_DEVICE, dtype).transpose(1, 2)
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).double() / dim))
    starts = torch.zeros(1, 1) if shared_positions else torch.arange(rows)[:, None] * 3
    freqs = (starts + torch.arange(positions)).double()[..., None] * inv
    emb = torch.cat([freqs, freqs], -1)
    return q, k, emb.cos().to(KERNEL_DEVICE, dtype), emb.sin().to(KERNEL_DEVICE, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shared_positions", [False, True])
@pytest.mark.parametrize("shape", ROPE_SHAPES.values(), ids=ROPE_SHAPES.keys())
def test_the_rope_kernel_rotates_as_transformers_forward_and_backward(dtype, shared_positions, shape):
    """float32: transformers' numbers; bfloat16: at most transformers' distance from the float64 rotation (the kernel
    rounds once, transformers after each operation). The gradients come in another layout than q and k."""
    if dtype == torch.bfloat16 and KERNEL_DEVICE == "cpu":
        pytest.skip("Triton's interpreter computes bfloat16 through numpy, without it")
    q, k, cos, sin = rope_inputs(dtype, *shape, shared_positions=shared_positions)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g).to(KERNEL_DEVICE, dtype) for t in (q, k)]  # contiguous

    def autograd(fn, *tensors):  # outputs and input gradients of fn(q, k, cos, sin)
        leaves = [t.detach().clone().requires_grad_() for t in tensors[:2]]
        outputs = fn(*leaves, *tensors[2:])
        torch.autograd.backward(outputs, [grad.to(tensors[0].dtype) for grad in grads])
        return [*outputs, *(leaf.grad for leaf in leaves)]

    ours = autograd(lambda q, k, c, s: (rope._Rotary.apply(q, c, s), rope._Rotary.apply(k, c, s)), q, k, cos, sin)
    theirs = autograd(modeling_qwen2.apply_rotary_pos_emb, q, k, cos, sin)
    exact = autograd(rope.reference, *(t.double() for t in (q, k, cos, sin)))
    def layout(t):  # strides of the dimensions that have more than one element
        return tuple(stride for stride, n in zip(t.stride(), t.shape) if n > 1)

    assert [layout(t) for t in ours[:2]] == [layout(t) for t in theirs[:2]]  # the projections' layout kept
    for got, want, true in zip(ours, theirs, exact):
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            assert (got.double() - true).abs().max() <= (want.double() - true).abs().max()


@needs_kernels
def test_the_rope_backward_takes_gradients_of_any_layout():
    """Through q @ k^T (eager attention, SDPA's math kernel) k's gradient comes with head_dim not the unit stride."""
    q, k, cos, sin = rope_inputs(torch.float32)
    k = k[:, :1].expand(-1, q.shape[1], -1, -1)  # one kv head for all

    def attention_grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k)]
        qr, kr = fn(*leaves, cos, sin)
        (qr @ kr.transpose(2, 3)).square().sum().backward()
        return [leaf.grad for leaf in leaves]

    ours = attention_grads(lambda q, k, c, s: (rope._Rotary.apply(q, c, s), rope._Rotary.apply(k, c, s)))
    for got, want in zip(ours, attention_grads(modeling_qwen2.apply_rotary_pos_emb)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_rope_install_swaps_the_modeling_function_and_restore_gives_it_back(qwen_dir, tmp_path):
    """Installed, the module's function hands anything but CUDA tensors to transformers' own; restored, it is back."""
    built = build(spec_for(qwen_dir), ["O"], tmp_path)
    base, own = built.transformers_model, modeling_qwen2.apply_rotary_pos_emb
    assert rope.unsupported(base) is None and not rope.installed(base)
    rope.install(base)
    rope.install(base)  # twice: still one wrapper around transformers' function
    assert rope.installed(base) and rope.transformers_function(modeling_qwen2) is own
    q, k, cos, sin = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    for got, want in zip(modeling_qwen2.apply_rotary_pos_emb(q, k, cos, sin), own(q, k, cos, sin)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    rope.restore_all()
    assert modeling_qwen2.apply_rotary_pos_emb is own and not rope.installed(base)


def test_rope_is_planned_only_for_the_standard_rotation(qwen_dir, tmp_path, monkeypatch):
    built = build(spec_for(qwen_dir), ["O"], tmp_path)
    bert = build(dataclasses.replace(spec_for(qwen_dir), model=str(tiny_bert(tmp_path / "bert")), method="full",
                                     lora=None), ["O"], tmp_path)
    assert rope.unsupported(bert.transformers_model) == "no rotary embedding (bert)"

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):  # GPT-J's rotation of neighbouring pairs
        def rotate(x):
            pairs = x.unflatten(-1, (-1, 2))
            return torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin

    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", interleaved)
    assert rope.unsupported(built.transformers_model) == "its apply_rotary_pos_emb is not the standard half rotation"


def test_the_kernels_follow_the_spec_and_the_device(qwen_dir, tmp_path):
    spec = spec_for(qwen_dir)
    built = build(spec, ["O"], tmp_path)

    def levers(s=spec, **train):
        accel = plan(dataclasses.replace(s, train=dataclasses.replace(s.train, **train)), built, DeviceMemory())
        return [(lever.on, lever.why) for lever in (accel.fused_rope, accel.fused_lora_backward)]

    off = (False, "not asked for")
    assert levers(fused_rope=False, fused_lora_backward=False) == [off, off]
    if not torch.cuda.is_available():
        assert levers() == [(False, "no CUDA")] * 2
        return
    assert levers() == [(True, "asked for")] * 2
    assert levers(fused_lora=False)[1] == (False, "needs fused LoRA")
    assert levers(torch_compile=True) == [(False, "torch.compile fuses instead")] * 2
    assert levers(dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0)))[1] == (
        False, "no LoRA dropout")
    assert levers(dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, r=256)))[1] == (
        False, "LoRA rank over 128")
    full_fine_tune = dataclasses.replace(spec, method="full", lora=None)  # float32 weights: float32 rotary tables
    assert levers(full_fine_tune)[0] == (False, "float32 weights, bfloat16 compute")


@needs_cuda
def test_a_step_with_the_kernels_gives_the_step_without_them(qwen_dir, tmp_path):
    """float32, LoRA dropout on (the same generator state, so the same masks), head dropout off: the loss and every
    gradient of one training step with both kernels are those of the same model's step without them."""
    spec = spec_for(qwen_dir, attention="bidirectional")
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, bf16=False, cuda_graphs=False),
                               lora=dataclasses.replace(spec.lora, dropout=0.3))
    built = build(spec, ["O", "B-PER", "I-PER"], tmp_path)
    accel = planned(spec, built)
    assert accel.fused_rope.on and accel.fused_lora_backward.on
    model, layers = built.model, lora_kernels.lora_linears(built.model)
    torch.manual_seed(0)
    for layer in layers:
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    lora_dropouts = {id(d) for layer in layers for d in layer.lora_dropout.values()}
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and id(module) not in lora_dropouts:
            module.p = 0.0  # the head's
    model.train()
    g = torch.Generator().manual_seed(3)
    batch = on_device_of(model, {"input_ids": torch.randint(1, 200, (3, 12), generator=g),
                                 "labels": torch.randint(0, 3, (3, 12), generator=g)})

    def step(kernels_on: bool):
        rope.restore_all()
        if kernels_on:
            rope.install(built.transformers_model)
        for layer in layers:
            layer.nerbench_kernel_grad = kernels_on
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (loss_on, grads_on), (loss_off, grads_off) = step(True), step(False)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    assert grads_on.keys() == grads_off.keys()
    for name, want in grads_off.items():
        torch.testing.assert_close(grads_on[name], want, rtol=1e-4, atol=1e-5, msg=name)
