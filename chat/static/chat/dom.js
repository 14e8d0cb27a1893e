// Small DOM builders shared by the room's modules. User text only ever goes in as textContent
// (el's `text`) or as an attribute value, never as HTML.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// Text someone typed (a name, a title, a message): its own first strong character sets its
// direction, so a Hebrew or Arabic name reads right-to-left inside a left-to-right page.
export function userText(tag, className, text) {
  const node = el(tag, className, text);
  node.dir = "auto";
  return node;
}

// `key` finds the button again after a re-render, to give the keyboard focus back to it.
export function button(text, className, label, key) {
  const node = el("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  if (key) node.dataset.key = key;
  return node;
}

import { _, interpolate, locale, ngettext } from "./i18n.js";

export function localTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return ["", ""];
  const time = date.toLocaleTimeString(locale(), { hour: "2-digit", minute: "2-digit" });
  return [time, date.toLocaleString(locale())];
}

// Sizes as Django's filesizeformat writes them, so server-rendered and live messages agree.
export function humanSize(bytes) {
  if (bytes < 1024) return interpolate(ngettext("%(count)s\u00a0byte", "%(count)s\u00a0bytes", bytes), { count: bytes }, true);
  const units = ["KB", "MB", "GB", "TB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)}\u00a0${units[unit]}`;
}

// The text of a refused change, as the report form words its own.
export function refusal(what, err) {
  let text = interpolate(_("%(what)s: %(why)s"), { what, why: err.detail || err.code || _("something went wrong") }, true);
  if (err.retry_after) text += interpolate(_(" (try again in %(seconds)s s)"), { seconds: Math.ceil(err.retry_after) }, true);
  return text;
}

// Thumbnails are shown within this box; the width and height attributes reserve their place
// before they load, so the log does not jump under the reader.
const THUMB_BOX = [320, 240];

function fit(width, height) {
  if (!width || !height) return [null, null];
  const scale = Math.min(1, THUMB_BOX[0] / width, THUMB_BOX[1] / height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

export function attachmentNode(a) {
  const box = el("div", "attachment");
  if (a.thumbnail) {
    box.classList.add("image");
    const link = el("a");
    link.href = a.url;
    const img = el("img");
    img.src = a.thumbnail;
    img.alt = a.name;
    const [width, height] = fit(a.width, a.height);
    if (width) {
      img.width = width;
      img.height = height;
    }
    img.loading = "lazy";
    link.append(img);
    box.append(link);
  } else {
    box.classList.add("file");
    const link = el("a", "file-name", a.name);
    link.href = a.url;
    link.download = a.name;
    box.append(link, " ", el("span", "size", humanSize(a.size)));
  }
  return box;
}
