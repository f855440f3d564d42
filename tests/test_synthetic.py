"""--synthetic: random weights in an exact architecture, built in memory layer by layer (no checkpoint on disk)."""
import pytest
import torch

from nerbench_core.backends.base import build as build_case
from nerbench_core.backends.synthetic import synthetic_spec
from nerbench_core.options import RunOptions
from nerbench_core.specs import ModelSpec, TrainConfig

from .helpers import bert_tokenizer, bpe_tokenizer

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """What NERBENCH_TOKENIZERS names: a folder with the offline tokenizers (here: made in the tests)."""
    folder = tmp_path_factory.mktemp("tokenizers")
    bpe_tokenizer(folder / "decoder")
    bert_tokenizer(folder / "encoder")
    return folder


@pytest.fixture
def build(tmp_path, tokenizers):
    def build(architecture, **kw):
        spec = ModelSpec(name="s", model="unused", architecture=architecture, backend="hf",
                         train=TrainConfig(max_length=32), **kw)
        options = RunOptions(cache_dir=tmp_path / "cache", tokenizers_dir=tokenizers)
        return build_case(synthetic_spec(spec), LABELS, options)
    return build


def forward(built):
    ids = built.tokenizer(["John works in Paris ."], return_tensors="pt")
    device = next(built.model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        return built.model(**{k: v.to(device) for k, v in ids.items()}).logits


def test_a_qlora_decoder_is_built_quantized_in_memory_with_nothing_written(build, tmp_path):
    import bitsandbytes as bnb

    built = build("tiny-qwen2", family="decoder", method="qlora")
    base = built.model.get_base_model()
    assert not [n for n, p in built.model.named_parameters() if p.is_meta]
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every projection of both layers
    assert all(m.weight.bnb_quantized and m.weight.dtype == torch.uint8 for m in layers)
    assert not isinstance(base.score, bnb.nn.Linear4bit)  # the head is skipped from quantization
    assert base.is_loaded_in_4bit and base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert built.model.config.vocab_size >= len(built.tokenizer)
    assert torch.isfinite(forward(built)).all()
    assert not (tmp_path / "cache" / "synthetic").exists()  # no random checkpoint on disk


def test_random_weights_are_initialised_and_seeded(build, tmp_path):
    a = build("tiny-bert", method="full").model
    b = build("tiny-bert", method="full").model
    assert all(p.dtype == torch.float32 for p in a.parameters())  # full fine-tunes train fp32 weights
    embeddings = a.bert.embeddings.word_embeddings.weight
    assert 0.015 < embeddings.std().item() < 0.025  # initializer_range 0.02, as transformers initialises
    assert torch.equal(a.bert.embeddings.LayerNorm.weight, torch.ones_like(a.bert.embeddings.LayerNorm.weight))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
