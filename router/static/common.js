// What both dashboard pages use (/admin/dashboard and /admin/dashboard/fleet): formatting,
// escaping, and the once-a-second poll of a JSON document that a page renders.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (n, d = 0) => (n === null || n === undefined) ? "–" :
  Number(n).toLocaleString(undefined, {maximumFractionDigits: d, minimumFractionDigits: d});
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

// Fetch `url` now and every second; `render` draws each answer, #status says what went wrong.
function poll(url, render) {
  async function refresh() {
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (!response.ok) {
        $("status").innerHTML = `<span class="bad">router answered ${response.status}</span>`;
        return;
      }
      render(await response.json());
    } catch (err) {
      $("status").innerHTML = `<span class="bad">router unreachable</span>`;
    }
  }
  refresh();
  setInterval(refresh, 1000);
}
