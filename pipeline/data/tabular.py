"""Tables: scikit-learn's built-in breast_cancer, wine and iris, or a CSV/TSV/Parquet file with a target column.

The preprocessing is a scikit-learn ColumnTransformer fitted on the training split only: numeric columns imputed
and scaled, categorical ones imputed and one-hot (or ordinal) encoded. It is saved beside the prepared arrays
(`preprocessor.joblib`) so that prediction applies exactly the same transformation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DataParams, TabularParams
from pipeline.data import DataError, RawData, require_file

PREPROCESSOR_FILE = "preprocessor.joblib"
BUILTIN_LOADERS = {"breast_cancer": "load_breast_cancer", "wine": "load_wine", "iris": "load_iris"}


def load_raw(params: DataParams) -> RawData:
    if params.dataset in BUILTIN_LOADERS:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, BUILTIN_LOADERS[params.dataset])(as_frame=True)
        return RawData(bunch.data, bunch.target.to_numpy(), [str(c) for c in bunch.target_names])
    t, path = params.tabular, require_file(params.dataset)
    frame = read_table(path)
    if frame.empty or frame.shape[1] < 2:
        raise DataError(f"{path}: {frame.shape[0]} rows x {frame.shape[1]} columns; expected a header line and at "
                        "least a feature and a target column (is the delimiter right? .tsv files use tabs).")
    if t.target not in frame.columns:
        raise DataError(f"{path}: no target column '{t.target}' (data.tabular.target). Columns: "
                        f"{', '.join(map(str, frame.columns[:30]))}.")
    target = frame[t.target]
    if target.isna().any():
        rows = (np.flatnonzero(target.isna().to_numpy()) + 2)[:5].tolist()  # +2: header line, 1-based
        raise DataError(f"{path}: the target column '{t.target}' is empty on {int(target.isna().sum())} row(s) "
                        f"(first at file lines {rows}). Fill or drop those rows.")
    return RawData(select_features(frame.drop(columns=[t.target]), t, path), target.to_numpy())


def read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", engine="pyarrow")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as a {path.suffix or 'CSV'} table ({exc}).") from None
    return frame


def select_features(frame: pd.DataFrame, t: TabularParams, path: Path) -> pd.DataFrame:
    wanted = list(t.features) if t.features else list(frame.columns)
    missing = [c for c in wanted + list(t.categorical or []) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(missing)} named in data.tabular are not in the file (or are "
                        f"the target). Columns: {', '.join(map(str, frame.columns[:30]))}.")
    outside = [c for c in t.categorical or [] if c not in wanted]
    if outside:
        raise DataError(f"{path}: data.tabular.categorical names {', '.join(outside)}, which data.tabular.features "
                        "leaves out; add them to features or remove them from categorical.")
    return frame[wanted]


def read_new(path: Path, meta: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Rows to predict: a CSV/TSV/Parquet table with at least the training feature columns (target optional)."""
    path = require_file(path)
    frame = read_table(path)
    return training_columns(frame, meta, str(path)), [str(i) for i in frame.index]


def training_columns(frame: pd.DataFrame, meta: dict[str, Any], source: str) -> pd.DataFrame:
    """The feature columns the model was trained on, in training order; missing ones are named."""
    columns = meta["preprocessing"]["columns"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing the column(s) the model was trained on: {', '.join(missing)}.")
    return frame[columns]


class TablePreprocessor:
    def __init__(self, params: TabularParams, transformer: Any = None, columns: list[str] | None = None):
        self.params, self.transformer, self.columns = params, transformer, columns

    def fit(self, frame: pd.DataFrame) -> "TablePreprocessor":
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

        p = self.params
        categorical = list(p.categorical) if p.categorical is not None else [
            c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) or frame[c].dtype == bool]
        numeric = [c for c in frame.columns if c not in categorical]
        scaler = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[p.scaling]
        # float32 throughout: the model's dtype, and half the memory of scikit-learn's float64 default.
        encoder = (OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
                   if p.categorical_encoding == "onehot"
                   else OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float32))
        self.transformer = ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy=p.numeric_impute), scaler), numeric),
            ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"), encoder), categorical),
        ], sparse_threshold=0.0)
        self.columns = list(frame.columns)
        self.transformer.fit(_categories_as_text(frame, categorical))
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        categorical = self.transformer.transformers_[1][2]
        return self.transformer.transform(_categories_as_text(frame, categorical)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        names = [str(n) for n in self.transformer.get_feature_names_out()]
        return {"input_shape": [len(names)], "feature_names": names,
                "preprocessing": {"file": PREPROCESSOR_FILE, "columns": self.columns}}

    def save(self, folder: Path) -> None:
        import joblib

        joblib.dump(self.transformer, folder / PREPROCESSOR_FILE)


def _categories_as_text(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categories compared as text (a column of 1, 2 and 'x' must not break the encoder); missing stays missing."""
    # assign() shares the untouched columns (pandas copy-on-write): no copy of the whole table.
    return frame.assign(**{c: frame[c].astype(object).where(frame[c].isna(), frame[c].astype(str))
                           for c in categorical})


def new_preprocessor(params: DataParams) -> TablePreprocessor:
    return TablePreprocessor(params.tabular)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> TablePreprocessor:
    import joblib

    # A pickle we wrote ourselves, DVC-tracked: only load prepared folders you produced or trust.
    transformer = joblib.load(prepared_dir / PREPROCESSOR_FILE)
    return TablePreprocessor(TabularParams(), transformer, meta["preprocessing"]["columns"])
