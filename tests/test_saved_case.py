"""A QLoRA case saves and reloads to the same predictions, also when called outside autocast: on the hf backend
everywhere (bitsandbytes' 4-bit layers run on CPU), on the unsloth backend where CUDA and unsloth are."""
import importlib.util

import pytest
import torch

from nerbench_core.backends.base import load_case, save_case
from nerbench_core.options import RunOptions
from nerbench_core.specs import ModelSpec, TrainConfig

from .helpers import build, tiny_qwen2

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_unsloth = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None,
                                   reason="needs CUDA and unsloth")
LABELS = ["O", "B-PER", "I-PER"]


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


@pytest.mark.parametrize("backend", [pytest.param("unsloth", marks=needs_unsloth), "hf"])
def test_qlora_case_saves_and_reloads_to_the_same_predictions(tmp_path, backend):
    folder = tiny_qwen2(tmp_path / "qwen2", layers=2)
    spec = ModelSpec(name="tiny", model=str(folder), family="decoder", method="qlora", backend=backend,
                     train=TrainConfig(max_length=32, gradient_checkpointing=False))
    built = build(spec, LABELS, tmp_path)
    assert built.backend.name == backend
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable), trainable
    with torch.no_grad():  # non-trivial adapter and head, as after training
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(5, len(built.tokenizer), (2, 9), device=DEVICE)
    expected = logits(built.model, ids)
    out = built.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros_like(ids))
    out.loss.backward()  # the loss reaches the LoRA weights through unsloth's kernels
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in built.model.named_parameters() if "lora_" in n)
    saved = save_case(built, spec, LABELS, tmp_path / "saved")
    reloaded = load_case(saved, RunOptions(tmp_path))
    torch.testing.assert_close(logits(reloaded.model, ids), expected, atol=2e-2, rtol=2e-2)
