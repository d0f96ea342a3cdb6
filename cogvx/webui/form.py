"""The web page's form, read from a Cog server's OpenAPI schema: one field per runner input.

Pure functions (no gradio): the page builds its widgets from `Field`s and turns the widgets'
values back into a Cog request with `to_request`, so every check stays the server's.
"""

from __future__ import annotations

import base64
import math
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Shown above the fold, in this order where a runner has them; the rest go under "Advanced".
MAIN_INPUTS = (
    "prompt",
    "image",
    "video",
    "extend_prompt",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "fast_mode",
)
KINDS = ("text", "integer", "number", "boolean", "choice", "file")
SLIDER_SPAN = 200  # numeric ranges at most this wide get a slider, wider ones a number box


class FormError(ValueError):
    """A schema the page cannot show, or a form value it cannot send."""


@dataclass(frozen=True)
class Field:
    """One runner input as the page shows it."""

    name: str
    label: str
    kind: str  # one of KINDS
    default: Any = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    nullable: bool = False
    required: bool = False

    @property
    def main(self) -> bool:
        """Shown above the fold (else under "Advanced"); an optional file other than an image
        (T2V's video-to-video input) is advanced."""
        if self.kind == "file" and not self.required and self.name != "image":
            return False
        return self.name in MAIN_INPUTS

    @property
    def slider(self) -> bool:
        """A bounded numeric range narrow enough for a slider."""
        if self.kind not in ("integer", "number") or self.minimum is None or self.maximum is None:
            return False
        return self.maximum - self.minimum <= SLIDER_SPAN


def _resolve(prop: dict, components: dict) -> dict:
    """Merge an `allOf: [{$ref}]` enum reference (how Cog writes choices) into the property."""
    out = dict(prop)
    for part in prop.get("allOf", []):
        ref = part.get("$ref", "")
        name = ref.rsplit("/", 1)[-1]
        if name not in components:
            raise FormError(f"schema: {ref!r} is not in components/schemas")
        out = {**components[name], **out}
    out.pop("allOf", None)
    return out


def _kind(name: str, prop: dict) -> str:
    if "enum" in prop:
        return "choice"
    kind = {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}
    typ = prop.get("type")
    if typ == "string" and prop.get("format") == "uri":
        return "file"
    if typ not in kind:
        raise FormError(f"schema: input {name!r} has type {typ!r}; the page shows {KINDS}")
    return kind[typ]


def fields_from_openapi(schema: dict) -> list[Field]:
    """The runner's inputs in the server's order (`x-order`), as page fields."""
    try:
        components = schema["components"]["schemas"]
        inputs = components["Input"]
    except (KeyError, TypeError) as exc:
        raise FormError("schema: no components/schemas/Input (is this a Cog server?)") from exc
    required = set(inputs.get("required", []))
    fields: list[tuple[int, Field]] = []
    for name, raw in inputs.get("properties", {}).items():
        prop = _resolve(raw, components)
        fields.append(
            (
                prop.get("x-order", len(fields)),
                Field(
                    name=name,
                    label=raw.get("title") or name.replace("_", " ").title(),
                    kind=_kind(name, prop),
                    default=prop.get("default"),
                    description=prop.get("description", ""),
                    minimum=prop.get("minimum"),
                    maximum=prop.get("maximum"),
                    choices=tuple(prop.get("enum", ())),
                    nullable=bool(prop.get("nullable")),
                    required=name in required,
                ),
            )
        )
    return [f for _, f in sorted(fields, key=lambda pair: pair[0])]


def output_is_file(schema: dict) -> bool:
    """Whether the runner returns a file (a video), not text (a caption)."""
    out = schema.get("components", {}).get("schemas", {}).get("Output", {})
    return out.get("format") == "uri"


def layout(fields: list[Field]) -> tuple[list[Field], list[Field]]:
    """(main fields in MAIN_INPUTS order, advanced fields in schema order)."""
    main = sorted((f for f in fields if f.main), key=lambda f: MAIN_INPUTS.index(f.name))
    return main, [f for f in fields if not f.main]


def file_to_data_uri(path: str | Path) -> str:
    """A local file (a page upload) as the data: URI Cog takes for a file input."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _value(field: Field, value: Any) -> Any:
    if field.kind == "file":
        return file_to_data_uri(value)
    if field.kind == "integer" or field.kind == "choice" and isinstance(field.default, int):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not math.isfinite(number) or number != int(number):  # NaN, infinite or a fraction
            raise FormError(f"{field.name}: {value!r} is not a whole number")
        return int(number)
    if field.kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise FormError(f"{field.name}: {value!r} is not a number") from exc
    if field.kind == "boolean":
        return bool(value)
    return value


def to_request(fields: list[Field], values: dict[str, Any]) -> dict[str, Any]:
    """The Cog `input` object for the page's values: blank optional inputs are left out (the
    server's default applies), numbers get the schema's type, uploads become data: URIs."""
    request: dict[str, Any] = {}
    for field in fields:
        value = values.get(field.name)
        blank = value is None or (isinstance(value, str) and not value.strip())
        if blank and field.required:
            raise FormError(f"{field.name}: required")
        if blank and (field.kind != "text" or field.nullable):
            continue
        request[field.name] = _value(field, value)
    return request
