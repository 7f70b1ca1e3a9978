"""ETSI GS QKD 014 v1.1.1 data formats (section 6), as strict pydantic models.

Request bodies are validated strictly (wrong types are errors, not coerced); unknown
top-level fields are ignored as the spec's extension mechanism allows only the named
extension fields, which are accepted but capped in size by the server's request limits.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Status(_Wire):
    """Status data format (6.1)."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int
    status_extension: dict[str, Any] | None = None


class KeyRequest(_Wire):
    """Key request data format (6.2), the body of POST enc_keys."""

    number: int | None = Field(default=None, description="default 1")
    size: int | None = Field(default=None, description="bits; default key_size")
    additional_slave_SAE_IDs: list[str] | None = None
    extension_mandatory: list[dict[str, Any]] | None = None
    extension_optional: list[dict[str, Any]] | None = None


class KeyIdItem(_Wire):
    key_ID: str
    key_ID_extension: Any | None = None


class KeyIds(_Wire):
    """Key IDs data format (6.4), the body of POST dec_keys."""

    key_IDs: list[KeyIdItem] = Field(min_length=1)
    key_IDs_extension: Any | None = None


class Key(_Wire):
    key_ID: str
    key: str = Field(description="base64 of the key, its first bit the MSB of the first byte")
    key_ID_extension: Any | None = None
    key_extension: Any | None = None

    def __repr__(self) -> str:  # never print key material
        return f"Key(key_ID={self.key_ID!r}, key=<hidden>)"

    __str__ = __repr__


class KeyContainer(_Wire):
    """Key container data format (6.3)."""

    keys: list[Key]
    key_container_extension: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"KeyContainer({len(self.keys)} keys, <hidden>)"

    __str__ = __repr__


class ErrorBody(_Wire):
    """Error data format (6.5)."""

    message: str
    details: list[dict[str, Any]] | None = None
