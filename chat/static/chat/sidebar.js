// The rooms list and the direct messages under it, with their badges, and on a phone the button
// that shows and hides the list over the room.
//
// The counts come from the user's stream (userstream.js): the rooms list once, then `notify`
// events, each carrying the room's current `unread` and `mentions`, pushed to every tab and
// device of the user, so a read on one clears the badge on the others. Nothing polls the list.
//
// What a badge says follows the room's notification level, as Slack does:
//   all (the default in DMs)       the unread count;
//   mentions (the default in rooms) the mention count; unread messages without a mention only make
//                                   the name bold, with a dot. The server raises an event for such
//                                   a room at its first unread message and when it is read, not at
//                                   every message, so a count of them would not stay current;
//   none                           nothing.
// The room that is open in a visible tab shows no badge: it is being read.

import { el, userText } from "./dom.js";
import { _, interpolate, ngettext } from "./i18n.js";

export class RoomsList {
  // lists: {room, dm} (<ul>s; dm may be absent); roomUrl: the room page's URL with "room-slug";
  // current: the open room's slug, or null; isReading(): whether the open room is being looked at.
  // onChange(): any count changed (for the tab title).
  constructor({ lists, roomUrl, current, isReading, onChange }) {
    this.lists = lists;
    this.roomUrl = roomUrl;
    this.current = current;
    this.isReading = isReading || (() => false);
    this.onChange = onChange || (() => {});
    this.rooms = new Map(); // slug -> {slug, title, kind, level, unread, mentions, members}
    // What the page was rendered with, until the list arrives.
    for (const li of this.items()) {
      const d = li.dataset;
      this.rooms.set(d.slug, {
        slug: d.slug,
        title: li.querySelector(".room-name").textContent,
        kind: d.kind || "room",
        level: d.level || (d.kind === "dm" ? "all" : "mentions"),
        unread: Number(d.unread) || 0,
        mentions: Number(d.mentions) || 0,
        members: null,
      });
    }
    this.renderAll();
  }

  items() {
    return Object.values(this.lists)
      .filter(Boolean)
      .flatMap((ul) => [...ul.querySelectorAll("li[data-slug]")]);
  }

  get(slug) {
    return this.rooms.get(slug);
  }

  // Whether a room belongs in the list: a list marked data-joined-only (the room page's sidebar)
  // shows the rooms the user is in and the open one; the directory has the others.
  listed(room) {
    const joinedOnly = this.lists.room && "joinedOnly" in this.lists.room.dataset;
    return !joinedOnly || room.kind === "dm" || room.joined !== false || room.slug === this.current;
  }

  // The whole list from GET /api/rooms/: every count is current.
  show(rooms) {
    for (const room of rooms) {
      if (!this.listed(room)) {
        this.remove(room.slug);
        continue;
      }
      this.rooms.set(room.slug, {
        slug: room.slug,
        title: room.title,
        kind: room.kind || "room",
        level: room.notifications || (room.kind === "dm" ? "all" : "mentions"),
        unread: room.unread || 0,
        mentions: room.mentions || 0,
        members: room.members || null,
      });
    }
    this.renderAll();
  }

  // A room the user left or was removed from, on any device: it goes from the list. The open
  // room, left by choice, goes to the directory instead of staying on screen (reading it would
  // join it again); removed from it, the page stays and says why (room.js).
  remove(slug) {
    this.rooms.delete(slug);
    for (const li of this.items()) if (li.dataset.slug === slug) li.remove();
    this.onChange();
  }

  // A `notify` event; false when its room is not in the list (a new conversation, an invitation
  // or a room joined on another device: read the list again).
  apply(event) {
    if (event.kind === "left" && event.room) {
      this.remove(event.room);
      if (event.room === this.current && !event.removed) {
        const directory = document.getElementById("browse-rooms");
        if (directory) window.location.assign(directory.href);
      }
      return true;
    }
    const room = event.room && this.rooms.get(event.room);
    if (!room) return !event.room;
    if (typeof event.unread === "number") room.unread = event.unread;
    if (typeof event.mentions === "number") room.mentions = event.mentions;
    this.render(room);
    this.onChange();
    return true;
  }

