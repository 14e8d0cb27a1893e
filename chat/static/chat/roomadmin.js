// The room header's own controls: leave the room (anyone in it), and for its owner and moderators
// edit its description and, in a private room, invite or remove people by username. Each is one
// JSON request (docs/protocol.md, "Directory, joining and invitations"); what it changes on the
// user's other devices comes on their user stream (sidebar.js), not from here.

import { el } from "./dom.js";
import { csrfToken, request } from "./http.js";
import { _, interpolate } from "./i18n.js";

const box = document.getElementById("room-admin");
const description = document.getElementById("room-description");

function csrf() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return csrfToken(field ? field.value : "");
}

// One labelled field and a button, answered in a status line (user text as textContent only).
function form(label, name, button, onSubmit, multiline = false) {
  const f = el("form");
  f.className = `room-admin-${name}`;
  const id = `room-admin-${name}-field`;
  const l = el("label", null, label);
  l.htmlFor = id;
  const input = multiline ? el("textarea") : el("input");
  input.id = id;
  input.name = name;
  if (multiline) input.rows = 2;
  const submit = el("button", null, button);
  submit.type = "submit";
  const status = el("span", "status");
  status.setAttribute("role", "status");
  f.append(l, input, submit, status);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      status.textContent = await onSubmit(input.value, input);
    } catch (err) {
      status.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });
  return { f, input };
}

function start() {
  if (!box) return;
  const d = box.dataset;
  const manage = d.manage === "true";
  const parts = [];
  if (manage) {
    const { f, input } = form(
      _("Description"),
      "description",
      _("Save"),
      async (value) => {
        const room = await request("POST", d.apiModerate, { data: { description: value }, csrf: csrf() });
        description.textContent = room.description;
        description.hidden = !room.description;
        return _("Saved.");
      },
      true,
    );
    input.value = description.textContent;
    input.maxLength = 500;
    parts.push(f);
  }
  if (manage && d.private === "true") {
    const invite = form(_("Invite"), "invite", _("Invite"), async (value, input) => {
      const answer = await request("POST", d.apiMembers, { data: { user: value.trim() }, csrf: csrf() });
      input.value = "";
      return interpolate(_("%(name)s is in the room."), { name: answer.user }, true);
    });
    const remove = form(_("Remove"), "remove", _("Remove"), async (value, input) => {
      const user = value.trim();
      await request("DELETE", d.apiMembers, { data: { user }, csrf: csrf() });
      input.value = "";
      return interpolate(_("%(name)s is no longer in the room."), { name: user }, true);
    });
    parts.push(invite.f, remove.f);
  }
  // The owner of a private room cannot leave it (the server says so too).
  if (d.joined === "true" && !(d.owner === "true" && d.private === "true")) {
    const leave = el("button", "link-button", _("Leave room"));
    leave.type = "button";
    leave.id = "room-leave";
    leave.addEventListener("click", async () => {
      try {
        await request("POST", d.apiLeave, { csrf: csrf() });
        window.location.assign(d.directoryUrl);
      } catch (err) {
        leave.textContent = err.message;
      }
    });
    parts.push(leave);
  }
  if (!parts.length) return;
  box.append(...parts);
  box.hidden = false;
}

start();
