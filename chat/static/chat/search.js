// Search and opening a room at a message.
//
// The search box (chat/templates/chat/search.html) asks GET /api/search and shows the results grouped
// by room, newest first; each is a link to the room page opened at that message (?around=<seq>).
// That page is server-rendered like an older page (?before=) and is not live; here it scrolls to
// the message, highlights it, and loads older and newer pages as the reader scrolls either way
// (…/messages?before= and ?newer_than=, whose cursors the page and each answer carry).
//
// Message text is always set with textContent. A result's `highlight` is the body escaped by the
// server with <mark> around matched words; it is read as text here (split at the two tags, the
// five entities decoded), never parsed as HTML.

import { failure, getJson } from "./http.js";
import { el, localTime, userText } from "./dom.js";
import { _, interpolate } from "./i18n.js";

const DEBOUNCE = 300;
const PAGE = 50;
const ENTITIES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'" };

// The highlight as nodes: text, and <mark> elements holding text.
export function highlightNodes(marked) {
  const nodes = [];
  let inside = false;
  for (const piece of marked.split(/(<mark>|<\/mark>)/)) {
    if (piece === "<mark>" || piece === "</mark>") {
      inside = piece === "<mark>";
      continue;
    }
    if (!piece) continue;
    const text = piece.replace(/&(?:amp|lt|gt|quot|#x27);/g, (e) => ENTITIES[e]);
    nodes.push(inside ? el("mark", null, text) : document.createTextNode(text));
  }
  return nodes;
}

class SearchBox {
  constructor(form) {
    this.form = form;
    this.input = form.querySelector("#search-q");
    this.status = form.querySelector("#search-status");
    this.results = form.querySelector("#search-results");
    this.more = form.querySelector("#search-more");
    this.api = form.dataset.apiSearch;
    this.roomUrl = form.dataset.roomUrl;
    this.groups = new Map(); // room slug -> its <ul>
    this.next = null;
    this.query = "";
    this.timer = null;
    this.abort = null;
    form.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.run(this.input.value);
    });
    this.input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.run(this.input.value), DEBOUNCE);
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") this.clear();
    });
    this.more.addEventListener("click", () => this.fetch(this.query, this.next));
  }

  clear() {
    this.input.value = "";
    this.query = "";
    this.show([]);
  }

  show(nodes) {
    this.groups.clear();
    this.results.replaceChildren(...nodes);
    this.more.hidden = true;
    this.status.textContent = "";
  }

  run(value) {
    clearTimeout(this.timer);
    const query = value.trim();
    if (query === this.query) return;
    this.query = query;
    if (!query) {
      this.show([]);
      return;
    }
    this.fetch(query, null);
  }

  async fetch(query, before) {
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    const params = new URLSearchParams({ q: query });
    if (before !== null) params.set("before", before);
    let answer;
    try {
      answer = await getJson(`${this.api}?${params}`, this.abort.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (before === null) this.show([]);
      this.status.textContent = failure(err).detail;
      return;
    }
    if (query !== this.query) return;
    if (before === null) this.show([]);
    this.add(answer);
  }

  add(answer) {
    for (const hit of answer.results) {
      let list = this.groups.get(hit.room);
      if (!list) {
        const section = el("section", "search-group");
        section.dataset.room = hit.room;
        section.append(userText("h3", "search-room", answer.rooms[hit.room] || hit.room));
        list = el("ul", "search-hits");
        section.append(list);
        this.results.append(section);
        this.groups.set(hit.room, list);
      }
      list.append(this.hit(hit));
    }
    this.next = answer.next;
    this.more.hidden = answer.next === null;
    const shown = this.results.querySelectorAll(".search-hit").length;
    this.status.textContent = shown
      ? interpolate(_("%(count)s found"), { count: `${shown}${answer.next === null ? "" : "+"}` }, true)
      : _("Nothing found.");
  }

  hit(hit) {
    const li = el("li", "search-hit");
    li.dataset.id = hit.id;
    const link = el("a");
    link.href = `${this.roomUrl.replace("room-slug", hit.room)}?around=${hit.seq}`;
    const meta = el("span", "search-meta");
    meta.append(userText("span", "author", hit.author), " ", timeNode(hit.created));
    const body = userText("span", "search-body");
    body.append(...highlightNodes(hit.highlight));
    link.append(meta, body);
    li.append(link);
    return li;
  }
}

