"""Text: a CSV/TSV of messages and labels, with or without a header (SMS Spam format: label TAB message).

The messages are not held in memory: `load_raw` reads the file once for its labels, checking every line on the way,
and hands on a `MessageFile`, which reads the file again whenever the texts are needed, through the rows a split
selects. As Python strings a corpus takes about three times its file size; a re-read costs a fraction of the
tokenising that follows it. Cleaning and tokenisation follow `data.text`; the vocabulary is built on the training
split only (PAD = 0, UNK = 1, then tokens by falling frequency) and saved as `vocab.json`, so prediction encodes new
text identically. Each text becomes `max_len` token ids, truncated or padded at the end with PAD, stored as uint16
when the vocabulary fits (half of int32; `pipeline.data.model_input` widens them for torch).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from pipeline import console
from pipeline.artifacts import VOCAB_FILE
from pipeline.config import DataParams, TextParams, resolved
from pipeline.data import DataError, RawData, require_file
from pipeline.files import read_json, write_json

log = console.get_logger(__name__)

READ_CHUNK_ROWS = 65536  # rows per pandas chunk when the file has a header
PAD, UNK = "<pad>", "<unk>"
URL = re.compile(r"(https?://|www\.)\S+")
NUMBER = re.compile(r"\d+")
PUNCTUATION = re.compile(r"[^\w\s]")
WORD = re.compile(r"\w+|[^\w\s]")


def load_raw(params: DataParams) -> RawData:
    messages = MessageFile(require_file(params.dataset), params.text)
    return RawData(messages, messages.scan(labelled=True))


def read_new(path: Path, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Messages to predict: a `.txt` file with one message a line, or a file in the training file's format
    (labels, if present, are ignored)."""
    texts = [text for batch, _ in read_new_batches(path, meta, rows=READ_CHUNK_ROWS) for text in batch]
    return texts, texts


