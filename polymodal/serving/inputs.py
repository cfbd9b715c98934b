"""What a request may send, checked before the model sees it: types, unknown fields and limits.

Inputs are values only. An image or audio field holds base64 (JSON) or an upload (form), decoded here to bytes;
a string is never read as a path or URL, so no request can make the server open a file or a connection.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from polymodal.data.redact import quote_value
from polymodal.data.schema import Modality, Schema
from polymodal.serving.config import ServeConfig

IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF")
# Modalities sent as values; every other one (image, audio, and any file kind added later) is a file.
VALUE_KINDS = frozenset({Modality.TEXT, Modality.NUMERIC, Modality.CATEGORICAL})
EXPECTED = {
    Modality.TEXT: "a string",
    Modality.IMAGE: "a base64-encoded image file (PNG, JPEG, ...)",
    Modality.AUDIO: "a base64-encoded audio file (WAV, FLAC, OGG, ...)",
    Modality.NUMERIC: "a finite number",
    Modality.CATEGORICAL: "a string, number or boolean",
}


def expected(modality: Modality) -> str:
    return EXPECTED.get(modality, f"a base64-encoded {modality.value} file")


@dataclass(frozen=True)
class FieldError:
    """One problem with a request: which instance (0-based), which field, what is wrong, and the limit if any."""

    instance: int | None
    field: str | None
    message: str
    limit: int | float | None = None

    def describe(self) -> str:
        where = [f"instance {self.instance}"] if self.instance is not None else []
        where += [f"field {self.field!r}"] if self.field is not None else []
        return (", ".join(where) + ": " if where else "") + self.message


class RequestError(Exception):
    """A client error: 413 when every problem is a size limit, 422 otherwise (unless a status is given)."""

    def __init__(self, errors: list[FieldError], status: int | None = None):
        self.errors = errors
        self.status = status or (413 if errors and all(e.limit is not None for e in errors) else 422)
        super().__init__(self.summary())

    def summary(self) -> str:
        first = self.errors[0].describe()
        return first if len(self.errors) == 1 else f"{len(self.errors)} problems; first: {first}"

    def body(self) -> dict[str, Any]:
        return {"error": self.summary(), "details": [asdict(e) for e in self.errors]}


class _Bad(Exception):
    def __init__(self, message: str, limit: int | float | None = None):
        self.message, self.limit = message, limit


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def decode_base64(text: str) -> bytes:
    """Standard base64; a `data:...;base64,` prefix (what browsers produce) and whitespace are allowed."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _Bad("a data URL must be base64 (data:<type>;base64,<data>)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Bad(f"not valid base64 ({e})") from None


