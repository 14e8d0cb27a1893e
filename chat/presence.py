"""Who is online in a room, across processes and transports.

Each open WebSocket subscription and each long-poller is an entry `(connection, username)` with an
expiry; holders refresh their entries, so the entries of a process that died simply run out, and the
next sweep (any process with listeners in the room) announces the change. With REDIS_URL the entries
live in one Redis sorted set per room (score = expiry time); without it, in this process's memory.
The API is synchronous: it is called from the protocol handlers' threads and the hub's sweeps.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from typing import Any, Protocol

import redis
from channels.db import database_sync_to_async
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from chat import events, fanout
from chat.conf import settings
from chat.models import Room, Subscription, username_lookup

log = logging.getLogger(__name__)


# Per room: connection id -> username, the entries one process holds.
Entries = dict[int, dict[str, str]]


class Store(Protocol):
    def touch(self, room_id: int, conn: str, user: str, ttl: float) -> bool: ...
    def leave(self, room_id: int, conn: str, user: str) -> bool: ...
    def users(self, room_id: int) -> list[str]: ...
    def sweep(self, room_id: int) -> bool: ...

    # Optional: extend many entries' expiry at once, without reading anything back (a store
    # without it is touched entry by entry).
    # def refresh(self, entries: Entries, ttl: float) -> None: ...


def _member(conn: str, user: str) -> str:
    return f"{conn}|{user}"


def _user(member: str | bytes) -> str:
    text = member.decode() if isinstance(member, bytes) else member
    return text.split("|", 1)[1]


class RedisStore:
    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix

    def key(self, room_id: int) -> str:
        return f"{self.prefix}:presence:{room_id}"

    def touch(self, room_id: int, conn: str, user: str, ttl: float) -> bool:
        now = time.time()
        key = self.key(room_id)
        pipe = self.redis.pipeline()
        pipe.zrangebyscore(key, now, "+inf")
        pipe.zadd(key, {_member(conn, user): now + ttl})
        pipe.expire(key, int(ttl) + 60)
        before, _, _ = pipe.execute()
        return user not in {_user(m) for m in before}

    def refresh(self, entries: Entries, ttl: float) -> None:
        """Every entry of the process in one round trip: touch() reads the room's whole set to
        tell a join, which a refresh does not need (O(1) per entry instead of O(members))."""
        expiry = time.time() + ttl
        pipe = self.redis.pipeline(transaction=False)
        for room_id, conns in entries.items():
            if conns:
                key = self.key(room_id)
                pipe.zadd(key, {_member(c, u): expiry for c, u in conns.items()})
                pipe.expire(key, int(ttl) + 60)
        pipe.execute()

    def leave(self, room_id: int, conn: str, user: str) -> bool:
        key = self.key(room_id)
        pipe = self.redis.pipeline()
        pipe.zrem(key, _member(conn, user))
        pipe.zrangebyscore(key, time.time(), "+inf")
        removed, after = pipe.execute()
        return bool(removed) and user not in {_user(m) for m in after}

    def users(self, room_id: int) -> list[str]:
        members = self.redis.zrangebyscore(self.key(room_id), time.time(), "+inf")
        return sorted({_user(m) for m in members})

    def sweep(self, room_id: int) -> bool:
        now = time.time()
        key = self.key(room_id)
        # One MULTI: of several processes sweeping the same room, only one sees the removal.
        pipe = self.redis.pipeline()
        pipe.zrangebyscore(key, "-inf", now)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrangebyscore(key, now, "+inf")
        expired, removed, alive = pipe.execute()
        if not removed:
            return False
        return bool({_user(m) for m in expired} - {_user(m) for m in alive})


class MemoryStore:
    def __init__(self) -> None:
        self.rooms: dict[int, dict[str, float]] = {}
        self.lock = threading.Lock()

    def _alive(self, room_id: int) -> set[str]:
        now = time.time()
        return {_user(m) for m, exp in self.rooms.get(room_id, {}).items() if exp > now}

    def touch(self, room_id: int, conn: str, user: str, ttl: float) -> bool:
        with self.lock:
            before = self._alive(room_id)
            self.rooms.setdefault(room_id, {})[_member(conn, user)] = time.time() + ttl
            return user not in before

    def refresh(self, entries: Entries, ttl: float) -> None:
        expiry = time.time() + ttl
        with self.lock:
            for room_id, conns in entries.items():
                room = self.rooms.setdefault(room_id, {})
                for conn, user in conns.items():
                    room[_member(conn, user)] = expiry

    def leave(self, room_id: int, conn: str, user: str) -> bool:
        with self.lock:
            removed = self.rooms.get(room_id, {}).pop(_member(conn, user), None)
            return removed is not None and user not in self._alive(room_id)

    def users(self, room_id: int) -> list[str]:
        with self.lock:
            return sorted(self._alive(room_id))

    def sweep(self, room_id: int) -> bool:
        with self.lock:
            entries = self.rooms.get(room_id, {})
            now = time.time()
            expired = [m for m, exp in entries.items() if exp <= now]
            for m in expired:
                del entries[m]
            return bool({_user(m) for m in expired} - self._alive(room_id))


class SubscriptionStore:
    """Presence read from the API Gateway connections' Subscription rows (chat/apigateway.py).

    On Lambda nothing runs between invocations to refresh a TTL, and a container's memory is
    its own; the rows already say who is connected where, and disappear with $disconnect, a 410
    or the sweep. The entries of long-pollers (`poll-<user>`) are not rows: they are not shown.
    """

    def touch(self, room_id: int, conn: str, user: str, ttl: float) -> bool:
        # The Subscription row exists already (join runs first): is it this user's only one?
        # A long-poller (`poll-<user>`) has none and changes nothing: on Lambda every poll would
        # otherwise announce the list to the whole room.
        conns = Subscription.objects.filter(
            room_id=room_id, **{username_lookup("connection__user"): user}
        ).values_list("connection__connection_id", flat=True)
        return list(conns[:2]) == [conn]

    def refresh(self, entries: Entries, ttl: float) -> None:
        pass  # the rows are the entries: nothing expires

    def leave(self, room_id: int, conn: str, user: str) -> bool:
        return not Subscription.objects.filter(
            room_id=room_id, **{username_lookup("connection__user"): user}
        ).exists()

    def users(self, room_id: int) -> list[str]:
        names = Subscription.objects.filter(room_id=room_id).values_list(
            username_lookup("connection__user"), flat=True
        )
        return sorted(set(names))

    def sweep(self, room_id: int) -> bool:
        return False


@cache
def store() -> Store:
    if settings.CHAT_PRESENCE_STORE:
        # Lambda: nothing runs between invocations to refresh entries, so presence comes from
        # the connections' subscription rows instead (SubscriptionStore).
        return import_string(settings.CHAT_PRESENCE_STORE)()
    if settings.REDIS_URL:
        return RedisStore(settings.REDIS_URL, settings.CHAT_REDIS_PREFIX)
    return MemoryStore()


@receiver(setting_changed)
def _forget_store(setting: str, **kwargs: Any) -> None:
    # The store is chosen once per process; a settings override (tests) chooses again.
    if setting in ("CHAT_PRESENCE_STORE", "REDIS_URL", "CHAT_REDIS_PREFIX"):
        store.cache_clear()


# Presence is best effort, like live push: with Redis down, subscribing, posting and resuming must
# go on (history is in the database), so store failures are logged and treated as "no change".


def users(room_id: int) -> list[str]:
    try:
        return store().users(room_id)
    except redis.RedisError:
        log.warning("presence store unavailable", exc_info=True)
        return []


def announce(room_id: int, slug: str) -> None:
    fanout.publish(room_id, events.presence(slug, users(room_id)))


def join(room_id: int, slug: str, conn: str, user: str) -> bool:
    """Mark the connection present; True when that changed the list (and it was announced)."""
    try:
        changed = store().touch(room_id, conn, user, settings.CHAT_PRESENCE_TTL)
    except redis.RedisError:
        log.warning("presence store unavailable", exc_info=True)
        return False
    if changed:
        announce(room_id, slug)
    return changed


def refresh(entries: Entries) -> None:
    """Extend the expiry of a process's entries (its heartbeat, chat/hub.py): one call for all
    of them, whatever the number of connections."""
    ttl = settings.CHAT_PRESENCE_TTL
    try:
        held = store()
        if hasattr(held, "refresh"):
            held.refresh(entries, ttl)
            return
        for room_id, conns in entries.items():
            for conn, user in conns.items():
                held.touch(room_id, conn, user, ttl)
    except redis.RedisError:
        log.warning("presence store unavailable", exc_info=True)


def leave(room_id: int, slug: str, conn: str, user: str, announcing: bool = True) -> bool:
    """Take the connection out; True when that changed the list (announced unless told not to:
    a caller removing many connections announces each room once)."""
    try:
        changed = store().leave(room_id, conn, user)
    except redis.RedisError:
        log.warning("presence store unavailable", exc_info=True)
        return False
    if changed and announcing:
        announce(room_id, slug)
    return changed


def _sweep(room_id: int) -> None:
    if store().sweep(room_id):
        slug = Room.objects.filter(pk=room_id).values_list("slug", flat=True).first()
        if slug:
            announce(room_id, slug)


def _beat(entries: Entries, rooms: list[int]) -> None:
    """A process's heartbeat: refresh its entries, then sweep the rooms it listens to (announcing
    those whose list lost someone), in one worker thread rather than one per room or connection."""
    if entries:
        refresh(entries)
    for room_id in rooms:
        try:
            _sweep(room_id)
        except Exception:
            log.warning("presence sweep failed for room %s", room_id, exc_info=True)


def _drop(entries: Entries) -> None:
    """Take out entries that a refresh may have written back after their connection left: the
    leave's announcement went out already, so one is made only if the list changes now."""
    for room_id, conns in entries.items():
        slug: str | None = None
        for conn, user in conns.items():
            if leave(room_id, "", conn, user, announcing=False):
                slug = (
                    slug or Room.objects.filter(pk=room_id).values_list("slug", flat=True).first()
                )
        if slug:
            announce(room_id, slug)


beat = database_sync_to_async(_beat, thread_sensitive=False)
drop = database_sync_to_async(_drop, thread_sensitive=False)
