// A list of usernames offered under a text box as one types (the ARIA combobox pattern): arrow
// keys move, Enter or Tab takes one, Escape closes the list. Used by the new-conversation dialog
// (names from the server) and the composer (@mentions of the room's members).

import { el, userText } from "./dom.js";
import { _ } from "./i18n.js";

let counter = 0;

export class Suggest {
  // input: the text box; source(prefix): a promise of usernames; token(): what is being completed
  // at the caret ({prefix, start, end}) or null; pick(name, token): put the chosen name in.
  constructor({ input, source, token, pick, label }) {
    this.input = input;
    this.source = source;
    this.token = token;
    this.pick = pick;
    this.names = [];
    this.active = -1;
    this.asked = 0; // answers to older keystrokes are dropped
    counter += 1;
    this.list = el("ul", "suggestions");
    this.list.id = `suggestions-${counter}`;
    this.list.setAttribute("role", "listbox");
    this.list.setAttribute("aria-label", label || _("Usernames"));
    this.list.hidden = true;
    input.insertAdjacentElement("afterend", this.list);
    input.setAttribute("role", "combobox");
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-controls", this.list.id);
    input.setAttribute("aria-expanded", "false");
    input.addEventListener("input", () => this.update());
    input.addEventListener("blur", () => this.close());
    // Capture on the form: before the composer's own Enter-sends handler on the box.
    (input.form || input.parentElement).addEventListener("keydown", (e) => this.key(e), true);
  }

  get open() {
    return !this.list.hidden && this.names.length > 0;
  }

  async update() {
    const token = this.token();
    if (!token) {
      this.close();
      return;
    }
    this.asked += 1;
    const asked = this.asked;
    let names = [];
    try {
      names = await this.source(token.prefix);
    } catch (err) {
      names = [];
    }
    if (asked !== this.asked) return;
    this.show(names);
  }

  show(names) {
    this.names = names;
    this.active = names.length ? 0 : -1;
    this.list.replaceChildren(
      ...names.map((name, i) => {
        const li = userText("li", null, name);
        li.id = `${this.list.id}-${i}`;
        li.setAttribute("role", "option");
        // Keep the focus in the box: a click must not blur it (which closes the list) first.
        li.addEventListener("mousedown", (e) => e.preventDefault());
        li.addEventListener("click", () => this.choose(i));
        return li;
      }),
    );
    this.list.hidden = !names.length;
    this.input.setAttribute("aria-expanded", String(!this.list.hidden));
    this.highlight();
  }

  highlight() {
    [...this.list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === this.active)));
    if (this.active >= 0) this.input.setAttribute("aria-activedescendant", `${this.list.id}-${this.active}`);
    else this.input.removeAttribute("aria-activedescendant");
  }

  close() {
    this.asked += 1;
    this.names = [];
    this.active = -1;
    this.list.hidden = true;
    this.list.replaceChildren();
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
  }

  choose(i) {
    const token = this.token();
    const name = this.names[i];
    this.close();
    if (name != null) this.pick(name, token);
  }

  key(e) {
    if (e.target !== this.input || !this.open) return;
    const n = this.names.length;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      this.active = (this.active + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
      this.highlight();
    } else if ((e.key === "Enter" || e.key === "Tab") && !e.shiftKey && !e.isComposing) {
      this.choose(this.active);
    } else if (e.key === "Escape") {
      this.close();
    } else {
      return;
    }
    e.preventDefault();
    e.stopPropagation();
  }
}
