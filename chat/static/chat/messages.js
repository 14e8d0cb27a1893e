// The message list: what the page knows about each message, and the <li> drawn from it.
//
// `records` holds one record per message id: the last event the page has for it (the server's
// copy) and the page's own state around it: a change in flight, a refusal to show, an open editor,
// delete confirmation or report form. Those forms are kept as nodes, not drawn again, so that
// what is being typed in them (and the caret) survives every redraw. Messages sent from this page
// wait in `unacked`, by client_id, until the server has stored them; their outbox item (outbox.js)
// is what they are drawn from. History pages come in here too: older ones as the reader scrolls
// up, the latest one again after a resync.

import { ownActions, reactionBar, replyButton, reportButton, scheduleEditExpiry, syncChangeControls } from "./actions.js";
import { attachmentNode, button, el, humanSize, localTime, userText } from "./dom.js";
import { _, interpolate, locale } from "./i18n.js";
import { bodyNodes, mentionsMe } from "./mentions.js";
import { parentGone } from "./reply.js";
import { richNodes } from "./richtext.js";

// Consecutive messages of one author within this long read as one block under one name and time.
const GROUP_GAP = 5 * 60 * 1000;

// Today's messages show the time only, in the reader's own clock (12- or 24-hour, as their locale
// has it); the day itself is the separator above its first message.
function shortTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return ["", ""];
  return [date.toLocaleTimeString(locale(), { hour: "numeric", minute: "2-digit" }), date.toLocaleString(locale())];
}

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return _("Today");
  if (date.toDateString() === yesterday.toDateString()) return _("Yesterday");
  const options = { weekday: "long", month: "long", day: "numeric" };
  if (date.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString(locale(), options);
}

// A message's place in a run: the first of a new day carries the day's label, one that follows
// the same author closely drops its name and time.
function regroup(li) {
  if (!li || !li.classList.contains("message") || !li.dataset.created) return;
  const created = new Date(li.dataset.created);
  let prev = li.previousElementSibling;
  while (prev && !prev.dataset.created) prev = prev.previousElementSibling;
  const prevDate = prev ? new Date(prev.dataset.created) : null;
  const newDay = !prevDate || prevDate.toDateString() !== created.toDateString();
  if (newDay) li.dataset.day = dayLabel(created);
  else delete li.dataset.day;
  const grouped =
    !newDay && prev.dataset.author === li.dataset.author && created - prevDate < GROUP_GAP && !prev.classList.contains("pending");
  li.classList.toggle("grouped", grouped);
}

const PAGE = 50;
// A quote of a message older than what is loaded reads this many older pages in place (the live
// view stays as it is); further back, the room opens at the quoted message instead.
const NEAR_PAGES = 2;
// A quote that carries no seq cannot open the room at it: older pages are read, at most this many.
const JUMP_PAGES = 20;

const records = new Map(); // message id -> record (see newRecord)
const unacked = new Map(); // client_id -> the <li> of a message the server has not acked yet
const pages = {
  hasMore: false, // whether the server has messages older than the oldest shown
  before: null, // the `before` of the next history page
  oldestId: Infinity, // the smallest id that came with a history page
  loading: null, // the older page being read (a promise), if one is
};
let view = null; // what startList was given

// `event` stays null only for one of ours that was acked before its `message` event arrived.
function newRecord(id, li) {
  li.dataset.id = id;
  return {
    picking: false, // whether the reaction picker is open
    id,
    li,
    event: null, // the latest copy from the server
    change: null, // {kind: "edit" | "delete", body} until the server answers
    note: null, // why the last change was refused, until dismissed
    editor: null, // the open edit form
    confirm: null, // the open "delete for everyone?" question
    report: null, // the open report form, or the thanks that replaced it
    expiry: null, // the timer that takes Edit away when the edit window closes
  };
}

// options: list (the <ol>), scroller, olderBox, channel, slug, me, initial (the page's history,
// oldest first), hasMore.
export function startList(options) {
  view = options;
  view.list.replaceChildren();
  addPage(options.initial, options.hasMore);
  for (const item of view.channel.pending(view.slug)) showOutgoing(item);
  renderEmpty();
  scrollToBottom();
}

export function upsert(event, { history = false } = {}) {
  if (event.room !== view.slug) return;
  let record = records.get(event.id);
  if (!record && event.client_id && event.author === view.me && unacked.has(event.client_id)) {
    record = newRecord(event.id, unacked.get(event.client_id));
    unacked.delete(event.client_id);
  }
  if (!record && !history && pages.hasMore && event.id < pages.oldestId) {
    // A change to a message on a page not loaded yet: that page brings its current state.
    return;
  }
  const atBottom = isAtBottom();
  const isNew = !record;
  if (!record) record = newRecord(event.id, el("li"));
  records.set(event.id, record);
  if (!record.event || event.seq >= record.event.seq) {
    record.event = event;
    render(record);
  }
  if (history) pages.oldestId = Math.min(pages.oldestId, event.id);
  place(record);
  if (isNew) renderEmpty();
  if (!history && atBottom) scrollToBottom();
}

