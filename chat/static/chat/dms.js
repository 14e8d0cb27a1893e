// Direct messages: "Message" on a person's name (the online list, a message's author) opens the
// conversation with them, and the new-conversation dialog opens one with one or more people,
// their names completed from the server's user search. Opening asks the server for the room
// (the same people always get the same one) and goes there.

import { button, el, userText } from "./dom.js";
import { request } from "./http.js";
import { _, interpolate } from "./i18n.js";
import { Suggest } from "./suggest.js";

// urls: {dms, users, room (with "room-slug")}; csrf(): the current token.
export function startDms({ urls, csrf, me }) {
  const open = async (users) => {
    const room = await request("POST", urls.dms, { data: { users }, csrf: csrf() });
    location.assign(urls.room.replace("room-slug", room.slug));
  };

  // Any element with data-dm-user, wherever it was drawn.
  document.addEventListener("click", (e) => {
    const target = e.target.closest("[data-dm-user]");
    if (!target) return;
    e.preventDefault();
    target.disabled = true;
    open([target.dataset.dmUser]).catch((err) => {
      target.disabled = false;
      target.title = interpolate(_("Could not open the conversation: %(reason)s"), { reason: err.message }, true);
      alertLine(err.message);
    });
  });

  const dialog = document.getElementById("dm-dialog");
  const opener = document.getElementById("dm-new");
  if (!dialog || !opener) return;
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("#dm-to");
  const chips = dialog.querySelector("#dm-chosen");
  const status = dialog.querySelector("#dm-error");
  const chosen = [];

  const drawChips = () => {
    chips.replaceChildren(
      ...chosen.map((name) => {
        const li = userText("li", "chip", name);
        const remove = button("×", "link-button", interpolate(_("Remove %(name)s"), { name }, true));
        remove.addEventListener("click", () => {
          chosen.splice(chosen.indexOf(name), 1);
          drawChips();
          input.focus();
        });
        li.append(" ", remove);
        return li;
      }),
    );
  };
  const add = (name) => {
    name = name.trim().replace(/^@/, "");
    if (name && !chosen.includes(name)) chosen.push(name);
    input.value = "";
    drawChips();
  };

  new Suggest({
    input,
    label: _("People"),
    token: () => (input.value.trim() ? { prefix: input.value.trim().replace(/^@/, "") } : null),
    source: async (prefix) => {
      const answer = await request("GET", `${urls.users}?q=${encodeURIComponent(prefix)}&limit=8`);
      return answer.users.filter((name) => name !== me && !chosen.includes(name));
    },
    pick: (name) => add(name),
  });

  opener.hidden = false;
  opener.addEventListener("click", () => {
    chosen.length = 0;
    drawChips();
    input.value = "";
    status.textContent = "";
    dialog.showModal();
    input.focus();
  });
  dialog.querySelector("#dm-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (input.value.trim()) add(input.value);
    if (!chosen.length) {
      status.textContent = _("Choose someone to write to.");
      input.focus();
      return;
    }
    status.textContent = _("Opening…");
    try {
      await open([...chosen]);
    } catch (err) {
      status.textContent = err.status === 404 ? _("Nobody has that username.") : err.message;
    }
  });
}

// A refusal with no form to show it in.
function alertLine(text) {
  const line = document.getElementById("page-alert");
  if (!line) return;
  line.textContent = interpolate(_("Could not open the conversation: %(reason)s"), { reason: text }, true);
  line.hidden = false;
}

// "Message" next to a name; nothing for one's own.
export function messageButton(name, me) {
  if (name === me) return null;
  const node = button(_("Message"), "link-button dm-button", interpolate(_("Message %(name)s"), { name }, true));
  node.dataset.dmUser = name;
  return node;
}
