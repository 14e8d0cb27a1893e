"""Languages: the French catalogs are complete and compiled, a page, a refusal's detail and the
scripts' catalog follow Accept-Language (English otherwise), and no page template shows text that
does not go through the translation framework."""

from __future__ import annotations

import ast
import gettext
import json
import re
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.test import Client
from django.urls import reverse
from django.utils import translation

from chat import events, writepath
from chat.errors import ChatError, language_from_headers
from chat.fanout import encode
from chat.models import Room
from chat.tokens import make_token
from chatsite.asgi import application
from tests.conftest import ROOT

LOCALE = ROOT / "chat" / "locale"
CATALOGS = [LOCALE / "fr" / "LC_MESSAGES" / f"{domain}.po" for domain in ("django", "djangojs")]


# --- the catalogs ---


def read_po(path: Path) -> list[dict[str, Any]]:
    """The entries of a .po file (obsolete `#~` ones left out): msgctxt, msgid, msgid_plural,
    msgstr (a list: one string, or one per plural form) and flags."""
    entries: list[dict[str, Any]] = []
    entry: dict[str, Any] = {}
    field: tuple[str, int] | None = None

    def finish() -> None:
        if "msgid" in entry:
            entries.append(entry.copy())
        entry.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#~") or not line.strip():
            continue
        if line.startswith("#,"):
            finish()
            entry["flags"] = {flag.strip() for flag in line[2:].split(",")}
            continue
        if line.startswith("#"):
            continue
        keyword, _space, rest = line.partition(" ")
        if line.startswith('"'):
            assert field is not None, f"{path}: a continuation line with nothing to continue"
            name, index = field
            text = ast.literal_eval(line)
            if name == "msgstr":
                entry["msgstr"][index] += text
            else:
                entry[name] += text
            continue
        if keyword in ("msgctxt", "msgid") and "msgstr" in entry:
            finish()
        value = ast.literal_eval(rest)
        if keyword.startswith("msgstr"):
            index = int(keyword[7:-1]) if "[" in keyword else 0
            entry.setdefault("msgstr", []).append(value)
            field = ("msgstr", index)
        else:
            entry[keyword] = value
            field = (keyword, 0)
    finish()
    return entries


@pytest.mark.parametrize("po", CATALOGS, ids=lambda path: path.name)
def test_every_message_has_a_french_translation(po: Path) -> None:
    entries = read_po(po)
    header, messages = entries[0], entries[1:]
    assert header["msgid"] == "" and "fuzzy" not in header.get("flags", set())
    assert "Language: fr" in header["msgstr"][0]
    assert len(messages) > 100
    untranslated = [e["msgid"] for e in messages if not e["msgstr"] or not all(e["msgstr"])]
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e.get("flags", set())]
    assert untranslated == []
    assert fuzzy == []


@pytest.mark.parametrize("po", CATALOGS, ids=lambda path: path.name)
def test_the_compiled_catalog_is_the_po_file(po: Path) -> None:
    # Git does not keep file times, so the .mo is compared by content: every message of the .po
    # must come out of it as the .po has it (a .po changed without compilemessages fails here).
    with po.with_suffix(".mo").open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    for entry in read_po(po)[1:]:
        msgid = entry["msgid"]
        if "msgctxt" in entry:
            msgid = f"{entry['msgctxt']}\x04{msgid}"
        if "msgid_plural" in entry:
            for count, form in ((1, 0), (2, 1)):
                got = compiled.ngettext(msgid, entry["msgid_plural"], count)
                assert got == entry["msgstr"][form], entry["msgid"]
        else:
            assert compiled.gettext(msgid) == entry["msgstr"][0], entry["msgid"]


def test_python_format_placeholders_survive_translation() -> None:
    # A translation that loses or renames a %(name)s breaks the `%` that fills it in.
    placeholder = re.compile(r"%\(\w+\)[sr]")
    for po in CATALOGS:
        for entry in read_po(po)[1:]:
            if "msgid_plural" not in entry:
                wanted = sorted(placeholder.findall(entry["msgid"]))
                for text in entry["msgstr"]:
                    assert sorted(placeholder.findall(text)) == wanted, entry["msgid"]
                continue
            # A plural form may leave out the count ("A message…"), and nothing else.
            known = set(placeholder.findall(entry["msgid"] + entry["msgid_plural"]))
            needed = known - {"%(count)s"}
            for text in entry["msgstr"]:
                used = set(placeholder.findall(text))
                assert needed <= used <= known, entry["msgid"]


# --- the language of a request ---


@pytest.mark.django_db
def test_a_page_is_in_french_for_a_french_browser_and_in_english_otherwise() -> None:
    url = reverse("login")
    french = Client(headers={"accept-language": "fr-FR,fr;q=0.9,en;q=0.5"}).get(url)
    assert french.status_code == 200
    assert '<html lang="fr">' in french.text
    assert "Aller au contenu" in french.text and "Pas de compte" in french.text
    assert "Skip to content" not in french.text and "Log in" not in french.text

    for accept in ("en-GB,en;q=0.8", "de-DE", None):
        client = Client(headers={"accept-language": accept} if accept else {})
        english = client.get(url)
        assert '<html lang="en">' in english.text
        assert "Skip to content" in english.text and "No account?" in english.text
        assert "Aller au contenu" not in english.text


