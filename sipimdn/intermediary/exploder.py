"""Sans-IO URI-list exploder: one IM in, one copy per member out, members' IMDNs collected (RFC 5438 §8).

Theory of operation
-------------------
A configured :class:`UriList` is the RFC 5365 "list" as a server-side
resource (its URI is the Request-URI; members come from configuration, not
from a recipient-list body). :meth:`ListExploder.explode` records a
:class:`Fanout` for the IM's Message-ID and hands out one
:class:`MemberCopyDue` per member; the adapter rewrites the CPIM To to the
member, adds ``Original-To: <list>`` (RFC 5438 §6.4) and its own
``IMDN-Record-Route`` (§6.5), and forwards the copy.

Members' notifications come back through us (their IMDN-Route top is our
URI) and enter :meth:`notification_received`; a member that refused its
copy enters :meth:`member_failed` and is reported ``failed`` if the sender
asked for negative delivery (RFC 5438 §8.2, §12.2). Each accepted notification is
either *relayed* at once or *collected* and flushed as one aggregated
notification (RFC 5438 §8.3) when ``window`` seconds have passed
since the first one of the batch, or as soon as every member has reported
each kind the batch holds (so the deliveries of a list usually travel in one
IMDN and the displays in another). Only one notification per member and type is passed on
(RFC 5438 §7.2). Output is :class:`NotificationsReady`, which the adapter wraps
in a CPIM IMDN from the list's URI (multipart/mixed when more than one).

Privacy (RFC 5438 §8, §14.2): for a ``private`` list the ``<recipient-uri>``
and ``<original-recipient-uri>`` (and subject) of every outgoing document
are stripped, the copies carry no Original-To, and the IMDN comes from the
list URI, so the sender never learns who the members are. The member count
still shows through the number of documents; a ``hide_count`` list hides it
too: it sends exactly one IMDN per IM (RFC 5438 §8.3), once every member has
reported everything asked (or when the fan-out expires), holding one
document per kind with the best news any member gave.

A fan-out is forgotten ``state_ttl`` after the explosion (flushing what is
collected); later notifications for it are dropped (RFC 5438 §8.3). Nothing here
is persisted: after a restart member notifications are no longer collected
(the adapter drops those of private lists and routes the others on).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .._tokens import token_hex
from ..imdn import Kind, Notification, Status, make_notification
from ..uri import identity_key

__all__ = [
    "ExploderConfig",
    "ExploderEvent",
    "Fanout",
    "ListExploder",
    "MemberCopyDue",
    "NotificationsReady",
    "ReplyPath",
    "UriList",
]

#: Which request token allows passing on which notification (RFC 5438 §6.2).
_WANTED = {
    ("delivery", "delivered"): "positive-delivery",
    ("delivery", "failed"): "negative-delivery",
    ("delivery", "forbidden"): "negative-delivery",
    ("delivery", "error"): "negative-delivery",
}


def _request_token(kind: str, status: str) -> str:
    return _WANTED.get((kind, status), "display" if kind == "display" else kind)


@dataclass(frozen=True, slots=True)
class UriList:
    """A list served by the exploder."""

    uri: str
    """The list's URI (the Request-URI senders use)."""
    members: tuple[str, ...]
    """Member URIs, in order."""
    private: bool = False
    """Hide member identities from senders (RFC 5438 §14.2)."""
    members_only: bool = False
    """Accept messages only from members (a list is a 1-to-n amplifier: limit who may use it)."""
    hide_count: bool = False
    """Hide even how many members there are (implies ``private``): one summary IMDN per IM (RFC 5438 §8.3)."""

    def __post_init__(self) -> None:
        if self.hide_count:
            object.__setattr__(self, "private", True)
        if identity_key(self.uri) is None:
            raise ValueError(f"list URI {self.uri!r} is not usable")
        keys = [identity_key(m) for m in self.members]
        if not self.members or None in keys:
            raise ValueError(f"list {self.uri} needs members with usable URIs")
        if len(set(keys)) != len(keys):
            raise ValueError(f"list {self.uri} names a member twice")

    def is_member(self, uri: str) -> bool:
        """Is ``uri`` (compared as an identity) one of the members?"""
        key = identity_key(uri)
        return key is not None and any(identity_key(m) == key for m in self.members)


@dataclass(frozen=True, slots=True)
class ExploderConfig:
    """Tunables of :class:`ListExploder`."""

    #: Collect notifications and send them aggregated (False: relay each at once).
    aggregate: bool = True
    #: How long a batch collects after its first notification (seconds).
    window: float = 2.0
    #: How long a fan-out is remembered after the explosion (seconds).
    state_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if self.window < 0 or not self.state_ttl > 0:
            raise ValueError("window must not be negative and state_ttl must be positive")


@dataclass(frozen=True, slots=True)
class ReplyPath:
    """Where notifications about an exploded IM go (RFC 5438 §7.2.1, §12.1.3.1)."""

    cpim_to: str
    """The IM's CPIM From."""
    sip_to: str
    """The IM's SIP From URI."""
    routes: tuple[str, ...]
    """The IM's IMDN-Record-Route URIs as received (before ours): the IMDN-Route to write."""

    @property
    def request_uri(self) -> str:
        """Top IMDN-Route if any, else the IM's SIP From."""
        return self.routes[0] if self.routes else self.sip_to


