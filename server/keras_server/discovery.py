"""What a model URI holds: one model, or a base folder of numbered versions (BASE/1/, BASE/2/, ...).

A version folder holds a `.keras` file (any name) or a SavedModel (saved_model.pb). Listing goes
through keras_trainer.storage, so local paths, file://, pvc:// and object stores all work.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_trainer import outputs, storage

SAVED_MODEL = "saved_model.pb"


@dataclass(frozen=True)
class Found:
    """A version on storage: where its model is, and what its files are (names and sizes), which
    changes when a version that failed to load is being rewritten."""

    number: int
    uri: str  # the .keras file or the SavedModel folder
    fingerprint: tuple[tuple[str, int], ...]
    problem: str = ""  # why this folder cannot be loaded, found without loading it
    run: dict[str, str] | None = None  # the training run it is the model of, when the URI named an output folder


def output_run(uri: str) -> Found | None:
    """The model a training's output folder stands for (its newest complete run: keras_trainer.outputs), or
    None when `uri` is no output folder. StorageError when it is one without a complete run, or when it also
    holds numbered versions (which of the two to serve would be a guess)."""
    if not outputs.is_output_folder(uri):
        return None
    if any(e.folder and e.name.isdecimal() for e in storage.listing(uri)):
        raise storage.StorageError(
            f"{uri} holds both a training's runs/ and numbered versions; name one: the output folder of a "
            "training, or a base folder of versions"
        )
    run = outputs.newest_run(uri)
    record = {"runId": run.run_id, "completedAt": run.completed_at, "modelUri": run.model_uri, "output": uri}
    return Found(1, run.model_uri, (), run=record)


def is_single_model(uri: str) -> bool:
    """A .keras file or a SavedModel folder is one model (served as version 1); anything else is a base
    folder of versions. StorageError when the URI names nothing."""
    if uri.rstrip("/").endswith(".keras"):
        return True
    return any(e.name == SAVED_MODEL and not e.folder for e in storage.listing(uri))


def model_in(folder: str, files: list[storage.Entry]) -> str | None:
    """The model a version folder holds (its files listed recursively), or None while it holds none yet
    (a folder being copied is not a version until its model is there). ValueError when it is ambiguous."""
    if any(e.name == SAVED_MODEL for e in files):
        return folder
    keras_files = [e.name for e in files if "/" not in e.name and e.name.endswith(".keras")]
    if len(keras_files) > 1:
        raise ValueError(f"{folder} holds several .keras files ({', '.join(keras_files)}); a version holds one")
    return storage.join(folder, keras_files[0]) if keras_files else None


def discover(base: str) -> dict[int, Found]:
    """The versions in a base folder, by number."""
    found: dict[int, Found] = {}
    for entry in storage.listing(base):
        if not entry.folder or not entry.name.isdecimal() or not entry.name.isascii():
            continue  # TF Serving ignores what is not a numbered folder too (tmp folders, files)
        number, folder = int(entry.name), storage.join(base, entry.name)
        files = storage.listing(folder, recursive=True)
        fingerprint = tuple((e.name, e.size) for e in files)
        try:
            uri = model_in(folder, files)
        except ValueError as exc:
            found[number] = Found(number, folder, fingerprint, problem=str(exc))
            continue
        if uri is not None:
            found[number] = Found(number, uri, fingerprint)
    return found
