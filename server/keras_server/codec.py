"""Request and response bodies of the two protocols <-> named numpy arrays. Pure functions.

Every problem with a request raises RequestError with the HTTP status and a message saying
what was expected and what was given; nothing here is ever a 500.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from keras_server.model import TensorSpec

# A float too large for a narrower input becomes inf when cast, and is refused (checked): numpy's
# warning about it says nothing more. Filtered here rather than with np.errstate around every cast,
# which costs more than the cast itself on the one-example requests that dominate.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)

V2_DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_V2 = {np.dtype(v).str if v != "object" else "object": k for k, v in V2_DATATYPES.items()}


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def v2_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    return NUMPY_TO_V2.get(dtype.str, "BYTES")


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(400, 'a binary value must be {"b64": "<base64 text>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"invalid base64 in a b64 value: {exc}") from exc
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def to_array(value: Any, spec: TensorSpec, where: str, bools: bool = False) -> np.ndarray:
    """A batch for `spec` from JSON (nested lists, numbers, b64 objects) or an already typed array,
    shape- and type-checked. `bools`: true/false may feed a numeric input (a v2 tensor declared BOOL)."""
    if spec.raw:
        return as_given(value, spec, where)
    try:
        if spec.dtype.kind in ("O", "S", "U"):
            # b64 objects only mean something for text inputs: numbers are never walked in Python.
            array = _as_bytes(np.array(_decode_b64(value), dtype=object), spec, where)
        else:
            what = lambda: f"input {spec.name!r} ({spec.dtype.name})"  # noqa: E731 - made only for a refusal
            array = checked(np.asarray(value), spec.dtype, where, what, bools)
    except ValueError as exc:
        raise RequestError(400, f"{where}: input {spec.name!r} is not a rectangular array ({exc})") from exc
    check_shape(array, spec, where)
    return array


def as_given(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """A handler's input: the request's values as numpy holds them, only checked to be a batch of at least
    one example. Numbers keep the type JSON gave them; text stays Python objects, str from JSON strings and
    bytes from b64 values (a numpy string array would cut trailing NULs and pad); rows numpy cannot make
    rectangular are one object each."""
    if isinstance(value, np.ndarray):  # a v2 tensor, already typed by its datatype
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError:  # ragged
            array = _objects(value)
        if array.dtype.kind in ("O", "S", "U"):  # only text and odd values are walked in Python
            value = _decode_b64(value)
            try:
                array = np.array(value, dtype=object)
            except ValueError:
                array = _objects(value)
    if array.ndim == 0:
        raise RequestError(400, f"{where}: input {spec.name!r} must be a list, one item per example")
    if array.shape[0] == 0:
        raise RequestError(400, f"{where}: no examples")
    return array


def _objects(rows: Any) -> np.ndarray:
    if not isinstance(rows, list):
        return np.array(rows, dtype=object)
    array = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        array[index] = row
    return array


def checked(
    raw: np.ndarray, dtype: np.dtype[Any], where: str, what: str | Callable[[], str], bools: bool = False
) -> np.ndarray:
    """`raw` (the array numpy made of JSON values, or a typed one) as `dtype`, or a 400 saying why.
    `what` names the input in a refusal (a callable: only made then, this runs on every request).

    Whole-array numpy checks, never a Python loop over elements: numpy's own conversion would take
    null as NaN, "1.5" as a number and any string as True, and wrap integers that do not fit.
    """
    kind = raw.dtype.kind
    if not (
        kind == "f" and dtype.kind == "f" and np.isfinite(array := raw.astype(dtype, copy=False)).all()
    ):  # anything but finite floats to a float input (the usual request) goes through every check
        return _checked(raw, dtype, where, what() if callable(what) else what, bools)
    return array


def _checked(raw: np.ndarray, dtype: np.dtype[Any], where: str, what: str, bools: bool) -> np.ndarray:
    kind = raw.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise RequestError(400, f"{where}: data does not fit {what}: expected true or false, got {_kind(raw)}")
        return raw
    if kind not in ("i", "u", "f") and not (bools and kind == "b"):
        raise RequestError(400, f"{where}: data does not fit {what}: expected numbers, got {_kind(raw)}")
    if dtype.kind in ("i", "u") and raw.size and kind != "b":
        if kind == "f" and not np.all(np.mod(raw, 1) == 0):
            raise RequestError(400, f"{where}: {what} takes integers")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise RequestError(400, f"{where}: a value is out of range for {what} ({info.min}..{info.max})")
    array = raw.astype(dtype, copy=False)
    # A narrower float turns a large value into inf; only then is the (rarer) check on `raw` paid.
    if dtype.kind == "f" and kind == "f" and not np.isfinite(array).all() and np.isfinite(raw).all():
        raise RequestError(400, f"{where}: a value is out of range for {what}")
    return array


def _as_bytes(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Text inputs as UTF-8 bytes, whether they came as JSON strings or b64 values (TF wants one kind)."""
    flat = array.reshape(-1)
    for index, item in enumerate(flat):
        if isinstance(item, str):
            flat[index] = item.encode()
        elif not isinstance(item, bytes):
            raise RequestError(400, f"{where}: input {spec.name!r} takes text, got {type(item).__name__}")
    return array


