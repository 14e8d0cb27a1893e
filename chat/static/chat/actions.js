// What one can do to a message: reply to it (reply.js), edit or delete one's own (within the edit
// window, and not in a locked room unless a moderator), report someone else's to the room's
// moderators. Each works on a message's record (messages.js): it sets the record's state and asks
// for a redraw; the list draws the buttons and forms this module builds.

import { button, el, refusal } from "./dom.js";
import { _, interpolate } from "./i18n.js";
import { replyTo } from "./reply.js";

// setTimeout takes at most this (about 24 days); a longer edit window is checked again then.
const LONGEST_TIMER = 2 ** 31 - 1;

const reported = new Set(); // ids of messages reported from this page
let ctx = null; // what initActions was given

// options: channel, slug, me, maxBody, editWindow (seconds after posting that the server accepts
// an edit), isBlocked() (the room is locked to this user), redraw(record), settle(event) (the
// server's copy of a changed message, for the list).
export function initActions(options) {
  ctx = options;
}

function editTimeLeft(event) {
  const created = Date.parse(event.created);
  if (Number.isNaN(created)) return 0;
  return created + ctx.editWindow * 1000 - Date.now();
}

export function ownActions(record) {
  const box = el("span", "own-actions");
  // The server decides (its clock, its window); the button only goes where it would say no.
  if (editTimeLeft(record.event) > 0 || record.editor) {
    const edit = button(_("Edit"), "link-button edit-button", _("Edit your message"), "edit");
    edit.addEventListener("click", () => openEditor(record));
    box.append(edit);
  }
  const remove = button(_("Delete"), "link-button delete-button", _("Delete your message"), "delete");
  remove.addEventListener("click", () => confirmDelete(record));
  box.append(remove);
  for (const node of box.children) node.disabled = ctx.isBlocked() || Boolean(record.change);
  return box;
}

// Any message still there can be answered. Not turned off in a locked room: the composer is, and
// a lock or unlock redraws only one's own messages, so a button off here could stay off. Off while
// one's own change is in flight, like Edit and Delete: the keyboard then waits on the message
// and comes back to Edit (messages.js, keepFocus; change below).
export function replyButton(record) {
  const label = interpolate(_("Reply to %(author)s"), { author: record.event.author }, true);
  const reply = button(_("Reply"), "link-button reply-button", label, "reply");
  reply.disabled = Boolean(record.change);
  reply.addEventListener("click", () => replyTo(record.event));
  return reply;
}

// The reactions under a message: one toggle per emoji (pressed when the reader is among those who
// reacted), and a button that opens the quick picker. The server's answer redraws the message.
const QUICK = ["👍", "❤️", "😂", "🎉", "😮", "😢", "👀", "🙏"];

export function reactionBar(record) {
  const bar = el("div", "reactions");
  for (const reaction of record.event.reactions || []) {
    const mine = reaction.users.includes(ctx.me);
    const toggle = button(`${reaction.emoji} ${reaction.count}`, "reaction" + (mine ? " mine" : ""), null, `react-${reaction.emoji}`);
    toggle.setAttribute("aria-pressed", String(mine));
    const others = reaction.count - reaction.users.length;
    toggle.title = reaction.users.join(", ") + (others > 0 ? ` and ${others} more` : "");
    toggle.disabled = ctx.isBlocked();
    toggle.addEventListener("click", () => react(record, reaction.emoji));
    bar.append(toggle);
  }
  const add = button("☺+", "reaction add-reaction", _("Add a reaction"), "react-add");
  add.disabled = ctx.isBlocked();
  add.setAttribute("aria-expanded", String(record.picking));
  add.addEventListener("click", () => {
    record.picking = !record.picking;
    ctx.redraw(record);
  });
  bar.append(add);
  if (record.picking) {
    const picker = el("span", "reaction-picker");
    for (const emoji of QUICK) {
      const pick = button(emoji, "reaction-choice", interpolate(_("React with %(emoji)s"), { emoji }, true), `pick-${emoji}`);
      pick.addEventListener("click", () => {
        record.picking = false;
        react(record, emoji);
      });
      picker.append(pick);
    }
    bar.append(picker);
  }
  return bar;
}

