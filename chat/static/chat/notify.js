// What the user's stream shows outside the rooms list: the count in the tab's title, a system
// notification for a mention or a direct message while the tab is hidden (the Notification API;
// permission is asked from a button, never by itself), and the room's notification level.

import { request } from "./http.js";
import { _, interpolate } from "./i18n.js";

export class Alerts {
  // list: the RoomsList (sidebar.js); roomUrl: the room page's URL with "room-slug";
  // current: the open room's slug, or null; title: the page's own title.
  constructor({ list, roomUrl, current, title }) {
    this.list = list;
    this.roomUrl = roomUrl;
    this.current = current;
    this.base = title || document.title;
    this.updateTitle();
    this.startPermission();
  }

  setTitle(title) {
    this.base = title;
    this.updateTitle();
  }

  updateTitle() {
    const total = this.list.total();
    document.title = total ? `(${total > 99 ? "99+" : total}) ${this.base}` : this.base;
  }

  // A `notify` event, once, in order.
  notify(event) {
    if (event.kind !== "mention" && event.kind !== "dm") return;
    const message = event.message;
    if (!message || message.deleted || !event.room) return;
    if (document.visibilityState !== "hidden") return;
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const room = this.list.get(event.room);
    const where = room ? room.title : event.room;
    let title;
    const names = { author: message.author, room: where };
    const group = room && room.members && room.members.length > 2;
    if (event.kind === "dm") title = group ? interpolate(_("%(author)s in %(room)s"), names, true) : message.author;
    else title = interpolate(_("%(author)s mentioned you in %(room)s"), names, true);
    let body = message.body || (message.attachment ? message.attachment.name : "");
    if (body.length > 200) body = `${body.slice(0, 199)}…`;
    // The same tag in every tab of the user: the system shows the one notification once.
    const shown = new Notification(title, { body, tag: `chat-${event.user_seq}` });
    shown.onclick = () => {
      window.focus();
      shown.close();
      if (event.room !== this.current) location.assign(this.roomUrl.replace("room-slug", event.room));
    };
  }

  startPermission() {
    const box = document.getElementById("notify-permission");
    if (!box || !("Notification" in window)) return;
    const ask = box.querySelector("button");
    const note = box.querySelector(".note");
    const show = () => {
      const state = Notification.permission;
      box.hidden = state === "granted";
      ask.hidden = state !== "default";
      note.textContent = state === "denied" ? _("Notifications are blocked for this site in the browser's settings.") : "";
    };
    ask.addEventListener("click", async () => {
      try {
        await Notification.requestPermission();
      } finally {
        show();
      }
    });
    show();
  }
}

// The header's select: which messages of the room notify the user.
// options: select, url (POST …/notifications), csrf(), list, slug.
export function startLevelControl({ select, url, csrf, list, slug }) {
  if (!select) return;
  const status = document.getElementById("notify-level-status");
  let level = select.value;
  select.disabled = false;
  select.addEventListener("change", async () => {
    const wanted = select.value;
    select.disabled = true;
    status.textContent = "";
    try {
      const answer = await request("POST", url, { data: { level: wanted }, csrf: csrf() });
      level = answer.level;
      list.setLevel(slug, level);
      status.textContent = _("Saved");
    } catch (err) {
      status.textContent = interpolate(_("Not changed: %(reason)s"), { reason: err.message }, true);
    } finally {
      select.value = level;
      select.disabled = false;
    }
  });
  // The level can also come with the rooms list (set on another device).
  return {
    sync(room) {
      if (room && room.level && !select.disabled) {
        level = room.level;
        select.value = level;
      }
    },
  };
}
