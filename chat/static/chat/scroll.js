// Where the reader is in the log: the "new messages" line at their read cursor, the "Jump to
// latest" button while they are scrolled up (with how many messages arrived meanwhile), and the
// message they are looking at kept in place when something is inserted above it.
//
// The line goes before the first message by others after the cursor (the server names it:
// data-first-unread, ids follow posting order) and says how many are new. When that message is
// older than the loaded page (303 unread, a page of 50), the page opens at the cursor: older
// pages are read until the one holding it is in (at most OPEN_PAGES of them), so that the reader
// starts at the first new message with the line in its true place, rather than in the middle of
// what is new under a line that moves off as soon as the next page loads. Beyond that many, the
// line heads what is loaded and older loads move it into place. Either way the page opens at the
// line, not at the bottom; the room is marked read once the reader reaches the bottom.

import { el } from "./dom.js";
import { _, interpolate, ngettext } from "./i18n.js";

// How many older pages (of 50) the page reads at most to open at the reader's cursor.
const OPEN_PAGES = 8;

// options: root (#chat, for its data-*), scroller, list (the <ol>), button (#jump-latest),
// isAtBottom(), onBottom() (the reader reached the latest message), loadOlder() (resolves when
// the next older page is in), hasOlder() (whether there is one).
// Returns {opened (a promise: the page is at the line), opening(), arrivedOne()}.
export function startScroll({ root, scroller, list, button, isAtBottom, onBottom, loadOlder, hasOlder }) {
  const firstUnread = Number(root.dataset.firstUnread) || null;
  const unread = Number(root.dataset.unread) || 0;
  let divider = null;
  let arrived = 0; // messages by others that came while the reader was scrolled up

  // The first message at least partly in view, and where it is: what must not move.
  function anchor() {
    const top = scroller.getBoundingClientRect().top;
    for (const li of list.children) {
      if (li === divider) continue;
      const box = li.getBoundingClientRect();
      if (box.bottom > top) return { li, y: box.top };
    }
    return null;
  }

  // Change the list without moving what the reader is looking at.
  function holding(change) {
    const before = anchor();
    change();
    if (!before || !before.li.isConnected) return;
    const moved = before.li.getBoundingClientRect().top - before.y;
    if (moved) scroller.scrollTop += moved;
  }

  function placeDivider() {
    if (!divider) return;
    const target = list.querySelector(`li[data-id="${firstUnread}"]`);
    // Not loaded yet: above everything loaded (what is still older comes in above it).
    const before = target || list.querySelector("li.message");
    if (!before) {
      divider.remove();
      return;
    }
    const placed = target ? "true" : "false";
    if (divider.nextElementSibling === before && divider.dataset.placed === placed) return;
    holding(() => {
      divider.dataset.placed = placed;
      list.insertBefore(divider, before);
    });
  }

  function toDivider() {
    if (!divider || !divider.isConnected) return;
    // Open at the line (with a little of what was read above it) when it is above the view.
    const offset = divider.getBoundingClientRect().top - scroller.getBoundingClientRect().top;
    if (offset < 24) scroller.scrollTop += offset - 24;
  }

  let opening = false;
  async function open() {
    opening = true;
    try {
      for (let n = 0; n < OPEN_PAGES && divider.dataset.placed !== "true" && hasOlder(); n += 1) {
        await loadOlder();
        placeDivider();
      }
    } finally {
      opening = false;
    }
    toDivider();
    render();
  }

  let opened = Promise.resolve();
  if (firstUnread && unread > 0) {
    divider = el("li", "new-divider");
    // A list item like the messages around it (a separator role would leave the list with a
    // child that is not an item); its text says what it marks.
    const text = interpolate(ngettext("%(count)s new message", "%(count)s new messages", unread), { count: unread }, true);
    divider.append(el("span", null, text));
    placeDivider();
    // History pages and live messages come in through messages.js: the line follows them.
    new MutationObserver(() => placeDivider()).observe(list, { childList: true });
    opened = divider.dataset.placed === "true" ? Promise.resolve(toDivider()) : open();
  }

  function render() {
    const bottom = isAtBottom();
    if (bottom) arrived = 0;
    button.hidden = bottom;
    button.textContent = arrived ? interpolate(_("Jump to latest · %(count)s new"), { count: arrived }, true) : _("Jump to latest");
  }

  scroller.addEventListener("scroll", () => {
    if (opening) return;
    const wasHidden = button.hidden;
    render();
    if (!wasHidden && button.hidden) onBottom();
  });
  button.addEventListener("click", () => {
    scroller.scrollTop = scroller.scrollHeight;
    arrived = 0;
    render();
    onBottom();
    document.getElementById("composer-body")?.focus({ preventScroll: true });
  });
  render();

  return {
    opened,
    // Older pages are being read to open at the cursor: the reader has not scrolled yet.
    opening: () => opening,
    // A new message by someone else was shown (after the list had it).
    arrivedOne() {
      if (!isAtBottom()) arrived += 1;
      render();
    },
  };
}
