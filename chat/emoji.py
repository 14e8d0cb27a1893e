"""The reactions a message can take: a fixed set of Unicode emoji, one grapheme each.

A set, not "any emoji": Unicode's full list changes every year and a client that draws a reaction
must be able to draw it; arbitrary text (a word, a sequence of twenty flags) is refused."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from chat.errors import ChatError

# Common reactions first (the picker shows them in this order).
QUICK = ("👍", "❤️", "😂", "🎉", "😮", "😢", "👀", "🙏")
REACTIONS: tuple[str, ...] = (
    *QUICK,
    *"👎 👏 🙌 🔥 ✅ ❌ ➕ 💯 🚀 🤔 😀 😃 😄 😁 😆 😅 🤣 🙂 😉 😊 😇 🥰 😍 🤩 😘 😋 😛 😜 🤪 😎".split(),
    *"🤓 🧐 😏 😒 😞 😔 😟 😕 🙁 😣 😖 😫 😩 🥺 😭 😤 😠 😡 🤯 😳 🥵 🥶 😱 😨 😰 😥 😓".split(),
    *"🤗 🤭 🤫 🤥 😶 😐 😑 😬 🙄 😯 😦 😧 😲 🥱 😴 🤤 😪 😵 🤐 🥴 🤢 🤮 🤧 😷 🤒 🤕".split(),
    *"👋 🤝 ✌️ 🤞 🤟 🤘 👌 🤌 👈 👉 👆 👇 ☝️ ✋ 🤚 🖐️ 🖖 💪 🫡 🫶 💔 💖 💙 💚 💛 💜 🖤 🤍".split(),
    *"⭐ 🌟 ✨ ⚡ 💥 🎊 🎈 🏆 🥇 🍕 🍺 ☕ 🍰 🌈 ☀️ 🌧️ ❄️ 🐛 🐞 🦄 🐶 🐱 💡 📌 📎 🔒 ⏰ ⚠️ ❓ ❗".split(),
)
ALLOWED = frozenset(REACTIONS)
MAX_DISTINCT = 20


def clean_emoji(value: Any, name: str = "emoji") -> str:
    """One of REACTIONS. An emoji sent without its variation selector ("❤" for "❤️") is the same
    reaction, so that two clients never show one reaction twice."""
    if not isinstance(value, str) or not value:
        raise ChatError("bad_request", _("`%(name)s` must be an emoji.") % {"name": name})
    if value in ALLOWED:
        return value
    if len(value) <= 2 and value + "\ufe0f" in ALLOWED:
        return value + "\ufe0f"
    raise ChatError(
        "bad_request", _("`%(name)s` must be one of the reaction emoji.") % {"name": name}
    )
