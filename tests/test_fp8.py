"""The frozen weights' matmuls in FP8 (fp8_matmuls, accel/fp8.py): the rowwise rounding, the two matmuls against
float32 arithmetic on the same rounded operands, a fused LoRA projection whose adapters' gradients do not change, the
plan's decisions, and (GPU) the Triton rounding kernel and a training step close to the bf16 one."""
import dataclasses
from pathlib import Path

import pytest
import torch

from nerbench_core.accel import fp8, lora_kernels
from nerbench_core.accel import plan as plan_module
from nerbench_core.accel.memory import DeviceMemory
from nerbench_core.accel.plan import Lever, plan
from nerbench_core.specs import load_suite

from .helpers import build, on_device_of, planned
from .test_decoder import spec_for

# by capability alone: the tried matmul (fp8._rowwise_fails) is what a test below checks
FP8_CORES = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8 = pytest.mark.skipif(not FP8_CORES, reason="FP8 tensor cores")


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def test_rows_are_scaled_to_the_formats_largest_value_and_rounded_within_its_precision():
    t = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1e-3], [1.0], [50.0], [0.0],
                                                                                         [7.0]])
    q, scale = fp8.rowwise(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (5, 1)
    assert torch.equal(q.float().abs().amax(dim=1)[[0, 1, 2, 4]], torch.full((4,), fp8.LARGEST))
    assert torch.equal(q[3].float(), torch.zeros(64))  # an all-zero row stays zero (no division by zero)
    back = dequantized(q, scale)
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most 2**-4 of itself; the smallest, by half a step of
    # the subnormals (2**-10 of the row's scale)
    assert ((back - t).abs() <= t.abs() * 2 ** -4 + scale * 2 ** -10).all()


@pytest.mark.parametrize("rows", [32, 37])  # 37: padded to 48 rows for torch._scaled_mm, cut back after
def test_both_matmuls_compute_on_the_rounded_operands(rows):
    """torch._scaled_mm on FP8 tensor cores, and on a CPU (torch 2.13's CPU kernel; on torch 2.11 the float32
    emulation fp8._scaled_mm falls back to)."""
    g = torch.Generator().manual_seed(1)
    device = "cuda" if FP8_CORES else "cpu"
    w = torch.randn(48, 64, generator=g).to(device)
    x, dy = torch.randn(rows, 64, generator=g).to(device), torch.randn(rows, 48, generator=g).to(device)
    weight = fp8.Fp8Weight(w)
    dtype = torch.bfloat16 if FP8_CORES else torch.float32  # (the tensor cores' rowwise products are written in bf16)
    y, dx = weight.linear(x, dtype).float(), weight.grad_input(dy, dtype).float()
    assert y.shape == (rows, 48) and dx.shape == (rows, 64)
    forward_w = dequantized(weight.forward_q, weight.forward_scale.t())  # scales by output row
    backward_w = dequantized(weight.backward_q, weight.backward_scale.t())  # (in, out), scales by input column
    close = {"rtol": 1e-2, "atol": 1e-2} if FP8_CORES else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y, dequantized(*fp8.rowwise(x)) @ forward_w.t(), **close)
    torch.testing.assert_close(dx, dequantized(*fp8.rowwise(dy)) @ backward_w.t(), **close)
    bias = torch.randn(48, generator=g).to(device)  # (Qwen's q, k and v have one) added by the matmul's epilogue
    torch.testing.assert_close(weight.linear(x.clone(), dtype, bias.to(dtype)).float(),
                               dequantized(*fp8.rowwise(x)) @ forward_w.t() + bias.to(dtype).float(), **close)
    # and FP8's rounding is all that separates them from float32's products
    assert (y - x @ w.t()).norm() / (x @ w.t()).norm() < 0.05
    assert (dx - dy @ w).norm() / (dy @ w).norm() < 0.05