// --- a room opened at one message ---

// The hour and minute, with the full local date and time on hover.
function timeNode(iso) {
  const [short, long] = localTime(iso);
  const time = el("time", null, short);
  time.dateTime = iso;
  time.title = long;
  return time;
}

function messageNode(m) {
  const li = el("li", m.deleted ? "message deleted" : "message");
  li.dataset.id = m.id;
  li.dataset.seq = m.seq;
  const meta = el("div", "meta");
  meta.append(userText("span", "author", m.author), " ", timeNode(m.created));
  if (m.edited) meta.append(" ", el("small", "edited", _("(edited)")));
  li.append(meta, m.deleted ? el("div", "body", _("message deleted")) : userText("div", "body", m.body));
  if (m.attachment && !m.deleted) {
    const a = el("a", "file-name", m.attachment.name);
    a.href = m.attachment.url;
    li.append(el("div", "attachment file")).lastChild.append(a);
  }
  return li;
}

class AroundPage {
  constructor(data) {
    this.api = data.dataset.apiMessages;
    this.older = Number(data.dataset.older);
    this.newer = Number(data.dataset.newer);
    this.hasOlder = data.dataset.hasOlder === "true";
    this.hasNewer = data.dataset.hasNewer === "true";
    this.list = document.getElementById("messages");
    this.scroller = document.getElementById("scroller");
    this.top = document.getElementById("older");
    this.bottom = document.getElementById("newer");
    this.loading = { older: false, newer: false };
    const anchor = data.dataset.anchor && this.list.querySelector(`li[data-id="${data.dataset.anchor}"]`);
    if (anchor) {
      anchor.classList.add("anchor");
      anchor.setAttribute("aria-current", "true");
      anchor.scrollIntoView({ block: "center" });
    }
    // The no-JavaScript links become loads in place.
    for (const [box, side] of [[this.top, "older"], [this.bottom, "newer"]]) {
      box.addEventListener("click", (e) => {
        if (e.target.closest("a")) {
          e.preventDefault();
          this.load(side);
        }
      });
    }
    const watch = new IntersectionObserver(
      (entries) => {
        for (const entry of entries) {
          if (entry.isIntersecting) this.load(entry.target === this.top ? "older" : "newer");
        }
      },
      { root: this.scroller, rootMargin: "200px 0px" },
    );
    // Only after the jump: the edges visible before it must not load pages nobody asked for.
    requestAnimationFrame(() => {
      watch.observe(this.top);
      watch.observe(this.bottom);
    });
  }

  async load(side) {
    const more = side === "older" ? this.hasOlder : this.hasNewer;
    if (!more || this.loading[side]) return;
    this.loading[side] = true;
    const query = side === "older" ? `before=${this.older}` : `newer_than=${this.newer}`;
    try {
      const page = await getJson(`${this.api}?${query}&limit=${PAGE}`);
      const nodes = page.messages
        .filter((m) => !this.list.querySelector(`li[data-id="${m.id}"]`))
        .map(messageNode);
      if (side === "older") {
        // Keep what the reader is looking at where it is while the page grows above it.
        const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
        this.list.prepend(...nodes);
        this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
        this.hasOlder = page.has_more;
        if (page.messages.length) this.older = Math.min(...page.messages.map((m) => m.seq), this.older);
        this.top.hidden = !this.hasOlder;
      } else {
        this.list.append(...nodes);
        this.hasNewer = page.has_newer;
        this.newer = page.newer;
        this.bottom.hidden = !this.hasNewer;
      }
    } catch (err) {
      const alert = document.getElementById("page-alert");
      alert.textContent = interpolate(_("Could not load more messages: %(reason)s"), { reason: failure(err).detail }, true);
      alert.hidden = false;
    } finally {
      this.loading[side] = false;
    }
  }
}

const form = document.getElementById("search");
if (form) new SearchBox(form);
const around = document.getElementById("around");
if (around) new AroundPage(around);
