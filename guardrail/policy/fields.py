"""The building blocks of the policy models: the strict base, its scalars, located errors.

Every policy model derives from :class:`StrictModel`: unknown keys are errors and
the models are frozen. The scalar types are strict: YAML already types its
scalars, so a quoted ``"0.8"`` where a number belongs is a mistake worth
reporting rather than coercing. :class:`FieldValueError` lets a cross-field check
point at the exact sub-field it is about.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr

__all__ = [
    "EnvName",
    "FieldValueError",
    "Label",
    "Probability",
    "Score",
    "Seconds",
    "StrictModel",
    "Text",
]

Probability = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Seconds = Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)]
Score = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
EnvName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FieldValueError(ValueError):
    """A validation error about a sub-field of the model being validated.

    Cross-field checks run in model validators, whose errors pydantic locates at
    the model itself; ``path`` names the sub-field so the loader can point at the
    exact key (``rules[2]`` + ``("when", "refusal")``).
    """

    def __init__(self, message: str, *path: str | int) -> None:
        self.reason = message
        self.path = path
        where = ".".join(str(p) for p in path)
        super().__init__(f"{where}: {message}" if where else message)


class StrictModel(BaseModel):
    """The base of every policy model: unknown keys are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
