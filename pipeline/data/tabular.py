"""Tables: scikit-learn's built-in breast_cancer, wine and iris, or a CSV/TSV/Parquet file with a target column.

Reading keeps memory near the size of the data: pyarrow streams the file block by block, floats parsed as float32 and
text dictionary-encoded, and hands the table to pandas column by column (text arrives as pandas categoricals). The
target and the columns named in `data.tabular.categorical` keep their exact values, since classes and categories are
named after their text.

The preprocessing is a scikit-learn ColumnTransformer fitted on the training split only: numeric columns imputed and
scaled; categorical ones, compared as text, either imputed and one-hot encoded or, with `categorical_encoding:
embedding`, replaced by one index per column: 1..K for the K categories seen in training, 0 for a missing value or a
category training never saw (meta.json then records `numeric_features` and `categorical_cardinalities`, which the MLP
is built from; the indices follow the numeric features). It transforms in row chunks into one float32 array, and is
saved beside the prepared arrays (`preprocessor.skops`) so that prediction applies exactly the same transformation.
It is saved with skops, not pickled: loading it rebuilds only scikit-learn objects and the few functions named in
TRUSTED_TYPES, so a file replaced on a DVC remote or in an artifact store cannot run code.

Before that, the columns are treated as a data scientist would (`plan_columns`, on the training split): a date
column (text in one date format, or a datetime column) becomes calendar features, the year and the month, day of week
and day of year as sin/cos pairs (December sits next to January); an ID-like column (a value per row) is left out,
and so is, with one-hot encoding, a text column with more than `data.tabular.max_categories` values;
`data.tabular.drop` removes columns outright. The outcome is meta.json's `feature_summary`, which prepare prints.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.specs import UNKNOWN_CATEGORY
from pipeline import console
from pipeline.artifacts import PICKLED_PREPROCESSOR_FILE, PREPROCESSOR_FILE
from pipeline.config import DataParams, TabularParams, resolved
from pipeline.data import DataError, RawData, require_file

log = console.get_logger(__name__)

# What the fitted ColumnTransformer holds beyond the scikit-learn and numpy types skops trusts by itself (the
# median imputer's function, the embedding index shift); a file that holds anything else is refused.
TRUSTED_TYPES = ("numpy.dtype", "numpy.median", f"{__name__}._past_unknown_index")
BUILTIN_LOADERS = {"breast_cancer": "load_breast_cancer", "wine": "load_wine", "iris": "load_iris"}
# Reads of a CSV that a column changing type (numbers, then text) may take before the types settle.
MAX_TYPE_RETRIES = 20
# Rows per transform step: scikit-learn's float64 temporaries stay a few MB whatever the table's length.
TRANSFORM_CHUNK_ROWS = 65536
UNKNOWN_INDEX = UNKNOWN_CATEGORY  # the embedding index of a missing or never-seen category
# Date formats tried on a text column, in this order. pandas' own value-by-value parser ("mixed") is tried only on
# columns named in data.tabular.dates: it reads codes such as "T-00123" as dates too.
DATE_FORMATS = (
    "ISO8601",
    "%m/%d/%Y",
    "%d/%m/%Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%d-%m-%Y",
    "%m-%d-%Y",
    "%d %b %Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%B %d, %Y",
)
ANY_DATE_FORMAT = "mixed"
DATE_SAMPLE = 2000  # distinct values of a column tried as dates: enough to tell, cheap on a large table
DATE_MIN_SHARE = 0.95  # of those that parse with one format: a few typos or "unknown" leave it a date column
# A column whose values are (nearly) all different is an ID or free text: it identifies rows, it cannot generalise.
ID_UNIQUE_SHARE = 0.9
ID_MIN_ROWS = 20  # fewer training rows say too little to call a column unique per row
ID_NAME = re.compile(r"(^|[_\s.-])(id|uuid|guid)$|^(id|uuid)([_\s.-]|$)|[a-z](Id|ID)$", re.IGNORECASE)
CALENDAR = ("year", "month_sin", "month_cos", "dayofweek_sin", "dayofweek_cos", "dayofyear_sin", "dayofyear_cos")


def load_raw(params: DataParams) -> RawData:
    if params.dataset in BUILTIN_LOADERS:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, BUILTIN_LOADERS[params.dataset])(as_frame=True)
        return RawData(
            select_features(bunch.data, params.tabular, Path(params.dataset)),
            bunch.target.to_numpy(),
            [str(c) for c in bunch.target_names],
        )
    t, path = params.tabular, require_file(params.dataset)
    table = TableFile(path, t, {resolved(t.target), *(t.categorical or [])})
    return RawData(table, table.scan())


@dataclass
class TableFile:
    """A CSV/TSV/Parquet table as prepare's inputs, read `data.tabular.chunk_rows` rows at a time and never held
    whole: `scan` reads it once for the labels, checking every chunk on the way; then the preprocessing is fitted on
    the rows `take` reads (a bounded sample of the training split), and `chunks` feeds the transform. Floats are
    float32 (but in the `exact` columns), text is dictionary-encoded (pandas categoricals), as `read_table` reads."""

    path: Path
    params: TabularParams
    exact: set[str]
    rows: int = 0
    features: list[str] = field(default_factory=list)  # the selected feature columns, known after `scan`
    csv_types: dict[str, Any] | None = None  # CSV: each column's arrow type, settled by `scan`

    @property
    def fit_rows(self) -> int:
        return self.params.fit_rows

    def __len__(self) -> int:
        return self.rows

    def scan(self) -> Any:
        """Read the whole table once: check it chunk by chunk, settle the column types, return the labels."""
        import pyarrow as pa

        for _ in range(MAX_TYPE_RETRIES):
            try:
                return self._scan()
            except pa.ArrowInvalid as exc:  # a column changes type after the first block (numbers, then text)
                if not self._widen(str(exc)):
                    raise DataError(
                        f"{self.path}: cannot be read as a {self.path.suffix or 'CSV'} table ({exc})."
                    ) from None
        raise DataError(f"{self.path}: the column types keep changing along the file; check the delimiter.")

    def _scan(self) -> Any:
        t, path = self.params, self.path
        labels, first, rows = [], True, 0
        constant: dict[str, Any] = {}  # column -> its one value so far (absent once a second one is seen)
        for start, frame in self._frames():
            if first:
                if frame.shape[1] < 2:
                    raise DataError(
                        f"{path}: {frame.shape[1]} column(s); expected a header line and at least a feature "
                        "and a target column (is the delimiter right? .tsv files use tabs)."
                    )
                if t.target not in frame.columns:
                    raise DataError(
                        f"{path}: no target column '{t.target}' (data.tabular.target). Columns: "
                        f"{', '.join(map(str, frame.columns[:30]))}."
                    )
                self.features = list(select_features(frame.drop(columns=[t.target]), t, path).columns)
                numeric = [c for c in self.features if pd.api.types.is_numeric_dtype(frame[c])]
                constant = {c: frame[c].iloc[0] for c in self.features}
                first = False
            target = frame[t.target]
            if target.isna().any():
                lines = (np.flatnonzero(target.isna().to_numpy()) + start + 2)[:5].tolist()  # header, 1-based
                raise DataError(
                    f"{path}: the target column '{t.target}' is empty on {int(target.isna().sum())} row(s) "
                    f"(first at file lines {lines}). Fill or drop those rows."
                )
            check_finite(frame, numeric, path, first_row=start)
            for c in list(constant):
                values = frame[c]
                if values.nunique(dropna=False) > 1 or not _same(values.iloc[0], constant[c]):
                    del constant[c]
            labels.append(target)
            rows = start + len(frame)
        if first:
            raise DataError(
                f"{path}: 0 rows; expected a header line and rows below it with at least a feature and a "
                "target column (is the delimiter right? .tsv files use tabs)."
            )
        self.rows = rows
        if constant:
            names = list(constant)
            named = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            log.warning(
                f"prepare: warning: {path}: column(s) {named} hold one value in every row and tell the classes "
                "nothing; leave them out with data.tabular.features."
            )
        if all(isinstance(piece.dtype, pd.CategoricalDtype) for piece in labels):
            return pd.api.types.union_categoricals(labels, ignore_order=True)
        return np.concatenate([piece.to_numpy() for piece in labels])

    def _widen(self, error: str) -> bool:
        """After an arrow conversion error in a CSV column: that column read as the next wider type (integers as
        floats, anything as text), as a whole-file type inference would; False if the error is another one."""
        import pyarrow as pa

        found = re.search(r"CSV column #(\d+).*conversion error to (\w+)", error)
        if self.csv_types is None or not found:
            return False
        name = list(self.csv_types)[int(found.group(1))]
        if "UTF8" in error:
            raise DataError(
                f"{self.path}: not UTF-8 text (column {name} holds bytes that are not UTF-8). Re-save the file as "
                "UTF-8."
            )
        wider = pa.float64() if found.group(2).startswith(("int", "uint")) else pa.string()
        self.csv_types[name] = _compact_type(wider, name in self.exact)
        return True

    def chunks(self) -> Iterator[tuple[int, pd.DataFrame]]:
        """The feature columns, chunk by chunk, with the row position of each chunk's first row."""
        for start, frame in self._frames():
            yield start, frame[self.features]

    def __getitem__(self, rows: np.ndarray) -> pd.DataFrame:
        """The feature columns of rows `rows` (increasing), read chunk by chunk: a chunk holds its own categories,
        so the rows are gathered as arrow tables and their dictionaries unified before pandas sees them."""
        import pyarrow as pa

        taken: list[Any] = []
        schema: Any = None
        for start, table in self._tables(self.features):
            schema = table.schema
            lo, hi = np.searchsorted(rows, [start, start + table.num_rows])
            if hi > lo:
                taken.append(table.take(pa.array(rows[lo:hi] - start)))
            if hi == len(rows):
                break
        joined = pa.concat_tables(taken).unify_dictionaries() if taken else schema.empty_table()
        return self._frame(joined.combine_chunks(), pd.Index(rows))

    def _frames(self) -> Iterator[tuple[int, pd.DataFrame]]:
        for start, table in self._tables():
            yield start, self._frame(table, pd.RangeIndex(start, start + table.num_rows))

    def _frame(self, table: Any, index: pd.Index) -> pd.DataFrame:
        frame = table.to_pandas(split_blocks=True)
        frame.index = index
        if self.path.suffix.lower() == ".parquet":  # float32 as read_table makes them (a CSV is read so already)
            return frame.astype(
                {c: np.float32 for c in frame.columns if c not in self.exact and frame[c].dtype.kind == "f"}
            )
        return frame

    def _tables(self, columns: list[str] | None = None) -> Iterator[tuple[int, Any]]:
        """Arrow tables of chunk_rows rows (the last one shorter), with the position of their first row."""
        import pyarrow as pa

        rows = self.params.chunk_rows
        try:
            batches = self._batches(columns, rows)
            start, pending, held = 0, [], 0
            for batch in batches:
                pending.append(batch)
                held += batch.num_rows
                while held >= rows:
                    table = pa.Table.from_batches(pending)
                    yield start, table.slice(0, rows)
                    rest = table.slice(rows)
                    pending, held, start = rest.to_batches(), rest.num_rows, start + rows
                    # arrow's allocator keeps the pages of freed chunks: over a whole read, about the file's size
                    pa.default_memory_pool().release_unused()
            if held:
                yield start, pa.Table.from_batches(pending)
        except pa.ArrowInvalid:
            raise
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise DataError(f"{self.path}: cannot be read as a {self.path.suffix or 'CSV'} table ({exc}).") from None

    def _batches(self, columns: list[str] | None, rows: int) -> Iterator[Any]:
        if self.path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            # pre_buffer (the default) keeps what it read ahead until the file is closed: about the file's size
            reader = pq.ParquetFile(self.path, pre_buffer=False)
            yield from reader.iter_batches(batch_size=rows, columns=columns)
            return
        import pyarrow.csv as pacsv

        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        parse, convert, names, schema = _csv_options(self.path, delimiter)
        if self.csv_types is None:
            binary = [name for name, f in zip(names, schema, strict=True) if _is_bytes(f.type)]
            if binary:
                raise DataError(
                    f"{self.path}: not UTF-8 text (column(s) {', '.join(binary)} hold bytes that are not "
                    "UTF-8). Re-save the file as UTF-8."
                )
            self.csv_types = {
                name: _compact_type(f.type, name in self.exact) for name, f in zip(names, schema, strict=True)
            }
        convert.column_types = self.csv_types
        if columns is not None:
            convert.include_columns = columns
        read = pacsv.ReadOptions(column_names=names, skip_rows=1)
        with pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            yield from reader


