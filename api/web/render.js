// Model text as Markdown, made safe: marked turns it into HTML, DOMPurify removes anything
// that could run (scripts, event handlers, javascript: URLs) before it reaches innerHTML.
// Without DOMPurify the text is shown as plain text, never as unsanitised HTML.

import { marked } from "./marked.esm.js";

let hooked = false;

function purifier() {
  const purify = globalThis.DOMPurify;
  if (!purify || !purify.isSupported) return null;
  if (!hooked) {
    // Links from a model open elsewhere and tell the target nothing about this page.
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    hooked = true;
  }
  return purify;
}

/** Puts `text` (Markdown from the model) into `element`, sanitised. */
export function renderMarkdown(element, text) {
  const purify = purifier();
  if (!purify) {
    element.textContent = text;
    return;
  }
  const html = marked.parse(text, { async: false, gfm: true, breaks: true });
  element.innerHTML = purify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
}
