"""The write path: validation, permissions, idempotency and the gap-free seq under real concurrency."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from chat import reads, writepath
from chat.errors import ChatError
from chat.models import Membership, Message, Room


def test_it_posts_and_numbers_messages(alice: Any, room: Room) -> None:
    first = writepath.post_message(alice, room, "hello", "c1")
    second = writepath.post_message(alice, room, "again", "c2")
    assert first.created and second.created
    assert (first.message.seq, second.message.seq) == (1, 2)
    room.refresh_from_db()
    assert room.seq == 2
    assert Membership.objects.filter(room=room, user=alice).exists()


@pytest.mark.parametrize("body", ["", "   \n\t", None, 42, ["x"]])
def test_it_refuses_empty_or_wrong_bodies(alice: Any, room: Room, body: Any) -> None:
    with pytest.raises(ChatError) as info:
        writepath.post_message(alice, room, body)
    assert info.value.code == "bad_request"
    assert Message.objects.count() == 0
    room.refresh_from_db()
    assert room.seq == 0


def test_it_refuses_bodies_over_the_limit(alice: Any, room: Room, settings: Any) -> None:
    settings.CHAT_MAX_BODY = 10
    writepath.post_message(alice, room, "x" * 10)
    with pytest.raises(ChatError) as info:
        writepath.post_message(alice, room, "x" * 11)
    assert info.value.code == "too_large"
    assert info.value.status == 413
    assert Message.objects.count() == 1


def test_a_retry_with_the_same_client_id_changes_nothing(alice: Any, room: Room) -> None:
    first = writepath.post_message(alice, room, "once", "same")
    again = writepath.post_message(alice, room, "once", "same")
    assert not again.created
    assert again.message.pk == first.message.pk
    room.refresh_from_db()
    assert room.seq == 1
    assert Message.objects.count() == 1


def test_it_rejects_non_members_of_private_rooms(outsider: Any, private_room: Room) -> None:
    with pytest.raises(ChatError) as info:
        writepath.post_message(outsider, private_room, "let me in")
    assert info.value.code == "not_found"
    assert Message.objects.count() == 0


def test_locked_rooms_refuse_posts_but_not_moderators(
    alice: Any, moderator: Any, room: Room
) -> None:
    room.locked = True
    room.save()
    with pytest.raises(ChatError) as info:
        writepath.post_message(alice, room, "hi")
    assert info.value.code == "forbidden"
    assert writepath.post_message(moderator, room, "announcement").created


def test_edit_and_delete_take_the_next_seq(alice: Any, bob: Any, room: Room) -> None:
    posted = writepath.post_message(alice, room, "typo").message
    with pytest.raises(ChatError):
        writepath.edit_message(bob, room, posted.pk, "not mine")
    edited = writepath.edit_message(alice, room, posted.pk, "fixed")
    assert (edited.seq, edited.posted_seq, edited.body) == (2, 1, "fixed")
    deleted = writepath.delete_message(alice, room, posted.pk)
    event = deleted.to_event()
    assert (event["seq"], event["deleted"], event["body"]) == (3, True, "")
    caught = reads.catch_up(room, 0)
    assert [c["seq"] for c in caught.changes] == [3] and caught.seq == 3


def test_read_cursor_only_moves_forward(alice: Any, room: Room) -> None:
    for i in range(3):
        writepath.post_message(alice, room, f"m{i}")
    room.refresh_from_db()
    assert writepath.mark_read(alice, room, 3) == 3
    assert writepath.mark_read(alice, room, 1) == 3
    assert Membership.objects.get(room=room, user=alice).read_seq == 3


def test_a_too_old_cursor_asks_for_resync(alice: Any, room: Room, settings: Any) -> None:
    settings.CHAT_RESUME_LIMIT = 2
    for i in range(4):
        writepath.post_message(alice, room, f"m{i}")
    assert reads.catch_up(room, 1) == reads.CatchUp(4, resync=True)
    assert [c["seq"] for c in reads.catch_up(room, 2).changes] == [3, 4]


def follow_room(
    room: Room, done: threading.Event, seen: list[int], errors: list[BaseException]
) -> None:
    """A reader following the room by its cursor, as every transport's catch-up does, until
    `done` is set: each seq it reads goes into `seen`, in the order read."""
    cursor = 0
    try:
        while True:
            finished = done.is_set()
            for change in reads.catch_up(room, cursor).changes:
                seen.append(change["seq"])
                cursor = change["seq"]
            if finished:
                break
    except BaseException as exc:
        errors.append(exc)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_leave_a_hole_for_readers(django_user_model: Any) -> None:
    assert connection.vendor == "postgresql"
    room = Room.objects.create(slug="race", title="Race")
    writers = [django_user_model.objects.create_user(f"w{i}") for i in range(8)]
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def write(user: Any) -> None:
        try:
            for i in range(50):
                writepath.post_message(user, room, f"{user.username} {i}", f"{user.username}-{i}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    reader = threading.Thread(target=follow_room, args=(room, done, seen, errors))
    reader.start()
    threads = [threading.Thread(target=write, args=(u,)) for u in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    assert sorted(Message.objects.filter(room=room).values_list("seq", flat=True)) == list(
        range(1, 401)
    )
    # The reader saw every seq exactly once, in order: no hole was ever skipped over.
    assert seen == list(range(1, 401))


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_create_one_message(django_user_model: Any) -> None:
    room = Room.objects.create(slug="retry", title="Retry")
    user = django_user_model.objects.create_user("retrier")
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def send() -> None:
        try:
            barrier.wait()
            ids.append(writepath.post_message(user, room, "only once", "dup").message.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert Message.objects.filter(room=room).count() == 1
    room.refresh_from_db()
    assert room.seq == 1


@pytest.mark.django_db(transaction=True)
def test_a_rate_limit_holds_under_racing_posts(django_user_model: Any) -> None:
    """Eight posts at once against a limit of three: the check under the room lock lets exactly
    three through (an unlocked check let racing posts all see two and pass)."""
    room = Room.objects.create(slug="limited", title="Limited", rate_limit=3)
    user = django_user_model.objects.create_user("racer")
    writepath.post_message(user, room, "one")
    writepath.post_message(user, room, "two")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def send(i: int) -> None:
        try:
            barrier.wait()
            writepath.post_message(user, room, f"race {i}")
            outcomes.append("stored")
        except ChatError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["rate_limited"] * 7 + ["stored"]
    assert Message.objects.filter(room=room).count() == 3
    room.refresh_from_db()
    assert room.seq == 3  # refused posts gave their seq back


@pytest.mark.parametrize("kind", ["ban", "mute"])
@pytest.mark.parametrize("limited", [False, True], ids=["one-statement", "locked"])
def test_a_restriction_that_lands_after_the_checks_still_stops_the_post(
    alice: Any, moderator: Any, room: Room, monkeypatch: Any, kind: str, limited: bool
) -> None:
    """The ban or mute is checked again inside the insert (the one-statement path on PostgreSQL,
    or under the room lock): one that commits between the checks and the insert wins."""
    from chat.models import Restriction

    if limited:
        Room.objects.filter(pk=room.pk).update(rate_limit=100)
        room.refresh_from_db()
    checks = writepath._check_rate

    def ban_meanwhile(user: Any, checked: Room) -> None:
        checks(user, checked)
        if not Restriction.objects.exists():
            Restriction.objects.create(kind=kind, user=alice, room=room, created_by=moderator)

    monkeypatch.setattr(writepath, "_check_rate", ban_meanwhile)
    with pytest.raises(ChatError) as info:
        writepath.post_message(alice, room, "too late")
    assert info.value.code == "forbidden"
    assert Message.objects.count() == 0
    room.refresh_from_db()
    assert room.seq == 0


def test_reading_never_makes_anyone_a_member_of_a_private_room(
    alice: Any, moderator: Any, private_room: Room
) -> None:
    writepath.post_message(alice, private_room, "hello")
    private_room.refresh_from_db()
    assert writepath.mark_read(moderator, private_room, 1) == 1
    assert not Membership.objects.filter(room=private_room, user=moderator).exists()
    assert writepath.mark_read(alice, private_room, 1) == 1
    assert Membership.objects.get(room=private_room, user=alice).read_seq == 1