// Draw the record again after the page's side of it changed (an editor opened, a change settled,
// the edit window over), if it is still shown.
export function redraw(record) {
  if (records.get(record.id) === record && record.event) render(record);
}

// The room was locked or unlocked: Edit and Delete follow the composer.
export function redrawOwn() {
  for (const record of records.values()) {
    if (record.event && record.event.author === view.me) render(record);
  }
}

function render(record) {
  const { li, event } = record;
  const mine = event.author === view.me;
  if (event.deleted) {
    // Nothing is left to change: an open editor or confirmation goes (a refusal note stays).
    record.editor = null;
    record.confirm = null;
  }
  const pending = record.change && !event.deleted ? record.change : null;
  li.className =
    "message" + (mine ? " mine" : "") + (event.deleted ? " deleted" : "") + (pending ? " changing" : "");
  // Someone else's message that mentions the reader (or says @room) stands out.
  if (!mine && !event.deleted && mentionsMe(event, view.me)) li.classList.add("mentions-me");
  li.dataset.seq = event.seq;
  li.dataset.state = "sent";
  li.dataset.author = event.author;
  li.dataset.created = event.created;
  if (pending) li.dataset.change = pending.kind;
  else delete li.dataset.change;
  const meta = el("div", "meta");
  if (mine) {
    meta.append(el("span", "author", event.author));
    meta.lastChild.dir = "auto";
  } else {
    // The name is the way to a direct conversation with its author (dms.js).
    const author = button(event.author, "author link-button");
    author.title = interpolate(_("Message %(name)s"), { name: event.author }, true);
    author.dataset.dmUser = event.author;
    author.dir = "auto";
    meta.append(author);
  }
  const [short, long] = shortTime(event.created);
  const time = el("time", null, short);
  time.dateTime = event.created;
  time.title = long;
  meta.append(time);
  if (event.edited && !event.deleted) meta.append(el("span", "edited", _("edited")));
  if (pending) {
    meta.append(el("span", "state", pending.kind === "edit" ? _("Saving…") : _("Deleting…")));
  } else if (mine) {
    // Delivery state means something only to whoever sent it.
    meta.append(el("span", "state", "✓"));
    meta.lastChild.setAttribute("aria-label", _("sent"));
  }
  const parts = [meta];
  if (event.reply_to && !event.deleted) parts.push(replyQuote(event.reply_to));
  if (record.editor) {
    parts.push(record.editor);
  } else if (event.deleted || event.body || !event.attachment || pending) {
    // A message may be only a file; an empty body then takes no room.
    const body = el("div", "body");
    body.dir = "auto";
    if (event.deleted) body.textContent = event.hidden ? _("removed by a moderator") : _("message deleted");
    else if (pending && pending.kind === "edit") body.textContent = pending.body;
    else if (event.html) body.append(...richNodes(event.html, view.me));
    else body.append(...bodyNodes(event.body, event.mentions, view.me));
    parts.push(body);
  }
  if (event.attachment && !event.deleted) parts.push(attachmentNode(event.attachment));
  if (!event.deleted) parts.push(reactionBar(record));
  if (!mine && !event.deleted) {
    meta.append(reportButton(record));
    if (record.report) parts.push(record.report); // a report being written survives an edit
  } else {
    record.report = null;
  }
  if (mine && !event.deleted) {
    meta.append(ownActions(record));
    if (record.confirm) parts.push(record.confirm);
  }
  // Last in the line: the keyboard coming back to a message (keepFocus) lands on its first
  // button, Edit for one's own.
  if (!event.deleted) meta.append(replyButton(record));
  if (record.note) parts.push(record.note);
  syncChangeControls(record);
  keepFocus(li, () => li.replaceChildren(...parts));
  scheduleEditExpiry(record);
  regroup(li); // the class list was just set again
  if (event.deleted) {
    settleQuotes(event);
    parentGone(event);
  }
}

// What a reply shows of the message it answers (the server's excerpt: never a removed text). A
// button: it shows the quoted message (showQuoted).
function replyQuote(reply) {
  const quote = button(null, "reply-quote" + (reply.deleted ? " removed" : ""), null, "quote");
  quote.dataset.replyTo = reply.id;
  quote.title = _("Show the quoted message");
  const who = el("span", "reply-author", reply.author || "");
  who.dir = "auto";
  const text = el("span", "reply-excerpt", reply.excerpt);
  text.dir = "auto";
  quote.append(who, " ", text);
  quote.addEventListener("click", () => showQuoted(reply, quote));
  return quote;
}