def _kind(raw: np.ndarray) -> str:
    kind = raw.dtype.kind
    if kind in ("U", "S"):
        return "text"
    if kind == "b":
        return "true/false values"
    if kind in ("i", "u", "f"):
        return "numbers"
    return "null, mixed or nested values"


def check_shape(array: np.ndarray, spec: TensorSpec, where: str) -> None:
    expected = spec.shape
    ok = array.ndim == len(expected) and all(e is None or e == a for e, a in zip(expected, array.shape, strict=False))
    if not ok:
        raise RequestError(
            400,
            f"{where}: input {spec.name!r} must have shape {_shape_text(expected)} (-1: any), "
            f"got {_shape_text(tuple(array.shape))}",
        )
    if array.shape[0] == 0:
        raise RequestError(400, f"{where}: no examples")


def _batch_size(arrays: dict[str, np.ndarray]) -> int:
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise RequestError(400, f"all inputs must have the same number of examples, got {sorted(sizes)}")
    return sizes.pop()


# --- TensorFlow Serving REST ---

TfsFormat = Literal["row", "columnar"]


def parse_tfs(body: Any, inputs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], TfsFormat]:
    if not isinstance(body, dict):
        raise RequestError(400, 'the body must be a JSON object with "instances" or "inputs"')
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(400, f"unknown signature_name {signature!r}; this model has serving_default")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(400, 'give exactly one of "instances" (row format) or "inputs" (columnar format)')
    names = [s.name for s in inputs]
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError(400, '"instances" must be a non-empty list, one item per example')
        if len(inputs) == 1 and not all(isinstance(i, dict) for i in instances):
            arrays = {names[0]: to_array(instances, inputs[0], "instances")}
        else:
            columns: dict[str, list[Any]] = {n: [] for n in names}
            for index, item in enumerate(instances):
                if not isinstance(item, dict) or set(item) != set(names):
                    raise RequestError(400, f"instances[{index}] must be an object with the inputs {names}")
                for n in names:
                    columns[n].append(item[n])
            arrays = {s.name: to_array(columns[s.name], s, "instances") for s in inputs}
        _batch_size(arrays)
        return arrays, "row"
    given = body["inputs"]
    if isinstance(given, dict) and (len(inputs) > 1 or set(given) == set(names)):
        if set(given) != set(names):
            raise RequestError(400, f'"inputs" must name exactly the inputs {names}, got {sorted(given)}')
        arrays = {s.name: to_array(given[s.name], s, f"inputs.{s.name}") for s in inputs}
    elif len(inputs) == 1:
        arrays = {names[0]: to_array(given, inputs[0], "inputs")}
    else:
        raise RequestError(400, f'this model has several inputs: "inputs" must be an object with {names}')
    _batch_size(arrays)
    return arrays, "columnar"


def _jsonable(array: np.ndarray) -> Any:
    """Text as str (or b64 objects); numbers stay a numpy array, which the server's orjson writes in C."""
    if array.dtype.kind == "O" or array.dtype.kind == "S":
        return [_jsonable(np.asarray(a)) if isinstance(a, np.ndarray) else _text(a) for a in array.tolist()]
    return np.ascontiguousarray(array)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return value


