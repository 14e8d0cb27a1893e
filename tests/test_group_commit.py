"""Group commit: concurrent posts to one room are written together, and every invariant of a post
written alone still holds (real threads against PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

from chat import writepath
from chat.errors import ChatError
from chat.models import Attachment, Message, Restriction, Room
from tests.test_write_path import follow_room

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

WRITERS = 32


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> writepath._Groups:
    """A queue of this test's own, so that nothing queued elsewhere joins its batches."""
    fresh = writepath._Groups()
    monkeypatch.setattr(writepath, "_groups", fresh)
    return fresh


@pytest.fixture
def users(django_user_model: Any) -> list[Any]:
    return [django_user_model.objects.create_user(f"w{i}") for i in range(WRITERS)]


def transactions(room: Room) -> dict[int, list[int]]:
    """The room's seqs by the transaction that inserted them (xmin: rows written by one
    transaction share it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xmin::text::bigint, seq FROM chat_message WHERE room_id = %s ORDER BY seq",
            [room.pk],
        )
        rows = cursor.fetchall()
    out: dict[int, list[int]] = {}
    for xmin, seq in rows:
        out.setdefault(xmin, []).append(seq)
    return out


def in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread, all released at once; each result or the exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_writers_get_gap_free_seqs_in_commit_order_each_acked_once(
    groups: writepath._Groups, users: list[Any]
) -> None:
    room = Room.objects.create(slug="race", title="Race")
    per_writer = 20
    done = threading.Event()
    seen: list[int] = []
    reader_errors: list[BaseException] = []
    # Whether each ack's message was visible, with its seq, to the sender's own connection
    # the moment the ack came back (a follower's connection is not the one that wrote it).
    visible_at_ack: list[bool] = []

    def write(user: Any) -> list[tuple[int, int, bool]]:
        acks = []
        for i in range(per_writer):
            posted = writepath.post_message(user, room, f"{user.username} {i}", f"c-{i}")
            m = posted.message
            visible_at_ack.append(Message.objects.filter(pk=m.pk, seq=m.seq).exists())
            acks.append((m.pk, m.seq, posted.created))
        return acks

    reader = threading.Thread(target=follow_room, args=(room, done, seen, reader_errors))
    reader.start()
    results = in_threads([lambda u=u: write(u) for u in users])
    done.set()
    reader.join(60)

    total = WRITERS * per_writer
    assert reader_errors == []
    assert [r for r in results if isinstance(r, BaseException)] == []
    acks = [ack for per in results for ack in per]
    assert len(acks) == total and all(created for *_, created in acks)
    # Each acknowledged once: distinct messages, each stored under the seq it was acked with.
    stored = dict(Message.objects.filter(room=room).values_list("pk", "seq"))
    assert len({pk for pk, *_ in acks}) == total == len(stored)
    assert all(stored[pk] == seq for pk, seq, _ in acks)
    assert sorted(stored.values()) == list(range(1, total + 1))
    # Nothing was acknowledged before its commit.
    assert visible_at_ack == [True] * total
    # A reader following the room never skipped a seq: seq order is commit order.
    assert seen == list(range(1, total + 1))
    # Posts were committed together, and each transaction took one unbroken block of seqs.
    blocks = transactions(room)
    assert len(blocks) < total
    assert max(len(seqs) for seqs in blocks.values()) > 1
    for seqs in blocks.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    room.refresh_from_db()
    assert room.seq == total


class Gate:
    """Holds the first write of a room (a post alone: the one-post path) until released, so that
    the posts started meanwhile all queue, and the next batch takes them all at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, groups: writepath._Groups) -> None:
        self.groups = groups
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.queued = threading.Semaphore(0)
        # One batch under way at a time: the posts queued behind the held one are one batch.
        monkeypatch.setattr(writepath, "WRITERS", 1)
        write = writepath._write

        def held(post: writepath._Post) -> set[Any]:
            if self.armed and not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(30)
            return write(post)

        monkeypatch.setattr(writepath, "_write", held)

    def watch(self, room: Room) -> None:
        """From now on, note every post queued for the room."""
        gate = self

        class Watched(list):  # type: ignore[type-arg]
            def append(self, item: Any) -> None:
                super().append(item)
                gate.queued.release()

        with self.groups.lock:
            self.groups.queues[room.pk] = Watched(self.groups.queues.get(room.pk, []))

    def wait_queued(self, n: int) -> None:
        for _ in range(n):
            assert self.queued.acquire(timeout=30)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch, groups: writepath._Groups) -> Gate:
    return Gate(monkeypatch, groups)


