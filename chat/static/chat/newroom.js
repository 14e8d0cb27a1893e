// The new-room form: the address (slug) follows the title as it is typed, the way the server
// derives it (Django's slugify, underscores as dashes), until the reader edits it by hand.
// Clearing it by hand makes it follow the title again.

const form = document.getElementById("new-room");
if (form) {
  const title = document.getElementById("new-room-title-input");
  const slug = document.getElementById("new-room-slug");
  const error = document.getElementById("new-room-error");

  const derive = (text) =>
    text
      .normalize("NFKD")
      .replace(/[^\x00-\x7f]/g, "")
      .toLowerCase()
      .replace(/_/g, " ")
      .replace(/[^\w\s-]/g, "")
      .replace(/[-\s]+/g, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 50)
      .replace(/-+$/, "");

  title.addEventListener("input", () => {
    if (slug.dataset.edited === "true") return;
    slug.value = derive(title.value);
  });
  slug.addEventListener("input", () => {
    if (slug.value) slug.dataset.edited = "true";
    else delete slug.dataset.edited;
  });
  // The server's refusal is about what was submitted: it goes once the form changes.
  form.addEventListener("input", () => {
    error.hidden = true;
  });
}
