// The room page's entry module. It connects the channel (channel.js) to the message list
// (messages.js), the message actions (actions.js), the composer (composer.js, with @mentions from
// mentions.js), the rooms list and its badges (sidebar.js, fed by the user's stream), the title
// and system notifications (notify.js) and direct messages (dms.js), and shows what belongs to
// the room as a whole: the connection badge, who is online and who is typing, the lock and the
// title, and how far the user has read.
// URLs and limits come from the data-* attributes of #chat, filled by the template.

import { announce, startSkipLinks } from "./a11y.js";
import { initActions } from "./actions.js";
import { Channel } from "./channel.js";
import { startComposer } from "./composer.js";
import { messageButton, startDms } from "./dms.js";
import { el, userText } from "./dom.js";
import { csrfToken } from "./http.js";
import { _, interpolate, ngettext } from "./i18n.js";
import { startMentionSuggestions } from "./mentions.js";
import { acked, isAtBottom, loadOlder, redraw, redrawOwn, reload, showOutgoing, startList, upsert } from "./messages.js";
import { Alerts, startLevelControl } from "./notify.js";
import { startScroll } from "./scroll.js";
import { RoomsList, startRoomsToggle } from "./sidebar.js";

const BADGES = {
  connecting: [_("Connecting…"), _("Opening a connection")],
  live: [_("Live"), _("Connected over WebSocket")],
  fallback: [_("Fallback"), _("WebSockets are unavailable; using long-polling")],
  reconnecting: [_("Reconnecting…"), _("Connection lost; trying again")],
  offline: [_("Offline"), _("No network; messages will be sent when you are back")],
  ended: [_("Disconnected"), _("The server ended this connection")],
};

