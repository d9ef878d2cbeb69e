"""Loads a DataSource into arrays (npz, csv, synthetic, keras) or a batched tf.data pipeline
(tfrecord, images), naming the spec field in every error."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_operator.api.training_job import DataSource
from keras_trainer import storage
from keras_trainer.errors import SpecError, TransientError, suggestion

_SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".tfrecord": "tfrecord", ".tfrecords": "tfrecord"}


@dataclass
class Data:
    """Either in-memory arrays or a batched dataset (for data that streams from files)."""

    x: np.ndarray | None = None
    y: np.ndarray | None = None
    dataset: Any = None
    size: int | None = None

    @property
    def example_shape(self) -> tuple[int, ...] | None:
        return tuple(self.x.shape[1:]) if self.x is not None else None


def infer_format(source: DataSource, path: Path) -> str:
    if source.format:
        return source.format
    if path.is_dir():
        return "images"
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SpecError("format", f"cannot infer the format of {path.name!r}; set it to npz, csv, tfrecord or images")
    return fmt


def load(source: DataSource, field: str, role: str, *, batch_size: int, seed: int | None, shape_hint: Any) -> Data:
    """`field` is where `source` sits in the spec (e.g. spec.data.train); `role` is train or validation."""
    try:
        if source.synthetic is not None:
            return _synthetic(source, seed)
        if source.keras is not None:
            return _keras_dataset(source.keras, role)
        assert source.uri is not None  # the API rule: exactly one of uri, synthetic, keras
        try:
            path = storage.fetch(source.uri)
        except storage.StorageError as exc:
            raise SpecError("uri", str(exc)) from exc
        fmt = infer_format(source, path)
        loader = {"npz": _npz, "csv": _csv, "tfrecord": _tfrecord, "images": _images}[fmt]
        return loader(source, path, batch_size=batch_size, seed=seed, shape_hint=shape_hint)
    except SpecError as exc:
        raise SpecError(f"{field}.{exc.field}", exc.message) from exc
    except TransientError as exc:
        where = "keras" if source.keras is not None else "uri"
        raise TransientError(f"{field}.{where}: {exc}") from exc


def _synthetic(source: DataSource, seed: int | None) -> Data:
    spec = source.synthetic
    assert spec is not None
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(spec.samples, *spec.input_shape)).astype("float32")
    if spec.classes:
        # Labels depend on the inputs so that a model can actually learn something.
        y = (np.abs(x.reshape(spec.samples, -1).sum(axis=1)) * 7).astype("int64") % spec.classes
    else:
        y = x.reshape(spec.samples, -1).mean(axis=1, keepdims=True).astype("float32")
    return Data(x=x, y=y, size=spec.samples)


def _keras_dataset(name: str, role: str) -> Data:
    import keras

    # The name is one the API allows, so a failure here is the download's (network, cache): transient.
    # Keras reports a failed download as a bare Exception, hence every exception counts.
    (x_train, y_train), (x_test, y_test) = storage.retrying(
        "download", f"keras.datasets.{name}", getattr(keras.datasets, name).load_data, transient=lambda _: True
    )
    x, y = (x_train, y_train) if role == "train" else (x_test, y_test)
    x = x.astype("float32") / 255.0
    if x.ndim == 3:  # grey images: add the channel axis Conv2D expects
        x = x[..., None]
    return Data(x=x, y=y.reshape(len(y), -1).squeeze(-1) if y.ndim > 1 and y.shape[1] == 1 else y, size=len(x))


def _npz(source: DataSource, path: Path, **_: Any) -> Data:
    try:
        arrays = np.load(path)
    except (OSError, ValueError) as exc:
        raise SpecError("uri", f"{path} is not a readable .npz file: {exc}") from exc
    features = source.features if isinstance(source.features, str) else "x"
    if source.features is not None and not isinstance(source.features, str):
        raise SpecError("features", "for npz, features is the name of one array")
    labels = source.labels or "y"
    keys = list(arrays.files)
    for key, fld in ((features, "features"), (labels, "labels")):
        if key not in keys:
            raise SpecError(fld, f"no array {key!r} in {path.name} (it has {', '.join(keys)}){suggestion(key, keys)}")
    x, y = arrays[features], arrays[labels]
    if len(x) != len(y):
        raise SpecError("labels", f"{len(x)} examples but {len(y)} labels in {path.name}")
    return Data(x=x, y=y, size=len(x))


def _csv(source: DataSource, path: Path, **_: Any) -> Data:
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise SpecError("uri", f"{path.name} is empty")
    header = [h.strip() for h in header]
    label = source.labels or header[-1]
    if label not in header:
        raise SpecError("labels", f"no column {label!r} in {path.name}{suggestion(label, header)}")
    if source.features is None:
        features = [h for h in header if h != label]
    elif isinstance(source.features, str):
        features = [f.strip() for f in source.features.split(",") if f.strip()]
    else:
        features = list(source.features)
    for name in features:
        if name not in header:
            raise SpecError("features", f"no column {name!r} in {path.name}{suggestion(name, header)}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype="float32", ndmin=2)
    except ValueError as exc:
        raise SpecError("uri", f"{path.name} has a non-numeric value: {exc}") from exc
    x = table[:, [header.index(f) for f in features]]
    y = table[:, header.index(label)]
    if np.all(y == np.round(y)):
        y = y.astype("int64")  # class ids, as sparse losses expect
    return Data(x=x, y=y, size=len(x))


def _tfrecord(source: DataSource, path: Path, *, batch_size: int, shape_hint: Any, **_: Any) -> Data:
    import tensorflow as tf

    files = sorted(str(p) for p in path.glob("*.tfrecord*")) if path.is_dir() else [str(path)]
    if not files:
        raise SpecError("uri", f"no .tfrecord files in {path}")
    features = source.features if isinstance(source.features, str) else "x"
    labels = source.labels or "y"
    shape = source.shape or shape_hint
    if not shape:
        raise SpecError("shape", "tfrecord features are stored flat: set shape (or model.inputShape)")
    spec = {features: tf.io.VarLenFeature(tf.float32), labels: tf.io.FixedLenFeature([], tf.int64)}

    def parse(record: Any) -> Any:
        parsed = tf.io.parse_single_example(record, spec)
        return tf.reshape(tf.sparse.to_dense(parsed[features]), shape), parsed[labels]

    dataset = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        next(iter(dataset.take(1)))
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError("features", f"cannot read {features!r}/{labels!r} from {files[0]}: {first}") from exc
    return Data(dataset=dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _images(source: DataSource, path: Path, *, batch_size: int, seed: int | None, **_: Any) -> Data:
    import keras

    if not path.is_dir():
        raise SpecError("uri", f"images format needs a folder with one subfolder per class, got {path}")
    try:
        dataset = keras.utils.image_dataset_from_directory(
            str(path),
            image_size=tuple(source.image_size or (224, 224)),
            color_mode=source.color_mode,
            batch_size=batch_size,
            seed=seed,
            verbose=False,
        )
    except ValueError as exc:
        raise SpecError("uri", f"cannot read images from {path}: {exc}") from exc
    return Data(dataset=dataset)
