"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema at ``/openapi.json``).

Every request body refuses text UTF-8 cannot encode (:class:`Utf8Request`): JSON allows a lone surrogate escape
(``"\\ud800"``), which no tokenizer takes and no JSON answer can carry."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from adaptune.data.formats.source import check_utf8
from adaptune.errors import DataError

Input = str | dict[str, Any]

#: The pydantic error type of text that UTF-8 cannot encode (the app answers it with a 400 ``invalid_input``).
NOT_UTF8 = "not_utf8"


def check_text(value: Any, where: str) -> None:
    """Refuse a string anywhere in ``value`` (a JSON value, or a model) that holds a lone surrogate, naming where
    it is: ``inputs[1]``, ``inputs[0].text_pair``, ``messages[0].content``."""
    if isinstance(value, str):
        try:
            check_utf8(value)
        except DataError as err:
            raise PydanticCustomError(NOT_UTF8, "{where}: {reason}", {"where": where, "reason": str(err)}) from None
    elif isinstance(value, BaseModel):
        for name, item in value:
            check_text(item, f"{where}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{where} (a key)")
            check_text(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_text(item, f"{where}[{index}]")


class Utf8Request(BaseModel):
    """A request body whose every string is UTF-8 encodable (:func:`check_text`, field by field)."""

    @model_validator(mode="after")
    def _encodable_text(self) -> Self:
        for name, value in self:
            check_text(value, name)
        return self


class ErrorDetail(BaseModel):
    """What went wrong; ``limit`` names the server limit a request went over."""

    type: str = Field(description="Kind of error: limit_exceeded, not_found, invalid_request, unauthorized, ...")
    limit: str | None = Field(None, description="max_input_tokens, max_batch or max_body_bytes; else null.")
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail


class PredictRequest(Utf8Request):
    """Inputs for one adapter: strings, or objects (``{"text", "text_pair"}``; for tagging ``{"tokens": [...]}``)."""

    model_config = ConfigDict(populate_by_name=True)

    adapter: str = Field(
        validation_alias=AliasChoices("adapter", "model"), description="Adapter name (a folder of the adapters dir)."
    )
    inputs: list[Input] = Field(min_length=1, description="One prediction per input, in order.")


class PredictResponse(BaseModel):
    """Predictions exactly as ``Predictor.predict`` returns them."""

    adapter: str
    predictions: list[dict[str, Any]] = Field(
        description="classify: text, label, score, scores; tag: text, entities (type, text, start, end, score), "
        "tokens, tags. start/end are character offsets into text."
    )


class AdapterList(BaseModel):
    """Every adapter served (``loaded`` true or false), adapter folders the server refused with the reason, and the
    adapter budget."""

    base: str = Field(description="The first base model (every base: bases).")
    bases: list[dict[str, Any]] = Field(
        default_factory=list, description="Each base model: name, adapters (served), budget (its own limits)."
    )
    adapters: list[dict[str, Any]]
    refused: list[dict[str, str]]
    budget: dict[str, Any] = Field(
        default_factory=dict,
        description="max_loaded_adapters and adapter_memory_mb (null: no limit), loaded (adapters), loaded_bytes, "
        "loads and evictions so far; with several bases the counts are summed and the limits (per_base: true) "
        "apply to each base.",
    )


class AdapterAction(BaseModel):
    """Result of a load, unload or reload."""

    name: str
    status: Literal["loaded", "unloaded", "reloaded"]
    adapter: dict[str, Any] | None = None


class Health(BaseModel):
    status: Literal["ok"]
    base: str = Field(description="The first base model.")
    bases: list[str] = Field(default_factory=list, description="Every base model served.")
    adapters: int = Field(description="Adapters served over every base, loaded or not.")


class SamplingFields(Utf8Request):
    """Decoding settings shared by the generation endpoints (the fields of ``GenerationConfig``)."""

    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: str | list[str] | None = None
    seed: int | None = None


class GenerateRequest(SamplingFields):
    """``POST /v1/generate``: prompts for one causal-LM adapter; greedy unless ``do_sample``."""

    model_config = ConfigDict(populate_by_name=True)

    adapter: str = Field(validation_alias=AliasChoices("adapter", "model"))
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    do_sample: bool = False


class GenerationOut(BaseModel):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class GenerateResponse(BaseModel):
    adapter: str
    generations: list[GenerationOut]


class CompletionRequest(SamplingFields):
    """OpenAI ``POST /v1/completions``; ``model`` names the adapter. ``n`` must be 1."""

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=4096)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(SamplingFields):
    """OpenAI ``POST /v1/chat/completions``; ``model`` names the adapter. ``n`` must be 1."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
