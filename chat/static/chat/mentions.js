// Mentions: a message body drawn with the `@name`s the server recognised marked (the reader's
// own stand out), and the composer offering the room's people after an `@`.
//
// The server decides who is mentioned (the `mentions` of the message event: names that may read
// the room, and "room" for @room); the page only finds those tokens in the text again, with the
// server's rule (chat/notify.py), and never treats the text as HTML.

import { el } from "./dom.js";
import { _ } from "./i18n.js";
import { Suggest } from "./suggest.js";

// Django's usernames (letters, digits and @.+-_), not preceded by such a character; a name ending
// in punctuation ("@bob.") also counts without it.
const MENTION = /(?<![\p{L}\p{N}_@.+-])@([\p{L}\p{N}_.@+-]{1,150})/gu;
const NAME_CHARS = /[\p{L}\p{N}_.@+-]/u;

export function mentionsMe(event, me) {
  const names = event.mentions || [];
  return names.includes(me) || names.includes("room");
}

// The body as text nodes, each recognised `@name` in a <mark>.
export function bodyNodes(text, mentions, me) {
  const known = new Set(mentions || []);
  if (!known.size) return [document.createTextNode(text)];
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(MENTION)) {
    let name = match[1];
    if (!known.has(name)) name = name.replace(/[.\-+@]+$/, "");
    if (!name || !known.has(name)) continue;
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const own = name === me || name === "room";
    const mark = el("mark", own ? "mention me" : "mention", `@${name}`);
    nodes.push(mark);
    last = match.index + 1 + name.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// options: input (the composer's box), channel, slug, me, online() (who is online now).
export function startMentionSuggestions({ input, channel, slug, me, online }) {
  let members = null; // asked for at the first @, and kept: the room's members change rarely
  const known = async () => {
    if (!members) {
      try {
        members = (await channel.get(`${slug}/members`)).members;
      } catch (err) {
        return online();
      }
    }
    return [...new Set([...members, ...online()])];
  };
  const token = () => {
    const caret = input.selectionStart;
    if (caret !== input.selectionEnd) return null;
    const before = input.value.slice(0, caret);
    const match = before.match(/(?:^|[^\p{L}\p{N}_@.+-])@([\p{L}\p{N}_.@+-]{0,150})$/u);
    if (!match) return null;
    let end = caret;
    while (end < input.value.length && NAME_CHARS.test(input.value[end])) end += 1;
    return { prefix: match[1], start: caret - match[1].length, end };
  };
  return new Suggest({
    input,
    label: _("People in this room"),
    token,
    source: async (prefix) => {
      const lower = prefix.toLowerCase();
      return (await known())
        .filter((name) => name !== me && name.toLowerCase().startsWith(lower))
        .sort()
        .slice(0, 8);
    },
    pick: (name, at) => {
      if (!at) return;
      const value = input.value;
      const rest = value.slice(at.end);
      const space = rest.startsWith(" ") ? "" : " ";
      input.value = value.slice(0, at.start) + name + space + rest;
      const caret = at.start + name.length + 1;
      input.setSelectionRange(caret, caret);
      input.dispatchEvent(new Event("input"));
    },
  });
}
