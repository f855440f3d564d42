"""seqeval's default mode gives exactly conlleval's precision, recall and F1, overall and per entity type.

References:

* A, the original ``conlleval.pl`` (Erik Tjong Kim Sang, version 2004-01-26), run with perl. It is
  third-party code and not part of this repository: point ``CONLLEVAL_PL`` at a copy to run that part
  (skipped otherwise). It prints 2 decimals, so its P/R/F1 are compared at that precision, and its
  phrase counts (gold, found, correct overall; found per type, correct per type recovered from the
  printed precision) exactly.
* B, the PyPI package ``conlleval==0.2`` (module ``conlleval``), a line-by-line Python port of the perl
  script that returns the counts. Always runs. Checked against the perl script on the corrupted
  CoNLL-2003 test split built below (50,350 lines, 46,666 tokens counting the 231 ``-DOCSTART-``
  lines; 5,648 gold / 5,836 found / 4,854 correct phrases; P 83.17, R 85.94, FB1 84.54) and on the
  committed sample (32 / 35 / 27): the port's ``report()`` is byte-identical to the perl output,
  overall and per type (the perl tests assert this whenever ``CONLLEVAL_PL`` is set). One known
  divergence, outside the files compared here: for a type that is never predicted the port reports
  precision 1.0 where the perl script prints 0.00 (``test_type_never_predicted``); recall and F1 agree.

Data: predictions in the project's saved format (``word gold pred`` per line, a blank line between
sentences, ``-DOCSTART- O O`` at document starts). The real file is built in the test from the CoNLL-2003
test split (``$NERBENCH_DATA_DIR/test.txt`` or ``../shared/data/conll2003/test.txt``): gold is the file's
tags and the prediction a deterministic, seeded corruption of them exercising every error kind. A
sample of made-up documents, corrupted the same way (``made_up_sample``: about 200 lines, every error
kind), runs where the real data is absent; the project holds no copy of the data.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support
from seqeval.scheme import IOB2

conlleval = pytest.importorskip("conlleval", reason="needs the conlleval==0.2 package (pip install conlleval==0.2)")

HERE = Path(__file__).resolve().parent
DOCSTART = "-DOCSTART-"
TYPES = ("LOC", "MISC", "ORG", "PER")
ERROR_KINDS = ("dropped", "spurious", "wrong_type", "boundary", "i_without_b", "bx_iy")


# ----------------------------------------------------------------------------------- data helpers

def real_test_split() -> Path | None:
    base = os.environ.get("NERBENCH_DATA_DIR")
    path = Path(base) / "test.txt" if base else HERE.parents[1] / "shared" / "data" / "conll2003" / "test.txt"
    return path if path.is_file() else None


def read_conll_documents(path: Path) -> list[list[list[tuple[str, str]]]]:
    """Documents -> sentences -> (token, tag) with the tag from the last column."""
    docs: list[list[list[tuple[str, str]]]] = []
    sent: list[tuple[str, str]] = []

    def flush():
        nonlocal sent
        if sent:
            if not docs:
                docs.append([])
            docs[-1].append(sent)
            sent = []

    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split()
        if not cols:
            flush()
        elif cols[0] == DOCSTART:
            flush()
            docs.append([])
        else:
            sent.append((cols[0], cols[-1]))
    flush()
    return [d for d in docs if d]


def spans(tags: list[str]) -> list[tuple[str, int, int]]:
    return get_entities(list(tags))


def corrupt_sentence(gold: list[str], rng: random.Random, kinds: Counter, rate: float = 0.2) -> list[str]:
    """Corrupt one sentence's gold tags; each gold entity is hit with probability ``rate``."""
    pred = list(gold)
    for typ, start, end in spans(gold):
        if rng.random() >= rate:
            continue
        kind = rng.choice(["dropped", "wrong_type", "boundary", "i_without_b", "bx_iy"])
        if kind == "bx_iy" and end == start:
            kind = "i_without_b"
        if kind == "dropped":
            pred[start:end + 1] = ["O"] * (end - start + 1)
        elif kind == "wrong_type":
            new = rng.choice([t for t in TYPES if t != typ])
            pred[start:end + 1] = [f"B-{new}"] + [f"I-{new}"] * (end - start)
        elif kind == "boundary":
            if end > start and rng.random() < 0.5:  # shrink at the end
                pred[end] = "O"
            elif end + 1 < len(pred) and gold[end + 1] == "O":  # grow at the end
                pred[end + 1] = f"I-{typ}"
            elif start > 0 and gold[start - 1] == "O":  # grow at the start
                pred[start - 1], pred[start] = f"B-{typ}", f"I-{typ}"
            else:
                kind = "i_without_b"
        if kind == "i_without_b":
            pred[start] = f"I-{typ}"
        elif kind == "bx_iy":  # B-X followed by I-Y
            pred[start + 1] = f"I-{rng.choice([t for t in TYPES if t != typ])}"
        kinds[kind] += 1
    for i, tag in enumerate(gold):  # spurious entities on O tokens away from gold entities
        if tag == "O" and pred[i] == "O" and rng.random() < 0.01 and (i + 1 == len(gold) or gold[i + 1] == "O"):
            pred[i] = f"B-{rng.choice(TYPES)}"
            kinds["spurious"] += 1
    return pred