@dataclass(slots=True)
class Fanout:
    """One exploded IM and what its members reported."""

    id: str
    """Our identifier, attached to each member copy."""
    uri_list: UriList
    """The list it went to."""
    message_id: str
    """The IM's Message-ID."""
    datetime: str
    """The IM's DateTime as written."""
    requested: frozenset[str]
    """The IM's Disposition-Notification tokens."""
    reply: ReplyPath
    """Where notifications go."""
    expires_at: float
    """When it is forgotten."""
    reported: dict[tuple[str, str], str] = field(default_factory=dict)
    """(member key, kind) -> status passed on or collected."""
    batch: list[Notification] = field(default_factory=list)
    """Collected, not yet sent."""
    batch_deadline: float | None = None
    """When the batch is flushed."""
    summarized: bool = False
    """The one summary of a ``hide_count`` list went out."""


@dataclass(frozen=True, slots=True)
class MemberCopyDue:
    """Send a copy of the IM to ``member``."""

    fanout: Fanout
    """The fan-out (``fanout.id`` goes with the copy)."""
    member: str
    """The member URI."""


@dataclass(frozen=True, slots=True)
class NotificationsReady:
    """Send these notifications to the IM's sender, in one IMDN (aggregated when more than one)."""

    fanout: Fanout
    """The fan-out they are about."""
    notifications: tuple[Notification, ...]
    """Ready to serialise (stripped for a private list)."""


ExploderEvent = MemberCopyDue | NotificationsReady


