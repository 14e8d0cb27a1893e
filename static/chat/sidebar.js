// The rooms list: unread counts kept current by polling GET /api/rooms/, and on a phone the
// button that shows and hides the list over the room.
//
// Why polling and not a subscription per room: subscribing the socket to every room in the list
// would push every message of every room to every open tab (cost grows with rooms × traffic) and
// would list the user as online in rooms they are not looking at. The rooms list is two queries
// whatever the number of rooms, so asking for it every 30 s while the tab is visible (and at once
// when it becomes visible again or reconnects) is cheap and bounded. A per-user notification
// channel would make this push-based; the protocol does not have one yet.

import { getJson } from "./http.js";

const DEFAULT_INTERVAL = 30000;

// onCurrent(room, askedAt): the current room's entry, with the performance.now() at which it was
// asked for, so the page can tell it from state that arrived live in the meantime.
export function startSidebar({ list, apiUrl, channel, current, roomUrl, interval, onCurrent }) {
  if (!list) return null;
  const every = interval || DEFAULT_INTERVAL;
  let timer = null;
  let inflight = false;

  async function fetchRooms() {
    return (await (channel ? channel.get("") : getJson(apiUrl))).rooms;
  }

  function item(room) {
    let li = list.querySelector(`li[data-slug="${CSS.escape(room.slug)}"]`);
    if (li) return li;
    if (!roomUrl) return null;
    li = document.createElement("li");
    li.dataset.slug = room.slug;
    const a = document.createElement("a");
    a.href = roomUrl.replace("room-slug", room.slug);
    const name = document.createElement("span");
    name.className = "room-name";
    name.textContent = room.title;
    const unread = document.createElement("span");
    unread.className = "unread";
    unread.hidden = true;
    a.append(name, unread);
    li.append(a);
    list.append(li);
    return li;
  }

  function show(rooms, askedAt) {
    for (const room of rooms) {
      if (room.slug === current && onCurrent) onCurrent(room, askedAt);
      const li = item(room);
      if (!li) continue;
      const name = li.querySelector(".room-name");
      if (name && room.title && name.textContent !== room.title) name.textContent = room.title;
      const badge = li.querySelector(".unread");
      if (!badge) continue;
      const count = room.slug === current ? 0 : room.unread;
      badge.textContent = count > 99 ? "99+" : String(count);
      badge.setAttribute("aria-label", `${count} unread`);
      badge.hidden = count === 0;
      li.classList.toggle("has-unread", count > 0);
    }
  }

  async function refresh() {
    if (inflight || document.visibilityState !== "visible") return;
    if (channel && channel.state === "offline") return;
    inflight = true;
    const askedAt = performance.now();
    try {
      show(await fetchRooms(), askedAt);
    } catch (err) {
      // The next tick tries again; the counts just stay as they were.
    } finally {
      inflight = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, every);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });
  if (channel) channel.addEventListener("connected", () => refresh());
  schedule();
  return { refresh };
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
    if (sidebar.classList.contains("open") && !sidebar.contains(e.target)) set(false);
  });
}

// The rooms index page: the same live counts, no channel.
const index = document.getElementById("room-list");
if (index && index.dataset.api && !document.getElementById("chat")) {
  const interval = Number(new URLSearchParams(location.search).get("rooms_poll")) || undefined;
  startSidebar({ list: index, apiUrl: index.dataset.api, roomUrl: index.dataset.roomUrl, interval });
}
