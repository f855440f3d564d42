"""The unsloth backend (CUDA only): unsloth's 4-bit base model and LoRA, with our token-classification head.

unsloth has no token-classification class (its issues 894 and 5757), so the head is attached here: the
backbone of unsloth's causal LM (its patched, fused forward) gives the last hidden states, and a linear
head, trained in full and kept in fp32, maps them to labels. The LM head is never run (a 150k-word
vocabulary projection per token would dominate the cost).

Saving writes the LoRA adapter (peft format) and ``head.safetensors``; ``load_saved`` rebuilds both.
unsloth raises at import on a machine without CUDA, so it is imported only inside these functions.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from ..options import RunOptions
from ..specs import RANDOM, ModelSpec
from .base import Backend, Built, ModelUnavailable, describe, label_maps
from .locations import weights_location

HEAD_FILE = "head.safetensors"


class UnslothTokenClassifier(nn.Module):
    """unsloth causal-LM backbone + linear token-classification head (the shape of *ForTokenClassification)."""

    def __init__(self, peft_lm: nn.Module, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.lm = peft_lm
        self.config = peft_lm.config
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(self.config.hidden_size, num_labels, device=peft_lm.device, dtype=torch.float32)
        self.loss = nn.CrossEntropyLoss()  # ignore_index -100, like *ForTokenClassification

    def backbone(self) -> nn.Module:
        return self.lm.get_base_model().model  # PeftModel -> Qwen2ForCausalLM -> Qwen2Model (unsloth-patched)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.score(self.dropout(hidden).float())
        loss = None if labels is None else self.loss(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits)

    def gradient_checkpointing_enable(self, **kwargs):
        """unsloth switches on its own (offloaded) checkpointing in get_peft_model; nothing to add here."""

    def save_pretrained(self, folder, **kwargs):
        from safetensors.torch import save_file

        folder = Path(folder)
        self.lm.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.score.state_dict().items()}, str(folder / HEAD_FILE))
        (folder / "head.json").write_text(json.dumps({"num_labels": self.score.out_features}))


def checkpoint_folder(spec: ModelSpec, opts: RunOptions) -> str:
    """The weights as a folder (unsloth reads only folders): random weights are written out once for it."""
    if spec.model.startswith(RANDOM):
        from .synthetic import random_checkpoint

        return str(random_checkpoint(spec.model.removeprefix(RANDOM), opts))
    return weights_location(spec, opts.cache_dir)


def _base(spec: ModelSpec, opts: RunOptions):
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=checkpoint_folder(spec, opts),
        max_seq_length=spec.train.max_length,
        dtype=torch.bfloat16,
        load_in_4bit=spec.method == "qlora",
        load_in_16bit=spec.method == "lora",
        # "auto" too: unsloth has its own checkpointing, which offloads the layer inputs to CPU memory
        use_gradient_checkpointing="unsloth" if spec.train.gradient_checkpointing else False,
        random_state=spec.train.seed,
        fix_tokenizer=False,  # it would add a pad token and resize the embeddings; padding is masked anyway
    )
    tokenizer.padding_side = "right"  # unsloth drops the padding mask in training: pads must come last
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return FastLanguageModel, model, tokenizer


class UnslothBackend(Backend):
    name = "unsloth"
    own_kernels = True

    def check(self, spec: ModelSpec) -> None:
        if spec.attention == "bidirectional":
            raise ValueError(f"{spec.name}: the unsloth backend's fused kernels are causal; use backend 'hf'")
        if spec.method == "full" or not spec.is_decoder or spec.paradigm != "head":
            raise ValueError(f"{spec.name}: the unsloth backend runs LoRA and QLoRA decoders with a token-classification "
                             "head; use backend 'hf'")
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"{spec.name}: backend 'unsloth' needs CUDA")

    def load(self, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        fast, model, tokenizer = _base(spec, opts)
        lora = spec.lora
        model = fast.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            use_gradient_checkpointing="unsloth" if spec.train.gradient_checkpointing else False,
            random_state=spec.train.seed,
        )
        torch.manual_seed(spec.train.seed)
        classifier = UnslothTokenClassifier(model, len(labels))
        classifier.config.update(label_maps(labels))
        return Built(classifier, tokenizer, self, "score", describe(classifier, spec, self.name, 0))

    def load_saved(self, folder: Path, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        """Base, the saved adapter, the saved head."""
        from peft import PeftModel
        from safetensors.torch import load_file

        _, model, tokenizer = _base(spec, opts)
        model = PeftModel.from_pretrained(model, folder)
        classifier = UnslothTokenClassifier(model, len(labels))
        classifier.score.load_state_dict(load_file(str(Path(folder) / HEAD_FILE)))
        return Built(classifier, tokenizer, self, "score", {})
