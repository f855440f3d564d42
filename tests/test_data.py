import pytest

from nerbench_core.data import (ConllFormatError, NerDataset, SampleSize, iob2, label_set, load_cached,
                                load_conll_dir, read_conll, sample)

from .helpers import REAL_DATA, make_conll_dir


def write(tmp_path, text, name="train.txt", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def test_reads_sentences_documents_and_lines(tmp_path):
    p = write(tmp_path, "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
                        "Blackburn NNP I-NP I-PER\n\n-DOCSTART- -X- -X- O\n\nBonn NNP B-NP B-LOC\n")
    sents = read_conll(p)
    assert [s.words for s in sents] == [("EU", "rejects"), ("Peter", "Blackburn"), ("Bonn",)]
    assert [s.tags for s in sents] == [("B-ORG", "O"), ("B-PER", "I-PER"), ("B-LOC",)]
    assert [s.doc for s in sents] == [0, 0, 1]
    assert [s.line for s in sents] == [3, 6, 11]


def test_iob1_is_normalized_to_iob2(tmp_path):
    # IOB1: entities start with I-; B- only separates two adjacent entities of one type
    p = write(tmp_path, "U.N. I-ORG\nofficial O\nEkeus I-PER\nheads O\nfor O\nBaghdad I-LOC\nBill I-PER\nGates I-PER\n"
                        "Steve B-PER\n")
    assert read_conll(p)[0].tags == ("B-ORG", "O", "B-PER", "O", "O", "B-LOC", "B-PER", "I-PER", "B-PER")
    assert iob2(["B-PER", "I-PER", "O", "B-LOC"]) == ("B-PER", "I-PER", "O", "B-LOC")  # IOB2 stays as it is
    assert iob2(["B-PER", "I-LOC"]) == ("B-PER", "B-LOC")


@pytest.mark.parametrize("text, line, message", [
    ("EU B-ORG\nrejects\n", 2, "expected at least 2 columns"),
    ("EU NNP B-ORG\nrejects VBZ X-FOO\n", 2, "is not O, B-TYPE or I-TYPE"),
    ("EU NNP B-ORG\n\nrejects VBZ b-org\n", 3, "is not O, B-TYPE or I-TYPE"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    p = write(tmp_path, text)
    with pytest.raises(ConllFormatError) as err:
        read_conll(p)
    assert err.value.line == line and message in str(err.value)
    assert str(err.value).startswith(f"{p}:{line}: ")


def test_empty_split_and_missing_file(tmp_path):
    with pytest.raises(ConllFormatError, match="no sentences"):
        read_conll(write(tmp_path, "-DOCSTART- -X- -X- O\n\n\n"))
    with pytest.raises(ConllFormatError, match="file not found"):
        read_conll(tmp_path / "nope.txt")


def test_non_utf8_names_the_line(tmp_path):
    p = write(tmp_path, "EU B-ORG\nM\xfcller B-PER\n".encode("latin-1"))
    with pytest.raises(ConllFormatError, match=r"train.txt:2: not UTF-8"):
        read_conll(p)


def test_dev_tag_unseen_in_training_is_an_error(tmp_path):
    make_conll_dir(tmp_path)
    (tmp_path / "dev.txt").write_text("Acme B-COMPANY\n", encoding="utf-8")
    with pytest.raises(ConllFormatError, match="dev.txt:1: tag 'B-COMPANY': type 'COMPANY' does not occur in the "
                                               "training split"):
        load_conll_dir(tmp_path)
    # an I- tag of an unseen type is named as the file has it, not as IOB2 normalization made it
    (tmp_path / "dev.txt").write_text("Acme O\nCorp I-XYZ\n", encoding="utf-8")
    with pytest.raises(ConllFormatError, match="dev.txt:2: tag 'I-XYZ': type 'XYZ'"):
        load_conll_dir(tmp_path)


def test_missing_split_names_the_file(tmp_path):
    make_conll_dir(tmp_path)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(ConllFormatError, match=r"test.txt: file not found"):
        load_conll_dir(tmp_path)


def test_label_order_is_stable():
    from nerbench_core.data import Sentence

    sents = [Sentence(("a", "b"), ("B-PER", "O")), Sentence(("c", "d"), ("B-LOC", "I-LOC"))]
    assert label_set(sents) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert label_set(reversed(sents)) == label_set(sents)


def test_quick_sample_is_fixed_and_keeps_labels(tmp_path):
    ds = load_conll_dir(make_conll_dir(tmp_path, sizes=(60, 30, 30)))
    a, b = sample(ds, SampleSize(20, 10, 10, seed=3)), sample(ds, SampleSize(20, 10, 10, seed=3))
    assert [s.words for s in a["train"]] == [s.words for s in b["train"]]
    assert len(a["train"]) == 20 and len(a["dev"]) == 10
    assert a.labels == ds.labels and a.fingerprint == b.fingerprint != ds.fingerprint
    assert sample(ds, SampleSize(20, 10, 10, seed=4)).fingerprint != a.fingerprint


def test_cache_round_trip_and_invalidation(tmp_path):
    data = make_conll_dir(tmp_path / "data")
    first = load_cached(data, tmp_path / "cache")
    again = load_cached(data, tmp_path / "cache")
    assert isinstance(again, NerDataset) and again.fingerprint == first.fingerprint
    assert [s.words for s in again["test"]] == [s.words for s in first["test"]]
    make_conll_dir(data, seed=9)  # edited files are read again
    assert load_cached(data, tmp_path / "cache").fingerprint != first.fingerprint


@pytest.mark.skipif(not (REAL_DATA / "train.txt").is_file(), reason=f"CoNLL-2003 not found at {REAL_DATA}")
def test_real_conll2003_counts():
    ds = load_conll_dir(REAL_DATA)
    stats = ds.stats()
    assert {k: (v["sentences"], v["tokens"], v["docs"]) for k, v in stats.items()} == {
        "train": (14041, 203621, 946), "dev": (3250, 51362, 216), "test": (3453, 46435, 231)}
    assert {k: [v[t] for t in ("PER", "LOC", "ORG", "MISC")] for k, v in stats.items()} == {
        "train": [6600, 7140, 6321, 3438], "dev": [1842, 1837, 1341, 922], "test": [1617, 1668, 1661, 702]}
    assert ds.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