// Scroll to the quoted message and mark it. Not loaded yet, it is older than everything loaded
// (a reply comes after its parent, and ids follow posting order): a page or two back are read in
// place, and further back the room opens at it (?around= the seq it was posted at), however far.
// A quote without a seq (a message kept in the outbox from before quotes carried one) can only
// page back to it.
async function showQuoted(reply, quote) {
  const id = reply.id;
  const far = reply.seq != null;
  let record = records.get(id);
  for (let n = 0; !record && pages.hasMore && n < (far ? NEAR_PAGES : JUMP_PAGES); n += 1) {
    await loadOlder();
    if (view.olderBox.querySelector(".error")) break; // the page did not come
    record = records.get(id);
  }
  if (!record && far) {
    window.location.assign(`${window.location.pathname}?around=${reply.seq}`);
    return;
  }
  if (!record || !record.li.isConnected) {
    quote.classList.add("missing");
    quote.title = _("The quoted message is too far back to show here");
    return;
  }
  // An attribute, not a class: a redraw sets the class list again. It goes and comes back, so
  // the highlight plays again on a second click.
  for (const other of view.list.querySelectorAll(".message[data-quoted]")) delete other.dataset.quoted;
  const li = record.li;
  void li.offsetWidth;
  li.dataset.quoted = "";
  li.scrollIntoView({ block: "center" });
  // The keyboard follows the eye: Tab goes on from the quoted message.
  li.tabIndex = -1;
  li.focus({ preventScroll: true });
}

// A message deleted or hidden here: replies to it on this page stop quoting its text at once
// (their own events still carry the excerpt they were read with).
function settleQuotes(event) {
  for (const quote of view.list.querySelectorAll(`.reply-quote[data-reply-to="${event.id}"]`)) {
    quote.classList.add("removed");
    quote.querySelector(".reply-excerpt").textContent = event.hidden ? _("removed by a moderator") : _("message deleted");
  }
}

// Redrawing replaces a message's nodes: whoever was typing in its editor or report form, or was
// on one of its buttons, keeps the keyboard there (or on the message, if the button went).
function keepFocus(li, replace) {
  const active = document.activeElement;
  const inside = active && active !== li && li.contains(active);
  replace();
  if (!inside) return;
  if (li.contains(active)) {
    active.focus({ preventScroll: true });
    return;
  }
  const key = active.dataset.key;
  const again =
    (key && li.querySelector(`[data-key="${key}"]:not(:disabled)`)) || li.querySelector(".meta button:not(:disabled):not(.author)");
  if (again) {
    again.focus({ preventScroll: true });
  } else {
    li.tabIndex = -1;
    li.focus({ preventScroll: true });
  }
}

// Messages in posting order: ids are taken under the room's lock, so within a room id order is
// posting order (and, unlike `seq`, it does not move when a message is edited). Messages still
// waiting for their ack stay at the end.
function place(record) {
  let next = null;
  for (const other of records.values()) {
    if (other !== record && other.id > record.id && (!next || other.id < next.id)) next = other;
  }
  const before = next ? next.li : unacked.values().next().value || view.list.querySelector(".empty");
  const li = record.li;
  if (li.parentNode !== view.list || li.nextElementSibling !== before) view.list.insertBefore(li, before);
  regroup(li);
  regroup(li.nextElementSibling);
}

export function showOutgoing(item) {
  if (item.room !== view.slug) return;
  let li = unacked.get(item.client_id);
  if (!li) {
    li = el("li", "message mine pending");
    unacked.set(item.client_id, li);
    const meta = el("div", "meta");
    const [short, long] = localTime(new Date().toISOString());
    const time = el("time", null, short);
    time.title = long;
    meta.append(userText("span", "author", view.me), time, el("span", "state"));
    li.append(meta);
    if (item.quote) li.append(replyQuote({ ...item.quote, deleted: false }));
    if (item.body || !item.fileInfo) li.append(userText("div", "body", item.body));
    if (item.fileInfo) {
      // Not a link yet: the file has no address until it is uploaded.
      const box = el("div", "attachment file");
      box.append(el("span", "file-name", item.fileInfo.name), " ", el("span", "size", humanSize(item.fileInfo.size)));
      li.append(box);
    }
    view.list.append(li);
    renderEmpty();
    scrollToBottom();
  }
  const failed = item.state === "failed";
  const uploading = item.state === "uploading";
  li.className = "message mine " + (failed ? "failed" : "pending");
  li.dataset.state = failed ? "failed" : uploading ? "uploading" : "pending";
  const state = li.querySelector(".state");
  state.replaceChildren();
  if (uploading) {
    const percent = item.progress ? ` ${Math.floor(item.progress * 100)}%` : "";
    state.textContent = interpolate(_("Uploading…%(percent)s"), { percent }, true);
    return;
  }
  if (!failed) {
    state.textContent = _("Sending…");
    return;
  }
  const why = item.manual ? interpolate(_("Not sent: %(reason)s"), { reason: item.error }, true) : _("Not sent, retrying… ");
  state.append(el("span", null, why));
  const retry = button(_("Retry now"), "link-button");
  retry.addEventListener("click", () => view.channel.retry(item.client_id));
  state.append(retry);
  if (item.manual) {
    const drop = button(_("Discard"), "link-button");
    drop.addEventListener("click", () => {
      view.channel.discard(item.client_id);
      unacked.delete(item.client_id);
      li.remove();
      renderEmpty();
    });
    state.append(" ", drop);
  }
}