async function react(record, emoji) {
  try {
    const answer = await ctx.channel.react(ctx.slug, record.id, emoji);
    if (answer && answer.type === "message") ctx.settle(answer);
    record.note = null;
  } catch (err) {
    record.note = changeNote(record, _("No reaction"), err || {});
  }
  ctx.redraw(record);
}

// The Edit button goes when the window closes, with no event to say so.
export function scheduleEditExpiry(record) {
  clearTimeout(record.expiry);
  const event = record.event;
  const left = editTimeLeft(event);
  if (event.author !== ctx.me || event.deleted || left <= 0) return;
  record.expiry = setTimeout(() => {
    if (record.event === event) ctx.redraw(record);
  }, Math.min(left + 50, LONGEST_TIMER));
}

// In a locked room the server refuses the change: Save and Delete in an open editor or
// confirmation are off too, and come back with the unlock, the text still there.
export function syncChangeControls(record) {
  for (const box of [record.editor, record.confirm]) {
    const go = box && box.querySelector("[data-go]");
    if (go) go.disabled = ctx.isBlocked();
  }
}

function openEditor(record) {
  if (record.editor) {
    record.editor.querySelector("textarea").focus();
    return;
  }
  const form = el("form", "edit-form");
  const input = el("textarea");
  input.value = record.event.body;
  input.maxLength = ctx.maxBody;
  input.rows = 1;
  input.setAttribute("aria-label", _("Edited message"));
  const hint = el("span", "edit-hint", _("Enter saves, Esc cancels"));
  hint.id = `edit-hint-${record.id}`;
  input.setAttribute("aria-describedby", hint.id);
  const save = el("button", "save", _("Save"));
  save.type = "submit";
  save.dataset.go = "";
  const cancel = button(_("Cancel"), "link-button");
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
    record.editor = null;
    ctx.redraw(record);
    const edit = record.li.querySelector(".edit-button:not(:disabled)");
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
    if (body === record.event.body) {
      close(); // nothing to save: no request, no "edited"
      return;
    }
    if (!body.trim()) {
      status.textContent = _("A message cannot be empty; delete it instead.");
      return;
    }
    if (body.length > ctx.maxBody || ctx.isBlocked()) return;
    record.editor = null;
    change(record, "edit", body);
  });

  record.editor = form;
  record.confirm = null;
  record.note = null; // a new try: the last refusal is old news
  ctx.redraw(record);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
  grow();
}

// Asked inside the message, not with window.confirm, which would stop every live update.
function confirmDelete(record) {
  if (record.confirm) {
    record.confirm.querySelector(".link-button").focus();
    return;
  }
  const box = el("div", "confirm-delete");
  box.setAttribute("role", "group");
  const question = el("span", null, _("Delete this message for everyone?"));
  question.id = `confirm-delete-${record.id}`;
  box.setAttribute("aria-labelledby", question.id);
  const yes = button(_("Delete"), "danger");
  yes.dataset.go = "";
  const no = button(_("Cancel"), "link-button");
  box.append(question, yes, no);
  const close = () => {
    record.confirm = null;
    ctx.redraw(record);
    const again = record.li.querySelector(".delete-button:not(:disabled)");
    if (again) again.focus();
  };
  no.addEventListener("click", close);
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape") close();
  });
  yes.addEventListener("click", () => {
    if (ctx.isBlocked()) return;
    record.confirm = null;
    change(record, "delete");
  });
  record.confirm = box;
  record.note = null;
  ctx.redraw(record);
  // The safe answer first: Enter on a Delete pressed twice by mistake keeps the message.
  no.focus();
}

