// Keyboard and screen-reader help for the room page: the skip links, and a polite live region
// that reads out messages from others as they arrive (the list itself is not live, or every
// page of history loaded above would be read out too).

import { _, interpolate } from "./i18n.js";

// A fragment link moves the tab starting point but does not always focus the target; the
// textarea should take typing at once.
export function startSkipLinks() {
  for (const link of document.querySelectorAll("a.skip-link")) {
    link.addEventListener("click", (e) => {
      const target = document.getElementById(link.hash.slice(1));
      // A locked room's composer cannot take focus: the link then just moves the tab start.
      if (!target || target.disabled) return;
      e.preventDefault();
      target.focus();
    });
  }
}

// Only the latest: a burst is read as its last message rather than queued up behind the reader.
export function announce(event) {
  const region = document.getElementById("announcer");
  if (!region || event.deleted) return;
  const body = event.body || (event.attachment ? interpolate(_("sent %(name)s"), { name: event.attachment.name }, true) : "");
  region.textContent = interpolate(_("%(author)s: %(body)s"), { author: event.author, body }, true);
}
