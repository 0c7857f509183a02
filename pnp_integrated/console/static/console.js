// The console's live parts: an element with data-live="URL" and data-every="ms" is fetched again and replaced in
// place, so a page follows the fleet without reloading. A signed-out session (401) reloads the page: the sign-in.
"use strict";

function refreshLive(element) {
  const url = element.dataset.live;
  const every = Number(element.dataset.every || 5000);
  async function once() {
    if (document.hidden) return; // nobody is looking: spare the node
    try {
      const answer = await fetch(url, {cache: "no-store", credentials: "same-origin"});
      if (answer.status === 401) { location.reload(); return; }
      if (!answer.ok) return;
      element.innerHTML = await answer.text(); // HTML rendered by this node, escaped there
      element.dataset.refreshed = String(Date.now());
    } catch (error) {
      // The node is restarting or failing over: keep the last view and try again at the next turn.
    }
  }
  setInterval(once, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(refreshLive);
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });
});