// Timings other than the defaults (timing.js) come from the query string (tests use short ones):
// ?ws_timeout=1500&ws_failures=2&probe_min=500&probe_max=2000&poll_timeout=10&heartbeat=30000
//  &pong_timeout=10000&ack_timeout=10000&retry_min=1000&transport=poll
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
    this.dm = root.dataset.kind === "dm";
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
    this.online = [];
    this.channel = new Channel({
      tokenUrl: root.dataset.apiToken,
      roomsUrl: root.dataset.apiRooms,
      userPollUrl: root.dataset.apiUserPoll,
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
    startSkipLinks();
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
    this.scroll = startScroll({
      root,
      scroller: this.scroller,
      list: document.getElementById("messages"),
      button: document.getElementById("jump-latest"),
      isAtBottom,
      onBottom: () => this.markRead(),
      loadOlder,
      hasOlder: () => Boolean(document.querySelector("#older button")),
    });
    this.composer = startComposer({ root, channel: this.channel, slug: this.slug });
    startMentionSuggestions({
      input: document.getElementById("composer-body"),
      channel: this.channel,
      slug: this.slug,
      me: this.me,
      online: () => this.online,
    });
    this.startNotifications();
    startDms({
      urls: { dms: root.dataset.apiDms, users: root.dataset.apiUsers, room: root.dataset.roomUrl },
      csrf: () => this.channel.api.csrf(),
      me: this.me,
    });
    startRoomsToggle();
    this.bindChannel();
    this.bindScroll();
    this.setLocked(root.dataset.locked === "true");
    this.channel.open(this.slug, Number(root.dataset.seq));
    this.channel.start();
    // Opened at the "new messages" line: read once the reader gets to the bottom, not before.
    this.scroll.opened.then(() => isAtBottom() && this.markRead());
  }

  startNotifications() {
    const root = this.root;
    const reading = () => document.visibilityState === "visible";
    this.rooms = new RoomsList({
      lists: { room: document.getElementById("room-list"), dm: document.getElementById("dm-list") },
      roomUrl: root.dataset.roomUrl,
      current: this.slug,
      isReading: reading,
      onChange: () => this.alerts && this.alerts.updateTitle(),
    });
    this.alerts = new Alerts({
      list: this.rooms,
      roomUrl: root.dataset.roomUrl,
      current: this.slug,
      title: document.title,
    });
    this.level = startLevelControl({
      select: document.getElementById("notify-level"),
      url: root.dataset.apiNotifications,
      csrf: () => csrfToken(this.channel.api.csrfFallback),
      list: this.rooms,
      slug: this.slug,
    });
    const c = this.channel;
    c.addEventListener("rooms", (e) => {
      const { rooms, askedAt } = e.detail;
      this.rooms.show(rooms);
      const current = rooms.find((room) => room.slug === this.slug);
      if (current && this.level) this.level.sync(this.rooms.get(this.slug));
      // The list carries `locked` and `title` too: it catches a `room` event this page missed
      // (they are not resumed), unless a live one arrived after the list was asked for.
      if (current && askedAt > this.roomStateAt) this.applyRoom(current);
      this.alerts.updateTitle();
    });
    c.addEventListener("notify", (e) => {
      const event = e.detail;
      // Left or removed (sidebar.js, roomadmin.js): the list drops it, whichever room it is.
      // Removed from the open room: it ends here with the reason, what waits to be sent fails
      // with it, and the page stays (the directory would hide why).
      if (event.kind === "left") {
        if (event.removed && event.room === this.slug) c.endRoom(this.slug, _("You were removed from this room."));
        this.rooms.apply(event);
      }
      // The open room, looked at, is being read: its counts are about to be zero anyway.
      else if (event.room === this.slug && reading()) this.rooms.read(this.slug);
      else if (!this.rooms.apply(event)) c.user.load(); // a conversation this page has not listed
      this.alerts.notify(event);
    });
    document.addEventListener("visibilitychange", () => {
      if (!reading()) {
        this.alerts.updateTitle();
        return;
      }
      this.rooms.read(this.slug);
      // Back to the tab: the list again, for what no stream carries (other rooms' titles, a
      // lock this page missed). Not a poll: once per return.
      c.user.load();
    });
  }

  bindChannel() {
    const c = this.channel;
    const here = (handler) => (e) => e.detail.room === this.slug && handler(e.detail);
    c.addEventListener("message", (e) => {
      const event = e.detail;
      const fresh = event.room === this.slug && !document.querySelector(`#messages li[data-id="${event.id}"]`);
      upsert(event);
      if (fresh && event.author !== this.me) {
        this.scroll.arrivedOne();
        announce(event);
      }
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
    c.addEventListener("ended", (e) => {
      if (!e.detail.room || e.detail.room === this.slug) this.end(e.detail.detail);
    });
    this.showState(c.state);
    document.addEventListener("visibilitychange", () => this.markRead());
  }

  bindScroll() {
    this.scroller.addEventListener("scroll", () => {
      if (this.scroll.opening()) return;
      if (this.scroller.scrollTop < 150) loadOlder();
      if (isAtBottom()) this.markRead();
    });
  }

  markRead() {
    if (this.scroll && this.scroll.opening()) return; // not the reader's scrolling
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

  // Banned or removed: the page says why, and nothing more can be sent from it.
  end(reason) {
    this.ended = reason;
    const alert = document.getElementById("page-alert");
    alert.textContent = interpolate(_("%(reason)s You can still read what is on this page, but not send."), { reason }, true);
    alert.hidden = false;
    this.composer.end(reason);
    this.showState("ended");
  }

  showState(state) {
    if (this.ended) state = "ended"; // the room's own connection is over, whatever the rest does
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
    if (names.length === 1) text = interpolate(_("%(name)s is typing…"), { name: names[0] }, true);
    else if (names.length === 2) text = interpolate(_("%(first)s and %(second)s are typing…"), { first: names[0], second: names[1] }, true);
    else if (names.length > 2) text = _("Several people are typing…");
    this.typingLine.textContent = text;
  }

  showPresence(users) {
    const list = document.getElementById("online-list");
    const sorted = [...new Set(users)].sort();
    this.online = sorted;
    list.replaceChildren(
      ...sorted.map((name) => {
        const li = el("li", name === this.me ? "me" : null);
        li.append(el("span", "dot"), userText("span", "name", name));
        const dm = messageButton(name, this.me);
        if (dm) li.append(" ", dm);
        return li;
      }),
    );
    if (!sorted.length) list.append(el("li", "muted", _("Nobody")));
    const count = document.getElementById("online-count");
    count.textContent = interpolate(ngettext("%(count)s online", "%(count)s online", sorted.length), { count: sorted.length }, true);
    count.title = sorted.join(", ");
    count.hidden = false;
  }

  applyRoom({ locked, title, kind }) {
    if (typeof locked === "boolean") this.setLocked(locked);
    // A DM's stored title names everyone; its reader's title (the rooms list's) names the others.
    if (!title || (this.dm && kind !== "dm")) return;
    this.root.querySelector(".room-title-text").textContent = title;
    this.alerts.setTitle(title);
    this.scroller.setAttribute("aria-label", interpolate(_("Messages in %(title)s"), { title }, true));
    const entry = this.rooms.get(this.slug);
    if (entry) {
      entry.title = title;
      this.rooms.render(entry);
    }
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
      ? _("This room is locked. You can still post as a moderator.")
      : _("This room is locked. Only moderators can post.");
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
