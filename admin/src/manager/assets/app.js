// The manager works without this file; it adds copy buttons and asks before
// destructive forms are sent.
"use strict";
document.addEventListener("click", (ev) => {
  const copy = ev.target.closest("[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    if (!source) return;
    const text = source.textContent;
    const done = () => { copy.dataset.label = copy.dataset.label || copy.textContent; copy.textContent = "✓"; setTimeout(() => { copy.textContent = copy.dataset.label; }, 1500); };
    // Selected first, so Ctrl+C works even where the clipboard API is refused.
    selectText(source);
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => {});
    }
  }
});
function selectText(node) {
  // Without the clipboard API (plain HTTP), select the text for Ctrl+C.
  const range = document.createRange();
  range.selectNodeContents(node);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}
document.addEventListener("submit", (ev) => {
  const button = ev.submitter || ev.target.querySelector("[data-confirm]");
  const ask = button && button.dataset ? button.dataset.confirm : null;
  if (ask && !window.confirm(ask)) ev.preventDefault();
});
