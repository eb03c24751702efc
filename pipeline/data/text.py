"""Text: a CSV/TSV of messages and labels, with or without a header (SMS Spam format: label TAB message).

Cleaning and tokenisation follow `data.text`; the vocabulary is built on the training split only (PAD = 0, UNK = 1,
then tokens by falling frequency) and saved as `vocab.json`, so prediction encodes new text identically. Each text
becomes `max_len` token ids (int32), truncated or padded at the end with PAD.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DataParams, TextParams
from pipeline.data import DataError, RawData, require_file
from pipeline.files import read_json, write_json

VOCAB_FILE = "vocab.json"
# Half of int64, and the narrowest index type torch's embeddings take (int16 would need a cast per batch).
TOKEN_ID_DTYPE = np.int32
PAD, UNK = "<pad>", "<unk>"
URL = re.compile(r"(https?://|www\.)\S+")
NUMBER = re.compile(r"\d+")
PUNCTUATION = re.compile(r"[^\w\s]")
WORD = re.compile(r"\w+|[^\w\s]")


def load_raw(params: DataParams) -> RawData:
    path = require_file(params.dataset)
    frame = read_messages(path, params.text, need_labels=True)
    # Labels through their few distinct values: one stripped string per class, not one per message.
    codes, distinct = pd.factorize(frame["label"], use_na_sentinel=True)
    names = np.array([str(v).strip() for v in distinct] + [""], dtype=object)  # [-1]: a missing label
    labels = names[codes]
    missing = labels == ""
    if missing.any():
        rows = (np.flatnonzero(missing) + 1)[:5].tolist()
        raise DataError(f"{path}: {int(missing.sum())} message(s) have no label (first at data row(s) {rows}). "
                        "Label or drop them.")
    return RawData(frame["text"].tolist(), labels)


def read_messages(path: Path, p: TextParams, need_labels: bool) -> pd.DataFrame:
    """A frame with `text` (and `label`) columns; a header-less file is label, delimiter, text on each line."""
    delimiter = p.delimiter or ("\t" if path.suffix.lower() == ".tsv" or not p.text_column else ",")
    try:
        if p.text_column:
            frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, encoding="utf-8")
            wanted = [p.text_column] + ([p.label_column] if need_labels else [])
            missing = [c for c in wanted if c not in frame.columns]
            if missing:
                raise DataError(f"{path}: no column(s) {', '.join(missing)} (data.text.text_column/label_column). "
                                f"Columns: {', '.join(frame.columns[:20])}. Is the delimiter {delimiter!r} right?")
            frame = frame.rename(columns={p.text_column: "text", p.label_column: "label"})
        else:
            frame = _read_label_then_text(path, delimiter)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}). Re-save the file as UTF-8.") \
            from None
    except (pd.errors.ParserError, csv.Error, OSError) as exc:
        raise DataError(f"{path}: cannot be read as delimited text ({exc}).") from None
    if frame.empty:
        raise DataError(f"{path}: no messages in the file.")
    # One message at a time: no stripped copy of the whole column.
    empty = np.fromiter((not isinstance(t, str) or not t.strip() for t in frame["text"]), dtype=bool,
                        count=len(frame))
    if empty.any():
        rows = (np.flatnonzero(empty) + 1)[:5].tolist()
        raise DataError(f"{path}: {int(empty.sum())} empty message(s) (first at data row(s) {rows}). Remove them or "
                        "give them text.")
    return frame


def _read_label_then_text(path: Path, delimiter: str) -> pd.DataFrame:
    labels, texts = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            label, sep, text = line.rstrip("\r\n").partition(delimiter)
            if not sep:
                raise DataError(f"{path}, line {number}: no {delimiter!r} between label and text. A file without "
                                "header holds `label<delimiter>text` lines; otherwise set data.text.text_column "
                                "and data.text.label_column.")
            labels.append(label)
            texts.append(text)
    return pd.DataFrame({"label": labels, "text": texts}, dtype=object)  # object: these strings, not copies


def read_new(path: Path, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Messages to predict: a `.txt` file with one message a line, or a file in the training file's format
    (labels, if present, are ignored)."""
    path = require_file(path)
    if path.suffix.lower() == ".txt":
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}). Re-save the file as UTF-8.") from None
    else:
        texts = read_messages(path, TextParams(**meta["preprocessing"]["params"]), need_labels=False)["text"]
    return list(texts), list(texts)


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

    def fit(self, texts: list[str]) -> "Vocabulary":
        counts = Counter(token for text in texts for token in self.tokenize(text))
        kept = [t for t, n in counts.most_common(self.params.max_vocab - 2) if n >= self.params.min_freq]
        self.tokens = [PAD, UNK, *kept]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        max_len, unk = self.params.max_len, self.ids[UNK]
        out = np.zeros((len(texts), max_len), dtype=TOKEN_ID_DTYPE)  # PAD is 0
        for row, text in enumerate(texts):
            ids = [self.ids.get(t, unk) for t in self.tokenize(text)[:max_len]]
            out[row, :len(ids)] = ids
        return out

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {"input_shape": [p.max_len], "vocab_size": len(self.tokens),
                "preprocessing": {"file": VOCAB_FILE, "params": {k: getattr(p, k) for k in p.__dataclass_fields__}}}

    def save(self, folder: Path) -> None:
        write_json(folder / VOCAB_FILE, self.tokens)


def new_preprocessor(params: DataParams) -> Vocabulary:
    return Vocabulary(params.text)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> Vocabulary:
    return Vocabulary(TextParams(**meta["preprocessing"]["params"]), read_json(prepared_dir / VOCAB_FILE))