// The server stored one of ours. Until its `message` event arrives (any seq will do) it shows as
// sent, in its place, with what was typed.
export function acked(ack) {
  const li = unacked.get(ack.client_id);
  if (!li || ack.room !== view.slug) return;
  unacked.delete(ack.client_id);
  if (records.has(ack.id)) {
    li.remove(); // the message event came first
    return;
  }
  li.className = "message mine";
  li.dataset.state = "sent";
  li.dataset.seq = 0;
  const state = li.querySelector(".state");
  state.textContent = "✓";
  state.setAttribute("aria-label", _("sent"));
  const record = newRecord(ack.id, li);
  records.set(ack.id, record);
  place(record);
}

function renderEmpty() {
  const empty = view.list.querySelector(".empty");
  const count = records.size + unacked.size;
  if (count && empty) empty.remove();
  if (!count && !empty) view.list.append(el("li", "empty", _("No messages yet. Say hello!")));
}

// --- scrolling ---

export function isAtBottom() {
  const s = view.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
}

function scrollToBottom() {
  view.scroller.scrollTop = view.scroller.scrollHeight;
}

// --- history pages ---

// A history page (oldest first); `before` for the next page is the smallest seq we have, or
// `before - page length` when that is smaller (the page holds that many posted seqs below it).
function addPage(messages, hasMore, before = null) {
  for (const event of messages) upsert(event, { history: true });
  pages.hasMore = hasMore && messages.length > 0;
  let next = Math.min(...messages.map((m) => m.seq), pages.before ?? Infinity);
  if (before != null) next = Math.min(next, before - messages.length);
  pages.before = Number.isFinite(next) ? next : null;
  const box = view.olderBox;
  box.replaceChildren();
  if (pages.hasMore) {
    const older = button(_("Load older messages"), "link-button");
    older.addEventListener("click", () => loadOlder());
    box.append(older);
  } else if (records.size) {
    box.append(el("span", "muted", _("Beginning of the conversation")));
  }
}

// Resolves when the next older page is in; while one is being read, that one's promise (a quote
// waits for it rather than asking again).
export function loadOlder() {
  if (pages.loading) return pages.loading;
  if (!pages.hasMore || pages.before == null) return Promise.resolve();
  pages.loading = readOlder().finally(() => {
    pages.loading = null;
  });
  return pages.loading;
}

async function readOlder() {
  view.olderBox.classList.add("loading");
  const before = pages.before;
  const scroller = view.scroller;
  try {
    const page = await view.channel.get(`${view.slug}/messages?before=${before}&limit=${PAGE}`);
    const height = scroller.scrollHeight;
    const top = scroller.scrollTop;
    addPage(page.messages, page.has_more, before);
    // Keep what the reader is looking at where it was.
    scroller.scrollTop = top + (scroller.scrollHeight - height);
  } catch (err) {
    view.olderBox.replaceChildren(el("span", "error", _("Could not load older messages.")));
    const again = button(_("Try again"), "link-button");
    again.addEventListener("click", () => loadOlder());
    view.olderBox.append(" ", again);
  } finally {
    view.olderBox.classList.remove("loading");
  }
}

// resync: the cursor was too old to resume; start again from the latest page.
export async function reload() {
  for (const record of records.values()) {
    clearTimeout(record.expiry);
    record.li.remove();
  }
  records.clear();
  pages.before = null;
  pages.oldestId = Infinity;
  // Until the page is here nothing is known to be older than a live event: every one is kept
  // (upsert would drop them as changes to an unloaded page), and the page's own copies merge.
  pages.hasMore = false;
  try {
    const page = await view.channel.get(`${view.slug}/messages?limit=${PAGE}`);
    addPage(page.messages, page.has_more);
  } catch (err) {
    pages.hasMore = false;
  }
  renderEmpty();
  scrollToBottom();
}