def batch_run(
    gate: Gate, room: Room, first: Callable[[], Any], calls: list[Callable[[], Any]]
) -> tuple[Any, list[Any], Callable[[], None]]:
    """`first` is written alone and held, and `calls` queue behind it. Returns first's result,
    the others' (in call order), and `finish`, which releases them all and waits for them."""
    results: list[Any] = [None] * len(calls)
    head: list[Any] = [None]

    def run(target: list[Any], i: int, call: Callable[[], Any]) -> None:
        try:
            target[i] = call()
        except BaseException as exc:
            target[i] = exc
        finally:
            connection.close()

    gate.armed = True
    leader = threading.Thread(target=run, args=(head, 0, first))
    leader.start()
    assert gate.entered.wait(30)
    gate.watch(room)
    threads = [threading.Thread(target=run, args=(results, i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    gate.wait_queued(len(calls))

    def finish() -> None:
        gate.release.set()
        leader.join(60)
        for t in threads:
            t.join(60)

    return head, results, finish


def code(result: Any) -> str:
    return result.code if isinstance(result, ChatError) else type(result).__name__


def test_in_one_batch_a_duplicate_a_retry_and_a_banned_author_fail_alone(
    gate: Gate, users: list[Any], moderator: Any
) -> None:
    room = Room.objects.create(slug="batch", title="Batch")
    alice, bob, banned, *others = users[:8]
    stored_before = writepath.post_message(bob, room, "sent earlier", "old").message
    post = writepath.post_message
    calls = [
        lambda: post(alice, room, "once", "k1"),
        lambda: post(alice, room, "once", "k1"),  # a retry, in the same batch
        lambda: post(alice, room, "first body", "k2"),
        lambda: post(alice, room, "another body", "k2"),  # the same key: a conflict
        lambda: post(bob, room, "sent earlier", "old"),  # a retry of a stored message
        lambda: post(banned, room, "banned meanwhile", "b1"),
        *[lambda u=u: post(u, room, f"plain {u.username}", "p") for u in others],
    ]
    head, results, finish = batch_run(
        gate, room, lambda: post(bob, room, "the leader", "lead"), calls
    )
    # Banned after passing the early checks, while queued: the batch's own check refuses it.
    Restriction.objects.create(kind=Restriction.BAN, user=banned, room=room, created_by=moderator)
    finish()

    assert head[0].created and head[0].message.seq == 2
    k1a, k1b, k2a, k2b, old, refused, *plain = results
    # Which of a pair was queued first (and stored) depends on the threads' order.
    once, retry = (k1a, k1b) if k1a.created else (k1b, k1a)
    assert once.created and not retry.created and retry.message.pk == once.message.pk
    won, lost = (k2a, k2b) if not isinstance(k2a, BaseException) else (k2b, k2a)
    assert won.created and code(lost) == "conflict"
    assert not old.created and old.message.pk == stored_before.pk
    assert code(refused) == "forbidden"
    assert all(p.created for p in plain)
    # Everything that passed is stored once, gap-free, and the retry of k1 took no seq.
    bodies = list(Message.objects.filter(room=room).order_by("seq").values_list("seq", "body"))
    assert [seq for seq, _ in bodies] == list(range(1, len(bodies) + 1))
    assert len(bodies) == 2 + 1 + 1 + len(plain)
    assert {body for _, body in bodies} >= {"once", won.message.body, "sent earlier"}
    assert not Message.objects.filter(author=banned).exists()
    # The queued posts but the deferred retries went in one transaction.
    blocks = transactions(room)
    assert max(len(seqs) for seqs in blocks.values()) >= 2 + len(plain)
    room.refresh_from_db()
    assert room.seq == len(bodies)


def test_in_one_batch_a_rate_limited_author_fails_alone(gate: Gate, users: list[Any]) -> None:
    room = Room.objects.create(slug="limited", title="Limited", rate_limit=2)
    hasty, *others = users[:6]
    writepath.post_message(hasty, room, "one", "h1")
    post = writepath.post_message
    calls = [
        lambda: post(hasty, room, "two", "h2"),
        lambda: post(hasty, room, "three", "h3"),  # one of the two is over the limit
        *[lambda u=u: post(u, room, f"plain {u.username}", "p") for u in others],
    ]
    head, results, finish = batch_run(gate, room, lambda: post(others[0], room, "lead", "l"), calls)
    finish()
    two, three, *plain = results
    assert not isinstance(head[0], BaseException)
    # Whichever of the two was queued first is stored; the other is over the limit.
    stored, refused = (two, three) if not isinstance(two, BaseException) else (three, two)
    assert stored.created
    assert code(refused) == "rate_limited" and refused.retry_after > 0
    assert all(p.created for p in plain)
    seqs = list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 3 + 1 + len(plain)))
    assert Message.objects.filter(author=hasty).count() == 2


def test_a_batch_that_fails_whole_is_written_post_by_post(gate: Gate, users: list[Any]) -> None:
    """Two posts sending one file make the batch's insert fail (the attachment is one-to-one):
    the batch is rolled back and its posts written one by one, so only one of the two fails."""
    room = Room.objects.create(slug="files", title="Files")
    alice, *others = users[:6]
    upload = Attachment.objects.create(
        room=room,
        uploader=alice,
        name="a.txt",
        size=1,
        content_type="text/plain",
        file="a.txt",
        status=Attachment.READY,
    )
    post = writepath.post_message
    calls = [
        lambda: post(alice, room, "with the file", "f1", attachment=str(upload.pk)),
        lambda: post(alice, room, "with it again", "f2", attachment=str(upload.pk)),
        *[lambda u=u: post(u, room, f"plain {u.username}", "p") for u in others],
    ]
    head, results, finish = batch_run(gate, room, lambda: post(others[0], room, "lead", "l"), calls)
    finish()
    first, second, *plain = results
    assert head[0].created
    # The one queued first sends the file; the other is refused.
    sent, refused = (first, second) if not isinstance(first, BaseException) else (second, first)
    assert sent.created and sent.message.attachment_id == upload.pk
    assert code(refused) == "bad_request"
    assert all(p.created for p in plain)
    seqs = list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 3 + len(plain)))


