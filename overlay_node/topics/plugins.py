"""The two plug-in kinds of the overlay engine (BRC-22 topic managers, BRC-24 lookup services) and the values they
exchange with it. Pure: no sockets, no database, no trio.

A **topic manager** decides which outputs of a submitted transaction join its topic and which spent topical
predecessors stay in history (BRC-64). A **lookup service** declares what it indexes of each admitted output and
answers queries with outpoints (a lookup formula); the engine stores the index in the node's database in the same
transaction as the outputs, removes entries when their output is spent (unless the service keeps spent ones) or
evicted, and hydrates each answered outpoint with its BEEF.

Plug-ins are named by BRC-87 names (``tm_*`` / ``ls_*``) and found by :mod:`overlay_node.topics.registry`: the
built-ins, then Python entry points in the groups ``overlay_node.topic_managers`` and
``overlay_node.lookup_services`` (each a factory taking a :class:`PluginContext`), then ``name=module:attr`` in the
node's config. What a plug-in raises while admitting refuses only its own topic (the reference engine's rule);
what it raises while answering a lookup is the client's ``400`` when it is a :class:`~overlay_node.errors.BadRequest`
or a ``ValueError``, else ``500 Unexpected error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from overlay_node.chain.formats import ParsedTx, Submission

__all__ = [
    "Admittance",
    "AdmittedOutput",
    "FormulaItem",
    "LookupEvents",
    "LookupIndex",
    "LookupService",
    "Metadata",
    "Outpoint",
    "PluginContext",
    "SpentOutput",
    "SubmitMode",
    "TaggedTx",
    "TopicManager",
]

#: BRC-22 submit modes: ``historical-tx`` is neither broadcast nor propagated, ``historical-tx-no-spv`` is not
#: even checked against the chain (GASP submits what it has already verified)
SubmitMode = Literal["current-tx", "historical-tx", "historical-tx-no-spv"]
SUBMIT_MODES: tuple[SubmitMode, ...] = ("current-tx", "historical-tx", "historical-tx-no-spv")

Outpoint = tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """What ``/listTopicManagers`` and ``/listLookupServiceProviders`` show of a plug-in."""

    name: str
    short_description: str
    icon_url: str | None = None
    version: str | None = None
    information_url: str | None = None

    def as_json(self) -> dict[str, str]:
        """The reference's shape: ``{name, shortDescription, iconURL?, version?, informationURL?}``."""
        out = {"name": self.name, "shortDescription": self.short_description}
        for key, value in (
            ("iconURL", self.icon_url),
            ("version", self.version),
            ("informationURL", self.information_url),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginContext:
    """What a plug-in factory is given.

    Attributes:
        name: the name it is registered under (``tm_x`` / ``ls_x``).
        identity_key: the node's identity key (hex).
        allow_http: the node is configured for local testing: advertised and download URIs may be plain
            ``http://`` (see ``overlay.allow_http``).
    """

    name: str
    identity_key: str
    allow_http: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaggedTx:
    """A submitted transaction as a topic manager sees it.

    ``beef`` is what the client sent (BEEF V1, V2 or Atomic), ``submission`` its parsed form (parents first),
    ``tx`` the transaction the submission is about (the last, or the Atomic subject).
    """

    beef: bytes
    submission: Submission
    off_chain: bytes | None = None
    mode: SubmitMode = "current-tx"

    @property
    def tx(self) -> ParsedTx:
        return self.submission.subject

    @property
    def txid(self) -> str:
        return self.submission.subject.txid


@dataclass(frozen=True, slots=True, kw_only=True)
class Admittance:
    """A topic manager's answer (BRC-22 ``AdmittanceInstructions``): output indices admitted into the topic, and
    input indices whose spent topical predecessors are kept in history (BRC-64)."""

    outputs_to_admit: tuple[int, ...] = ()
    coins_to_retain: tuple[int, ...] = ()

    def as_json(self) -> dict[str, list[int]]:
        return {"outputsToAdmit": list(self.outputs_to_admit), "coinsToRetain": list(self.coins_to_retain)}


@runtime_checkable
class TopicManager(Protocol):
    """Decides admission into one topic (see the module docstring)."""

    def admissible_outputs(self, tx: TaggedTx, previous_coins: Sequence[int]) -> Admittance:
        """Which outputs of ``tx`` join the topic, and which of ``previous_coins`` (indices of inputs that spend
        outputs already in the topic) stay in history. Outputs it names that ``tx`` does not have are ignored."""
        ...

    def needed_inputs(self, tx: TaggedTx) -> Sequence[Outpoint]:
        """The inputs of a proven transaction a host must also fetch to admit it (GASP); usually none."""
        ...

    def documentation(self) -> str:
        """Markdown for ``/getDocumentationForTopicManager``."""
        ...

    def metadata(self) -> Metadata: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmittedOutput:
    """An output a topic admitted (what a lookup service sees: the reference's ``locking-script`` mode)."""

    txid: str
    vout: int
    topic: str
    satoshis: int
    script: bytes
    off_chain: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FormulaItem:
    """One outpoint a lookup answers (BRC-24 lookup formula entry). ``history``: how many retained predecessors
    deep its BEEF should carry its ancestry (BRC-64; None: none); ``context``: opaque bytes passed to the client."""

    txid: str
    vout: int
    history: int | None = None
    context: bytes | None = None


class LookupIndex(Protocol):
    """A lookup service's own index, as the engine keeps it (what :meth:`LookupService.lookup` queries)."""

    async def find(
        self,
        where: Mapping[str, Sequence[str]],
        *,
        limit: int | None = None,
        skip: int = 0,
        newest_first: bool = True,
    ) -> list[Outpoint]:
        """Outpoints whose entries hold, for every key of ``where``, one of its values (all outpoints when
        ``where`` is empty), in admission order."""
        ...

    async def fields(self, outpoint: Outpoint) -> dict[str, list[str]] | None:
        """What is indexed for ``outpoint`` (None: nothing)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SpentOutput:
    """A topic's output spent by an applied transaction (the reference's ``outputSpent``, mode ``txid``)."""

    txid: str
    vout: int
    topic: str
    spending_txid: str


class LookupEvents(Protocol):
    """Optional hooks a lookup service may also have (the engine calls those it finds, after each commit): for a
    service that keeps state of its own beside the index the engine keeps for it. What they raise is logged."""

    async def output_admitted(self, output: AdmittedOutput) -> None: ...

    async def output_spent(self, spent: SpentOutput) -> None: ...

    async def output_evicted(self, txid: str, vout: int, topic: str) -> None: ...


@runtime_checkable
class LookupService(Protocol):
    """Answers lookups over what it indexed (see the module docstring)."""

    #: keep index entries when their output is spent (True: only eviction removes them)
    keeps_spent: bool

    def index(self, output: AdmittedOutput) -> Mapping[str, Sequence[str]] | None:
        """The keys and values to index ``output`` under; None (or empty) when this service does not track it.
        Called for every output any topic admits; must be quick and must not block."""
        ...

    async def lookup(self, query: Any, index: LookupIndex) -> Sequence[FormulaItem]:
        """Answer ``query`` (any JSON value) with outpoints."""
        ...

    def documentation(self) -> str:
        """Markdown for ``/getDocumentationForLookupServiceProvider``."""
        ...

    def metadata(self) -> Metadata: ...