def _same(a: Any, b: Any) -> bool:
    return bool((pd.isna(a) and pd.isna(b)) or a == b)


def read_table(path: Path, exact: Collection[str] = ()) -> pd.DataFrame:
    """The table with its floats as float32, but in the `exact` columns, and its text as pandas categoricals."""
    import pyarrow as pa

    try:
        if path.suffix.lower() != ".parquet":
            return _read_delimited(path, "\t" if path.suffix.lower() == ".tsv" else ",", set(exact))
        frame = pd.read_parquet(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as a {path.suffix or 'CSV'} table ({exc}).") from None
    # float32: the model's dtype, and half float64's memory (a CSV is read so already).
    return frame.astype({c: np.float32 for c in frame.columns if c not in exact and frame[c].dtype.kind == "f"})


def _csv_options(path: Path, delimiter: str) -> tuple[Any, Any, list[str], Any]:
    """Parse and convert options, the column names (pandas' for an empty header) and the first block's schema."""
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter=delimiter)
    # pandas.read_csv's missing-value markers: pyarrow's list lacks "None" and "<NA>"; "" is missing text too.
    convert = pacsv.ConvertOptions(
        null_values=[*pacsv.ConvertOptions().null_values, "None", "<NA>"], strings_can_be_null=True
    )
    with pacsv.open_csv(path, parse_options=parse, convert_options=convert) as first_block:
        schema = first_block.schema
    del first_block  # closed, it still holds the blocks it read ahead
    repeated = sorted({name for name, n in Counter(schema.names).items() if n > 1 and name})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {', '.join(repeated)} more than once; rename them so "
            "that each column has its own name."
        )
    names = [name or f"Unnamed: {i}" for i, name in enumerate(schema.names)]
    return parse, convert, names, schema