def encode_tfs(outputs: dict[str, np.ndarray], fmt: TfsFormat) -> dict[str, Any]:
    if fmt == "columnar":
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {name: _jsonable(a) for name, a in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    n = next(iter(outputs.values())).shape[0]
    columns = {name: _jsonable(a) for name, a in outputs.items()}
    return {"predictions": [{name: columns[name][i] for name in outputs} for i in range(n)]}


# --- Open Inference Protocol (v2) ---

# The binary tensor extension (KServe/Triton): the body is a JSON header of this many bytes, then the
# raw tensors that carry a "binary_data_size" parameter, in order. tritonclient sends it by default.
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class V2Request:
    inputs: dict[str, np.ndarray]
    id: str | None
    outputs: list[str] | None  # the outputs asked for, in order; None: all of them
    binary_outputs: frozenset[str]  # named outputs to answer in the binary section
    binary_unnamed: bool  # with no outputs named: all of them in the binary section


def split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a request body."""
    if header_length is None:
        return raw, b""
    try:
        length = int(header_length)
    except ValueError:
        raise RequestError(400, f"{BINARY_HEADER} must be a number of bytes, got {header_length!r}") from None
    if not 0 < length <= len(raw):
        raise RequestError(400, f"{BINARY_HEADER} is {length}, but the body has {len(raw)} bytes")
    return raw[:length], raw[length:]


def _from_binary(chunk: bytes, datatype: str, where: str) -> np.ndarray:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then its bytes
        items, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise RequestError(400, f"{where}: a BYTES element is cut short in the binary data")
            (size,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + size > len(chunk):
                raise RequestError(400, f"{where}: a BYTES element is cut short in the binary data")
            items.append(chunk[pos + 4 : pos + 4 + size])
            pos += 4 + size
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    dtype = np.dtype(V2_DATATYPES[datatype]).newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise RequestError(400, f"{where}: {len(chunk)} bytes of binary data is not a whole number of {datatype}")
    return np.frombuffer(chunk, dtype=dtype)


def _to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind in ("O", "S", "U"):
        parts = []
        for item in array.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [struct.pack("<I", len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    params = item.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"{where}.parameters must be an object")
    return params


def parse_v2(body: Any, inputs: list[TensorSpec], binary: bytes = b"") -> V2Request:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError(400, 'the body must be a JSON object with a non-empty "inputs" list')
    by_name = {s.name: s for s in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(body["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise RequestError(400, f"{where} must be an object with name, shape, datatype and data")
        binary_size = _parameters(item, where).get("binary_data_size")
        required = ("name", "shape", "datatype") if binary_size is not None else ("name", "shape", "datatype", "data")
        missing = [k for k in required if k not in item]
        if missing:
            raise RequestError(400, f"{where} lacks {', '.join(missing)}")
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if not isinstance(name, str):
            raise RequestError(400, f"{where}: name must be a string")
        if not isinstance(datatype, str):
            raise RequestError(400, f"{where}: datatype must be a string, one of {', '.join(V2_DATATYPES)}")
        spec = by_name.get(name)
        if spec is None and len(inputs) == 1 and not arrays:
            spec = inputs[0]  # one input: any name will do, as users rarely know Keras' generated one
        if spec is None:
            raise RequestError(400, f"{where}: unknown input {name!r}; the model takes {sorted(by_name)}")
        if datatype not in V2_DATATYPES:
            raise RequestError(400, f"{where}: unknown datatype {datatype!r}; one of {', '.join(V2_DATATYPES)}")
        if not spec.raw and (datatype == "BYTES") != (spec.dtype.kind in ("O", "S", "U")):
            raise RequestError(
                400, f"{where}: datatype {datatype} does not fit input {spec.name!r} ({v2_datatype(spec.dtype)})"
            )
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):  # no bools
            raise RequestError(400, f"{where}: shape must be a list of non-negative integers")
        size = math.prod(shape)  # Python's ints: numpy's product of huge dimensions would wrap
        if binary_size is not None:
            if "data" in item:
                raise RequestError(400, f"{where}: give data or parameters.binary_data_size, not both")
            if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
                raise RequestError(400, f"{where}: parameters.binary_data_size must be a number of bytes")
            if offset + binary_size > len(binary):
                raise RequestError(
                    400, f"{where}: binary_data_size {binary_size} goes past the end of the binary data ({len(binary)})"
                )
            flat = _from_binary(binary[offset : offset + binary_size], datatype, where)
            offset += binary_size
        else:
            flat = _from_json(item["data"], datatype, where)
        if flat.size != size:
            raise RequestError(400, f"{where}: shape {shape} holds {size} values, data has {flat.size}")
        try:
            shaped = flat.reshape(shape)
        except ValueError as exc:  # e.g. [0, 2**70]: no values, but more dimensions than numpy takes
            raise RequestError(400, f"{where}: shape {shape} is not one numpy can hold") from exc
        arrays[spec.name] = to_array(shaped, spec, where, bools=True)  # shape-checked there
    if set(arrays) != set(by_name):
        raise RequestError(400, f"missing inputs {sorted(set(by_name) - set(arrays))}")
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    _batch_size(arrays)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, '"id" must be a string')
    all_binary = _parameters(body, "the request").get("binary_data_output") is True
    requested = body.get("outputs")
    names: list[str] | None = None
    binary_outputs: set[str] = set()
    if requested is not None:
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
        ):
            raise RequestError(400, '"outputs" must be a list of objects with a name')
        names = [o["name"] for o in requested]
        for index, o in enumerate(requested):
            flag = _parameters(o, f"outputs[{index}]").get("binary_data")
            if flag is True or (flag is None and all_binary):
                binary_outputs.add(o["name"])
    return V2Request(arrays, request_id, names, frozenset(binary_outputs), requested is None and all_binary)


def _from_json(data: Any, datatype: str, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise RequestError(400, f"{where}: data must be a list (flattened in row-major order)")
    not_flat = RequestError(400, f"{where}: data must be a flat list of {datatype} values (row-major)")
    if datatype == "BYTES" and not _flat(data):
        raise not_flat
    try:
        # Numbers: numpy infers the array's type in C, then `checked` holds it against the datatype.
        flat = np.asarray(_decode_b64(data), dtype=object) if datatype == "BYTES" else np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        if any(isinstance(v, list) for v in data):
            raise not_flat from exc
        raise RequestError(400, f"{where}: data does not fit datatype {datatype}") from exc
    if flat.ndim != 1:
        raise not_flat
    if datatype == "BYTES":
        return flat
    return checked(flat, np.dtype(V2_DATATYPES[datatype]), where, f"datatype {datatype}")


def _flat(data: list[Any]) -> bool:
    return all(not isinstance(v, list) for v in data)


def encode_v2(
    outputs: dict[str, np.ndarray], model: str, version: str, request: V2Request
) -> tuple[dict[str, Any], bytes]:
    """(JSON response, binary section): outputs asked for in binary travel after the JSON."""
    if request.outputs is not None:
        unknown = [n for n in request.outputs if n not in outputs]
        if unknown:
            raise RequestError(400, f"unknown outputs {unknown}; the model has {sorted(outputs)}")
    names = request.outputs if request.outputs is not None else list(outputs)
    chunks: list[bytes] = []
    encoded = []
    for n in names:
        tensor: dict[str, Any] = {"name": n, "shape": list(outputs[n].shape), "datatype": v2_datatype(outputs[n].dtype)}
        if n in request.binary_outputs or request.binary_unnamed:
            chunks.append(_to_binary(outputs[n]))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = _jsonable(outputs[n].reshape(-1))
        encoded.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": encoded}
    if request.id is not None:
        response["id"] = request.id
    return response, b"".join(chunks)


def v2_tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": v2_datatype(spec.dtype),
        "shape": [-1 if d is None else d for d in spec.shape],
    }


TF_DTYPES = {"float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "bool": "DT_BOOL"}


def tfs_tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    name = spec.dtype.name
    return {
        "dtype": "DT_STRING" if spec.dtype.kind in ("O", "S", "U") else TF_DTYPES.get(name, f"DT_{name.upper()}"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }
