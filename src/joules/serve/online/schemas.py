"""Request and response bodies at the HTTP edge (pydantic; unknown fields are refused).

The Open Inference Protocol's ``parameters`` objects are free-form: keys the
server does not use are accepted and ignored (tritonclient sends
``binary_data``), while unknown fields anywhere else are a 400 that names the
field. These models also feed the OpenAPI document at ``/openapi.json``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from joules.errors import InputError

Parameters = dict[str, Any]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- Open Inference Protocol V2 -----------------------------------------------------------------


class RequestInput(Strict):
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=16)
    datatype: str
    parameters: Parameters | None = Field(default=None, description="free-form; binary_data_size is used")
    data: list[Any] | None = Field(
        default=None, description="row-major, flat or nested; absent when the tensor travels as binary data"
    )


class RequestOutput(Strict):
    name: str
    parameters: Parameters | None = Field(
        default=None, description="free-form; binary_data (bool) and classification (top-k) are used"
    )


class InferenceRequest(Strict):
    id: str | None = None
    parameters: Parameters | None = Field(
        default=None, description="free-form; binary_data_output (bool) and timeout (microseconds) are used"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = Field(
        default=None,
        description="the request's cost: energy_j (joules), cost_usd, co2_g (grams CO2e) and energy_method "
        "('measured' or 'modelled'), as in the X-Joules-* headers",
    )
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class RepositoryIndexRequest(Strict):
    ready: bool | None = None


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str | None = None


class RepositoryLoadRequest(Strict):
    parameters: Parameters | None = Field(default=None, description="free-form; ignored")


# -- the simple API -----------------------------------------------------------------------------


class PredictRequest(Strict):
    instances: list[dict[str, Any]] = Field(
        description='one object per row: {"text": "..."} for a text model, '
        "{input_name: nested list} for a tensor model",
        examples=[[{"text": "WINNER!! Claim your prize now"}, {"text": "Lunch tomorrow?"}]],
    )


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    action: str | None


class CostParameters(BaseModel):
    """What answering a request cost: its share of the model calls that computed its rows."""

    energy_j: float = Field(description="joules")
    cost_usd: float = Field(description="US dollars: the instance's price per hour x this work's CPU-seconds")
    co2_g: float = Field(description="grams CO2e: energy x the grid's carbon intensity")
    energy_method: str = Field(description="'measured' (RAPL, NVML) or 'modelled' (CPU-seconds x watts)")


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]
    cost: CostParameters | None = None


class ModelStatus(BaseModel):
    name: str
    version: int
    ready: bool
    inputs: list[TensorMetadata]
    labels: list[str]


class ErrorResponse(BaseModel):
    error: str


def parse(model: type[Strict], body: bytes | str) -> Any:
    """Validate a JSON body; a ValidationError becomes an InputError that names the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise InputError(describe(e)) from None


def describe(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in error.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "json_invalid":
            parts.append(f"the body is not valid JSON: {err['msg']}")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        else:
            parts.append(f"{loc or 'body'}: {err['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
