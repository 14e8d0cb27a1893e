// The composer: the text box (Enter sends, Shift+Enter adds a line), typing notices, and the file
// to attach to the next message, checked here against the server's limits before any upload.
// In a locked room it is off for everyone but moderators, as the server would refuse the post.
// What is typed and not sent is kept per room (drafts.js), across room switches and reloads.
// ArrowUp in an empty box edits one's last message; a file pasted or dropped is attached.
// A message's Reply puts it above the text box (reply.js); the next message answers it.

import { humanSize } from "./dom.js";
import { Draft } from "./drafts.js";
import { _, interpolate } from "./i18n.js";
import { startReply } from "./reply.js";

// options: root (#chat, for its data-* limits), channel, slug. Returns {setBlocked, end}.
export function startComposer({ root, channel, slug }) {
  const form = document.getElementById("composer");
  const input = document.getElementById("composer-body");
  const submit = form.querySelector("button[type=submit]");
  const fileInput = document.getElementById("composer-file");
  const placeholder = input.placeholder;
  const maxBody = Number(root.dataset.maxBody) || 4000;
  const maxAttachment = Number(root.dataset.maxAttachment) || 0; // 0: only the server checks
  const types = (root.dataset.attachmentTypes || "")
    .split(",")
    .map((type) => type.trim().toLowerCase())
    .filter(Boolean);
  let file = null; // the File attached to the next message
  let lastTyping = 0;
  const reply = startReply({ box: document.getElementById("reply-preview"), input });
  const draft = new Draft(root.dataset.user, slug);
  if (!input.value) input.value = draft.load();

  const grow = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  };

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = input.value;
    if ((!body.trim() && !file) || body.length > maxBody) return;
    channel.send(slug, body.trim() ? body : "", file, reply.current());
    reply.clear();
    setFile(null);
    input.value = "";
    draft.clear(); // the outbox keeps the message now
    grow();
    input.focus();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    } else if (e.key === "ArrowUp" && !input.value && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
      // The last message of one's own that can still be edited (messages.js draws its Edit).
      const own = [...document.querySelectorAll("#messages .message.mine .edit-button:not(:disabled)")];
      if (!own.length || e.defaultPrevented) return;
      e.preventDefault();
      own[own.length - 1].click();
    }
  });
  input.addEventListener("input", () => {
    draft.save(input.value);
    grow();
    const now = Date.now();
    if (input.value && now - lastTyping > 3000) {
      lastTyping = now;
      channel.typing(slug);
    }
  });

  // Why the file cannot go, or null.
  function refusal(candidate) {
    if (maxAttachment && candidate.size > maxAttachment) {
      return interpolate(
        _("%(name)s is %(size)s; files can be up to %(limit)s."),
        { name: candidate.name, size: humanSize(candidate.size), limit: humanSize(maxAttachment) },
        true,
      );
    }
    const type = (candidate.type || "").toLowerCase();
    const name = candidate.name.toLowerCase();
    // An unknown type (an empty file.type) is left to the server, which reads the content anyway.
    const allowed =
      !types.length ||
      !type ||
      types.some(
        (t) => t === type || (t.endsWith("/*") && type.startsWith(t.slice(0, -1))) || (t.startsWith(".") && name.endsWith(t)),
      );
    if (!allowed) {
      return interpolate(_("%(name)s cannot be sent here: %(type)s files are not accepted."), { name: candidate.name, type }, true);
    }
    return null;
  }

  function setFile(candidate) {
    const chip = document.getElementById("attachment-chip");
    const error = document.getElementById("attach-error");
    error.textContent = "";
    error.hidden = true;
    const refused = candidate && refusal(candidate);
    if (refused) {
      // Refused here, before any upload: the server would refuse it too, after the wait.
      error.textContent = refused;
      error.hidden = false;
      candidate = null;
    }
    file = candidate || null;
    // A message may be only a file; without one the text is required again.
    input.required = !file;
    chip.hidden = !file;
    if (file) {
      chip.querySelector(".file-name").textContent = file.name;
      chip.querySelector(".size").textContent = humanSize(file.size);
    }
  }

  // Without the attachments endpoint (or without JavaScript: a plain form post cannot carry the
  // upload steps) the controls stay hidden.
  if (fileInput && root.dataset.apiAttachments) {
    document.getElementById("attach").hidden = false;
    if (types.length) fileInput.accept = types.join(",");
    fileInput.addEventListener("change", () => {
      const chosen = fileInput.files[0];
      fileInput.value = ""; // choosing the same file again still fires `change`
      if (chosen) setFile(chosen);
    });
    document.getElementById("attachment-remove").addEventListener("click", () => {
      setFile(null);
      input.focus();
    });
    // A pasted file (a screenshot, a copied file) attaches; pasted text stays text.
    input.addEventListener("paste", (e) => {
      const pasted = e.clipboardData && [...e.clipboardData.files];
      if (!pasted || !pasted.length || fileInput.disabled) return;
      e.preventDefault();
      setFile(pasted[0]);
    });
    // A file dropped anywhere on the room's column attaches to the next message.
    const target = form.closest(".room") || form;
    const carriesFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
    target.addEventListener("dragover", (e) => {
      if (!carriesFiles(e) || fileInput.disabled) return;
      e.preventDefault(); // allows the drop
      e.dataTransfer.dropEffect = "copy";
      form.classList.add("dragging");
    });
    target.addEventListener("dragleave", (e) => {
      if (!target.contains(e.relatedTarget)) form.classList.remove("dragging");
    });
    target.addEventListener("drop", (e) => {
      form.classList.remove("dragging");
      const dropped = e.dataTransfer && [...e.dataTransfer.files];
      if (!dropped || !dropped.length || fileInput.disabled) return;
      e.preventDefault(); // the browser would open the file instead
      setFile(dropped[0]);
      input.focus();
    });
  }

  let ended = null; // why nothing can be sent any more, once the connection ended for good

  function setBlocked(blocked) {
    if (ended) blocked = true; // an unlock after a ban changes nothing
    input.disabled = blocked;
    submit.disabled = blocked;
    if (fileInput) fileInput.disabled = blocked;
    form.classList.toggle("locked", blocked);
    input.placeholder = ended || (blocked ? _("This room is locked") : placeholder);
  }

  // The connection ended for good (a ban): nothing can be sent from this page.
  function end(reason) {
    ended = reason;
    setBlocked(true);
  }

  grow();
  return { setBlocked, end };
}