// Shown as pending until the server answers; a refusal puts the message back as the server has
// it, with the reason. The answer is shown at once: the `message` event for the change, which
// every subscriber gets, may come later (it replaces this with the server's copy).
async function change(record, kind, body = null) {
  const id = record.id;
  record.change = { kind, body };
  record.note = null;
  ctx.redraw(record);
  let error = null;
  let answer = null;
  try {
    answer = kind === "edit" ? await ctx.channel.edit(ctx.slug, id, body) : await ctx.channel.remove(ctx.slug, id);
  } catch (err) {
    error = err;
  }
  record.change = null;
  if (error) {
    record.note = changeNote(record, kind === "edit" ? _("Not saved") : _("Not deleted"), error);
    ctx.redraw(record);
  } else {
    ctx.settle(changed(record.event, kind, body, answer));
  }
  // The keyboard waited on the message while its buttons were off: back to the first of them.
  if (document.activeElement === record.li) {
    const next = record.li.querySelector(".meta button:not(:disabled)");
    if (next) next.focus({ preventScroll: true });
  }
}

// The message as the server has it after the change: over HTTP the answer is the changed
// `message` event; over a socket it is an `ack` with the change's seq.
function changed(event, kind, body, answer) {
  if (answer && answer.type === "message") return answer;
  // The event came first (or the change changed nothing): it is the server's copy.
  if (!answer || answer.seq <= event.seq) return event;
  const seq = answer.seq;
  // The old html no longer matches the body: plain text until the server's rendering comes.
  if (kind === "edit") return { ...event, seq, body, html: "", edited: event.edited || new Date().toISOString() };
  return { ...event, seq, body: "", deleted: true, attachment: null };
}

function changeNote(record, what, err) {
  const note = el("p", "change-note error");
  note.setAttribute("role", "alert");
  note.dataset.code = err.code || "";
  const dismiss = button(_("Dismiss"), "link-button", _("Dismiss this notice"));
  dismiss.addEventListener("click", () => {
    record.note = null;
    ctx.redraw(record);
  });
  note.append(el("span", null, refusal(what, err)), " ", dismiss);
  return note;
}

// --- reports ---

export function reportButton(record) {
  const event = record.event;
  const done = reported.has(event.id);
  const label = done ? _("Reported") : interpolate(_("Report this message by %(author)s"), { author: event.author }, true);
  const report = button(done ? _("Reported") : _("Report"), "link-button report-button", label, "report");
  report.disabled = done;
  report.addEventListener("click", () => openReport(record));
  return report;
}

// A small form inside the message: the reason is required by the server, and a dialog the page
// draws keeps the log readable (window.prompt would block every live update behind it).
function openReport(record) {
  if (record.report) {
    record.report.querySelector("input").focus();
    return;
  }
  const id = record.id;
  const form = el("form", "report-form");
  const label = el("label", null, _("Why report this message?"));
  const input = el("input");
  input.name = "reason";
  input.required = true;
  input.maxLength = 500;
  input.autocomplete = "off";
  label.append(input);
  const send = el("button", null, _("Send report"));
  send.type = "submit";
  const cancel = button(_("Cancel"), "link-button");
  const status = el("p", "report-status");
  status.setAttribute("role", "status");
  form.append(label, send, cancel, status);
  const close = () => {
    record.report = null;
    ctx.redraw(record);
    const again = record.li.querySelector(".report-button:not(:disabled)");
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
    status.textContent = _("Sending…");
    try {
      await ctx.channel.report(ctx.slug, id, reason);
    } catch (err) {
      send.disabled = false;
      status.className = "report-status error";
      status.dataset.code = err.code || "";
      status.textContent = refusal(_("Not reported"), err);
      return;
    }
    reported.add(id);
    const thanks = el("p", "report-status ok", _("Reported. The moderators will take a look."));
    thanks.setAttribute("role", "status");
    record.report = thanks;
    ctx.redraw(record);
  });
  record.report = form;
  ctx.redraw(record);
  input.focus();
}
