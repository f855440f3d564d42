"""Small data, tokenizers and models made inside the tests: nothing is downloaded."""
from __future__ import annotations

import os
import random
from pathlib import Path

REAL_DATA = Path(os.environ.get("NERBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared/data/conll2003")

FIRST = ["John", "Mary", "Ahmed", "Li", "Olga", "Pedro"]
LAST = ["Smith", "Jones", "Khan", "Wei", "Petrova", "Garcia"]
PLACES = ["Paris", "Berlin", "Tokyo", "Lagos", "Lima", "Oslo"]
ORGS = [("Reuters",), ("General", "Motors"), ("Bank", "of", "Japan"), ("Siemens",)]
FILLER = ["said", "on", "Monday", "that", "the", "talks", "in", "were", "good", "and", "visited", "works", "for"]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """A short sentence with PER, LOC and ORG entities in IOB2."""
    person = [(rng.choice(FIRST), "B-PER"), (rng.choice(LAST), "I-PER")]
    org = [(w, ("B-ORG" if i == 0 else "I-ORG")) for i, w in enumerate(rng.choice(ORGS))]
    place = [(rng.choice(PLACES), "B-LOC")]
    shape = rng.randrange(3)
    if shape == 0:
        return person + [("works", "O"), ("for", "O")] + org + [("in", "O")] + place + [(".", "O")]
    if shape == 1:
        return [("In", "O")] + place + [(",", "O")] + person + [("said", "O"), ("that", "O")] + org + [("won", "O"), (".", "O")]
    return org + [("hired", "O")] + person + [("on", "O"), ("Monday", "O"), (".", "O")]


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], docs_every: int = 5) -> Path:
    lines = []
    for i, sent in enumerate(sentences):
        if i % docs_every == 0:
            lines += ["-DOCSTART- -X- -X- O", ""]
        lines += [f"{w} NN B-NP {t}" for w, t in sent] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_conll_dir(folder: Path, sizes=(120, 40, 40), seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "dev", "test"), sizes):
        write_conll(folder / f"{name}.txt", [sentence(rng) for _ in range(n)])
    return folder


def vocabulary() -> list[str]:
    words = FIRST + LAST + PLACES + [w for o in ORGS for w in o] + FILLER + ["In", ",", ".", "won", "hired"]
    return sorted(set(words))


def bert_tokenizer(folder: Path):
    """A cased WordPiece tokenizer over the test vocabulary (plus a few sub-word pieces)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocabulary() + ["Sm", "##ith", "##s", "##a", "##e"]
    tok = BertTokenizer(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=False)
    tok.save_pretrained(folder)
    return tok


def bpe_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (the kind Qwen2 and Llama 3 use), trained on the test sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    texts = [" ".join(w for w, _ in sentence(rng)) for _ in range(300)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>", "<|pad|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|pad|>")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with random weights and the test WordPiece tokenizer, saved as a local model."""
    import torch
    from transformers import BertConfig, BertModel

    tok = bert_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_qwen2(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A Qwen2-architecture decoder with random weights and a byte-level BPE tokenizer, saved locally."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    tok = bpe_tokenizer(folder)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    Qwen2Model(config).save_pretrained(folder)
    return folder


def on_device_of(model, batch: dict) -> dict:
    """A CPU batch moved to where the model was built (modeling.build puts it on the GPU where there is one)."""
    import torch

    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def build(spec, labels, cache_dir):
    """backends.base.build with default options and this cache folder."""
    from nerbench_core.backends.base import build as build_case
    from nerbench_core.options import RunOptions

    return build_case(spec, labels, RunOptions(cache_dir=Path(cache_dir)))


def planned(spec, built):
    """The speed plan of a built case, installed (what runner.run_case does before training)."""
    from nerbench_core.accel import plan
    from nerbench_core.accel.memory import DeviceMemory

    accel = plan.plan(spec, built, DeviceMemory())
    plan.apply(accel, spec, built)
    return accel


def train(built, spec, train_split, evaluate, output_dir, **kwargs):
    """The training recipe on a built case, its speed plan installed first."""
    from nerbench_core.training.recipe import train as train_case

    return train_case(built.model, built.tokenizer, spec, planned(spec, built), train_split, evaluate, output_dir,
                      **kwargs)
