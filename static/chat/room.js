// The room page: history, live messages, the composer, presence, typing and the connection badge.
// All user text goes into the page with textContent; URLs come from data-* attributes.

import { Channel } from "./channel.js";
import { startSidebar } from "./sidebar.js";

const PAGE = 50;
// setTimeout takes at most this (about 24 days); a longer edit window is checked again then.
const LONGEST_TIMER = 2 ** 31 - 1;
const BADGES = {
  connecting: ["Connecting…", "Opening a connection"],
  live: ["Live", "Connected over WebSocket"],
  fallback: ["Fallback", "WebSockets are unavailable; using long-polling"],
  reconnecting: ["Reconnecting…", "Connection lost; trying again"],
  offline: ["Offline", "No network; messages will be sent when you are back"],
};

// Timings other than the defaults come from the query string (tests use short ones):
// ?ws_timeout=1500&ws_failures=2&probe_min=500&probe_max=2000&poll_timeout=10&heartbeat=30000
//  &pong_timeout=10000&ack_timeout=10000&retry_min=1000&rooms_poll=30000&transport=poll
function settings() {
  const query = new URLSearchParams(location.search);
  const names = {
    wsTimeout: "ws_timeout",
    wsFailures: "ws_failures",
    probeMin: "probe_min",
    probeMax: "probe_max",
    pollTimeout: "poll_timeout",
    heartbeat: "heartbeat",
    pongTimeout: "pong_timeout",
    ackTimeout: "ack_timeout",
    retryMin: "retry_min",
    roomsPoll: "rooms_poll",
  };
  const timings = {};
  for (const [key, name] of Object.entries(names)) {
    const raw = query.get(name);
    const value = Number(raw);
    if (raw != null && raw !== "" && Number.isFinite(value) && value > 0) timings[key] = value;
  }
  return { timings, forcePoll: query.get("transport") === "poll" };
}

function localTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return ["", ""];
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return [time, date.toLocaleString()];
}