class ListExploder:
    """Explodes IMs sent to configured lists and collects their members' notifications."""

    def __init__(self, lists: Iterable[UriList] = (), config: ExploderConfig | None = None) -> None:
        self.config = config or ExploderConfig()
        self._lists: dict[str, UriList] = {}
        for uri_list in lists:
            key = identity_key(uri_list.uri)
            assert key is not None  # checked by UriList
            if key in self._lists:
                raise ValueError(f"list {uri_list.uri} configured twice")
            self._lists[key] = uri_list
        self._fanouts: dict[str, Fanout] = {}
        self._by_message: dict[str, Fanout] = {}
        self._events: deque[ExploderEvent] = deque()
        # (time, seq, fan-out id, "batch" | "expire"), checked against the fan-out when popped.
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    # --- outputs ---------------------------------------------------------------------------

    def next_event(self) -> ExploderEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)  # stale: flushed early or fan-out forgotten
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Flush batches whose window has passed; forget expired fan-outs (flushing them first)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            fanout = self._fanouts[entry[2]]
            self._flush(fanout)
            if entry[3] == "expire":
                if fanout.uri_list.hide_count:
                    self._summarize(fanout)  # whatever arrived: still only one IMDN
                self._forget(fanout)

    def _live(self, entry: tuple[float, int, str, str]) -> bool:
        at, _, fanout_id, what = entry
        fanout = self._fanouts.get(fanout_id)
        if fanout is None:
            return False
        return (fanout.expires_at if what == "expire" else fanout.batch_deadline) == at

    def _schedule(self, at: float, fanout: Fanout, what: str) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), fanout.id, what))

    # --- queries ---------------------------------------------------------------------------

    def list_for(self, uri: str) -> UriList | None:
        """The list whose URI is ``uri``, or None."""
        key = identity_key(uri)
        return None if key is None else self._lists.get(key)

    def fanout_for(self, message_id: str) -> Fanout | None:
        """The live fan-out of the IM with that Message-ID, or None."""
        return self._by_message.get(message_id)

    @property
    def lists(self) -> tuple[UriList, ...]:
        """The configured lists."""
        return tuple(self._lists.values())

    # --- inputs ----------------------------------------------------------------------------

    def explode(
        self,
        uri_list: UriList,
        *,
        message_id: str,
        datetime: str,
        requested: Iterable[str],
        reply: ReplyPath,
        now: float,
    ) -> Fanout:
        """Record a fan-out and hand out one :class:`MemberCopyDue` per member.

        A ``processing`` request is answered ``processed`` at once: exploding
        the IM is this intermediary's task (RFC 5438 §8.1). A second IM with a
        Message-ID already being collected replaces nothing: the copies go
        out, but notifications keep going to the first fan-out.
        """
        fanout = Fanout(
            id=token_hex(8),
            uri_list=uri_list,
            message_id=message_id,
            datetime=datetime,
            requested=frozenset(requested),
            reply=reply,
            expires_at=now + self.config.state_ttl,
        )
        self._fanouts[fanout.id] = fanout
        self._schedule(fanout.expires_at, fanout, "expire")
        self._by_message.setdefault(message_id, fanout)
        for member in uri_list.members:
            self._events.append(MemberCopyDue(fanout, member))
        if "processing" in fanout.requested:
            note = make_notification(
                message_id=message_id,
                datetime=datetime,
                kind=Kind.PROCESSING,
                status=Status.PROCESSED,
                recipient_uri=uri_list.uri,
            )
            self._events.append(NotificationsReady(fanout, (self._strip(fanout, note),)))
        return fanout

    def notification_received(self, note: Notification, now: float, *, sender: str | None = None) -> bool:
        """A member's notification reached us; True iff it was taken (relayed or collected).

        The member is ``<recipient-uri>`` or, without one, ``sender`` (the
        IMDN's CPIM From). Refused: unknown Message-ID (or fan-out expired,
        RFC 5438 §8.3), not a member, not requested (RFC 5438 §14.1), a second one of the
        same type from the same member (RFC 5438 §7.2).
        """
        fanout = self._by_message.get(note.message_id)
        if fanout is None:
            return False
        member = note.recipient_uri or sender
        return self._take(fanout, member, note, now)

    def member_failed(self, fanout_id: str, member: str, now: float) -> bool:
        """A member's copy was refused or expired: report ``failed`` if negative delivery was asked."""
        fanout = self._fanouts.get(fanout_id)
        if fanout is None:
            return False
        note = make_notification(
            message_id=fanout.message_id,
            datetime=fanout.datetime,
            kind=Kind.DELIVERY,
            status=Status.FAILED,
            recipient_uri=member,
            original_recipient_uri=fanout.uri_list.uri,
        )
        return self._take(fanout, member, note, now)

    # --- internals -------------------------------------------------------------------------

    def _take(self, fanout: Fanout, member: str | None, note: Notification, now: float) -> bool:
        member_key = identity_key(member)
        if member_key is None or member is None or not fanout.uri_list.is_member(member):
            return False
        kind, status = str(note.kind), str(note.status)
        if _request_token(kind, status) not in fanout.requested:
            return False
        if (member_key, kind) in fanout.reported:
            return False
        fanout.reported[(member_key, kind)] = status
        if fanout.uri_list.hide_count:
            if self._all_reported(fanout):
                self._summarize(fanout)
            return True
        outgoing = self._strip(fanout, note)
        if not self.config.aggregate:
            self._events.append(NotificationsReady(fanout, (outgoing,)))
            return True
        fanout.batch.append(outgoing)
        if fanout.batch_deadline is None:
            fanout.batch_deadline = now + self.config.window
            self._schedule(fanout.batch_deadline, fanout, "batch")
        if self._complete(fanout):
            self._flush(fanout)
        return True

    def _complete(self, fanout: Fanout) -> bool:
        """Has every member reported each kind the batch holds? Then waiting longer gains nothing."""
        kinds = {str(n.kind) for n in fanout.batch}
        for member in fanout.uri_list.members:
            key = identity_key(member) or ""
            for kind in kinds:
                if (key, kind) in fanout.reported:
                    continue
                # A member whose delivery failed will never report display.
                if kind == "display" and fanout.reported.get((key, "delivery"), "delivered") != "delivered":
                    continue
                return False
        return True

    def _all_reported(self, fanout: Fanout) -> bool:
        """Has every member reported every kind the sender asked for (a failed one needs no display)?"""
        kinds = []
        if "positive-delivery" in fanout.requested:
            kinds.append("delivery")
        if "display" in fanout.requested:
            kinds.append("display")
        for member in fanout.uri_list.members:
            key = identity_key(member) or ""
            delivery = fanout.reported.get((key, "delivery"))
            for kind in kinds:
                if (key, kind) in fanout.reported:
                    continue
                if kind == "display" and delivery not in (None, "delivered"):
                    continue
                return False
        return bool(kinds)

    def _summarize(self, fanout: Fanout) -> None:
        """The single IMDN of a ``hide_count`` list: per kind, the best news any member gave.

        One document per kind, with no recipient, so neither who nor how many
        can be read from it (RFC 5438 §8.3). ``delivered``/``displayed`` if any member
        reported it, else the first other status reported.
        """
        if fanout.summarized:
            return
        fanout.summarized = True
        notes = []
        for kind, best in (("delivery", "delivered"), ("display", "displayed")):
            statuses = [status for (_, k), status in fanout.reported.items() if k == kind]
            if not statuses:
                continue
            notes.append(
                make_notification(
                    message_id=fanout.message_id,
                    datetime=fanout.datetime,
                    kind=kind,
                    status=best if best in statuses else statuses[0],
                )
            )
        if notes:
            self._events.append(NotificationsReady(fanout, tuple(notes)))

    def _strip(self, fanout: Fanout, note: Notification) -> Notification:
        if not fanout.uri_list.private:
            return note
        return replace(note, recipient_uri=None, original_recipient_uri=None, subject=None)

    def _flush(self, fanout: Fanout) -> None:
        if fanout.batch:
            self._events.append(NotificationsReady(fanout, tuple(fanout.batch)))
        fanout.batch = []
        fanout.batch_deadline = None

    def _forget(self, fanout: Fanout) -> None:
        self._fanouts.pop(fanout.id, None)
        if self._by_message.get(fanout.message_id) is fanout:
            del self._by_message[fanout.message_id]