def _read_delimited(path: Path, delimiter: str, exact: set[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse, convert, names, schema = _csv_options(path, delimiter)
    read = pacsv.ReadOptions(column_names=names, skip_rows=1)
    # Streamed block by block with the first block's types made compact: the parser holds a few blocks (read_csv
    # holds about the whole file), and no float64 or one-string-per-row copy of the table exists.
    convert.column_types = {
        name: _compact_type(field.type, name in exact) for name, field in zip(names, schema, strict=True)
    }
    try:
        with pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as blocks:
            table = blocks.read_all()
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc):
            raise
        # A column changes type after the first block (numbers, then text): typed from every block, then compacted.
        convert.column_types = {}
        table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        table = table.cast(
            pa.schema([field.with_type(_compact_type(field.type, field.name in exact)) for field in table.schema]),
            safe=False,
        )
    binary = [field.name for field in table.schema if _is_bytes(field.type)]
    if binary:
        raise DataError(
            f"{path}: not UTF-8 text (column(s) {', '.join(binary)} hold bytes that are not UTF-8). "
            "Re-save the file as UTF-8."
        )
    frame = table.to_pandas(self_destruct=True, split_blocks=True)  # one column at a time, its arrow memory freed
    del table
    pa.default_memory_pool().release_unused()  # else arrow's allocator keeps the freed pages: about the data's size
    return frame


def _compact_type(arrow_type: Any, exact: bool) -> Any:
    """float32 for floats (not in exact columns), dictionary-encoded text (pandas categoricals), else as is.

    Integers stay integers: the MLflow model's signature, taken from the training rows, then takes them as users'
    pandas reads them (int64), where float features refuse them."""
    import pyarrow as pa

    if (pa.types.is_floating(arrow_type) or pa.types.is_null(arrow_type)) and not exact:  # null: empty so far, NaN
        return pa.float32()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.dictionary(pa.int32(), pa.string())
    return arrow_type


def _is_bytes(arrow_type: Any) -> bool:
    """pyarrow's type for a text column with bytes that are not UTF-8 (dictionary-encoded or not)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)


def select_features(frame: pd.DataFrame, t: TabularParams, path: Path) -> pd.DataFrame:
    dropped = set(t.drop or [])
    wanted = [c for c in (list(t.features) if t.features else list(frame.columns)) if c not in dropped]
    named = list(t.features or []) + list(t.categorical or []) + list(t.dates or []) + list(t.drop or [])
    missing = list(dict.fromkeys(c for c in named if c not in frame.columns))
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(missing)} named in data.tabular are not in the file (or are "
            f"the target). Columns: {', '.join(map(str, frame.columns[:30]))}."
        )
    for key, names in (("categorical", t.categorical), ("dates", t.dates)):
        outside = [c for c in names or [] if c not in wanted]
        if outside:
            raise DataError(
                f"{path}: data.tabular.{key} names {', '.join(outside)}, which data.tabular.features or "
                f"data.tabular.drop leaves out; keep them in the features or remove them from {key}."
            )
    both = [c for c in t.dates or [] if c in (t.categorical or [])]
    if both:
        raise DataError(
            f"{path}: {', '.join(both)} named both in data.tabular.dates and data.tabular.categorical; "
            "name each column in one of them."
        )
    return frame[wanted]


@dataclass
class ColumnPlan:
    """What becomes of each feature column, decided on the training split."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, int] = field(default_factory=dict)  # name -> distinct values in training
    dates: dict[str, str] = field(default_factory=dict)  # name -> the format it parses with (DATE_FORMATS)
    dropped: dict[str, str] = field(default_factory=dict)  # name -> why

    def summary(self, rows: int, inputs: int, user_dropped: list[str]) -> dict[str, Any]:
        dropped = {**{c: "data.tabular.drop" for c in user_dropped}, **self.dropped}
        return {
            "rows": rows,
            "model_inputs": inputs,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "dates": self.dates,
            "dropped": dropped,
        }


def plan_columns(frame: pd.DataFrame, p: TabularParams) -> ColumnPlan:
    """Dates, numeric and categorical columns, and those left out with the reason; the user's lists win."""
    plan = ColumnPlan()
    explicit = set(p.categorical or [])
    unlisted_text = []
    for c in frame.columns:
        column = frame[c]
        if p.dates is not None:
            fmt = _date_format(column, c, required=True) if c in p.dates else None
        else:
            fmt = None if c in explicit else _date_format(column, c, required=False)
        if fmt:
            plan.dates[c] = fmt
            continue
        text = not pd.api.types.is_numeric_dtype(column) or column.dtype == bool
        if c in explicit or (text and p.categorical is None):
            distinct = int(column.nunique(dropna=True))
            if c not in explicit and _unique_per_row(column, distinct):
                plan.dropped[c] = f"an ID or free text: {distinct} distinct values in {column.notna().sum()} rows"
            elif c not in explicit and distinct > p.max_categories and p.categorical_encoding == "onehot":
                plan.dropped[c] = (
                    f"{distinct} distinct values, more than data.tabular.max_categories "
                    f"({p.max_categories}) for one-hot encoding"
                )
            else:
                plan.categorical[c] = distinct
        elif text:
            unlisted_text.append(c)
        elif (
            ID_NAME.search(str(c))
            and pd.api.types.is_integer_dtype(column)
            and _unique_per_row(column, int(column.nunique(dropna=True)))
        ):
            plan.dropped[c] = "an ID: named so, one integer per row"
        else:
            plan.numeric.append(c)
    if unlisted_text:
        raise DataError(
            f"column(s) {', '.join(map(str, unlisted_text))} hold text, but data.tabular.categorical does "
            "not list them; add them there, or set it to null to detect the categorical columns."
        )
    return plan


def _unique_per_row(column: pd.Series, distinct: int) -> bool:
    present = int(column.notna().sum())
    return present >= ID_MIN_ROWS and distinct >= ID_UNIQUE_SHARE * present


def _date_format(column: pd.Series, name: str, required: bool) -> str | None:
    """The first of DATE_FORMATS that parses (nearly) all of the column's values, or None; a column named in
    data.tabular.dates may also be read by pandas' parser, and is an error if that fails too."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return "ISO8601"  # already dates; text given at prediction is read as ISO 8601
    if pd.api.types.is_numeric_dtype(column) or column.dtype == bool:
        if required:
            raise DataError(f"data.tabular.dates names '{name}', which holds numbers, not dates; remove it there.")
        return None
    # The distinct values only: a text column as read is categorical, its categories are those values.
    distinct = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else pd.unique(column.dropna())
    values = pd.Series(np.asarray(distinct[:DATE_SAMPLE]).astype(str), dtype=object)
    if values.empty or (not required and not values.str.contains(r"\d").all()):  # "May", "Monday": categories
        return None
    formats = (*DATE_FORMATS, ANY_DATE_FORMAT) if required else DATE_FORMATS
    shares = {fmt: float(_to_datetime(values, fmt).notna().mean()) for fmt in formats}
    best = max(shares.values())
    if best >= DATE_MIN_SHARE:
        return next(fmt for fmt, share in shares.items() if share == best)
    if required:
        raise DataError(
            f"data.tabular.dates names '{name}', but only {best:.0%} of its values (e.g. "
            f"'{values.iloc[0]}') parse as dates in one format (ISO 8601 such as 2024-01-31, 01/31/2024, "
            "31.01.2024 ...); fix the values or remove the column from data.tabular.dates."
        )
    return None


def _to_datetime(values: pd.Series, fmt: str) -> pd.Series:
    # utc: one time line even when the values carry different offsets (pandas refuses to mix them otherwise)
    return pd.to_datetime(values, format=fmt, errors="coerce", utc=True)


def with_calendar_features(frame: pd.DataFrame, dates: dict[str, str]) -> pd.DataFrame:
    """`frame` plus, per date column, its CALENDAR features (float32, NaN where the date is missing or unreadable).

    Month, day of week and day of year are cyclic, so each becomes a point on a circle (sin, cos): the last day of a
    period is then as close to the first as to the day before."""
    added = {}
    for name, fmt in dates.items():
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column):
            when = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
        elif isinstance(column.dtype, pd.CategoricalDtype):  # parse each category once, not each row
            parsed = _to_datetime(pd.Series(column.cat.categories.astype(str), dtype=object), fmt)
            when = pd.Series(parsed.array.take(column.cat.codes.to_numpy(), allow_fill=True), index=column.index)
        else:
            when = _to_datetime(column.astype(object).where(column.notna(), None), fmt)
        added[f"{name}_year"] = _float_values(when.dt.year).astype(np.float32)
        for unit, position, period in (
            ("month", _float_values(when.dt.month) - 1, 12),
            ("dayofweek", _float_values(when.dt.day_of_week), 7),
            ("dayofyear", _float_values(when.dt.day_of_year) - 1, 365.25),
        ):
            angle = 2 * np.pi * position / period
            added[f"{name}_{unit}_sin"] = np.sin(angle).astype(np.float32)
            added[f"{name}_{unit}_cos"] = np.cos(angle).astype(np.float32)
    return frame.assign(**added) if added else frame


def _float_values(values: pd.Series) -> np.ndarray:
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def calendar_columns(dates: dict[str, str]) -> list[str]:
    return [f"{name}_{feature}" for name in dates for feature in CALENDAR]


def summary_lines(summary: dict[str, Any], width: int = 100) -> list[str]:
    """The feature summary as prepare prints it: a line per kind of column, long lists cut to fit the screen."""

    def listing(items: list[str]) -> str:
        text = ", ".join(items)
        return text if len(text) <= width else text[: width - 12].rsplit(", ", 1)[0] + f", ... ({len(items)} in all)"

    head = (
        f"prepare: {summary['rows']} training rows; features: {len(summary['numeric'])} numeric, "
        f"{len(summary['categorical'])} categorical, {len(summary['dates'])} date, {len(summary['dropped'])} "
        f"left out -> {summary['model_inputs']} model inputs"
    )
    lines = [head]
    if summary["numeric"]:
        lines.append(f"  numeric      {listing(summary['numeric'])}")
    if summary["categorical"]:
        lines.append(f"  categorical  {listing([f'{c} ({n} values)' for c, n in summary['categorical'].items()])}")
    if summary["dates"]:
        lines.append(
            f"  date         {listing([f'{c} ({fmt})' for c, fmt in summary['dates'].items()])} -> year, "
            "month, day of week, day of year (sin/cos)"
        )
    for column, why in list(summary["dropped"].items())[:10]:
        lines.append(f"  left out     {column}: {why}")
    if len(summary["dropped"]) > 10:
        lines.append(f"  left out     ... {len(summary['dropped']) - 10} more (meta.json, feature_summary)")
    return lines


def dropped_warning(summary: dict[str, Any]) -> str | None:
    """The columns detection left out (not those of data.tabular.drop), with what keeps them."""
    detected = [c for c, why in summary["dropped"].items() if why != "data.tabular.drop"]
    if not detected:
        return None
    return (
        f"prepare: warning: left out of the features: {', '.join(detected[:20])}"
        f"{' ...' if len(detected) > 20 else ''} (reasons above). To keep one, list it in data.tabular.categorical "
        "(or use data.tabular.categorical_encoding: embedding for many categories); to silence this, list them "
        "in data.tabular.drop."
    )


def read_new(path: Path, meta: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Rows to predict: a CSV/TSV/Parquet table with at least the training feature columns (target optional)."""
    batches = list(read_new_batches(path, meta, rows=2**62))
    return pd.concat([b for b, _ in batches]), [i for _, ids in batches for i in ids]


def read_new_batches(path: Path, meta: dict[str, Any], rows: int) -> Iterator[tuple[pd.DataFrame, list[str]]]:
    """`read_new`'s rows, `rows` at a time (the table is read whole: pyarrow keeps it compact)."""
    path = require_file(path)
    frame = read_table(path, exact=meta["preprocessing"].get("categorical", []))
    columns = training_columns(frame, meta, str(path))
    if columns.empty:
        raise DataError(f"{path}: no rows to predict (only a header). Add the rows below the header line.")
    # The columns the model took as numbers: not the categorical ones, nor dates, nor those prepare left out.
    not_numeric = {
        *meta["preprocessing"].get("categorical", []),
        *meta["preprocessing"].get("dates", {}),
        *meta.get("feature_summary", {}).get("dropped", {}),
    }
    numeric = [c for c in columns.columns if c not in not_numeric]
    columns = columns.assign(
        **{c: _numeric_column(columns[c], c, path) for c in numeric if not pd.api.types.is_numeric_dtype(columns[c])}
    )
    check_finite(columns, numeric, path)
    # Text as plain strings, the form a caller of the MLflow model passes (its signature refuses categoricals).
    text = {c: object for c in columns.columns if isinstance(columns[c].dtype, pd.CategoricalDtype)}
    for start in range(0, len(columns), rows):
        batch = columns.iloc[start : start + rows]
        yield batch.astype(text), [str(i) for i in batch.index]


def _numeric_column(column: pd.Series, name: str, path: Path) -> pd.Series:
    """A column the model took as numbers, read as text: its numbers, or an error naming the text that is none."""
    values = pd.to_numeric(column.astype(object), errors="coerce")
    text = column.notna().to_numpy() & values.isna().to_numpy()
    if text.any():
        lines = (np.flatnonzero(text) + 2)[:5].tolist()  # +2: header line, 1-based
        examples = ", ".join(repr(v) for v in pd.unique(column[text].astype(str))[:3])
        raise DataError(
            f"{path}: column '{name}' holds text ({examples}) where the model was trained on numbers "
            f"(file lines {lines}). Correct those values, or leave them empty to have them imputed."
        )
    return values.astype(np.float32)


def check_finite(frame: pd.DataFrame, numeric: list[str], path: Path, first_row: int = 0) -> None:
    """Refuse infinite numbers, and those too large for float32 (read as infinite): no scaler can use them.
    `first_row`: the frame's first row's position in the file (a chunk of it)."""
    for name in numeric:
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = np.isinf(values) | (np.abs(np.nan_to_num(values)) > np.finfo(np.float32).max)
        if infinite.any():
            lines = (np.flatnonzero(infinite) + first_row + 2)[:5].tolist()
            raise DataError(
                f"{path}: column '{name}' holds {int(infinite.sum())} infinite value(s) or value(s) "
                f"beyond ±{np.finfo(np.float32).max:.2e} (file lines {lines}). Correct them, or leave "
                "them empty to have them imputed."
            )


def training_columns(frame: pd.DataFrame, meta: dict[str, Any], source: str) -> pd.DataFrame:
    """The feature columns the model was trained on, in training order; missing ones are named."""
    columns = meta["preprocessing"]["columns"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing the column(s) the model was trained on: {', '.join(missing)}.")
    return frame[columns]


class TablePreprocessor:
    def __init__(
        self,
        params: TabularParams,
        transformer: Any = None,
        columns: list[str] | None = None,
        dates: dict[str, str] | None = None,
    ):
        self.params, self.transformer, self.columns = params, transformer, columns
        self.dates = dates or {}  # date column -> format, expanded to calendar features before the transformer
        self.summary: dict[str, Any] | None = None

    def fit(self, frame: pd.DataFrame) -> TablePreprocessor:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import (
            FunctionTransformer,
            MinMaxScaler,
            OneHotEncoder,
            OrdinalEncoder,
            StandardScaler,
        )

        p = self.params
        plan = plan_columns(frame, p)
        self.dates = plan.dates
        categorical = list(plan.categorical)
        numeric = plan.numeric + calendar_columns(plan.dates)  # columns left out: not selected, so not used
        scaler = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[p.scaling]
        # Outputs in float32, the model's dtype (scikit-learn's default is float64); one-hot columns in int8, since
        # fit() stacks every output of the training split into one array (float32), and this one is the widest.
        if p.categorical_encoding == "embedding":
            # Sorted categories 0..K-1, missing and unknown -1; shifted to 1..K and 0 (UNKNOWN_INDEX).
            encoder = make_pipeline(
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1, dtype=np.float32
                ),
                FunctionTransformer(_past_unknown_index, feature_names_out="one-to-one"),
            )
        else:
            encoder = make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.int8),
            )
        # A callable is applied column by column; scikit-learn's own "median" sorts a masked copy of the whole
        # numeric block, which takes about five times the block's memory.
        impute = np.median if p.numeric_impute == "median" else p.numeric_impute
        self.transformer = ColumnTransformer(
            [
                ("numeric", make_pipeline(SimpleImputer(strategy=impute), scaler), numeric),
                ("categorical", encoder, categorical),
            ],
            sparse_threshold=0.0,
        )
        self.columns = list(frame.columns)
        self.transformer.fit(_categories_as_text(with_calendar_features(frame, self.dates), categorical))
        self.summary = plan.summary(len(frame), len(self.transformer.get_feature_names_out()), list(p.drop or []))
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        categorical = self.transformer.transformers_[1][2]
        out = np.empty((len(frame), len(self.transformer.get_feature_names_out())), dtype=np.float32)
        for start in range(0, len(frame), TRANSFORM_CHUNK_ROWS):
            rows = with_calendar_features(frame.iloc[start : start + TRANSFORM_CHUNK_ROWS], self.dates)
            out[start : start + len(rows)] = self.transformer.transform(_categories_as_text(rows, categorical))
        return out

    def unseen_categories(self, frame: pd.DataFrame) -> dict[str, Counter]:
        """Per categorical column, the categories training never saw and their number of rows (they are encoded as
        a missing value would be)."""
        categorical = list(self.transformer.transformers_[1][2])
        if not categorical:
            return {}
        encoder = next(
            step
            for _, step in self.transformer.named_transformers_["categorical"].steps
            if hasattr(step, "categories_")
        )
        unseen = {}
        for column, known in zip(categorical, encoder.categories_, strict=True):
            values = _categories_as_text(frame[[column]], [column])[column]
            new = values[values.notna() & ~values.isin(known)]
            if len(new):
                unseen[str(column)] = Counter(new.astype(str).tolist())
        return unseen

    def describe(self) -> dict[str, Any]:
        names = [str(n) for n in self.transformer.get_feature_names_out()]
        categorical = list(self.transformer.transformers_[1][2])
        described: dict[str, Any] = {
            "input_shape": [len(names)],
            "feature_names": names,
            "preprocessing": {
                "file": PREPROCESSOR_FILE,
                "columns": self.columns,
                "categorical": categorical,
                "categorical_encoding": self.params.categorical_encoding,
                "dates": self.dates,
            },
        }
        if self.summary is not None:
            described["feature_summary"] = self.summary
        if self.params.categorical_encoding == "embedding":  # what the MLP is built from
            encoder = self.transformer.named_transformers_["categorical"][0]
            known = encoder.categories_ if categorical else []  # scikit-learn fits no empty column selection
            described["numeric_features"] = self.transformer.output_indices_["numeric"].stop
            described["categorical_cardinalities"] = [int(pd.notna(k).sum()) for k in known]  # missing: none of K
        return described

    def save(self, folder: Path) -> None:
        import skops.io

        skops.io.dump(self.transformer, folder / PREPROCESSOR_FILE)