def read_new_batches(path: Path, meta: dict[str, Any], rows: int) -> Iterator[tuple[list[str], list[str]]]:
    """`read_new`'s messages, `rows` at a time, read as they are needed: no more of the file is held."""
    path = require_file(path)
    if path.suffix.lower() == ".txt":
        texts: Iterable[str] = _lines(path)
    else:
        messages = MessageFile(path, TextParams(**meta["preprocessing"]["params"]))
        messages.scan(labelled=False)
        texts = messages
    iterator = iter(texts)
    while batch := list(islice(iterator, rows)):
        yield batch, batch


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file, as `str.splitlines` gives them, read one at a time; blank ones are skipped (and
    counted: nothing can be predicted from them)."""
    number = blank = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for number, line in enumerate(f, start=1):  # noqa: B007 (the line reached, for the error below)
                for text in line.splitlines():
                    if text.strip():
                        yield text
                    else:
                        blank += 1
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (after line {number}). Re-save the file as UTF-8.") from None
    if blank:
        log.warning(f"predict: warning: {path}: {blank} blank line(s) skipped.")


class MessageFile:
    """The messages of one file, read anew on every iteration; `file[rows]` sees only those (sorted) row numbers."""

    def __init__(
        self,
        path: Path,
        params: TextParams,
        rows: np.ndarray | None = None,
        total: int = 0,
        version: tuple[int, int] | None = None,
    ):
        self.path, self.params, self.rows, self.total, self.version = path, params, rows, total, version
        self.delimiter = params.delimiter or ("\t" if path.suffix.lower() == ".tsv" or not params.text_column else ",")

    @overload
    def scan(self, labelled: Literal[True]) -> np.ndarray: ...
    @overload
    def scan(self, labelled: bool) -> np.ndarray | None: ...

    def scan(self, labelled: bool) -> np.ndarray | None:
        """Read every row once: the labels (stripped, one string object per distinct label) and the row count, with
        a clear error for a file without messages, an empty message or a missing label."""
        labels: list[str] = []
        distinct: dict[str, str] = {}
        empty, unlabelled = [], []
        self.total, self.version = 0, self._stat()
        for label, text in self._records(labelled):
            self.total += 1
            if not text.strip():
                empty.append(self.total)
            if labelled:
                labels.append(distinct.setdefault(label, label.strip()))
                if not labels[-1]:
                    unlabelled.append(self.total)
        if not self.total:
            raise DataError(f"{self.path}: no messages in the file.")
        if empty:
            raise DataError(
                f"{self.path}: {len(empty)} empty message(s) (first at data row(s) {empty[:5]}). Remove "
                "them or give them text."
            )
        if unlabelled:
            raise DataError(
                f"{self.path}: {len(unlabelled)} message(s) have no label (first at data row(s) "
                f"{unlabelled[:5]}). Label or drop them."
            )
        return np.array(labels, dtype=object) if labelled else None

    def __len__(self) -> int:
        return self.total if self.rows is None else len(self.rows)

    def __getitem__(self, rows: np.ndarray) -> MessageFile:
        rows = np.asarray(rows) if self.rows is None else self.rows[rows]
        if np.any(np.diff(rows) <= 0):
            raise ValueError("MessageFile rows must be increasing: the file is read front to back")
        return MessageFile(self.path, self.params, rows, self.total, self.version)

    def __iter__(self) -> Iterator[str]:
        if self.rows is None:
            yield from (text for _, text in self._records(labelled=False))
            return
        wanted = iter(self.rows.tolist())
        next_row = next(wanted, None)
        for row, (_, text) in enumerate(self._records(labelled=False)):
            if next_row is None:
                break
            if row == next_row:
                yield text
                next_row = next(wanted, None)

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _records(self, labelled: bool) -> Iterator[tuple[str, str]]:
        """(label, text) of every row, label "" where the file has none or it is not needed."""
        if self.version is not None and self._stat() != self.version:  # rows now would not be the rows scanned
            raise DataError(f"{self.path}: changed while it was being read. Run again once it is complete.")
        try:
            if self.params.text_column:
                yield from self._records_with_header(labelled)
            else:
                yield from self._records_label_then_text()
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{self.path}: not UTF-8 text (byte {exc.start}: {exc.reason}). Re-save the file as UTF-8."
            ) from None
        except (csv.Error, OSError) as exc:
            raise DataError(f"{self.path}: cannot be read as delimited text ({exc}).") from None

    def _records_label_then_text(self) -> Iterator[tuple[str, str]]:
        with open(self.path, encoding="utf-8", newline="") as f:
            for number, line in enumerate(f, start=1):
                label, sep, text = line.rstrip("\r\n").partition(self.delimiter)
                if not sep:
                    raise DataError(
                        f"{self.path}, line {number}: no {self.delimiter!r} between label and text. A "
                        "file without header holds `label<delimiter>text` lines; otherwise set "
                        "data.text.text_column and data.text.label_column."
                    )
                yield label, text

    def _records_with_header(self, labelled: bool) -> Iterator[tuple[str, str]]:
        import pandas as pd

        p = self.params
        read = {"sep": self.delimiter, "dtype": str, "keep_default_na": False, "encoding": "utf-8"}
        try:
            columns = pd.read_csv(self.path, nrows=0, **read).columns
            wanted = [resolved(p.text_column)] + ([resolved(p.label_column)] if labelled else [])  # set together
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise DataError(
                    f"{self.path}: no column(s) {', '.join(missing)} (data.text.text_column/label_column). "
                    f"Columns: {', '.join(columns[:20])}. Is the delimiter {self.delimiter!r} right?"
                )
            # Every column is parsed (no `usecols`), so that a row with too many fields, such as an unquoted comma
            # in a message, is an error rather than a message cut short.
            with pd.read_csv(self.path, chunksize=READ_CHUNK_ROWS, **read) as chunks:
                for chunk in chunks:
                    labels = chunk[p.label_column] if labelled else [""] * len(chunk)
                    yield from zip(labels, chunk[p.text_column], strict=True)
        except pd.errors.ParserError as exc:
            raise DataError(f"{self.path}: cannot be read as delimited text ({exc}).") from None
        except pd.errors.EmptyDataError:
            return


class Vocabulary:
    def __init__(self, params: TextParams, tokens: list[str] | None = None):
        self.params, self.tokens = params, tokens or []
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def tokenize(self, text: str) -> list[str]:
        p = self.params
        if p.lowercase:
            text = text.lower()
        if p.strip_urls:
            text = URL.sub(" ", text)
        if p.strip_numbers:
            text = NUMBER.sub(" ", text)
        if p.strip_punctuation:
            text = PUNCTUATION.sub(" ", text)
        return list(text) if p.tokenizer == "char" else WORD.findall(text)

    def fit(self, texts: Iterable[str]) -> Vocabulary:
        counts: Counter = Counter()
        messages = emptied = 0
        for text in texts:
            tokens = self.tokenize(text)
            counts.update(tokens)
            messages, emptied = messages + 1, emptied + (not tokens)
        if emptied and counts:
            log.warning(
                f"prepare: warning: {getattr(texts, 'path', 'training messages')}: {emptied} of {messages} training "
                "message(s) hold no token after cleaning (data.text); the model sees them all as one empty text."
            )
        kept = [t for t, n in counts.most_common(self.params.max_vocab - 2) if n >= self.params.min_freq]
        if not kept:  # every message would become the same row of UNK and PAD: one class predicted for all
            raise DataError(
                f"{getattr(texts, 'path', 'the training messages')}: no token is left in the training "
                f"messages after cleaning (data.text: tokenizer {self.params.tokenizer}, min_freq "
                f"{self.params.min_freq}, strip_urls/strip_numbers/strip_punctuation). Check that the text "
                "column is the right one, or clean less."
            )
        self.tokens = [PAD, UNK, *kept]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        max_len, unk = self.params.max_len, self.ids[UNK]
        dtype = np.uint16 if len(self.tokens) <= np.iinfo(np.uint16).max + 1 else np.int32
        out = np.zeros((len(texts), max_len), dtype=dtype)  # PAD is 0
        for row, text in enumerate(texts):
            ids = [self.ids.get(t, unk) for t in self.tokenize(text)[:max_len]]
            out[row, : len(ids)] = ids
        return out

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "input_shape": [p.max_len],
            "vocab_size": len(self.tokens),
            "preprocessing": {"file": VOCAB_FILE, "params": {k: getattr(p, k) for k in p.__dataclass_fields__}},
        }

    def save(self, folder: Path) -> None:
        write_json(folder / VOCAB_FILE, self.tokens)


def new_preprocessor(params: DataParams) -> Vocabulary:
    return Vocabulary(params.text)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> Vocabulary:
    return Vocabulary(TextParams(**meta["preprocessing"]["params"]), read_json(prepared_dir / VOCAB_FILE))
