"""TensorFlow Serving's REST API as JSON: predict requests to numpy inputs, outputs, status and metadata.

The formats are TensorFlow Serving's (https://www.tensorflow.org/tfx/serving/api_rest): the row format (`"instances"`,
answered with `"predictions"`) and the columnar one (`"inputs"`, answered with `"outputs"`); binary values as
`{"b64": "<base64>"}`; errors as `{"error": "<message>"}`."""

import base64
import binascii
import json

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from mnist_dnn.lib.config import SERVING_SIGNATURE
from mnist_dnn.lib.serve.classifier import Servable, Signature

PREDICT_METHOD = "tensorflow/serving/predict"


class RestError(Exception):
    """A request the server refuses: TensorFlow Serving's error message and an HTTP status (400: a bad request)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- Requests ----------------------------------------------------------------------------


def parse_json(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RestError(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise RestError("JSON Parse error: nested too deeply") from None
    if not isinstance(request, dict):
        raise RestError("JSON Value: the request body must be a JSON object")
    return request


def signature_of(request: dict, signatures: dict[str, Signature]) -> Signature:
    name = request.get("signature_name", SERVING_SIGNATURE)
    if not isinstance(name, str) or name not in signatures:
        raise RestError(f"Serving signature name: {json.dumps(name)} not found in signature def "
                        f"(the model has {', '.join(sorted(signatures))})")
    return signatures[name]


def _is_b64(value) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _named(value) -> bool:
    """A JSON object of named inputs (not a binary value)."""
    return isinstance(value, dict) and not _is_b64(value)


def _check_names(given, expected, where: str) -> None:
    if set(given) != set(expected):
        raise RestError(f"{where}: expected the inputs {sorted(expected)}, got {sorted(given)}")


def predict_inputs(request: dict, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """The signature's inputs as numpy arrays, and whether the request used the row format."""
    if ("instances" in request) == ("inputs" in request):
        raise RestError("Missing 'inputs' or 'instances' key" if "instances" not in request else
                        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist")
    names = list(signature.inputs)
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RestError("'instances' must be a non-empty list, one element per example")
        if all(_named(instance) for instance in instances):
            for i, instance in enumerate(instances):
                _check_names(instance, names, f"instance {i}")
            columns = {name: [instance[name] for instance in instances] for name in names}
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise RestError(f"the signature takes {len(names)} inputs: each instance must be an object naming them")
        return {name: to_array(name, columns[name], signature.inputs[name]) for name in names}, True
    inputs = request["inputs"]
    if _named(inputs):
        _check_names(inputs, names, "'inputs'")
    elif len(names) == 1:
        inputs = {names[0]: inputs}
    else:
        raise RestError(f"the signature takes {len(names)} inputs: 'inputs' must be an object naming them")
    return {name: to_array(name, inputs[name], signature.inputs[name]) for name in names}, False


def _decode_strings(value):
    """Nested lists of strings and {"b64": ...} values to nested lists of bytes."""
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RestError("Unable to base64 decode a {\"b64\": ...} value") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RestError(f"expected a string or a {{\"b64\": ...}} value, got {json.dumps(value)[:40]}")


def _numbers(name: str, value, dtype: tf.DType) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # nested lists of different lengths
        raise RestError(f"input {name}: the lists are ragged; every example must have the same shape") from None
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and dtype.is_integer):
        kind = "integers" if dtype.is_integer else "numbers"
        raise RestError(f"input {name} expects {kind} of type {dtype.name}, got values of type {_json_kind(array)}")
    if dtype.is_integer and array.size and (array.min() < dtype.min or array.max() > dtype.max):
        raise RestError(f"input {name} expects {dtype.name} values from {dtype.min} to {dtype.max}")
    return array.astype(dtype.as_numpy_dtype)


def _json_kind(array: np.ndarray) -> str:
    return {"f": "float", "b": "bool", "U": "string"}.get(array.dtype.kind, "object or out of range")


def to_array(name: str, value, info: tf.TensorSpec) -> np.ndarray:
    """One input's JSON value as a numpy array of the signature's dtype and shape."""
    if info.dtype == tf.string:
        array = np.asarray(_decode_strings(value), dtype=object)
    else:
        array = _numbers(name, value, info.dtype)
    if array.ndim != len(info.shape) or any(d is not None and d != a for d, a in zip(info.shape, array.shape)):
        raise RestError(f"input {name} expects shape {_shape(info.shape)} and dtype {info.dtype.name}, "
                        f"got shape {list(array.shape)}")
    return array


def _shape(shape) -> list[int]:
    return [-1 if d is None else d for d in shape]


# --- Answers -----------------------------------------------------------------------------


def _to_json(name: str, array: np.ndarray):
    if array.dtype == object:
        encode = (lambda b: {"b64": base64.b64encode(b).decode("ascii")}) if name.endswith("_bytes") else \
                 (lambda b: b.decode("utf-8", "replace"))
        return np.vectorize(encode, otypes=[object])(array).tolist()
    return array.tolist()


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """`{"predictions": [...]}` (one per instance) or `{"outputs": ...}`; a single output is not named."""
    values = {name: _to_json(name, array) for name, array in sorted(outputs.items())}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = zip(*values.values())
    return {"predictions": [dict(zip(values, row)) for row in rows]}


def status(name: str, servable: Servable, failed: dict[int, str], version: str | None = None) -> dict:
    """GET /v1/models/NAME[/versions/N]: the version served and those that failed to load (END, with their error),
    newest first, as TensorFlow Serving lists them (its error_code is its loader's; this server says UNKNOWN)."""
    states = {v: ("END", "UNKNOWN", error) for v, error in failed.items()} | {servable.version: ("AVAILABLE", "OK", "")}
    listed = [{"version": str(v), "state": state, "status": {"error_code": code, "error_message": error}}
              for v, (state, code, error) in sorted(states.items(), reverse=True) if version in (None, str(v))]
    if not listed:
        raise RestError(f"Could not find version {version} of model {name}", 404)
    return {"model_version_status": listed}


def _tensor_info(info: tf.TensorSpec) -> dict:
    return {"dtype": types_pb2.DataType.Name(info.dtype.as_datatype_enum),
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in _shape(info.shape)], "unknown_rank": False}}


def metadata(name: str, servable: Servable) -> dict:
    """GET /v1/models/NAME/metadata: the signatures, as TensorFlow Serving lists a SignatureDef map."""
    signatures = {
        signature_name: {"inputs": {k: _tensor_info(v) for k, v in signature.inputs.items()},
                         "outputs": {k: _tensor_info(v) for k, v in signature.outputs.items()},
                         "method_name": PREDICT_METHOD}
        for signature_name, signature in sorted(servable.signatures.items())}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}