// Sizes as Django's filesizeformat writes them, so server-rendered and live messages agree.
function humanSize(bytes) {
  if (bytes < 1024) return `${bytes}\u00a0${bytes === 1 ? "byte" : "bytes"}`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)}\u00a0${units[unit]}`;
}

// Thumbnails are shown within this box; the width and height attributes reserve their place
// before they load, so the log does not jump under the reader.
const THUMB_BOX = [320, 240];

function fit(width, height) {
  if (!width || !height) return [null, null];
  const scale = Math.min(1, THUMB_BOX[0] / width, THUMB_BOX[1] / height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// `key` finds the button again after a re-render, to give the keyboard focus back to it.
function button(text, className, label, key) {
  const node = el("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  if (key) node.dataset.key = key;
  return node;
}

// The text of a refused change, as the report form words its own.
function refusal(what, err) {
  let text = `${what}: ${err.detail || err.code || "something went wrong"}`;
  if (err.retry_after) text += ` (try again in ${Math.ceil(err.retry_after)} s)`;
  return text;
}

class RoomView {
  constructor(root) {
    this.root = root;
    this.slug = root.dataset.room;
    this.me = root.dataset.user;
    this.moderator = root.dataset.moderator === "true";
    // Posting, editing and deleting are refused alike in a locked room (moderators excepted).
    this.blocked = root.dataset.locked === "true" && !this.moderator;
    this.maxBody = Number(root.dataset.maxBody) || 4000;
    // Seconds after posting that the server accepts an edit (CHAT_EDIT_WINDOW).
    this.editWindow = root.dataset.editWindow ? Number(root.dataset.editWindow) : 900;
    this.maxAttachment = Number(root.dataset.maxAttachment) || 0; // 0: only the server checks
    this.attachmentTypes = (root.dataset.attachmentTypes || "")
      .split(",")
      .map((type) => type.trim().toLowerCase())
      .filter(Boolean);
    this.list = document.getElementById("messages");
    this.scroller = document.getElementById("scroller");
    this.olderBox = document.getElementById("older");
    this.typingLine = document.getElementById("typing");
    this.form = document.getElementById("composer");
    this.input = document.getElementById("composer-body");
    this.badge = document.getElementById("conn-badge");
    this.submit = this.form.querySelector("button[type=submit]");
    this.fileInput = document.getElementById("composer-file");
    this.placeholder = this.input.placeholder;
    this.file = null; // the File attached to the next message
    this.reported = new Set(); // ids of messages reported from this page
    this.roomStateAt = -Infinity; // when the last live `room` event arrived (performance.now())
    this.byId = new Map(); // message id -> <li>
    this.byClient = new Map(); // client_id -> <li> of a message not yet acknowledged
    this.typists = new Map(); // username -> timer
    this.hasMore = root.dataset.hasMore === "true";
    this.before = null; // the `before` of the next history page
    this.oldestId = Infinity;
    this.loadingOlder = false;
    this.lastTyping = 0;
    this.readSeq = 0;

    const { timings, forcePoll } = settings();
    this.channel = new Channel({
      tokenUrl: root.dataset.apiToken,
      roomsUrl: root.dataset.apiRooms,
      attachmentsUrl: root.dataset.apiAttachments,
      completeUrl: root.dataset.apiAttachmentComplete,
      csrfToken: this.form.querySelector("[name=csrfmiddlewaretoken]").value,
      user: this.me,
      timings,
      forcePoll,
    });
    this.sidebar = startSidebar({
      list: document.getElementById("room-list"),
      channel: this.channel,
      current: this.slug,
      roomUrl: root.dataset.roomUrl,
      interval: timings.roomsPoll,
      // The rooms list carries `locked` and `title` too: it catches a `room` event this page
      // missed (they are not resumed), unless a live one arrived after the list was asked for.
      onCurrent: (room, askedAt) => {
        if (askedAt > this.roomStateAt) this.applyRoom(room);
      },
    });
  }

  start() {
    const initial = JSON.parse(document.getElementById("initial-messages").textContent);
    this.list.replaceChildren();
    this.addPage(initial, this.hasMore);
    for (const item of this.channel.pending(this.slug)) this.showOutgoing(item);
    this.renderEmpty();
    this.scrollToBottom();
    this.bindChannel();
    this.bindComposer();
    this.bindAttachments();
    this.bindScroll();
    this.bindRoomsToggle();
    this.setLocked(this.root.dataset.locked === "true");
    this.channel.open(this.slug, Number(this.root.dataset.seq));
    this.channel.start();
    this.markRead();
  }

  // --- history ---

  // A history page (oldest first); `before` for the next page is the smallest seq we have, or
  // `before - page length` when that is smaller (the page holds that many posted seqs below it).
  addPage(messages, hasMore, before = null) {
    for (const event of messages) this.upsert(event, { history: true });
    this.hasMore = hasMore && messages.length > 0;
    let next = Math.min(...messages.map((m) => m.seq), this.before ?? Infinity);
    if (before != null) next = Math.min(next, before - messages.length);
    this.before = Number.isFinite(next) ? next : null;
    this.olderBox.replaceChildren();
    if (this.hasMore) {
      const older = button("Load older messages", "link-button");
      older.addEventListener("click", () => this.loadOlder());
      this.olderBox.append(older);
    } else if (this.byId.size) {
      this.olderBox.append(el("span", "muted", "Beginning of the conversation"));
    }
  }

  async loadOlder() {
    if (this.loadingOlder || !this.hasMore || this.before == null) return;
    this.loadingOlder = true;
    this.olderBox.classList.add("loading");
    const before = this.before;
    try {
      const page = await this.channel.get(
        `${this.slug}/messages?before=${before}&limit=${PAGE}`,
      );
      const height = this.scroller.scrollHeight;
      const top = this.scroller.scrollTop;
      this.addPage(page.messages, page.has_more, before);
      // Keep what the reader is looking at where it was.
      this.scroller.scrollTop = top + (this.scroller.scrollHeight - height);
    } catch (err) {
      this.olderBox.replaceChildren(el("span", "error", "Could not load older messages."));
      const again = button("Try again", "link-button");
      again.addEventListener("click", () => this.loadOlder());
      this.olderBox.append(" ", again);
    } finally {
      this.loadingOlder = false;
      this.olderBox.classList.remove("loading");
    }
  }

  async reload() {
    // resync: the cursor was too old to resume; start again from the latest page.
    for (const li of this.byId.values()) {
      clearTimeout(li.editExpiry);
      li.remove();
    }
    this.byId.clear();
    this.before = null;
    this.oldestId = Infinity;
    // Until the page is here nothing is known to be older than a live event: every one is kept
    // (upsert would drop them as changes to an unloaded page), and the page's own copies merge.
    this.hasMore = false;
    try {
      const page = await this.channel.get(`${this.slug}/messages?limit=${PAGE}`);
      this.addPage(page.messages, page.has_more);
    } catch (err) {
      this.hasMore = false;
    }
    this.renderEmpty();
    this.scrollToBottom();
  }

  // --- messages ---

  upsert(event, { history = false } = {}) {
    if (event.room !== this.slug) return;
    let li = this.byId.get(event.id);
    if (!li && event.client_id && event.author === this.me) {
      li = this.byClient.get(event.client_id);
      if (li) this.byClient.delete(event.client_id);
    }
    if (!li && !history && this.hasMore && event.id < this.oldestId) {
      // A change to a message on a page not loaded yet: that page brings its current state.
      return;
    }
    const atBottom = this.isAtBottom();
    const isNew = !li;
    if (!li) li = el("li");
    const known = li.dataset.seq ? Number(li.dataset.seq) : -1;
    if (event.seq >= known) this.render(li, event);
    li.dataset.id = event.id;
    this.byId.set(event.id, li);
    if (history) this.oldestId = Math.min(this.oldestId, event.id);
    this.place(li, event.id);
    if (isNew) this.renderEmpty();
    if (!history && atBottom) this.scrollToBottom();
  }

  // Also called again with the same event when only the page's side changed (an edit opened or
  // in flight, the edit window over, the room locked), so everything it shows comes from `li`.
  render(li, event) {
    li.event = event;
    const mine = event.author === this.me;
    if (event.deleted) {
      // Nothing is left to change: an open editor or confirmation goes (a refusal note stays).
      li.editor = null;
      li.confirmBox = null;
    }
    const pending = li.change && !event.deleted ? li.change : null;
    li.className =
      "message" + (mine ? " mine" : "") + (event.deleted ? " deleted" : "") + (pending ? " changing" : "");
    li.dataset.seq = event.seq;
    li.dataset.state = "sent";
    if (pending) li.dataset.change = pending.kind;
    else delete li.dataset.change;
    const meta = el("div", "meta");
    meta.append(el("span", "author", event.author));
    const [short, long] = localTime(event.created);
    const time = el("time", null, short);
    time.dateTime = event.created;
    time.title = long;
    meta.append(time);
    if (event.edited && !event.deleted) meta.append(el("span", "edited", "edited"));
    if (pending) {
      meta.append(el("span", "state", pending.kind === "edit" ? "Saving…" : "Deleting…"));
    } else {
      meta.append(el("span", "state", "✓"));
      meta.lastChild.setAttribute("aria-label", "sent");
    }
    const parts = [meta];
    if (li.editor) {
      parts.push(li.editor); // an edit being written survives every re-render
    } else if (event.deleted || event.body || !event.attachment || pending) {
      // A message may be only a file; an empty body then takes no room.
      let text = event.deleted ? "message deleted" : event.body;
      if (pending && pending.kind === "edit") text = pending.body;
      parts.push(el("div", "body", text));
    }
    if (event.attachment && !event.deleted) parts.push(this.attachmentNode(event.attachment));
    if (!mine && !event.deleted) {
      meta.append(this.reportButton(li, event));
      if (li.reportBox) parts.push(li.reportBox); // a report being written survives an edit
    } else {
      li.reportBox = null;
    }
    if (mine && !event.deleted) {
      meta.append(this.ownActions(li, event));
      if (li.confirmBox) parts.push(li.confirmBox);
    }
    if (li.note) parts.push(li.note);
    this.syncChangeControls(li);
    this.keepFocus(li, () => li.replaceChildren(...parts));
    this.scheduleEditExpiry(li, event);
  }

  // Re-rendering replaces a message's nodes: whoever was typing in its editor or report form, or
  // was on one of its buttons, keeps the keyboard there (or on the message, if the button went).
  keepFocus(li, replace) {
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
      (key && li.querySelector(`[data-key="${key}"]:not(:disabled)`)) ||
      li.querySelector(".meta button:not(:disabled)");
    if (again) {
      again.focus({ preventScroll: true });
    } else {
      li.tabIndex = -1;
      li.focus({ preventScroll: true });
    }
  }

  attachmentNode(a) {
    const box = el("div", "attachment");
    if (a.thumbnail) {
      box.classList.add("image");
      const link = el("a");
      link.href = a.url;
      const img = el("img");
      img.src = a.thumbnail;
      img.alt = a.name;
      const [width, height] = fit(a.width, a.height);
      if (width) {
        img.width = width;
        img.height = height;
      }
      img.loading = "lazy";
      link.append(img);
      box.append(link);
    } else {
      box.classList.add("file");
      const link = el("a", "file-name", a.name);
      link.href = a.url;
      link.download = a.name;
      box.append(link, " ", el("span", "size", humanSize(a.size)));
    }
    return box;
  }

  // --- editing and deleting one's own messages ---

  editTimeLeft(event) {
    const created = Date.parse(event.created);
    if (Number.isNaN(created)) return 0;
    return created + this.editWindow * 1000 - Date.now();
  }

  ownActions(li, event) {
    const box = el("span", "own-actions");
    // The server decides (its clock, its window); the button only goes where it would say no.
    if (this.editTimeLeft(event) > 0 || li.editor) {
      const edit = button("Edit", "link-button edit-button", "Edit your message", "edit");
      edit.addEventListener("click", () => this.openEditor(li));
      box.append(edit);
    }
    const remove = button("Delete", "link-button delete-button", "Delete your message", "delete");
    remove.addEventListener("click", () => this.confirmDelete(li));
    box.append(remove);
    for (const node of box.children) node.disabled = this.blocked || Boolean(li.change);
    return box;
  }

  // The Edit button goes when the window closes, with no event to say so.
  scheduleEditExpiry(li, event) {
    clearTimeout(li.editExpiry);
    const left = this.editTimeLeft(event);
    if (event.author !== this.me || event.deleted || left <= 0) return;
    li.editExpiry = setTimeout(() => {
      if (li.isConnected && li.event === event) this.render(li, event);
    }, Math.min(left + 50, LONGEST_TIMER));
  }

  // In a locked room the server refuses the change: Save and Delete in an open editor or
  // confirmation are off too, and come back with the unlock, the text still there.
  syncChangeControls(li) {
    for (const box of [li.editor, li.confirmBox]) {
      const go = box && box.querySelector("[data-go]");
      if (go) go.disabled = this.blocked;
    }
  }

  openEditor(li) {
    if (li.editor) {
      li.editor.querySelector("textarea").focus();
      return;
    }
    const form = el("form", "edit-form");
    const input = el("textarea");
    input.value = li.event.body;
    input.maxLength = this.maxBody;
    input.rows = 1;
    input.setAttribute("aria-label", "Edited message");
    const hint = el("span", "edit-hint", "Enter saves, Esc cancels");
    hint.id = `edit-hint-${li.event.id}`;
    input.setAttribute("aria-describedby", hint.id);
    const save = el("button", "save", "Save");
    save.type = "submit";
    save.dataset.go = "";
    const cancel = button("Cancel", "link-button");
    const status = el("p", "edit-status");
    status.setAttribute("role", "status");
    const actions = el("div", "edit-actions");
    actions.append(save, cancel, hint, status);
    form.append(input, actions);

    const grow = () => {
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight + 2, 240)}px`;
    };
    const close = () => {
      li.editor = null;
      this.render(li, li.event);
      const edit = li.querySelector(".edit-button:not(:disabled)");
      if (edit) edit.focus();
    };
    cancel.addEventListener("click", close);
    input.addEventListener("input", grow);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        close();
      } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const body = input.value;
      if (body === li.event.body) {
        close(); // nothing to save: no request, no "edited"
        return;
      }
      if (!body.trim()) {
        status.textContent = "A message cannot be empty; delete it instead.";
        return;
      }
      if (body.length > this.maxBody || this.blocked) return;
      li.editor = null;
      this.change(li, "edit", body);
    });

    li.editor = form;
    li.confirmBox = null;
    li.note = null; // a new try: the last refusal is old news
    this.render(li, li.event);
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
    grow();
  }

  // Asked inside the message, not with window.confirm, which would stop every live update.
  confirmDelete(li) {
    if (li.confirmBox) {
      li.confirmBox.querySelector(".link-button").focus();
      return;
    }
    const box = el("div", "confirm-delete");
    box.setAttribute("role", "group");
    const question = el("span", null, "Delete this message for everyone?");
    question.id = `confirm-delete-${li.event.id}`;
    box.setAttribute("aria-labelledby", question.id);
    const yes = button("Delete", "danger");
    yes.dataset.go = "";
    const no = button("Cancel", "link-button");
    box.append(question, yes, no);
    const close = () => {
      li.confirmBox = null;
      this.render(li, li.event);
      const again = li.querySelector(".delete-button:not(:disabled)");
      if (again) again.focus();
    };
    no.addEventListener("click", close);
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") close();
    });
    yes.addEventListener("click", () => {
      if (this.blocked) return;
      li.confirmBox = null;
      this.change(li, "delete");
    });
    li.confirmBox = box;
    li.note = null;
    this.render(li, li.event);
    // The safe answer first: Enter on a Delete pressed twice by mistake keeps the message.
    no.focus();
  }

  // Shown as pending until the server answers; a refusal puts the message back as the server has
  // it, with the reason. The answer is shown at once: the `message` event for the change, which
  // every subscriber gets, may come later (it replaces this with the server's copy).
  async change(li, kind, body = null) {
    const id = li.event.id;
    li.change = { kind, body };
    li.note = null;
    this.render(li, li.event);
    let error = null;
    let answer = null;
    try {
      answer =
        kind === "edit" ? await this.channel.edit(this.slug, id, body) : await this.channel.remove(this.slug, id);
    } catch (err) {
      error = err;
    }
    li.change = null;
    if (error) {
      li.note = this.changeNote(li, kind === "edit" ? "Not saved" : "Not deleted", error);
      this.render(li, li.event);
    } else {
      this.upsert(this.changed(li.event, kind, body, answer));
    }
    // The keyboard waited on the message while its buttons were off: back to the first of them.
    if (document.activeElement === li) {
      const next = li.querySelector(".meta button:not(:disabled)");
      if (next) next.focus({ preventScroll: true });
    }
  }

  // The message as the server has it after the change: over HTTP the answer is the changed
  // `message` event; over a socket it is an `ack` with the change's seq.
  changed(event, kind, body, answer) {
    if (answer && answer.type === "message") return answer;
    // The event came first (or the change changed nothing): it is the server's copy.
    if (!answer || answer.seq <= event.seq) return event;
    const seq = answer.seq;
    if (kind === "edit") return { ...event, seq, body, edited: event.edited || new Date().toISOString() };
    return { ...event, seq, body: "", deleted: true, attachment: null };
  }

  changeNote(li, what, err) {
    const note = el("p", "change-note error");
    note.setAttribute("role", "alert");
    note.dataset.code = err.code || "";
    const dismiss = button("Dismiss", "link-button", "Dismiss this notice");
    dismiss.addEventListener("click", () => {
      li.note = null;
      this.render(li, li.event);
    });
    note.append(el("span", null, refusal(what, err)), " ", dismiss);
    return note;
  }

  // --- reports ---

  reportButton(li, event) {
    const done = this.reported.has(event.id);
    const label = done ? "Reported" : `Report this message by ${event.author}`;
    const report = button(done ? "Reported" : "Report", "link-button report-button", label, "report");
    report.disabled = done;
    report.addEventListener("click", () => this.openReport(li, event.id));
    return report;
  }

  // A small form inside the message: the reason is required by the server, and a dialog the
  // page draws keeps the log readable (window.prompt would block every live update behind it).
  openReport(li, id) {
    if (li.reportBox) {
      li.reportBox.querySelector("input").focus();
      return;
    }
    const form = el("form", "report-form");
    const label = el("label", null, "Why report this message?");
    const input = el("input");
    input.name = "reason";
    input.required = true;
    input.maxLength = 500;
    input.autocomplete = "off";
    label.append(input);
    const send = el("button", null, "Send report");
    send.type = "submit";
    const cancel = button("Cancel", "link-button");
    const status = el("p", "report-status");
    status.setAttribute("role", "status");
    form.append(label, send, cancel, status);
    const close = () => {
      li.reportBox = null;
      this.render(li, li.event);
      const again = li.querySelector(".report-button:not(:disabled)");
      if (again) again.focus();
    };
    cancel.addEventListener("click", close);
    form.addEventListener("keydown", (e) => {
      if (e.key === "Escape") close();
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const reason = input.value.trim();
      if (!reason) return;
      send.disabled = true;
      status.className = "report-status";
      status.textContent = "Sending…";
      try {
        await this.channel.report(this.slug, id, reason);
      } catch (err) {
        send.disabled = false;
        status.className = "report-status error";
        status.dataset.code = err.code || "";
        status.textContent = refusal("Not reported", err);
        return;
      }
      this.reported.add(id);
      const thanks = el("p", "report-status ok", "Reported. The moderators will take a look.");
      thanks.setAttribute("role", "status");
      li.reportBox = thanks;
      this.render(li, li.event);
    });
    li.reportBox = form;
    this.render(li, li.event);
    input.focus();
  }

  // Messages in posting order: ids are taken under the room's lock, so within a room id order is
  // posting order (and, unlike `seq`, it does not move when a message is edited). Messages still
  // waiting for their ack stay at the end.
  place(li, id) {
    let before = null;
    for (let node = this.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node === li) continue;
      if (node.dataset.id && Number(node.dataset.id) < id) break;
      before = node;
    }
    if (li.parentNode !== this.list || li.nextElementSibling !== before) {
      this.list.insertBefore(li, before);
    }
  }

  showOutgoing(item) {
    if (item.room !== this.slug) return;
    let li = this.byClient.get(item.client_id);
    if (!li) {
      li = el("li", "message mine pending"); // a .message before renderEmpty counts it
      this.byClient.set(item.client_id, li);
      const meta = el("div", "meta");
      const [short, long] = localTime(new Date().toISOString());
      const time = el("time", null, short);
      time.title = long;
      meta.append(el("span", "author", this.me), time, el("span", "state"));
      li.append(meta);
      if (item.body || !item.fileInfo) li.append(el("div", "body", item.body));
      if (item.fileInfo) {
        // Not a link yet: the file has no address until it is uploaded.
        const box = el("div", "attachment file");
        box.append(el("span", "file-name", item.fileInfo.name), " ", el("span", "size", humanSize(item.fileInfo.size)));
        li.append(box);
      }
      this.list.append(li);
      this.renderEmpty();
      this.scrollToBottom();
    }
    const failed = item.state === "failed";
    const uploading = item.state === "uploading";
    li.className = "message mine " + (failed ? "failed" : "pending");
    li.dataset.state = failed ? "failed" : uploading ? "uploading" : "pending";
    const state = li.querySelector(".state");
    state.replaceChildren();
    if (uploading) {
      const percent = item.progress ? ` ${Math.floor(item.progress * 100)}%` : "";
      state.textContent = `Uploading…${percent}`;
      return;
    }
    if (!failed) {
      state.textContent = "Sending…";
      return;
    }
    state.append(el("span", null, item.manual ? `Not sent: ${item.error}` : "Not sent, retrying… "));
    const retry = button("Retry now", "link-button");
    retry.addEventListener("click", () => this.channel.retry(item.client_id));
    state.append(retry);
    if (item.manual) {
      const drop = button("Discard", "link-button");
      drop.addEventListener("click", () => {
        this.channel.discard(item.client_id);
        this.byClient.delete(item.client_id);
        li.remove();
        this.renderEmpty();
      });
      state.append(" ", drop);
    }
  }

  acked(ack) {
    const li = this.byClient.get(ack.client_id);
    if (!li || ack.room !== this.slug) return;
    this.byClient.delete(ack.client_id);
    if (this.byId.has(ack.id)) {
      li.remove(); // the message event came first
      return;
    }
    li.className = "message mine";
    li.dataset.state = "sent";
    li.dataset.id = ack.id;
    li.dataset.seq = 0; // the message event (any seq) brings the server's copy
    const state = li.querySelector(".state");
    state.textContent = "✓";
    state.setAttribute("aria-label", "sent");
    this.byId.set(ack.id, li);
    this.place(li, ack.id);
  }

  renderEmpty() {
    const empty = this.list.querySelector(".empty");
    const count = this.list.querySelectorAll(".message").length;
    if (count && empty) empty.remove();
    if (!count && !empty) this.list.append(el("li", "empty", "No messages yet. Say hello!"));
  }

  // --- scrolling ---

  isAtBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  bindScroll() {
    this.scroller.addEventListener("scroll", () => {
      if (this.scroller.scrollTop < 150) this.loadOlder();
      if (this.isAtBottom()) this.markRead();
    });
  }

  markRead() {
    const seq = this.channel.cursor(this.slug);
    if (seq == null || seq <= this.readSeq || document.visibilityState !== "visible") return;
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => {
      const now = this.channel.cursor(this.slug);
      if (now > this.readSeq) {
        this.readSeq = now;
        this.channel.read(this.slug, now);
      }
    }, 800);
  }

  // --- the rest of the room ---

  bindChannel() {
    const t = this.channel;
    t.addEventListener("message", (e) => {
      this.upsert(e.detail);
      this.clearTyping(e.detail.author);
      if (this.isAtBottom()) this.markRead();
    });
    t.addEventListener("outgoing", (e) => this.showOutgoing(e.detail));
    t.addEventListener("ack", (e) => this.acked(e.detail));
    t.addEventListener("resync", (e) => e.detail.room === this.slug && this.reload());
    t.addEventListener("typing", (e) => e.detail.room === this.slug && this.showTyping(e.detail.user));
    t.addEventListener("presence", (e) => e.detail.room === this.slug && this.showPresence(e.detail.users));
    t.addEventListener("room", (e) => {
      if (e.detail.room !== this.slug) return;
      this.roomStateAt = performance.now();
      this.applyRoom(e.detail);
    });
    t.addEventListener("state", (e) => this.showState(e.detail.state));
    this.showState(t.state);
    document.addEventListener("visibilitychange", () => this.markRead());
  }

  showState(state) {
    const [text, title] = BADGES[state] || [state, ""];
    this.badge.dataset.state = state;
    this.badge.textContent = text;
    this.badge.title = title;
  }

  showTyping(user) {
    if (user === this.me) return;
    clearTimeout(this.typists.get(user));
    this.typists.set(user, setTimeout(() => this.clearTyping(user), 4000));
    this.renderTyping();
  }

  clearTyping(user) {
    if (!this.typists.has(user)) return;
    clearTimeout(this.typists.get(user));
    this.typists.delete(user);
    this.renderTyping();
  }

  renderTyping() {
    const names = [...this.typists.keys()];
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    this.typingLine.textContent = text;
  }

  showPresence(users) {
    const list = document.getElementById("online-list");
    const sorted = [...new Set(users)].sort();
    list.replaceChildren(
      ...sorted.map((name) => {
        const li = el("li", name === this.me ? "me" : null);
        li.append(el("span", "dot"), el("span", null, name));
        return li;
      }),
    );
    if (!sorted.length) list.append(el("li", "muted", "Nobody"));
    const count = document.getElementById("online-count");
    count.textContent = `${sorted.length} online`;
    count.title = sorted.join(", ");
    count.hidden = false;
  }

  applyRoom({ locked, title }) {
    if (typeof locked === "boolean") this.setLocked(locked);
    if (!title) return;
    this.root.querySelector(".room-title-text").textContent = title;
    document.title = title;
    this.scroller.setAttribute("aria-label", `Messages in ${title}`);
    const name = document.querySelector(`#room-list li[data-slug="${CSS.escape(this.slug)}"] .room-name`);
    if (name) name.textContent = title;
  }

  // The server refuses posts to a locked room except from its moderators (and site staff), so
  // the composer follows the same rule; the notice says why it is off.
  setLocked(locked) {
    const blocked = locked && !this.moderator;
    if (blocked !== this.blocked) {
      this.blocked = blocked;
      // Edit and Delete follow the composer: the server would refuse them too.
      for (const li of this.byId.values()) {
        if (li.event && li.event.author === this.me) this.render(li, li.event);
      }
    }
    document.getElementById("locked").hidden = !locked;
    const notice = document.getElementById("locked-notice");
    notice.hidden = !locked;
    notice.textContent = this.moderator
      ? "This room is locked. You can still post as a moderator."
      : "This room is locked. Only moderators can post.";
    this.input.disabled = blocked;
    this.submit.disabled = blocked;
    if (this.fileInput) this.fileInput.disabled = blocked;
    this.form.classList.toggle("locked", blocked);
    this.input.placeholder = blocked ? "This room is locked" : this.placeholder;
  }

  bindComposer() {
    const max = this.maxBody;
    const grow = () => {
      this.input.style.height = "auto";
      this.input.style.height = `${Math.min(this.input.scrollHeight, 160)}px`;
    };
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const body = this.input.value;
      if ((!body.trim() && !this.file) || body.length > max) return;
      this.channel.send(this.slug, body.trim() ? body : "", this.file);
      this.setFile(null);
      this.input.value = "";
      grow();
      this.input.focus();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.input.addEventListener("input", () => {
      grow();
      const now = Date.now();
      if (this.input.value && now - this.lastTyping > 3000) {
        this.lastTyping = now;
        this.channel.typing(this.slug);
      }
    });
  }

  // --- attachments ---

  bindAttachments() {
    // Without the attachments endpoint (or without JavaScript: a plain form post cannot carry
    // the upload steps) the controls stay hidden.
    if (!this.fileInput || !this.root.dataset.apiAttachments) return;
    document.getElementById("attach").hidden = false;
    if (this.attachmentTypes.length) this.fileInput.accept = this.attachmentTypes.join(",");
    this.fileInput.addEventListener("change", () => {
      const file = this.fileInput.files[0];
      this.fileInput.value = ""; // choosing the same file again still fires `change`
      if (file) this.setFile(file);
    });
    document.getElementById("attachment-remove").addEventListener("click", () => {
      this.setFile(null);
      this.input.focus();
    });
  }

  refusal(file) {
    if (this.maxAttachment && file.size > this.maxAttachment) {
      return `${file.name} is ${humanSize(file.size)}; files can be up to ${humanSize(this.maxAttachment)}.`;
    }
    const type = (file.type || "").toLowerCase();
    const name = file.name.toLowerCase();
    // An unknown type (an empty file.type) is left to the server, which reads the content anyway.
    const allowed =
      !this.attachmentTypes.length ||
      !type ||
      this.attachmentTypes.some(
        (t) => t === type || (t.endsWith("/*") && type.startsWith(t.slice(0, -1))) || (t.startsWith(".") && name.endsWith(t)),
      );
    if (!allowed) return `${file.name} cannot be sent here: ${type} files are not accepted.`;
    return null;
  }

  setFile(file) {
    const chip = document.getElementById("attachment-chip");
    const error = document.getElementById("attach-error");
    error.textContent = "";
    error.hidden = true;
    const refused = file && this.refusal(file);
    if (refused) {
      // Refused here, before any upload: the server would refuse it too, after the wait.
      error.textContent = refused;
      error.hidden = false;
      file = null;
    }
    this.file = file || null;
    // A message may be only a file; without one the text is required again.
    this.input.required = !this.file;
    chip.hidden = !this.file;
    if (this.file) {
      chip.querySelector(".file-name").textContent = this.file.name;
      chip.querySelector(".size").textContent = humanSize(this.file.size);
    }
  }

  bindRoomsToggle() {
    const toggle = document.getElementById("rooms-toggle");
    const sidebar = document.getElementById("sidebar");
    toggle.hidden = false;
    const set = (open) => {
      sidebar.classList.toggle("open", open);
      toggle.setAttribute("aria-expanded", String(open));
    };
    toggle.addEventListener("click", (e) => {
      e.stopPropagation();
      const open = !sidebar.classList.contains("open");
      set(open);
      // On a phone the list covers the room: put the keyboard in it, and Escape brings it back.
      if (open) (sidebar.querySelector("[aria-current]") || sidebar.querySelector("a")).focus();
    });
    sidebar.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && sidebar.classList.contains("open")) {
        set(false);
        toggle.focus();
      }
    });
    document.addEventListener("click", (e) => {
      if (sidebar.classList.contains("open") && !sidebar.contains(e.target)) set(false);
    });
  }
}

const root = document.getElementById("chat");
// An older page of history (?before=) stays a plain page; the latest one is live.
if (root && root.dataset.latest === "true") {
  const view = new RoomView(root);
  window.chatRoom = view; // for the console and the browser tests
  view.start();
}