class InstanceChecker:
    """Turn one instance (field -> value) into a table row the inference engine takes, or name what is wrong.

    Shared by the JSON and the form endpoints. Image and audio sizes are read from the file header only
    (no decoding), so decompression bombs and over-long clips are refused before any work is done.
    """

    def __init__(self, schema: Schema, config: ServeConfig):
        self.schema, self.config = schema, config
        self.media = frozenset(c for c, m in schema.columns.items() if m not in VALUE_KINDS)

    def check(
        self, index: int, values: Mapping[str, Any], form: bool = False
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """`form`: values come from a form, where every value is a string (a number is read from one)."""
        row: dict[str, Any] = dict.fromkeys(self.schema.columns)
        errors: list[FieldError] = []
        for field, value in values.items():
            modality = self.schema.columns.get(field)
            if modality is None:
                errors.append(FieldError(index, field, self.unknown_field_message()))
                continue
            try:
                row[field] = self._value(modality, value, form)
            except _Bad as e:
                errors.append(FieldError(index, field, e.message, e.limit))
        return row, errors

    def check_all(self, instances: Iterable[Mapping[str, Any]], form: bool = False) -> list[dict[str, Any]]:
        rows, errors = [], []
        for i, values in enumerate(instances):
            row, errs = self.check(i, values, form)
            rows.append(row)
            errors += errs
        if errors:
            raise RequestError(errors)
        return rows

    def has_media(self, instances: Iterable[Mapping[str, Any]]) -> bool:
        """Whether any instance sends an image or audio value (then checking and decoding go to the pool)."""
        return any(values.get(c) for values in instances for c in self.media)

    def unknown_field_message(self) -> str:
        return f"unknown field; the model's input columns are {list(self.schema.columns)}"

    def _value(self, modality: Modality, value: Any, form: bool = False) -> Any:
        if value is None:
            return None
        if modality is Modality.TEXT:
            if not isinstance(value, str):
                raise _Bad(f"expected {expected(modality)}, got {_json_type(value)}")
            if len(value) > self.config.max_text_chars:
                limit = self.config.max_text_chars
                raise _Bad(f"text is {len(value)} characters, above the limit of {limit}", limit)
            return value
        if modality is Modality.NUMERIC:
            if isinstance(value, str) and form:  # form fields arrive as strings
                if not value.strip():
                    return None
                try:
                    value = float(value)
                except ValueError:
                    raise _Bad(f"expected {expected(modality)}, got {quote_value(value)}") from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Bad(f"expected {expected(modality)}, got {_json_type(value)}")
            if not math.isfinite(value):
                raise _Bad(f"expected {expected(modality)}, got {value}")
            return float(value)
        if modality is Modality.CATEGORICAL:
            if isinstance(value, float) and not math.isfinite(value):
                raise _Bad(f"expected {expected(modality)}, got {value}")
            if not isinstance(value, str | int | float | bool):
                raise _Bad(f"expected {expected(modality)}, got {_json_type(value)}")
            return value
        # Image or audio: bytes from an upload, or a base64 string. Never a path.
        if isinstance(value, str):
            value = decode_base64(value)
        if not isinstance(value, bytes):
            raise _Bad(f"expected {expected(modality)}, got {_json_type(value)}")
        if not value:
            return None  # an empty upload is a file input left empty: the modality is absent
        if modality is Modality.IMAGE:
            self._check_image(value)
        elif modality is Modality.AUDIO:
            return self._check_audio(value)
        return value  # another file kind: its decoder checks it

    def _check_image(self, data: bytes) -> None:
        from PIL import Image

        from polymodal.data.headers import png_size

        limit = self.config.max_image_pixels
        if (size := png_size(data)) is not None:  # a PNG's size is at a fixed place: no Pillow call for it
            w, h = size
            if w * h > limit:
                raise _Bad(f"image is {w}x{h} = {w * h} pixels, above the limit of {limit}", limit)
            return
        try:
            # Header only, and only the common raster formats: PIL never tries its rarer plugins on a request
            # (EPS, for one, would start Ghostscript).
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                w, h = im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            from polymodal.data.media import image_header_size

            w, h = image_header_size(data, IMAGE_FORMATS) or (0, 0)
            raise _Bad(f"image is {w}x{h} = {w * h} pixels, above the limit of {limit}", limit) from None
        except Exception as e:  # anything PIL raises on a hostile header is the client's error
            accepted = ", ".join(IMAGE_FORMATS)
            raise _Bad(f"not an image this server can read ({type(e).__name__}); accepted: {accepted}") from None
        if w * h > limit:
            raise _Bad(f"image is {w}x{h} = {w * h} pixels, above the limit of {limit}", limit)

    def _check_audio(self, data: bytes) -> bytes:
        """The audio file as the decoder reads it: WAV, FLAC, OGG... as sent; a browser recording (WebM, or any
        container libsndfile cannot read) decoded by PyAV and sent on as WAV."""
        import soundfile as sf

        from polymodal.data.headers import wav_layout
        from polymodal.serving.recordings import NotARecording, RecordingTooLong, to_wav

        limit = self.config.max_audio_seconds
        if (layout := wav_layout(data)) is not None:  # plain PCM/float WAV: its header read without libsndfile
            if layout.frames <= 0:
                raise _Bad("audio has no samples")
            if (seconds := layout.frames / layout.sample_rate) > limit:
                raise _Bad(f"audio is {seconds:.1f} seconds long, above the limit of {limit:g}", limit)
            return data
        try:
            info = sf.info(io.BytesIO(data))  # reads the header only
        except Exception as e:
            try:
                return to_wav(data, limit)
            except RecordingTooLong:
                raise _Bad(f"audio is longer than the limit of {limit:g} seconds", limit) from None
            except NotARecording:
                raise _Bad(f"not an audio file this server can read ({type(e).__name__})") from None
        if info.samplerate <= 0 or info.frames <= 0:
            raise _Bad("audio has no samples")
        seconds = info.frames / info.samplerate
        if seconds > limit:
            raise _Bad(f"audio is {seconds:.1f} seconds long, above the limit of {limit:g}", limit)
        return data


def parse_instances(body: bytes, config: ServeConfig) -> list[dict[str, Any]]:
    """The instances of a POST /v1/predict body, its shape checked (each field is checked by InstanceChecker).
    orjson parses; a body it refuses goes through the standard parser, which also reads NaN and Infinity, so that
    such a number gets the checker's own message naming its field."""
    import orjson

    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError([FieldError(None, None, f"the body is not valid JSON ({e})")]) from None
    if not isinstance(data, dict):
        msg = f'the body must be a JSON object {{"instances": [...]}}, got {_json_type(data)}'
        raise RequestError([FieldError(None, None, msg)])
    errors = [FieldError(None, str(k), 'unknown field; the body has one field, "instances"') for k in data
              if k != "instances"]  # fmt: skip
    instances = data.get("instances")
    if "instances" not in data:
        errors.append(FieldError(None, "instances", 'the body needs an "instances" list'))
    elif not isinstance(instances, list):
        errors.append(FieldError(None, "instances", f"expected a list of objects, got {_json_type(instances)}"))
    elif not instances:
        errors.append(FieldError(None, "instances", "send at least one instance"))
    elif len(instances) > config.max_instances:
        limit = config.max_instances
        msg = f"{len(instances)} instances in one request, above the limit of {limit}"
        errors.append(FieldError(None, "instances", msg, limit))
    else:
        errors += [FieldError(i, None, f"an instance must be an object of column -> value, got {_json_type(v)}")
                   for i, v in enumerate(instances) if not isinstance(v, dict)]  # fmt: skip
    if errors:
        raise RequestError(errors)
    return instances


# ---- pydantic models: what /docs shows (the JSON endpoint's body is parsed by `parse_instances`) ---------------
_Number = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
_FIELD_TYPES: dict[Modality, Any] = {
    Modality.TEXT: StrictStr | None,
    Modality.IMAGE: StrictStr | None,
    Modality.AUDIO: StrictStr | None,
    Modality.NUMERIC: _Number,
    Modality.CATEGORICAL: StrictStr | StrictInt | StrictFloat | StrictBool | None,
}


def request_model(schema: Schema, config: ServeConfig) -> type[BaseModel]:
    """The body of POST /v1/predict for this model: {"instances": [{column: value, ...}, ...]}."""
    fields: dict[str, Any] = {}
    for i, (col, modality) in enumerate(schema.columns.items()):
        extra = {"contentEncoding": "base64"} if modality not in VALUE_KINDS else None
        description = f"{modality.value} input: {expected(modality)}; leave it out or null when absent"
        # Columns can have any name, so the Python attribute is generic and the column name is the alias.
        fields[f"f{i}"] = (
            _FIELD_TYPES.get(modality, StrictStr | None),
            Field(default=None, alias=col, title=col, description=description, json_schema_extra=extra),
        )
    instance = create_model("Instance", __config__=ConfigDict(extra="forbid"), **fields)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        instances=(
            list[instance],
            Field(min_length=1, max_length=config.max_instances, description="Rows to predict, each answered"),
        ),
    )


