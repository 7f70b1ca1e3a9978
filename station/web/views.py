"""How the web view reads the messages whose shape it relays but does not own.

- ``transitions`` carries two kinds of event (docs/mqtt.md): a pass's phase change
  (``kind`` ``"phase"``, or no ``kind`` from an older station) and a key-relay event
  (``kind`` ``"relay"``). :data:`TRANSITION` reads either by its ``kind``; any other kind
  is refused, so a kind the page does not know never reaches it. Fields outside these
  views are dropped (not refused): a producer adding a field must not blank the page's
  record of transitions, and the relayed message is re-serialised from the view, so
  nothing outside it reaches a browser.
- ``keys/levels`` is published by the KME (``postprocessing.kme.levels.KeyLevels``,
  docs/key-delivery.md). :class:`KeyLevelsView` is its wire format read here (importing
  the KME's package would cost the web process a second and a half at start);
  ``tests/web/test_key_panel.py`` checks it against the real model's output.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator

from station.mqtt.messages import PhaseTransition
from station.utc import UtcTime

#: Station ids, peer names and pass ids: plain identifiers.
IDENT = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
#: Longest reason relayed; longer ones are cut (a reason is a sentence, not a document).
MAX_REASON_CHARS = 500
#: Integers beyond 2^53 are not counts a page shows (nor can JavaScript hold them exactly).
MAX_SAFE_INT = 2**53


def _cut(value: Any) -> Any:
    if value is None:          # a relay event without a reason says null
        return ""
    if isinstance(value, str) and len(value) > MAX_REASON_CHARS:
        return value[:MAX_REASON_CHARS - 1] + "…"
    return value


class PhaseTransitionView(PhaseTransition):
    """A phase change: the station's own model, with the kind and the reason for it."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["phase"] = "phase"
    reason: str = Field("", description="Why the phase changed, in words ('' when not given).")

    _cut_reason = field_validator("reason", mode="before")(_cut)


class RelayTransitionView(BaseModel):
    """A key-relay event (``postprocessing.relay.events.KeyRelayEvent``, docs/relay.md):
    which step, with whom, and how many key IDs and bits (counts only, never bits)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["relay"]
    time: UtcTime = Field(description="When the step happened (station clock).")
    step: Literal["offered", "accepted", "requested", "announced", "recovered", "refused"]
    role: Literal["offering", "receiving"]
    partner: str = Field(pattern=IDENT, description="The other station of the relay.")
    satellite: str = Field(pattern=IDENT, description="The trusted node relaying.")
    key_ids: int = Field(0, ge=0, description="Number of key IDs (blocks) in the step.")
    bits: int = Field(0, ge=0, description="Key bits in those blocks (a count).")
    reason: str = Field("", description="Why, in words (a refusal's reason; '' otherwise).")

    _cut_reason = field_validator("reason", mode="before")(_cut)


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "phase")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


Transition = Annotated[
    Annotated[PhaseTransitionView, Tag("phase")] | Annotated[RelayTransitionView, Tag("relay")],
    Discriminator(_kind),
]
#: Validates one ``transitions`` payload (JSON bytes) into its view by ``kind``.
TRANSITION: TypeAdapter[PhaseTransitionView | RelayTransitionView] = TypeAdapter(Transition)


class PeerLevelView(BaseModel):
    """One peer's key-store level (``postprocessing.kme.levels.PeerLevel``)."""

    model_config = ConfigDict(extra="ignore", strict=True)   # a count is a number, never "0110"

    peer: str = Field(pattern=IDENT)
    available_bits: int = Field(ge=0, le=MAX_SAFE_INT)
    available_blocks: int = Field(ge=0, le=MAX_SAFE_INT)
    reserved_blocks: int = Field(ge=0, le=MAX_SAFE_INT)
    consumed_blocks: int = Field(ge=0, le=MAX_SAFE_INT)
    low: bool


class KeyLevelsView(BaseModel):
    """``keys/levels`` (``postprocessing.kme.levels.KeyLevels``): counts per peer, no key."""

    model_config = ConfigDict(extra="ignore", strict=True)

    time: UtcTime
    station_id: str = Field(pattern=IDENT)
    low_store_bits: int = Field(ge=0, le=MAX_SAFE_INT)
    peers: list[PeerLevelView] = Field(max_length=64)
