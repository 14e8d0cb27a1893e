// The composer: the text box (Enter sends, Shift+Enter adds a line), typing notices, and the file
// to attach to the next message, checked here against the server's limits before any upload.
// In a locked room it is off for everyone but moderators, as the server would refuse the post.

import { humanSize } from "./dom.js";

// options: root (#chat, for its data-* limits), channel, slug. Returns {setBlocked}.
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

  const grow = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  };

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = input.value;
    if ((!body.trim() && !file) || body.length > maxBody) return;
    channel.send(slug, body.trim() ? body : "", file);
    setFile(null);
    input.value = "";
    grow();
    input.focus();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener("input", () => {
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
      return `${candidate.name} is ${humanSize(candidate.size)}; files can be up to ${humanSize(maxAttachment)}.`;
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
    if (!allowed) return `${candidate.name} cannot be sent here: ${type} files are not accepted.`;
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
  }

  function setBlocked(blocked) {
    input.disabled = blocked;
    submit.disabled = blocked;
    if (fileInput) fileInput.disabled = blocked;
    form.classList.toggle("locked", blocked);
    input.placeholder = blocked ? "This room is locked" : placeholder;
  }

  return { setBlocked };
}