def corrupted_lines(docs, seed: int = 2003) -> tuple[list[str], Counter]:
    """The saved-predictions file, as lines, for gold documents and a seeded corruption."""
    rng = random.Random(seed)
    kinds: Counter = Counter()
    lines: list[str] = []
    for doc in docs:
        lines += [f"{DOCSTART} O O", ""]
        for sent in doc:
            words = [w for w, _ in sent]
            gold = [t for _, t in sent]
            pred = corrupt_sentence(gold, rng, kinds)
            lines += [f"{w} {g} {p}" for w, g, p in zip(words, gold, pred)] + [""]
    return lines, kinds


def parse_predictions(lines: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    gold, pred, g, p = [], [], [], []
    for line in lines + [""]:
        cols = line.split()
        if not cols or cols[0] == DOCSTART:
            if g:
                gold.append(g)
                pred.append(p)
                g, p = [], []
            continue
        g.append(cols[-2])
        p.append(cols[-1])
    return gold, pred


def error_kinds_present(gold: list[list[str]], pred: list[list[str]]) -> set[str]:
    """Which error kinds a predictions file contains, read from its columns alone."""
    found = set()
    for g, p in zip(gold, pred):
        gs, ps = set(spans(g)), set(spans(p))
        for typ, s, e in gs - ps:
            overlap = [(t, ps_, pe) for t, ps_, pe in ps if ps_ <= e and pe >= s]
            if not overlap:
                found.add("dropped")
            elif any((ps_, pe) == (s, e) and t != typ for t, ps_, pe in overlap):
                found.add("wrong_type")
            elif any(t == typ and (ps_, pe) != (s, e) for t, ps_, pe in overlap):
                found.add("boundary")
        for typ, s, e in ps - gs:
            if not any(gs_ <= e and ge >= s for _, gs_, ge in gs):
                found.add("spurious")
        for i, tag in enumerate(p):
            prev = p[i - 1] if i else "O"
            if tag.startswith("I-") and (prev == "O"):
                found.add("i_without_b")
            if tag.startswith("I-") and prev.startswith("B-") and prev[2:] != tag[2:]:
                found.add("bx_iy")
    return found


# -------------------------------------------------------------------------------- seqeval side

def seqeval_side(gold, pred) -> dict:
    """Counts and scores by seqeval's default mode, overall and per type."""
    ge, pe = set(get_entities(gold)), set(get_entities(pred))
    counts = {t: {"gold": sum(1 for e in ge if e[0] == t), "pred": sum(1 for e in pe if e[0] == t),
                  "correct": sum(1 for e in ge & pe if e[0] == t)} for t in {e[0] for e in ge | pe}}
    p, r, f, support = precision_recall_fscore_support(gold, pred, average=None, zero_division=0)
    labels = sorted(counts)
    report = classification_report(gold, pred, output_dict=True, zero_division=0)  # what scoring.py uses
    per_type = {}
    for i, t in enumerate(labels):
        per_type[t] = {"prec": float(p[i]), "rec": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        assert report[t]["f1-score"] == pytest.approx(per_type[t]["f1"], abs=1e-12)
    overall = {"gold": len(ge), "pred": len(pe), "correct": len(ge & pe),
               "prec": precision_score(gold, pred, zero_division=0), "rec": recall_score(gold, pred, zero_division=0),
               "f1": f1_score(gold, pred, zero_division=0)}
    assert report["micro avg"]["f1-score"] == pytest.approx(overall["f1"], abs=1e-12)
    return {"overall": overall, "counts": counts, "per_type": per_type}


# ------------------------------------------------------------------------------ reference B: conlleval.py

def check_against_conlleval_py(lines: list[str]) -> dict:
    gold, pred = parse_predictions(lines)
    ours = seqeval_side(gold, pred)
    ref = conlleval.evaluate(lines)
    chunks = ref["overall"]["chunks"]
    assert chunks["stats"] == {k: ours["overall"][k] for k in ("gold", "pred", "correct")}
    for k in ("prec", "rec", "f1"):
        assert chunks["evals"][k] == pytest.approx(ours["overall"][k], abs=1e-9), k
    slots = ref["slots"]["chunks"]
    assert set(slots) == set(ours["counts"])
    for t, s in slots.items():
        assert s["stats"] == ours["counts"][t], t
        assert s["stats"]["gold"] == ours["per_type"][t]["support"]
        assert s["evals"]["rec"] == pytest.approx(ours["per_type"][t]["rec"], abs=1e-9), t
        assert s["evals"]["f1"] == pytest.approx(ours["per_type"][t]["f1"], abs=1e-9), t
        if s["stats"]["pred"]:  # the port says 1.0 when nothing was found (perl: 0); see module docstring
            assert s["evals"]["prec"] == pytest.approx(ours["per_type"][t]["prec"], abs=1e-9), t
    return ours


# --------------------------------------------------------------------------------- reference A: perl

def conlleval_pl() -> Path:
    value = os.environ.get("CONLLEVAL_PL")
    if not value:
        pytest.skip("CONLLEVAL_PL is not set: point it at a copy of conlleval.pl to compare with the perl original")
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"CONLLEVAL_PL={value} does not exist")
    if not shutil.which("perl"):
        pytest.skip("perl is not installed")
    return path


OVERALL_RE = re.compile(r"processed (\d+) tokens with (\d+) phrases; found: (\d+) phrases; correct: (\d+)\.")
SCORES_RE = re.compile(r"precision:\s+([\d.]+)%; recall:\s+([\d.]+)%; FB1:\s+([\d.]+)")
TYPE_RE = re.compile(r"^\s*(\S+): precision:\s+([\d.]+)%; recall:\s+([\d.]+)%; FB1:\s+([\d.]+)\s+(\d+)$")


def perl_output(script: Path, lines: list[str]) -> str:
    return subprocess.run(["perl", str(script)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          check=True, timeout=120).stdout


def run_perl(script: Path, lines: list[str]) -> dict:
    out = perl_output(script, lines).splitlines()
    m = OVERALL_RE.search(out[0])
    s = SCORES_RE.search(out[1])
    result = {"tokens": int(m[1]), "gold": int(m[2]), "pred": int(m[3]), "correct": int(m[4]),
              "prec": s[1], "rec": s[2], "f1": s[3], "types": {}}
    for line in out[2:]:
        t = TYPE_RE.match(line)
        result["types"][t[1]] = {"prec": t[2], "rec": t[3], "f1": t[4], "pred": int(t[5])}
    return result


def perl_style(correct: int, found: int, gold: int) -> tuple[str, str, str]:
    """The three numbers conlleval.pl prints, computed its way (percentages, 0 when undefined)."""
    prec = 100 * correct / found if found > 0 else 0.0
    rec = 100 * correct / gold if gold > 0 else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return f"{prec:.2f}", f"{rec:.2f}", f"{f1:.2f}"


def check_against_perl(script: Path, lines: list[str]) -> dict:
    gold, pred = parse_predictions(lines)
    ours = seqeval_side(gold, pred)
    ref = run_perl(script, lines)
    # the two references agree with each other: the port's report is the perl output, byte for byte
    assert conlleval.report(conlleval.evaluate(lines)) == perl_output(script, lines)
    o = ours["overall"]
    assert (ref["gold"], ref["pred"], ref["correct"]) == (o["gold"], o["pred"], o["correct"])
    assert (ref["prec"], ref["rec"], ref["f1"]) == perl_style(o["correct"], o["pred"], o["gold"])
    for k in ("prec", "rec", "f1"):  # seqeval's own floats, to the 2 printed decimals
        assert abs(float(ref[k]) - 100 * o[k]) <= 0.005 + 1e-9, k
    assert set(ref["types"]) == set(ours["counts"])
    for t, r in ref["types"].items():
        c = ours["counts"][t]
        assert r["pred"] == c["pred"], t
        if c["pred"] and c["pred"] < 10_000:  # 2 decimals of a percentage pin down correct exactly
            assert round(float(r["prec"]) * c["pred"] / 100) == c["correct"], t
        assert (r["prec"], r["rec"], r["f1"]) == perl_style(c["correct"], c["pred"], c["gold"]), t
        for k in ("rec", "f1"):
            assert abs(float(r[k]) - 100 * ours["per_type"][t][k]) <= 0.005 + 1e-9, (t, k)
        if c["pred"]:
            assert abs(float(r["prec"]) - 100 * ours["per_type"][t]["prec"]) <= 0.005 + 1e-9, t
    return ref


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def real_file():
    path = real_test_split()
    if path is None:
        pytest.skip("CoNLL-2003 test split not found (NERBENCH_DATA_DIR or ../shared/data/conll2003/test.txt)")
    docs = read_conll_documents(path)
    lines, kinds = corrupted_lines(docs)
    return lines, kinds, docs


def made_up_documents(rng: random.Random, n_docs: int = 4, per_doc: int = 6) -> list[list[list[tuple[str, str]]]]:
    """Documents of sentences of made-up words, entities of every type one to three words long."""
    docs = []
    for _ in range(n_docs):
        doc = []
        for _ in range(per_doc):
            sent: list[tuple[str, str]] = []
            while len(sent) < rng.randint(5, 10):
                if rng.random() < 0.35:
                    typ = rng.choice(TYPES)
                    sent += [(f"w{rng.randrange(1000)}", ("B-" if i == 0 else "I-") + typ)
                             for i in range(rng.randint(1, 3))]
                else:
                    sent.append((f"w{rng.randrange(1000)}", "O"))
            doc.append(sent)
        docs.append(doc)
    return docs


def made_up_sample(lines_at_most: int = 260) -> list[str]:
    """A saved-predictions file of made-up documents with every error kind and type, 150 to 260 lines: the first
    seed that gives one (deterministic)."""
    for seed in range(1000):
        lines, kinds = corrupted_lines(made_up_documents(random.Random(seed)), seed=seed)
        gold, pred = parse_predictions(lines)
        if (150 <= len(lines) <= lines_at_most and error_kinds_present(gold, pred) == set(ERROR_KINDS)
                and {e[0] for e in get_entities(gold)} == set(TYPES)):
            return lines
    raise RuntimeError("no seed below 1000 gives every error kind")


@pytest.fixture(scope="module")
def sample_lines():
    return made_up_sample()


# ------------------------------------------------------------------------------------------- tests

def test_fixture_is_in_the_saved_predictions_format_and_has_every_error_kind(sample_lines):
    assert 150 <= len(sample_lines) <= 260
    assert sample_lines[0] == f"{DOCSTART} O O" and sample_lines[1] == ""
    assert all(len(line.split()) == 3 for line in sample_lines if line)
    assert sample_lines[-1] == ""
    gold, pred = parse_predictions(sample_lines)
    assert error_kinds_present(gold, pred) == set(ERROR_KINDS)


def test_sample_equals_conlleval_py(sample_lines):
    ours = check_against_conlleval_py(sample_lines)
    assert set(ours["counts"]) == set(TYPES)
    assert 0 < ours["overall"]["correct"] < min(ours["overall"]["gold"], ours["overall"]["pred"])


def test_sample_equals_conlleval_pl(sample_lines):
    check_against_perl(conlleval_pl(), sample_lines)


def test_real_corruption_exercises_every_error_kind(real_file):
    lines, kinds, docs = real_file
    assert set(kinds) == set(ERROR_KINDS) and min(kinds.values()) >= 50, kinds
    gold, pred = parse_predictions(lines)
    assert len(gold) == sum(len(d) for d in docs) == 3453  # CoNLL-2003 test: 3,453 sentences, 231 documents
    assert len(docs) == 231
    assert error_kinds_present(gold, pred) == set(ERROR_KINDS)


def test_real_file_equals_conlleval_py(real_file):
    lines, _, _ = real_file
    ours = check_against_conlleval_py(lines)
    assert ours["overall"]["gold"] == 5648  # CoNLL-2003 test entities
    assert 0.7 < ours["overall"]["f1"] < 0.95


def test_real_file_equals_conlleval_pl(real_file):
    lines, _, _ = real_file
    ref = check_against_perl(conlleval_pl(), lines)
    assert ref["tokens"] == sum(1 for line in lines if line)  # perl counts -DOCSTART- O O lines as tokens


def test_type_never_predicted():
    """Edge case: PER is in gold but never predicted. F1 and recall agree everywhere; precision is 0 in
    perl and seqeval (zero_division=0) but 1.0 in the conlleval 0.2 port."""
    lines = ["Ann B-PER O", "in O O", "Rome B-LOC B-LOC", ""]
    gold, pred = parse_predictions(lines)
    ours = seqeval_side(gold, pred)
    ref = conlleval.evaluate(lines)["slots"]["chunks"]["PER"]
    assert ref["stats"] == ours["counts"]["PER"] == {"gold": 1, "pred": 0, "correct": 0}
    assert ref["evals"]["f1"] == ours["per_type"]["PER"]["f1"] == 0.0
    assert ref["evals"]["prec"] == 1.0 and ours["per_type"]["PER"]["prec"] == 0.0
    if os.environ.get("CONLLEVAL_PL") and Path(os.environ["CONLLEVAL_PL"]).is_file() and shutil.which("perl"):
        assert run_perl(Path(os.environ["CONLLEVAL_PL"]), lines)["types"]["PER"]["prec"] == "0.00"


def test_strict_mode_differs_on_i_without_b():
    """Default mode follows conlleval: an I-PER not preceded by B-PER starts an entity. Strict IOB2 mode
    only accepts entities that begin with B-, so the same prediction finds nothing."""
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]
    assert get_entities(pred[0]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert f1_score(gold, pred) == 1.0  # default: both entities correct
    assert f1_score(gold, pred, mode="strict", scheme=IOB2) == pytest.approx(2 / 3)  # PER is not an entity
    assert precision_score(gold, pred, mode="strict", scheme=IOB2) == 1.0  # only LOC predicted
    assert recall_score(gold, pred, mode="strict", scheme=IOB2) == 0.5
    lines = ["Ann B-PER I-PER", "Lee I-PER I-PER", "in O O", "Rome B-LOC B-LOC", ""]
    assert conlleval.evaluate(lines)["overall"]["chunks"]["stats"] == {"gold": 2, "pred": 2, "correct": 2}
    # a lone I- in gold is an entity for default mode, and no entity at all for strict mode
    lone = [["O", "I-ORG", "O"]]
    assert f1_score(lone, lone) == 1.0
    assert f1_score(lone, lone, mode="strict", scheme=IOB2, zero_division=0) == 0.0
