"""Data sources: packaged offline tasks, OOD sets, tables; fixed seeded splits without text overlap."""

from __future__ import annotations

import json

import pytest

from peftatlas.evidence.data import (
    OOD_FILES,
    TASKS,
    DataError,
    Split,
    TaskData,
    dedupe,
    load_table,
    load_task,
    text_key,
)


def keys(split: Split) -> set[str]:
    return {text_key(t) for t in split.texts}


def assert_disjoint(task: TaskData) -> None:
    tr, va, te = keys(task.train), keys(task.val), keys(task.test)
    assert len(tr) == len(task.train) and len(va) == len(task.val) and len(te) == len(task.test), "duplicates"
    assert not tr & va and not tr & te and not va & te
    for name, split in task.ood.items():
        assert not keys(split) & (tr | va | te), f"OOD set {name} shares texts with the task"


@pytest.fixture(scope="module")
def mr() -> TaskData:
    return load_task("mr")


def test_movie_reviews_splits(mr):
    assert mr.label_names == ("negative", "positive")
    assert (len(mr.val), len(mr.test)) == (1000, 2000)
    # 10,605 rows, 37 zero ratings dropped, a few duplicate texts kept once
    assert 10_500 < len(mr.train) + len(mr.val) + len(mr.test) <= 10_568
    assert_disjoint(mr)
    for split in (mr.train, mr.val, mr.test):
        neg, pos = split.label_counts(2)
        assert 0.45 < pos / (neg + pos) < 0.55  # the source is balanced; a hash split keeps it so


def test_movie_review_labels_follow_ratings(mr):
    i = mr.train.texts.index(next(t for t in mr.train.texts if t.startswith("The Rock is destined")))
    assert mr.train.labels[i] == 1  # rating +2.27 → positive


def test_ood_sets(mr):
    assert set(mr.ood) == set(OOD_FILES)
    sizes = {k: len(v) for k, v in mr.ood.items()}
    assert 3_500 < sizes["amazon"] <= 3_610 and 4_100 < sizes["tweets"] <= 4_196 and 4_800 < sizes["nyt"] <= 4_946
    for split in mr.ood.values():
        assert set(split.labels) == {0, 1}


@pytest.mark.parametrize("name", ["trec6", "sms_spam"])
def test_other_packaged_tasks(name):
    task = load_task(name)
    src = TASKS[name]
    assert (len(task.val), len(task.test)) == (src.n_val, src.n_test)
    assert len(task.train) > 2_000 and task.ood == {}
    assert set(task.train.labels) == set(range(task.num_labels))
    assert_disjoint(task)


def test_splits_are_deterministic_and_seeded(mr):
    again = load_task("mr")
    assert again.fingerprint() == mr.fingerprint()
    other = load_task("mr", split_seed=1)
    assert other.fingerprint() != mr.fingerprint()
    assert keys(other.test) != keys(mr.test)
    assert_disjoint(other)


def test_subsets_are_nested_prefixes(mr):
    small, big = mr.subset(train=64, val=10, ood=5), mr.subset(train=256)
    assert small.train.texts == big.train.texts[:64] == mr.train.texts[:64]
    assert len(small.val) == 10 and all(len(v) == 5 for v in small.ood.values())
    assert small.fingerprint() != big.fingerprint()
    with pytest.raises(DataError, match="at least one row"):
        mr.train.head(0)


def test_dedupe_drops_conflicting_labels():
    rows = dedupe([("Good  film", 1), ("good film", 1), ("odd one", 0), ("Odd one", 1), ("  ", 0), ("x", 0)])
    assert set(rows) == {"good film", "x"}
    assert rows["good film"] == ("Good  film", 1)


def test_csv_without_split_column(tmp_path):
    path = tmp_path / "d.csv"
    lines = ["text,label"] + [f"sample number {i},{'yes' if i % 3 else 'no'}" for i in range(100)]
    lines += ["sample number 1,yes", "Sample  number 2,no"]  # a duplicate and a conflicting copy
    path.write_text("\n".join(lines) + "\n")
    task = load_task(f"csv:{path}")
    assert task.label_names == ("no", "yes")
    assert (len(task.val), len(task.test)) == (10, 10)
    assert len(task.train) + len(task.val) + len(task.test) == 99  # "sample number 2" dropped (two labels)
    assert_disjoint(task)
    assert load_task(str(path)).fingerprint() == task.fingerprint()


def test_jsonl_with_split_column_and_cross_split_duplicates(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": i % 2, "split": ["train", "validation", "test"][i % 3]} for i in range(30)]
    rows.append({"text": "T0", "label": 0, "split": "test"})  # t0 is in train too: test keeps it
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(f"jsonl:{path}")
    assert task.label_names == ("0", "1")
    assert "t0" not in keys(task.train) and "t0" in keys(task.test)
    assert_disjoint(task)
    assert len(task.val) == 10 and len(task.test) == 11 and len(task.train) == 9


def test_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\na,1\nb,0\n")
    with pytest.raises(DataError, match="no column 'text'"):
        load_table(bad)
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,1\nb,1\n")
    with pytest.raises(DataError, match="≥ 2 labels"):
        load_table(one)
    split = tmp_path / "split.csv"
    split.write_text("text,label,split\na,1,train\nb,0,holdout\n")
    with pytest.raises(DataError, match="holdout"):
        load_table(split)
    with pytest.raises(DataError, match="does not exist"):
        load_task("csv:/nonexistent/file.csv")
    with pytest.raises(DataError, match="unknown task"):
        load_task("imdb")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{not json\n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_table(broken)