def test_projections_reading_one_input_round_it_once_and_add_their_bias_in_the_matmul(monkeypatch):
    """q, k and v read one x: rounded once, with the same products as rounded for each; changed in place or another
    tensor of equal values, it is rounded again. The bias, added by the matmul, is the product's plus the bias."""
    g = torch.Generator().manual_seed(6)
    weights = [fp8.Fp8Weight(torch.randn(48, 64, generator=g)) for _ in range(3)]
    bias = torch.randn(48, generator=g)
    x = torch.randn(2, 19, 64, generator=g)  # 38 rows: padded to 48
    expected = [w.linear(x.clone(), torch.float32) for w in weights]  # each its own rounding (a new tensor each)
    calls = []
    rowwise = fp8.rowwise
    monkeypatch.setattr(fp8, "rowwise", lambda t: calls.append(t.shape) or rowwise(t))
    for w, want in zip(weights, expected):
        torch.testing.assert_close(w.linear(x, torch.float32), want, rtol=0, atol=0)
    assert calls == [(48, 64)]
    torch.testing.assert_close(weights[0].linear(x, torch.float32, bias), expected[0] + bias, rtol=1e-6, atol=1e-6)
    assert len(calls) == 1
    x.mul_(2)  # in place: its version moves on
    torch.testing.assert_close(weights[0].linear(x, torch.float32), 2 * expected[0], rtol=1e-6, atol=1e-6)
    weights[0].linear(x.clone(), torch.float32)  # equal values, another tensor
    assert len(calls) == 3 and fp8._LAST.rounded is None  # (the copy is gone, and its rounding with it)
    weights[0].linear(x, torch.float32)
    weights[0].grad_input(torch.randn(38, 48, generator=g), torch.float32)  # a gradient: rounded, not kept
    assert len(calls) == 5 and fp8._LAST.ref() is x and fp8._LAST.rounded is not None
    del x
    assert fp8._LAST.rounded is None  # let go with its input
    with torch.inference_mode():  # (no version counter) rounded every time
        y = torch.randn(4, 64)
        weights[0].linear(y, torch.float32), weights[1].linear(y, torch.float32)
    assert len(calls) == 7


def test_a_projection_with_fp8_matmuls_changes_only_the_frozen_weights_products(qwen_dir, tmp_path):
    """The same output gradient through a fused projection with and without FP8: the adapters' gradients are the same
    (they do not go through the frozen weight), the output and the input gradient differ by the frozen products."""
    spec = spec_for(qwen_dir, method="lora")
    layer = lora_kernels.lora_linears(build(spec, ["O"], tmp_path).model)[0].cpu()  # (no FP8 cores needed)
    base, name = layer.get_base_layer().float(), layer.active_adapters[0]
    torch.nn.init.normal_(layer.lora_B[name].weight)
    a, b, s = layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]
    x = torch.randn(3, 7, base.in_features, generator=torch.Generator().manual_seed(2))
    gy = torch.randn(3, 7, base.out_features, generator=torch.Generator().manual_seed(3))

    def run(frozen):
        xg = x.clone().requires_grad_()
        y = lora_kernels.LoraProjection.apply(xg, a, b, frozen, s, 0.0, torch.float32)
        grads = torch.autograd.grad(y, (xg, a, b), gy)
        return y.detach(), grads

    plain = lora_kernels.FrozenWeight(base)
    rounded = lora_kernels.FrozenWeight(base, fp8=True)
    assert plain.fp8_weight is None and rounded.fp8_weight is not None
    (y8, (dx8, da8, db8)), (y, (dx, da, db)) = run(rounded), run(plain)
    torch.testing.assert_close(da8, da)
    torch.testing.assert_close(db8, db)
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), gy.reshape(-1, gy.shape[-1])
    frozen_y = (plain.linear(flat_x, torch.float32) - rounded.linear(flat_x, torch.float32)).view_as(y)
    frozen_dx = (plain.grad_input(flat_g, torch.float32) - rounded.grad_input(flat_g, torch.float32)).view_as(dx)
    assert frozen_y.abs().max() > 1e-3 and frozen_dx.abs().max() > 1e-3  # FP8's rounding shows
    torch.testing.assert_close(y8, y - frozen_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx8, dx - frozen_dx, rtol=1e-4, atol=1e-4)
    # a new tensor, as the bf16 path's: a view made inside the autograd function could not be changed in place
    lora_kernels.LoraProjection.apply(x.clone().requires_grad_(), a, b, rounded, s, 0.0, torch.float32).mul_(2)
    expanded = torch.ones(1, 1, base.out_features).expand(3, 7, -1)  # a gradient of stride 0, as y.sum() gives
    torch.testing.assert_close(rounded.grad_input(expanded.reshape(21, -1), torch.float32),
                               rounded.grad_input(expanded.reshape(21, -1).contiguous(), torch.float32))


