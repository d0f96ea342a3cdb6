"""OpenAPI schema for a Runner (the shape `cog build` writes), for tools/serve.py and the tests.

`openapi_schema()` reads the Runner at runtime through cog's own inspector and lays the result out
the way the Go CLI's generator does (pkg/schema/openapi.go), so coglet validates inputs exactly as
in a built image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any


class SchemaError(RuntimeError):
    """A predictor reference cannot be loaded or described."""


def parse_ref(ref: str) -> tuple[str, str]:
    """Split 'predict_t2v/predict.py:Runner' into (file, class); the class defaults to Runner."""
    path, _, name = ref.partition(":")
    if not path.endswith(".py"):
        raise ValueError(f"predictor ref {ref!r}: expected 'path/to/file.py:ClassName'")
    return path, name or "Runner"


def load_runner(ref: str, root: Path) -> tuple[str, str]:
    """Import the predictor file of `ref` (relative to `root`); return (module name, class name)."""
    rel, cls_name = parse_ref(ref)
    root = Path(root).resolve()
    file = (root / rel).resolve()
    if not file.is_file():
        raise SchemaError(f"predictor ref {ref!r}: file {file} does not exist")
    # One module name per file path, so predictors of several folders or roots can coexist.
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    mod_name = "_cogvx_runner_" + re.sub(r"\W", "_", file.stem) + "_" + digest
    if mod_name not in sys.modules:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise SchemaError(f"predictor ref {ref!r}: importing {file} failed: {exc!r}") from exc
    if not hasattr(sys.modules[mod_name], cls_name):
        raise SchemaError(f"predictor ref {ref!r}: {file} defines no {cls_name!r}")
    return mod_name, cls_name


def _title(name: str) -> str:
    """Go CLI TitleCase: split on '_' and upper-case each part's first letter."""
    return " ".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _num(x: float) -> int | float:
    """Write integral bounds as JSON integers, as Go's encoder does for float64."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _input_schemas(info: Any, run_fn: Any) -> tuple[dict, list[tuple[str, dict]]]:
    """Build components.schemas.Input and one enum schema per input with choices."""
    from cog import _adt as adt
    from cog.input import FieldInfo

    params = inspect.signature(run_fn).parameters
    nullable_reps = (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
    properties: dict[str, dict] = {}
    enums: list[tuple[str, dict]] = []
    required: list[str] = []
    for name, field in info.inputs.items():
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            json_type = field.type.primitive.json_type().get("type", "string")
            enums.append(
                (
                    name,
                    {
                        "title": name,
                        "description": "An enumeration.",
                        "enum": list(field.choices),
                        "type": json_type,
                    },
                )
            )
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = _title(name)
            prop.update(field.type.json_type())
        nullable = field.type.repetition in nullable_reps
        has_default = field.default is not None or (
            nullable and params[name].default is not inspect.Parameter.empty
        )
        if not has_default and field.type.repetition in (
            adt.Repetition.REQUIRED,
            adt.Repetition.REPEATED,
        ):
            required.append(name)
        if has_default:
            prop["default"] = _jsonable(field.default)
        if nullable:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        if field.ge is not None:
            prop["minimum"] = _num(field.ge)
        if field.le is not None:
            prop["maximum"] = _num(field.le)
        if field.min_length is not None:
            prop["minLength"] = field.min_length
        if field.max_length is not None:
            prop["maxLength"] = field.max_length
        if field.regex is not None:
            prop["pattern"] = field.regex
        if field.deprecated:
            prop["deprecated"] = True
        fi = params[name].default
        if isinstance(fi, FieldInfo) and fi.accept is not None:
            prop["x-cog-accept"] = fi.accept
        properties[name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _responses(ref: str = "", validated: bool = False) -> dict:
    """A `responses` object: 200 with `ref` (or any JSON), plus 422 when inputs are validated."""
    out = {
        "200": {
            "description": "Successful Response",
            "content": {"application/json": {"schema": {"$ref": ref} if ref else {}}},
        }
    }
    if validated:
        error = {"$ref": "#/components/schemas/HTTPValidationError"}
        out["422"] = {
            "description": "Validation Error",
            "content": {"application/json": {"schema": error}},
        }
    return out


def _envelope_schemas() -> dict:
    """The request/response envelope and error schemas, the same for every model."""
    ref = "#/components/schemas/"
    string, date = {"type": "string"}, {"type": "string", "format": "date-time"}
    response = {"input": {"$ref": ref + "Input"}, "output": {"$ref": ref + "Output"}}
    for name in ("id", "version", "created_at", "started_at", "completed_at", "status", "error"):
        response[name] = {"title": _title(name), **(date if "_at" in name else string)}
    response["logs"] = {"title": "Logs", **string}
    response["metrics"] = {"title": "Metrics", "type": "object"}
    location = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    return {
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {"id": {"title": "Id", **string}, "input": {"$ref": ref + "Input"}},
        },
        "PredictionResponse": {
            "title": "PredictionResponse",
            "type": "object",
            "properties": response,
        },
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {
                    "title": "Detail",
                    "type": "array",
                    "items": {"$ref": ref + "ValidationError"},
                }
            },
        },
        "ValidationError": {
            "title": "ValidationError",
            "required": ["loc", "msg", "type"],
            "type": "object",
            "properties": {
                "loc": {"title": "Location", "type": "array", "items": location},
                "msg": {"title": "Message", **string},
                "type": {"title": "Error Type", **string},
            },
        },
    }


def _paths() -> dict:
    """The predict-mode paths the Go CLI lists."""
    cancel_param = {
        "required": True,
        "schema": {"title": "Prediction_id", "type": "string"},
        "name": "prediction_id",
        "in": "path",
    }
    request = {"$ref": "#/components/schemas/PredictionRequest"}
    return {
        "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": _responses()}},
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": _responses(),
            }
        },
        "/predictions": {
            "post": {
                "summary": "Predict",
                "description": "Run a single prediction on the model",
                "operationId": "predict_predictions_post",
                "requestBody": {"content": {"application/json": {"schema": request}}},
                "responses": _responses("#/components/schemas/PredictionResponse", True),
            }
        },
        "/predictions/{prediction_id}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [cancel_param],
                "responses": _responses(validated=True),
            }
        },
    }


def openapi_schema(ref: str, root: Path) -> dict:
    """Return the OpenAPI 3.0.2 document `cog build` would bake in for predictor `ref`."""
    from cog import _inspector

    mod_name, cls_name = load_runner(ref, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            info = _inspector.create_predictor(mod_name, cls_name)
        except (ValueError, TypeError, ImportError) as exc:
            raise SchemaError(f"predictor ref {ref!r}: {exc}") from exc
    obj = getattr(sys.modules[mod_name], cls_name)
    if inspect.isclass(obj):
        obj = obj.run if getattr(obj, "_run_owner", None) is not None else obj.predict
    input_schema, enums = _input_schemas(info, obj)
    schemas = {"Input": input_schema, "Output": info.output.json_type(), **dict(enums)}
    schemas.update(_envelope_schemas())
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


def write_schema(ref: str, root: Path, dest: Path) -> Path:
    """Write `openapi_schema(ref, root)` as JSON to `dest` (parents created) and return it."""
    doc = openapi_schema(ref, root)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(dest)
    return dest
