// The message the next one answers. A message's Reply (actions.js) chooses it; the composer shows
// it above the text box, author and excerpt, until the message is sent or the reply is cancelled
// (the × or Escape). The outbox keeps it with the message, so every attempt names the same parent.

import { _, interpolate } from "./i18n.js";

// The server cuts its excerpts here (chat/models.py, EXCERPT_LENGTH); the preview agrees with the
// quote the reply will carry.
const EXCERPT_LENGTH = 100;

export function excerptOf(event) {
  const text = (event.body || "").split(/\s+/).filter(Boolean).join(" ");
  if (!text) return event.attachment ? event.attachment.name : "";
  return text.length <= EXCERPT_LENGTH ? text : text.slice(0, EXCERPT_LENGTH - 1) + "…";
}

let active = null; // what startReply returned: the page has one composer

// A message's Reply button: the composer answers that message next.
export function replyTo(event) {
  if (active) active.choose(event);
}

// A message was deleted or hidden: a reply to it waiting in the composer would be refused.
export function parentGone(event) {
  if (active) active.parentGone(event);
}

// options: box (#reply-preview), input (the composer's text box). Returns {choose(event),
// current(), clear(), parentGone(event)}.
export function startReply({ box, input }) {
  // {id, seq, author, excerpt} of the message being answered; any seq the message held opens
  // the room at it (?around=), as the reply_to's own seq will once the reply is sent.
  let quote = null;
  const author = box.querySelector(".reply-author");
  const excerpt = box.querySelector(".reply-excerpt");
  const cancel = box.querySelector(".reply-cancel");

  function show() {
    box.hidden = !quote;
    input.classList.toggle("replying", Boolean(quote));
    if (!quote) return;
    author.textContent = quote.author;
    excerpt.textContent = quote.excerpt;
    box.classList.toggle("removed", Boolean(quote.gone));
    cancel.setAttribute("aria-label", interpolate(_("Cancel the reply to %(author)s"), { author: quote.author }, true));
  }

  function clear() {
    quote = null;
    show();
  }

  cancel.addEventListener("click", () => {
    clear();
    input.focus();
  });
  // Escape in the text box lets go of the reply, unless something else took it first (the
  // mention suggestions close on Escape and stop it there).
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && quote && !e.defaultPrevented) {
      e.preventDefault();
      clear();
    }
  });

  active = {
    choose(event) {
      quote = { id: event.id, seq: event.seq, author: event.author, excerpt: excerptOf(event) };
      show();
      input.focus();
    },
    // What the next message answers. A parent deleted since is not named: the server would refuse
    // the reply, and the text goes as a message of its own.
    current: () => (quote && !quote.gone ? quote : null),
    clear,
    // The preview says so at once, as the quotes in the list do, rather than vanishing under the
    // writer's eyes.
    parentGone(event) {
      if (!quote || quote.id !== event.id) return;
      quote = { ...quote, gone: true, excerpt: event.hidden ? _("removed by a moderator") : _("message deleted") };
      show();
    },
  };
  return active;
}