@pytest.mark.django_db
def test_a_refusal_detail_is_in_french_and_its_code_stays(alice: Any, room: Room) -> None:
    url = reverse("chat:api-messages", args=["nowhere"])
    client = Client(headers={"accept-language": "fr"})
    assert client.get(url).json() == {"error": "unauthorized", "detail": "Connectez-vous d’abord."}
    client.force_login(alice)
    refused = client.get(url)
    assert refused.status_code == 404
    assert refused.json()["error"] == "not_found"
    assert refused.json() == {"error": "not_found", "detail": "Il n’y a pas de salon 'nowhere'."}

    english = Client()
    assert english.get(url).json() == {"error": "unauthorized", "detail": "Log in first."}


@pytest.mark.django_db
def test_a_batch_refusal_is_worded_in_each_readers_language() -> None:
    """Group commit refuses the posts of a batch in one thread; each refusal is read by its own
    sender, in that sender's language, and serialises as plain text on every transport."""
    refusal = ChatError(*writepath.REFUSALS["locked"])
    with translation.override("fr"):
        french = encode(events.error(refusal.code, refusal.detail))
    with translation.override("en"):
        english = encode(events.error(refusal.code, refusal.detail))
    assert json.loads(french)["detail"] == "Ce salon est verrouillé."
    assert json.loads(english)["detail"] == "This room is locked."


def test_the_scripts_catalog_follows_the_browser() -> None:
    url = reverse("chat:jsi18n")
    french = Client(headers={"accept-language": "fr"}).get(url)
    assert french.status_code == 200
    assert "En direct" in french.text and "Connect\\u00e9 par WebSocket" in french.text
    english = Client(headers={"accept-language": "en"}).get(url)
    assert english.status_code == 200 and "En direct" not in english.text


def test_the_asgi_transports_pick_a_language_as_the_middleware_does() -> None:
    assert language_from_headers([(b"accept-language", b"fr-CA,fr;q=0.9")]) == "fr"
    assert language_from_headers([(b"Accept-Language", b"de, fr;q=0.5")]) == "fr"
    assert language_from_headers([(b"accept-language", b"de, *;q=0.1")]) == "en"
    assert language_from_headers([(b"origin", b"https://chat.example")]) == "en"


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_refuses_in_the_language_of_its_handshake(alice: Any, room: Room) -> None:
    token = await sync_to_async(make_token)(alice)

    async def refusals(accept: bytes | None) -> list[dict[str, Any]]:
        headers = [(b"accept-language", accept)] if accept else []
        comm = WebsocketCommunicator(application, f"/ws/?token={token}", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        got = []
        # One refused before any thread (admission), one in a worker thread (the room lookup).
        for frame in ('{"action": "explode"}', '{"action": "subscribe", "room": "nope"}'):
            await comm.send_to(text_data=frame)
            while (event := json.loads(await comm.receive_from(3)))["type"] != "error":
                pass
            got.append(event)
        await comm.disconnect()
        return got

    french = await refusals(b"fr-FR,fr;q=0.9")
    assert [e["code"] for e in french] == ["unknown_action", "not_found"]
    assert french[0]["detail"] == "Action inconnue 'explode'."
    assert french[1]["detail"] == "Il n’y a pas de salon 'nope'."

    english = await refusals(None)
    assert [e["code"] for e in english] == ["unknown_action", "not_found"]
    assert english[0]["detail"] == "Unknown action 'explode'."
    assert english[1]["detail"] == "There is no room 'nope'."


# --- the page templates ---

PAGES = ROOT / "chat" / "templates" / "chat"
# What the scan takes out before looking for words: comments, translated text, template tags and
# variables, and what is not text (scripts, styles, drawings).
NOT_TEXT = [
    re.compile(r"{% comment %}.*?{% endcomment %}", re.S),
    re.compile(r"{#.*?#}", re.S),
    re.compile(r"{% blocktranslate\b.*?{% endblocktranslate %}", re.S),
    re.compile(r"{% translate\b.*?%}", re.S),
    re.compile(r"{{.*?}}", re.S),
    re.compile(r"{%.*?%}", re.S),
    re.compile(r"<(script|style|svg)\b.*?</\1>", re.S),
]
# Attributes that people read (or hear).
READ_ATTRIBUTES = re.compile(r'\b(title|placeholder|aria-label|alt)="([^"]*)"')
TAG = re.compile(r"<[^>]*>", re.S)
WORD = re.compile(r"[^\W\d_]{2,}")


def untranslated_text(source: str) -> list[str]:
    # Read attributes first: a translated value is taken out with the rest below.
    for pattern in NOT_TEXT:
        source = pattern.sub(" ", source)
    found = [
        f'{name}="{value}"' for name, value in READ_ATTRIBUTES.findall(source) if WORD.search(value)
    ]
    text = TAG.sub(" ", source)
    found += [line.strip() for line in text.splitlines() if WORD.search(line)]
    return found


def test_page_templates_show_no_text_outside_the_translation_tags() -> None:
    # The email digests too: they go out in the site's LANGUAGE_CODE (README, "Languages").
    templates = sorted([*PAGES.glob("*.html"), *PAGES.glob("email/*")])
    assert len(templates) > 13
    found = {
        str(path.relative_to(ROOT)): untranslated
        for path in templates
        if (untranslated := untranslated_text(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_the_scan_finds_text_left_out() -> None:
    assert untranslated_text("<p>Hello {{ name }}</p>") == ["Hello"]
    assert untranslated_text('<input placeholder="Type here">') == ['placeholder="Type here"']
    assert untranslated_text('<p title="{% translate "Hi" %}">{% translate "Hi" %} · #</p>') == []
