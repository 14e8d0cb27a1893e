// A message's `html` as nodes. The server renders and sanitizes it (chat/formatting.py); this
// copies only the same allowlist into the page again, so a bug on one side is not enough.

const TAGS = new Set(["P", "BR", "STRONG", "EM", "S", "DEL", "CODE", "PRE", "BLOCKQUOTE", "UL", "OL", "LI", "A", "SPAN"]);

function copy(node, me) {
  if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.data);
  if (node.nodeType !== Node.ELEMENT_NODE || !TAGS.has(node.tagName)) {
    // An unknown element keeps its text, never its markup.
    return node.nodeType === Node.ELEMENT_NODE ? document.createTextNode(node.textContent) : null;
  }
  // A mention chip is a <mark> on the page, as in bodies drawn without html (mentions.js).
  const mention = node.tagName === "SPAN" && node.classList.contains("mention");
  const out = document.createElement(mention ? "mark" : node.tagName.toLowerCase());
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (/^(https?:|mailto:)/i.test(href)) out.href = href;
    out.target = "_blank";
    out.rel = "nofollow noopener noreferrer";
  } else if (mention) {
    out.className = "mention";
    const user = node.getAttribute("data-user") || "";
    out.dataset.user = user;
    if (user === me || user === "room") out.classList.add("me");
  } else if (node.tagName === "OL" && node.hasAttribute("start")) {
    out.start = Number.parseInt(node.getAttribute("start"), 10) || 1;
  }
  for (const child of node.childNodes) {
    const copied = copy(child, me);
    if (copied) out.append(copied);
  }
  return out;
}

export function richNodes(html, me) {
  // A template's content is inert: nothing in it loads or runs while it is read.
  const template = document.createElement("template");
  template.innerHTML = html;
  return [...template.content.childNodes].map((node) => copy(node, me)).filter(Boolean);
}
