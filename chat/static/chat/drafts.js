// What is typed in a room's composer and not sent yet, kept in localStorage per user and room,
// so that it survives going to another room (a new page) and reloads, and is not shown to
// someone else who logs in on the same browser.

const PREFIX = "chat.draft.";

export class Draft {
  constructor(user, slug) {
    this.key = `${PREFIX}${user || ""}.${slug}`;
  }

  load() {
    try {
      return localStorage.getItem(this.key) || "";
    } catch (err) {
      return ""; // storage disabled: no drafts
    }
  }

  save(text) {
    try {
      if (text.trim()) localStorage.setItem(this.key, text);
      else localStorage.removeItem(this.key);
    } catch (err) {
      // storage full or disabled: the text is still in the box
    }
  }

  clear() {
    this.save("");
  }
}