def _past_unknown_index(codes: np.ndarray) -> np.ndarray:
    """OrdinalEncoder's -1 (missing or unknown) becomes UNKNOWN_INDEX, its categories 0..K-1 become 1..K."""
    return codes + 1


def _categories_as_text(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categories compared as text (a column of 1, 2 and 'x' must not break the encoder); missing stays missing."""

    def as_text(column: pd.Series) -> pd.Series:
        if not isinstance(column.dtype, pd.CategoricalDtype):  # text as read already is one
            column = column.astype(str).astype("category")
        # Python strings: pandas' default (arrow) strings would become a new string object per row, about 60 bytes,
        # where scikit-learn reads the column.
        return column.cat.rename_categories(pd.Index(column.cat.categories.astype(str), dtype=object))

    # assign() shares the untouched columns (pandas copy-on-write): no copy of the whole table.
    return frame.assign(**{c: as_text(frame[c]) for c in categorical})


def new_preprocessor(params: DataParams) -> TablePreprocessor:
    return TablePreprocessor(params.tabular)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> TablePreprocessor:
    import skops.io
    from sklearn.compose import ColumnTransformer

    path = prepared_dir / PREPROCESSOR_FILE
    rerun = "Run prepare again (dvc repro prepare --force) to write it, or restore the folder from a source you trust."
    if not path.is_file():
        pickled = prepared_dir / PICKLED_PREPROCESSOR_FILE
        old = (
            f" ({pickled} is from an older version, a pickle, which is never loaded: it could run code)"
            if pickled.is_file()
            else ""
        )
        raise DataError(f"{path}: not found{old}. {rerun}")
    try:
        transformer = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # not a skops archive, or one naming other types: skops raises several kinds
        raise DataError(
            f"{path}: not a valid preprocessor file ({type(exc).__name__}: {str(exc)[:300]}); it was "
            f"not loaded. {rerun}"
        ) from None
    if not isinstance(transformer, ColumnTransformer):
        raise DataError(
            f"{path}: not a valid preprocessor file (it holds a {type(transformer).__name__}, not the "
            f"fitted ColumnTransformer). {rerun}"
        )
    return TablePreprocessor(
        TabularParams(), transformer, meta["preprocessing"]["columns"], meta["preprocessing"].get("dates")
    )
