"""What a paradigm contributes to the one training path: its training inputs and how it predicts tags.

``head`` (the default): words -> sub-tokens with labels on first sub-tokens; a linear head's argmax per first
sub-token. ``generative`` (decoders): prompts with the sentence and targets with its entities written out; batched
greedy generation, parsed back into tags (prediction.generative). Both give word-level IOB2 tags of the same words,
scored by the same seqeval path.
"""
from __future__ import annotations

from transformers import DataCollatorForTokenClassification

from ..data import SPLITS, NerDataset
from ..features import EncodedSplit, WordEncoder
from ..precision import autocast_dtype
from ..reporting.predictions import SplitPredictions
from ..specs import ModelSpec
from .head import Predictions, predict_tags


class Task:
    """Training inputs and predictions of one case on one data set."""

    def __init__(self, spec: ModelSpec, built, dataset: NerDataset):
        self.spec, self.built, self.dataset = spec, built, dataset
        self.splits: dict[str, EncodedSplit] = {}

    @property
    def train_split(self) -> EncodedSplit:
        return self.splits["train"]

    def gold(self, name: str) -> list[list[str]]:
        return [list(s.tags) for s in self.dataset[name]]

    def predict(self, model, name: str) -> Predictions:
        raise NotImplementedError

    def saved(self, predictions: Predictions, name: str) -> SplitPredictions:
        """The predictions as saved beside the record: words, gold and predicted tags, documents."""
        sentences = self.dataset[name]
        return SplitPredictions([list(s.words) for s in sentences], self.gold(name), predictions.tags,
                                [s.doc for s in sentences])

    @property
    def windowed_words(self) -> dict[str, int]:
        return {k: v.windowed_words for k, v in self.splits.items()}

    @property
    def truncated_subtokens(self) -> dict[str, int]:
        return {k: v.truncated_subtokens for k, v in self.splits.items()}


class HeadTask(Task):
    def __init__(self, spec: ModelSpec, built, dataset: NerDataset, memory=None):
        super().__init__(spec, built, dataset)
        self.memory = memory  # accel.memory.DeviceMemory: how many tokens a prediction batch may hold; None: no limit
        self.id2label = dict(enumerate(dataset.labels))
        label2id = {label: i for i, label in self.id2label.items()}
        encoder = WordEncoder(built.tokenizer, spec.train.max_length, context=spec.context_sentences)
        self.splits = {name: encoder.encode(dataset[name], label2id) for name in SPLITS}
        self.collate = DataCollatorForTokenClassification(built.tokenizer, return_tensors="pt")

    def predict(self, model, name: str) -> Predictions:
        dtype = autocast_dtype(self.spec)
        # batches of eval_batch_size sentences, fewer where their forward pass would not fit in the memory left; its
        # values in the wider of the compute dtype and the weights' (a float32 model's residual stays float32 under
        # autocast)
        value_bytes = max(dtype.itemsize if dtype else 0, next(model.parameters()).dtype.itemsize)
        max_tokens = (None if self.memory is None
                      else self.memory.prediction_tokens(getattr(model, "config", None), value_bytes))
        return predict_tags(model, self.splits[name], self.id2label, self.collate, self.spec.train.eval_batch_size,
                            dtype, max_tokens)


def task_for(spec: ModelSpec, built, dataset: NerDataset, decoder=None, memory=None) -> Task:
    """``decoder``: the generative paradigm's greedy decoding where the speed plan gives one; ``memory``: what the head
    paradigm's prediction batches may take."""
    if spec.paradigm == "generative":
        from .generative import GenerativeTask

        return GenerativeTask(spec, built, dataset, decoder)
    return HeadTask(spec, built, dataset, memory)
