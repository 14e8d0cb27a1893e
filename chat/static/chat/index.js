// The rooms index page: the rooms list and direct messages with their badges, kept current by the
// user's stream over long-polling (this page has no socket), the new-conversation dialog, and the
// count in the tab's title.

import { startDms } from "./dms.js";
import { Api, csrfToken } from "./http.js";
import { Alerts } from "./notify.js";
import { RoomsList } from "./sidebar.js";
import { DEFAULT_TIMINGS } from "./timing.js";
import { UserStream } from "./userstream.js";

const root = document.getElementById("rooms-index");
if (root) {
  const form = document.querySelector("form [name=csrfmiddlewaretoken]");
  const fallback = form ? form.value : "";
  const list = new RoomsList({
    lists: { room: document.getElementById("room-list"), dm: document.getElementById("dm-list") },
    roomUrl: root.dataset.roomUrl,
    current: null,
    onChange: () => alerts.updateTitle(),
  });
  const alerts = new Alerts({ list, roomUrl: root.dataset.roomUrl, current: null, title: document.title });
  const timeout = Number(new URLSearchParams(location.search).get("poll_timeout"));
  const stream = new UserStream({
    api: new Api(root.dataset.apiRooms, fallback),
    pollUrl: root.dataset.apiUserPoll,
    timings: { pollTimeout: timeout > 0 ? timeout : DEFAULT_TIMINGS.pollTimeout },
    send: () => false,
    polling: () => true,
    emit: (type, detail) => {
      if (type === "rooms") {
        list.show(detail.rooms);
      } else if (type === "notify") {
        if (!list.apply(detail)) stream.load();
        alerts.notify(detail);
      }
      alerts.updateTitle();
    },
  });
  stream.poll();
  startDms({
    urls: { dms: root.dataset.apiDms, users: root.dataset.apiUsers, room: root.dataset.roomUrl },
    csrf: () => csrfToken(fallback),
    me: root.dataset.user,
  });
}
