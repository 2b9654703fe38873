// Model text as Markdown, made safe: marked turns it into HTML, DOMPurify removes anything
// that could run (scripts, event handlers, javascript: URLs) before it reaches innerHTML.
// Without DOMPurify the text is shown as plain text, never as unsanitised HTML. Each code
// block gets a Copy button, added after sanitising (the model's HTML may hold no buttons).

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
  for (const pre of element.querySelectorAll("pre")) addCopyButton(pre);
}

/** How long a Copy button says "Copied" (or "Copy failed"). */
const COPIED_MS = 1500;

/** Wraps `pre` in a box with a Copy button that puts the block's text on the clipboard. */
function addCopyButton(pre) {
  const box = document.createElement("div");
  box.className = "code-block";
  pre.replaceWith(box);
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.textContent = "Copy";
  copy.title = "Copy the code";
  copy.setAttribute("aria-label", "Copy code");
  copy.addEventListener("click", async () => {
    const ok = await copyText(pre.textContent);
    copy.textContent = ok ? "Copied" : "Copy failed";
    copy.classList.toggle("copied", ok);
    clearTimeout(copy.resetTimer);
    copy.resetTimer = setTimeout(() => {
      copy.textContent = "Copy";
      copy.classList.remove("copied");
    }, COPIED_MS);
  });
  box.append(pre, copy);
}

/**
 * Puts `text` on the clipboard: the Clipboard API where the page may use it, else the old
 * way (a hidden textarea selected and `document.execCommand("copy")`). True when it worked.
 */
export async function copyText(text) {
  if (navigator.clipboard && navigator.clipboard.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      // Refused (no permission, not focused): the fallback may still work.
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "clipboard-scratch";
  document.body.append(area);
  const focused = document.activeElement;
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (e) {
    ok = false;
  }
  area.remove();
  if (focused && focused.focus) focused.focus();
  return ok;
}