@pytest.fixture
def no_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    sizes: list[int] = []

    def refuse(posts: list[Any]) -> Any:
        sizes.append(len(posts))
        raise AssertionError("no batch expected")

    monkeypatch.setattr(writepath, "_write_batch", refuse)
    yield sizes


def test_a_lone_writer_takes_the_one_post_path(
    groups: writepath._Groups, alice: Any, no_batches: list[int]
) -> None:
    room = Room.objects.create(slug="alone", title="Alone")
    seqs = [writepath.post_message(alice, room, f"m{i}", f"c{i}").message.seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and no_batches == []
    assert groups.queues == {} and groups.writers == {}


def test_switched_off_every_post_is_its_own_transaction(
    groups: writepath._Groups, users: list[Any], settings: Any, no_batches: list[int]
) -> None:
    settings.CHAT_GROUP_COMMIT = False
    room = Room.objects.create(slug="off", title="Off")
    results = in_threads(
        [lambda u=u: writepath.post_message(u, room, "hi", "c") for u in users[:8]]
    )
    assert all(r.created for r in results)
    assert no_batches == [] and groups.queues == {}
    assert sorted(len(seqs) for seqs in transactions(room).values()) == [1] * 8


def test_in_one_batch_mentions_are_stored_with_their_messages(
    gate: Gate, users: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posts that notify someone make the batch one transaction with their notify events: each
    event names its message and that message's seq, and the mentioned user's stream stays
    gap-free; room events are published after commit, in seq order, before the notifications."""
    from chat import fanout
    from chat.models import UserEvent

    room = Room.objects.create(slug="mentions", title="Mentions")
    heard, *others = users[:7]
    writepath.post_message(heard, room, "here", "h")  # a member: mentions of them resolve
    published: list[tuple[str, int, bool]] = []

    def note(kind: str, seq: int, stored: Callable[[], bool]) -> None:
        # Whether what the event tells of is committed: visible to a connection of its own.
        found: list[bool] = []

        def look() -> None:
            try:
                found.append(stored())
            finally:
                connection.close()

        t = threading.Thread(target=look)
        t.start()
        t.join(30)
        published.append((kind, seq, found == [True]))

    publish_many, notify_user = fanout.publish_many, fanout.notify_user

    def room_events(room_id: int, events: list[Any]) -> None:
        for event in events:
            seq = event["seq"]
            note("room", seq, lambda s=seq: Message.objects.filter(room=room, seq=s).exists())
        publish_many(room_id, events)

    def user_event(user_id: Any, event: Any) -> None:
        seq = event["user_seq"]
        if event["kind"] == UserEvent.MENTION:  # not the `unread` raised after each commit
            note("user", seq, lambda: UserEvent.objects.filter(user_id=user_id, seq=seq).exists())
        notify_user(user_id, event)

    monkeypatch.setattr(fanout, "publish_many", room_events)
    monkeypatch.setattr(fanout, "notify_user", user_event)
    post = writepath.post_message
    calls = [
        lambda u=u, i=i: post(u, room, f"@{heard.username} look {i}" if i % 2 else "plain", "m")
        for i, u in enumerate(others)
    ]
    head, results, finish = batch_run(gate, room, lambda: post(others[0], room, "lead", "l"), calls)
    finish()
    assert head[0].created and all(r.created for r in results)
    mentioning = [r.message for r in results if "look" in r.message.body]
    events = list(
        UserEvent.objects.filter(user=heard, kind=UserEvent.MENTION)
        .order_by("seq")
        .values("seq", "message_id", "room_seq")
    )
    # The user's stream (the mentions, and any `unread` raised meanwhile) stays gap-free.
    stream = UserEvent.objects.filter(user=heard).order_by("seq").values_list("seq", flat=True)
    assert list(stream) == list(range(1, len(stream) + 1))
    assert sorted((e["message_id"], e["room_seq"]) for e in events) == sorted(
        (m.pk, m.seq) for m in mentioning
    )
    # The batch went as one transaction: the messages and their events.
    blocks = transactions(room)
    assert max(len(seqs) for seqs in blocks.values()) == len(calls)
    # Published after commit, the room's events in seq order and before the notifications.
    assert published and all(committed for *_, committed in published)
    kinds = [kind for kind, *_ in published]
    assert kinds == ["room"] * len(calls) + ["user"] * len(mentioning)
    room_seqs = [seq for kind, seq, _ in published if kind == "room"]
    assert room_seqs == sorted(room_seqs)
    assert sorted(seq for kind, seq, _ in published if kind == "user") == [e["seq"] for e in events]