  setLevel(slug, level) {
    const room = this.rooms.get(slug);
    if (!room) return;
    room.level = level;
    this.render(room);
    this.onChange();
  }

  // The open room is read: its counts go (the server's event with them follows, or not, when
  // nothing had been notified).
  read(slug) {
    const room = this.rooms.get(slug);
    if (!room || (!room.unread && !room.mentions)) return;
    room.unread = 0;
    room.mentions = 0;
    this.render(room);
    this.onChange();
  }

  // The number a room's badge shows (0: none) and whether it has unread activity at all.
  badge(room) {
    if (room.slug === this.current && this.isReading()) return { count: 0, active: false, label: "" };
    if (room.level === "none") return { count: 0, active: false, label: "" };
    if (room.kind === "dm" || room.level === "all") {
      return { count: room.unread, active: room.unread > 0, label: interpolate(_("%(count)s unread"), { count: room.unread }, true) };
    }
    const label = interpolate(ngettext("%(count)s mention", "%(count)s mentions", room.mentions), { count: room.mentions }, true);
    return { count: room.mentions, active: room.unread > 0 || room.mentions > 0, label };
  }

  // What the tab title counts: the sum of the badges (the open room's too while the tab is hidden).
  total() {
    let sum = 0;
    for (const room of this.rooms.values()) sum += this.badge(room).count;
    return sum;
  }

  renderAll() {
    for (const room of this.rooms.values()) this.render(room);
  }

  item(room) {
    const selector = `li[data-slug="${CSS.escape(room.slug)}"]`;
    const list = (room.kind === "dm" && this.lists.dm) || this.lists.room;
    let li = list.querySelector(selector);
    if (li || !this.roomUrl) return li;
    li = el("li");
    li.dataset.slug = room.slug;
    const a = el("a");
    a.href = this.roomUrl.replace("room-slug", room.slug);
    const unread = el("span", "unread");
    unread.hidden = true;
    a.append(userText("span", "room-name", room.title), unread);
    li.append(a);
    // In slug order, as the server lists them.
    const after = [...list.querySelectorAll("li[data-slug]")].find((other) => other.dataset.slug > room.slug);
    list.insertBefore(li, after || null);
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    return li;
  }

  render(room) {
    const li = this.item(room);
    if (!li) return;
    li.dataset.kind = room.kind;
    li.dataset.level = room.level;
    const name = li.querySelector(".room-name");
    if (name && room.title && name.textContent !== room.title) name.textContent = room.title;
    const { count, active, label } = this.badge(room);
    const badge = li.querySelector(".unread");
    if (badge) {
      badge.textContent = count > 99 ? "99+" : String(count);
      badge.setAttribute("aria-label", label);
      badge.hidden = count === 0;
      badge.classList.toggle("mention", room.kind !== "dm" && room.level === "mentions");
    }
    li.classList.toggle("has-unread", active);
    // Unread without a number to show: a dot, and a word for screen readers.
    li.classList.toggle("has-activity", active && count === 0);
    li.classList.toggle("muted-room", room.level === "none");
  }
}

// On a phone the list is hidden behind a button in the room's header.
export function startRoomsToggle() {
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
    // The list covers the room: put the keyboard in it, and Escape brings it back.
    if (open) (sidebar.querySelector("[aria-current]") || sidebar.querySelector("a")).focus();
  });
  sidebar.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && sidebar.classList.contains("open")) {
      set(false);
      toggle.focus();
    }
  });
  document.addEventListener("click", (e) => {
    if (sidebar.classList.contains("open") && !sidebar.contains(e.target) && !e.target.closest("dialog")) set(false);
  });
}
