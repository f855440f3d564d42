"""Head-paradigm prediction batches (prediction/head.py): up to eval_batch_size sentences, cut where the memory left
would not hold their forward pass (accel/memory.py), halved where one runs out of memory anyway; the tags do not
depend on how the sentences were batched."""
import pytest
import torch
from transformers import DataCollatorForTokenClassification

from nerbench_core.accel import memory
from nerbench_core.backends.base import build as build_case
from nerbench_core.data import load_conll_dir
from nerbench_core.features import WordEncoder
from nerbench_core.options import RunOptions
from nerbench_core.prediction import head
from nerbench_core.specs import ModelSpec, TrainConfig

from .helpers import make_conll_dir, tiny_bert


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny BERT token classifier (float32, untrained head) and the encoded dev split of a small data set."""
    folder = tmp_path_factory.mktemp("prediction")
    dataset = load_conll_dir(make_conll_dir(folder / "data", sizes=(8, 60, 8)))
    spec = ModelSpec(name="tiny-bert", model=str(tiny_bert(folder / "bert")), family="encoder", method="full",
                     backend="hf", train=TrainConfig(max_length=64))
    built = build_case(spec, dataset.labels, RunOptions(cache_dir=folder / "cache"))
    label2id = {label: i for i, label in enumerate(dataset.labels)}
    dev = WordEncoder(built.tokenizer, spec.train.max_length).encode(dataset["dev"], label2id)
    collate = DataCollatorForTokenClassification(built.tokenizer, return_tensors="pt")
    return built.model, dev, dict(enumerate(dataset.labels)), collate


def test_batches_hold_at_most_their_rows_and_padded_tokens(case):
    _, dev, _, _ = case
    order = sorted(range(len(dev.examples)), key=lambda i: len(dev.examples[i].input_ids))
    length = lambda e: len(e.input_ids)
    for rows, max_tokens in ((7, None), (1000, 60), (5, 40), (1000, 1)):
        start, seen = 0, []
        while start < len(order):
            batch = head._next_batch(dev, order, start, rows, max_tokens)
            assert 1 <= len(batch) <= rows
            if max_tokens is not None and len(batch) > 1:
                assert len(batch) * max(map(length, batch)) <= max_tokens
                # and, where the rows allowed more, no more room: one row more would not have fitted
                if len(batch) < rows and start + len(batch) < len(order):
                    assert (len(batch) + 1) * length(dev.examples[order[start + len(batch)]]) > max_tokens
            seen += batch
            start += len(batch)
        assert seen == [dev.examples[i] for i in order]
    assert all(len(head._next_batch(dev, order, s, 1000, 1)) == 1 for s in range(len(order)))


def test_the_tags_do_not_depend_on_the_batches(case):
    model, dev, id2label, collate = case
    one_batch = head.predict_tags(model, dev, id2label, collate, batch_size=1000)
    assert len({t for sentence in one_batch.tags for t in sentence}) > 1  # not one tag everywhere: batching could show
    for batch_size, max_tokens in ((1, None), (7, None), (1000, 100), (1000, 1)):
        assert head.predict_tags(model, dev, id2label, collate, batch_size, max_tokens=max_tokens).tags == (
            one_batch.tags)


def test_a_batch_that_runs_out_of_memory_is_tried_again_with_half_its_rows(case, monkeypatch):
    model, dev, id2label, collate = case
    expected = head.predict_tags(model, dev, id2label, collate, batch_size=1000).tags
    forward, rows_run = type(model).forward, []

    def forward_short_of_memory(self, input_ids=None, **kwargs):
        if len(input_ids) > 12:  # more rows than the "device" holds
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        rows_run.append(len(input_ids))
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward_short_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert head.predict_tags(model, dev, id2label, collate, batch_size=50).tags == expected
    assert max(rows_run) <= 12 and sum(rows_run) == len(dev.examples)
    # the batches after a failed one hold at most half its tokens, also where the rows would allow more
    tokens_run = []
    monkeypatch.setattr(type(model), "forward", lambda self, input_ids=None, **kw: (
        tokens_run.append(input_ids.numel()), forward_short_of_memory(self, input_ids=input_ids, **kw))[1])
    assert head.predict_tags(model, dev, id2label, collate, batch_size=50, max_tokens=10**6).tags == expected
    failed = tokens_run[0]  # 50 rows: out of memory
    assert all(n <= failed // 2 for n in tokens_run[1:])

    def never_enough(self, input_ids=None, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (a test)")

    monkeypatch.setattr(type(model), "forward", never_enough)
    with pytest.raises(torch.OutOfMemoryError):  # one row that does not fit is the device's limit: said, not hidden
        head.predict_tags(model, dev, id2label, collate, batch_size=50)


def test_prediction_tokens_follow_the_memory_left_and_the_layer_widths(monkeypatch):
    class Config:
        hidden_size, intermediate_size = 5120, 13696  # Qwen1.5-14B

    per_token = (memory.PREDICT_PER_HIDDEN_UNIT * 5120 + memory.PREDICT_PER_MLP_UNIT * 13696) * 2
    gib = 2**30
    assert memory.prediction_tokens(Config, 10 * gib) == int(10 * gib / memory.MARGIN) // per_token
    assert memory.prediction_tokens(Config, 20 * gib) >= 2 * memory.prediction_tokens(Config, 10 * gib) - 1
    assert memory.prediction_tokens(Config, 10 * gib, bytes_per_value=4) < memory.prediction_tokens(Config, 10 * gib)
    assert memory.prediction_tokens(Config, 0) == 1  # one row is always tried (and said to fail if it does not fit)
    assert memory.prediction_tokens(None, 10 * gib) is None and memory.prediction_tokens(Config, None) is None

    class NoMlpWidth:  # BERT-style configs without intermediate_size: four times the hidden width
        hidden_size = 768

    assert memory.prediction_tokens(NoMlpWidth, 10 * gib) == int(10 * gib / memory.MARGIN) // (
        (memory.PREDICT_PER_HIDDEN_UNIT * 768 + memory.PREDICT_PER_MLP_UNIT * 4 * 768) * 2)

    class Nested:  # a config of another shape (its widths in a sub-config): no limit but the rows, not a crash
        text_config = Config

    assert memory.prediction_tokens(Nested, 10 * gib) is None
    # a batch takes its share of what new tensors can take (the rest: a small card's peak stays near training's)
    monkeypatch.setattr(memory.DeviceMemory, "reusable_bytes", lambda self: 10 * gib)
    share = memory.prediction_tokens(Config, int(10 * gib * memory.PREDICT_SHARE))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory.DeviceMemory().prediction_tokens(Config) == share
    # on CUDA, no more than training's peak left above what is held now (so prediction does not raise the peak)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 8 * gib)
    for peak, room in ((9 * gib, 1 * gib), (20 * gib, int(10 * gib * memory.PREDICT_SHARE)), (8 * gib, None)):
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: peak)
        expected = share if room is None else memory.prediction_tokens(Config, room)  # None: nothing ran yet
        assert memory.DeviceMemory().prediction_tokens(Config) == expected


def test_the_task_asks_the_memory_for_its_batches_in_the_models_widths_and_value_size(case, monkeypatch):
    from nerbench_core.prediction.tasks import HeadTask

    model, dev, id2label, collate = case
    asked, cuts = [], []

    class Memory:
        def prediction_tokens(self, config, bytes_per_value):
            asked.append((config.hidden_size, bytes_per_value))
            return 50

    def recording(*args, **kwargs):
        cuts.append(args[6] if len(args) > 6 else kwargs.get("max_tokens"))
        return predict_tags(*args, **kwargs)

    predict_tags = head.predict_tags
    task = HeadTask.__new__(HeadTask)  # the parts predict() reads, without encoding a data set again
    task.spec = ModelSpec(name="tiny-bert", model="-", family="encoder", method="full", backend="hf",
                          train=TrainConfig(eval_batch_size=1000, max_length=64))
    task.splits, task.id2label, task.collate, task.memory = {"dev": dev}, id2label, collate, Memory()
    monkeypatch.setattr("nerbench_core.prediction.tasks.predict_tags", recording)
    task.predict(model, "dev")
    # the float32 model's values are 4 bytes, whatever autocast computes in
    assert asked == [(model.config.hidden_size, 4)] and cuts == [50]
    task.memory = None
    task.predict(model, "dev")
    assert cuts == [50, None]  # no memory to ask: the rows alone
