// The room page's entry module. It connects the channel (channel.js) to the message list
// (messages.js), the message actions (actions.js), the composer (composer.js) and the rooms list
// (sidebar.js), and shows what belongs to the room as a whole: the connection badge, who is
// online and who is typing, the lock and the title, and how far the user has read.
// URLs and limits come from the data-* attributes of #chat, filled by the template.

import { initActions } from "./actions.js";
import { Channel } from "./channel.js";
import { startComposer } from "./composer.js";
import { el } from "./dom.js";
import { acked, isAtBottom, loadOlder, redraw, redrawOwn, reload, showOutgoing, startList, upsert } from "./messages.js";
import { startRoomsToggle, startSidebar } from "./sidebar.js";

const BADGES = {
  connecting: ["Connecting…", "Opening a connection"],
  live: ["Live", "Connected over WebSocket"],
  fallback: ["Fallback", "WebSockets are unavailable; using long-polling"],
  reconnecting: ["Reconnecting…", "Connection lost; trying again"],
  offline: ["Offline", "No network; messages will be sent when you are back"],
};

// Timings other than the defaults (timing.js) come from the query string (tests use short ones):
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

class RoomView {
  constructor(root) {
    this.root = root;
    this.slug = root.dataset.room;
    this.me = root.dataset.user;
    this.moderator = root.dataset.moderator === "true";
    // Posting, editing and deleting are refused alike in a locked room (moderators excepted).
    this.blocked = root.dataset.locked === "true" && !this.moderator;
    this.scroller = document.getElementById("scroller");
    this.typingLine = document.getElementById("typing");
    this.badge = document.getElementById("conn-badge");
    this.roomStateAt = -Infinity; // when the last live `room` event arrived (performance.now())
    this.typists = new Map(); // username -> timer
    this.readSeq = 0;
    this.settings = settings();
    this.channel = new Channel({
      tokenUrl: root.dataset.apiToken,
      roomsUrl: root.dataset.apiRooms,
      attachmentsUrl: root.dataset.apiAttachments,
      completeUrl: root.dataset.apiAttachmentComplete,
      csrfToken: document.querySelector("#composer [name=csrfmiddlewaretoken]").value,
      user: this.me,
      timings: this.settings.timings,
      forcePoll: this.settings.forcePoll,
    });
  }

  start() {
    const root = this.root;
    initActions({
      channel: this.channel,
      slug: this.slug,
      me: this.me,
      maxBody: Number(root.dataset.maxBody) || 4000,
      // Seconds after posting that the server accepts an edit (CHAT_EDIT_WINDOW).
      editWindow: root.dataset.editWindow ? Number(root.dataset.editWindow) : 900,
      isBlocked: () => this.blocked,
      redraw,
      settle: (event) => upsert(event),
    });
    startList({
      list: document.getElementById("messages"),
      scroller: this.scroller,
      olderBox: document.getElementById("older"),
      channel: this.channel,
      slug: this.slug,
      me: this.me,
      initial: JSON.parse(document.getElementById("initial-messages").textContent),
      hasMore: root.dataset.hasMore === "true",
    });
    this.composer = startComposer({ root, channel: this.channel, slug: this.slug });
    this.sidebar = startSidebar({
      list: document.getElementById("room-list"),
      channel: this.channel,
      current: this.slug,
      roomUrl: root.dataset.roomUrl,
      interval: this.settings.timings.roomsPoll,
      // The rooms list carries `locked` and `title` too: it catches a `room` event this page
      // missed (they are not resumed), unless a live one arrived after the list was asked for.
      onCurrent: (room, askedAt) => {
        if (askedAt > this.roomStateAt) this.applyRoom(room);
      },
    });
    startRoomsToggle();
    this.bindChannel();
    this.bindScroll();
    this.setLocked(root.dataset.locked === "true");
    this.channel.open(this.slug, Number(root.dataset.seq));
    this.channel.start();
    this.markRead();
  }

  bindChannel() {
    const c = this.channel;
    const here = (handler) => (e) => e.detail.room === this.slug && handler(e.detail);
    c.addEventListener("message", (e) => {
      upsert(e.detail);
      this.clearTyping(e.detail.author);
      if (isAtBottom()) this.markRead();
    });
    c.addEventListener("outgoing", (e) => showOutgoing(e.detail));
    c.addEventListener("ack", (e) => acked(e.detail));
    c.addEventListener("resync", here(() => reload()));
    c.addEventListener("typing", here((event) => this.showTyping(event.user)));
    c.addEventListener("presence", here((event) => this.showPresence(event.users)));
    c.addEventListener(
      "room",
      here((event) => {
        this.roomStateAt = performance.now();
        this.applyRoom(event);
      }),
    );
    c.addEventListener("state", (e) => this.showState(e.detail.state));
    this.showState(c.state);
    document.addEventListener("visibilitychange", () => this.markRead());
  }

  bindScroll() {
    this.scroller.addEventListener("scroll", () => {
      if (this.scroller.scrollTop < 150) loadOlder();
      if (isAtBottom()) this.markRead();
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
      redrawOwn();
    }
    document.getElementById("locked").hidden = !locked;
    const notice = document.getElementById("locked-notice");
    notice.hidden = !locked;
    notice.textContent = this.moderator
      ? "This room is locked. You can still post as a moderator."
      : "This room is locked. Only moderators can post.";
    this.composer.setBlocked(blocked);
  }
}

const root = document.getElementById("chat");
// An older page of history (?before=) stays a plain page; the latest one is live.
if (root && root.dataset.latest === "true") {
  const view = new RoomView(root);
  window.chatRoom = view; // for the console
  view.start();
}
