// The translated strings of the page's language, from Django's JavaScript catalog (chat:jsi18n,
// loaded by chat/base.html as a classic script, so its globals are there before any module runs).
// A layout without the catalog still works, in English.

export function _(text) {
  return typeof window.gettext === "function" ? window.gettext(text) : text;
}

export function ngettext(singular, plural, count) {
  if (typeof window.ngettext === "function") return window.ngettext(singular, plural, count);
  return count === 1 ? singular : plural;
}

// interpolate("%(name)s is typing…", { name }, true) or interpolate("%s and %s", [a, b]).
export function interpolate(format, values, named = false) {
  if (typeof window.interpolate === "function") return window.interpolate(format, values, named);
  if (named) return format.replace(/%\(\w+\)s/g, (match) => String(values[match.slice(2, -2)]));
  let index = 0;
  return format.replace(/%s/g, () => String(values[index++]));
}

// The locale for dates and numbers: the page's language (<html lang>), in the browser's own
// variant of it when it has one (en-GB keeps its 24-hour clock on an "en" page). The time zone is
// the browser's: Intl uses it unless told otherwise.
export function locale() {
  const lang = document.documentElement.lang;
  if (!lang) return undefined;
  const base = lang.split("-")[0].toLowerCase();
  const own = (navigator.languages || []).find((tag) => tag.split("-")[0].toLowerCase() === base);
  return own || lang;
}