class Prediction(BaseModel):
    prediction: StrictBool | StrictInt | StrictFloat | StrictStr | None = Field(
        description="The predicted class (classification) or value (regression)"
    )
    labels: list[str] | None = Field(None, description="Multilabel: the predicted labels (probability >= 0.5)")
    probabilities: dict[str, float] | None = Field(None, description="Class -> probability (classification)")
    inputs_used: list[str] = Field(description="Fusion inputs this prediction used")
    inputs_missing: list[str] = Field(description="Fusion inputs absent from this instance (missing-modality path)")


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    instance: int | None = Field(description="0-based index of the instance, null for the request as a whole")
    field: str | None
    message: str
    limit: int | float | None = Field(None, description="The limit that was exceeded, if any")


class ErrorResponse(BaseModel):
    error: str
    details: list[ErrorDetail]


def from_validation_errors(errors: list[dict[str, Any]], schema: Schema, config: ServeConfig) -> RequestError:
    """Rewrite pydantic's errors on the JSON body as FieldErrors: one per (instance, field), in plain words."""
    out: dict[tuple[int | None, str | None], FieldError] = {}
    for e in errors:
        loc = list(e.get("loc", ()))
        loc = loc[1:] if loc[:1] == ["body"] else loc
        kind, ctx = e.get("type", ""), e.get("ctx") or {}
        inst: int | None = None
        field: str | None = None
        limit = None
        if kind == "json_invalid":
            msg = f"the body is not valid JSON ({ctx.get('error', 'syntax error')})"
        elif len(loc) >= 3 and loc[0] == "instances" and isinstance(loc[1], int):
            inst, field = loc[1], str(loc[2])
            modality = schema.columns.get(field)
            if kind == "extra_forbidden" or modality is None:
                msg = "unknown field; the model's input columns are " + str(list(schema.columns))
            else:
                msg = f"expected {expected(modality)}, got {_json_type(e.get('input'))}"
        elif len(loc) == 2 and loc[0] == "instances" and isinstance(loc[1], int):
            inst, msg = loc[1], f"an instance must be an object of column -> value, got {_json_type(e.get('input'))}"
        elif loc == ["instances"] and kind == "too_long":
            field, limit = "instances", config.max_instances
            n = ctx.get("actual_length")
            msg = f"{n} instances in one request, above the limit of {limit}"
        elif loc == ["instances"] and kind == "too_short":
            field, msg = "instances", "send at least one instance"
        elif loc == ["instances"] and kind == "missing":
            field, msg = "instances", 'the body needs an "instances" list'
        elif loc == ["instances"]:
            field, msg = "instances", f"expected a list of objects, got {_json_type(e.get('input'))}"
        elif len(loc) == 1 and kind == "extra_forbidden":
            field, msg = str(loc[0]), 'unknown field; the body has one field, "instances"'
        elif not loc:
            msg = f'the body must be a JSON object {{"instances": [...]}}, got {_json_type(e.get("input"))}'
        else:
            field, msg = ".".join(map(str, loc)), str(e.get("msg", "invalid"))
        out.setdefault((inst, field), FieldError(inst, field, msg, limit))
    return RequestError(list(out.values()) or [FieldError(None, None, "invalid request")])


def from_search_validation_errors(errors: list[dict[str, Any]], modalities: list[str]) -> RequestError:
    """The same for the body of /v1/search: one query field named by modality, k and where."""
    out = []
    for e in errors:
        loc = [x for x in e.get("loc", ()) if x != "body"]
        field = str(loc[0]) if loc else None
        if e.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        elif e.get("type") == "extra_forbidden":
            msg = f"unknown field; a search takes one of {modalities}, and k, where"
        elif not loc:
            msg = f"the body must be a JSON object, got {_json_type(e.get('input'))}"
        else:
            msg = f"{e.get('msg', 'invalid')}, got {_json_type(e.get('input'))}"
        out.append(FieldError(None, field, msg))
    return RequestError(out or [FieldError(None, None, "invalid request")])