def test_fp8_matmuls_follow_the_spec_and_the_device(qwen_dir, tmp_path, monkeypatch):
    spec = spec_for(qwen_dir)  # QLoRA
    built = build(spec, ["O"], tmp_path)

    def lever(s=spec, **train):
        return plan(dataclasses.replace(s, train=dataclasses.replace(s.train, **train)), built, DeviceMemory()
                    ).fp8_matmuls

    assert spec.train.fp8_matmuls == "auto"
    assert not lever(fp8_matmuls=False).on and lever(fp8_matmuls=False).why == "not asked for"
    asked = {"fp8_matmuls": True, "keep_dequantized": True}
    if not torch.cuda.is_available():
        assert lever().why == lever(**asked).why == "no CUDA"
    elif not FP8_CORES:
        assert lever(**asked).why == "no FP8 tensor cores (Ada or Hopper and later)"
    else:
        assert (lever(**asked).on, lever(**asked).why) == (True, "asked for")
        # the tiny model's projections are far under the size that pays
        assert lever(keep_dequantized=True).why == "auto: no projection with both dimensions of at least 4096"
    # the rules after the device's, on any machine: the plan's decision itself, the device's checks passed
    monkeypatch.setattr(fp8, "unsupported", lambda shapes, device, auto=False: None)

    def rule(s=spec, fused=True, kept=True, **train):
        train = {**asked, **train}
        case = plan_module._Case(dataclasses.replace(s, train=dataclasses.replace(s.train, **train)),
                                 built if s is spec else build(s, ["O"], tmp_path / "other"), None)
        case.triton_off = lambda asked: None  # (CUDA and Triton present)
        return case.fp8_matmuls(Lever(fused, ""), Lever(kept, "", "bfloat16, 0.0 GB"))

    assert rule().why == "asked for" and ", 21 of 21 projections," in rule().detail  # 7 a layer, 3 layers
    assert rule(fused=False).why == "needs fused LoRA"
    assert rule(bf16=False).why == "float32 compute"
    assert rule(kept=False).why == "needs 4-bit weights kept dequantized"
    # 16-bit weights are not kept dequantized (there is nothing to dequantize): float8 copies beside them would be
    # memory no rule counts
    assert rule(spec_for(qwen_dir, method="lora"), kept=False).why == "needs 4-bit weights kept dequantized"
    # auto: only the projections large enough; here (hidden 64, 2 key-value heads of 16) q, o and the MLP's from 64,
    # not k and v (32 x 64)
    assert rule(fp8_matmuls="auto").why == "auto: no projection with both dimensions of at least 4096"
    monkeypatch.setattr(fp8, "PAYS_FROM", 64)
    auto = rule(fp8_matmuls="auto")
    assert (auto.on, auto.why) == (True, "auto: large projections on a Hopper GPU")
    assert ", 15 of 21 projections," in auto.detail
    monkeypatch.undo()
    if FP8_CORES:
        on = lever(**asked)
        assert on.on and on.detail.startswith("e4m3, rowwise scales,") and on.detail.endswith("bfloat16 copy")


def test_auto_gives_fp8_only_to_the_projections_that_pay(qwen_dir, tmp_path, monkeypatch):
    """install's rule: the weights whose shape it takes are kept as float8, the others as they were."""
    spec = spec_for(qwen_dir, method="lora")
    model = build(spec, ["O"], tmp_path).model
    monkeypatch.setattr(fp8, "PAYS_FROM", 64)
    lora_kernels.install(model, fp8=fp8.pays)
    layers = lora_kernels.fused_layers(model)
    rounded = {type(layer.get_base_layer()).__name__ + str(tuple(lora_kernels.frozen_shape(layer.get_base_layer())))
               for layer in layers if layer.nerbench_frozen.fp8_weight is not None}
    assert rounded == {"Linear(64, 64)", "Linear(128, 64)", "Linear(64, 128)"}
    assert all(layer.nerbench_frozen.fp8_weight is None for layer in layers
               if min(lora_kernels.frozen_shape(layer.get_base_layer())) < 64)


def test_a_decoder_layer_rounds_its_attention_input_and_its_mlp_input_once_each(qwen_dir, tmp_path, monkeypatch):
    """In the model as transformers runs it, q, k and v are handed one tensor, as are gate and up: a forward rounds
    four inputs a layer (attention's, o's, the MLP's, down's), not seven. A model that gave each projection its own
    copy would pass the unit test above and share nothing."""
    spec = spec_for(qwen_dir, method="lora")
    model = build(spec, ["O"], tmp_path).model.cpu().float()
    lora_kernels.install(model, fp8=lambda shape: True)  # (CPU: torch's _scaled_mm or its float32 emulation)
    layers = model.config.num_hidden_layers
    calls = []
    rowwise = fp8.rowwise
    monkeypatch.setattr(fp8, "rowwise", lambda t: calls.append(t.shape) or rowwise(t))
    with torch.no_grad():
        model(input_ids=torch.randint(1, 200, (2, 16), generator=torch.Generator().manual_seed(7)))
    assert len(calls) == 4 * layers


def test_fp8_needs_the_tensor_cores_and_weights_in_multiples_of_16(monkeypatch):
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cpu")) == "no CUDA"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda")) == (
        "no FP8 tensor cores (Ada or Hopper and later)")
    monkeypatch.setattr(fp8, "_rowwise_fails", lambda device: None)  # (the tried matmul: on the GPU test below)
    monkeypatch.setattr(fp8, "_TRIED", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda")) is None
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda"), auto=True) is None
    assert fp8.unsupported([torch.Size([48, 72])], torch.device("cuda")) == (
        "a frozen weight of shape (48, 72): FP8 matmuls take dimensions in multiples of 16")
    for other in ((8, 9), (10, 0)):  # Ada, Blackwell: true takes it where torch's matmul runs; auto does not
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: other)
        assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda")) is None
        assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda"), auto=True) == (
            "auto: measured to pay on Hopper GPUs only (fp8_matmuls = true takes it here)")
    monkeypatch.setattr(fp8, "_rowwise_fails", lambda device: "the rowwise FP8 matmul fails on this GPU: no")
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda")) is None  # asked once a process a GPU
    monkeypatch.setattr(fp8, "_TRIED", {})
    assert fp8.unsupported([torch.Size([48, 64])], torch.device("cuda")) == (
        "the rowwise FP8 matmul fails on this GPU: no")
    assert fp8.pays(torch.Size([4096, 11008])) and not fp8.pays(torch.Size([6912, 2560]))


def test_the_tried_matmul_catches_a_kernel_that_raises_or_computes_wrong(monkeypatch):
    """fp8._rowwise_fails on a CPU (torch's CPU kernel or its emulation), then with a kernel that drops the bias and
    with one that raises."""
    assert fp8._rowwise_fails(torch.device("cpu")) is None
    right = fp8._scaled_mm
    monkeypatch.setattr(fp8, "_scaled_mm", lambda a_q, a_scale, b_q, b_scale, out, bias: right(a_q, a_scale, b_q,
                                                                                              b_scale, out))
    assert fp8._rowwise_fails(torch.device("cpu")) == "the rowwise FP8 matmul gives wrong products on this GPU"

    def raises(*args):
        raise RuntimeError("rowwise scaling is not supported here\nmore")

    monkeypatch.setattr(fp8, "_scaled_mm", raises)
    assert fp8._rowwise_fails(torch.device("cpu")) == (
        "the rowwise FP8 matmul fails on this GPU: rowwise scaling is not supported here")


def test_the_switch_keeps_the_run_keys_it_had_before_it_existed():
    suite = load_suite(Path(__file__).resolve().parent.parent / "bench" / "suites" / "offline.toml")
    by_name = {s.name: s for s in suite}
    minilm, qlora = by_name["minilm"], by_name["smollm2-qlora"]

    def with_fp8(s, value):
        return dataclasses.replace(s, train=dataclasses.replace(s.train, fp8_matmuls=value))

    # their hashes before fp8_matmuls (commit 5161c59): records stay found. For methods other than QLoRA no value of
    # the switch can change anything
    assert minilm.hash() == with_fp8(minilm, True).hash() == "32535818892ba58b"
    # for QLoRA false is what ran before it existed, and auto, the hardware's choice, as false (records say which ran)
    assert with_fp8(qlora, False).hash() == with_fp8(qlora, "auto").hash() == "2f54a582b7f5c344"
    assert with_fp8(qlora, True).hash() != qlora.hash()


@needs_fp8
def test_the_tried_matmul_runs_on_this_gpu():
    """The H100s and H200s the lever was measured on: torch's rowwise FP8 matmul with a bias runs (fp8._rowwise_fails
    keeps FP8 off where it does not)."""
    assert fp8._rowwise_fails(torch.device("cuda", torch.cuda.current_device())) is None


@needs_fp8
def test_the_rounding_kernel_rounds_as_torch_does():
    from nerbench_core.accel import triton_kernels

    wide = torch.randn(300, 2600, device="cuda") * torch.logspace(-3, 3, 300, device="cuda")[:, None]
    t = wide.to(torch.bfloat16)[:, :2500]  # rows of 2,500 values 2,600 apart: the row stride is not the row length
    t[7] = 0  # an all-zero row
    q, scale = triton_kernels.rowwise_fp8(t)
    assert torch.equal(q[7].float(), torch.zeros(2500, device="cuda"))
    empty_q, empty_scale = triton_kernels.rowwise_fp8(t[:0])
    assert empty_q.shape == (0, 2500) and empty_scale.shape == (0, 1)
    want_scale = t.float().abs().amax(dim=1, keepdim=True).clamp(min=fp8.TINY) / fp8.LARGEST
    torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)
    want = (t.float() / scale).clamp(-fp8.LARGEST, fp8.LARGEST).to(fp8.FORMAT)
    # the kernel's division may differ from torch's in the last bit, which can move a value to the next FP8 step
    assert (q.float() != want.float()).float().mean() < 1e-3
    assert ((q.float() - want.float()).abs() <= want.float().abs() * 2 ** -3 + 2 ** -9).all()


@needs_fp8
def test_a_training_step_with_fp8_matmuls_is_close_to_the_bf16_step(qwen_dir, tmp_path):
    """QLoRA, bf16, the weights kept dequantized: one step's loss and gradients with the frozen matmuls in FP8 against
    the same step in bf16 (LoRA dropout off, so that both draw nothing). The tiny model's products have 64 terms, so
    each keeps a few percent of FP8's rounding: on an H200 the losses differed by 0.03% and the gradients' cosine was
    0.98, where an operand in the wrong layout or a misplaced scale gives unrelated gradients (cosine near 0)."""
    spec = spec_for(qwen_dir, attention="bidirectional")
    spec = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0), train=dataclasses.replace(
        spec.train, keep_dequantized=True, cuda_graphs=False))
    batch = {"input_ids": torch.randint(1, 200, (4, 16), generator=torch.Generator().manual_seed(4)),
             "labels": torch.randint(0, 3, (4, 16), generator=torch.Generator().manual_seed(5))}

    def step(fp8_on: bool):
        s = dataclasses.replace(spec, train=dataclasses.replace(spec.train, fp8_matmuls=fp8_on))
        torch.manual_seed(0)  # the same new head and LoRA weights in both models
        built = build(s, ["O", "B-PER", "I-PER"], tmp_path / str(fp8_on))
        assert planned(s, built).fp8_matmuls.on == fp8_on
        assert any(layer.nerbench_frozen.fp8_weight is not None
                   for layer in lora_kernels.fused_layers(built.model)) == fp8_on
        model = built.model
        torch.manual_seed(1)
        for layer in lora_kernels.lora_linears(model):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**on_device_of(model, batch)).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])

    (loss8, grads8), (loss, grads) = step(True), step(False)
    assert loss8 != loss  # FP8 ran (the plan's decision is checked in step)
    cosine = torch.nn.functional.cosine_similarity(grads8, grads, dim=0).item()
    assert abs(loss8 - loss) < 0.01 * abs(loss) and cosine > 0.95, (loss8, loss, cosine)
