// The dashboard's only script: a deployment's page follows its status as the engine's read
// model changes (server-sent events), without a reload. Everything else is plain HTML.
"use strict";
window.__loadId = Math.random().toString(36).slice(2);

(function follow() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.stream) return;
  const events = new EventSource(live.dataset.stream);
  events.onopen = () => { document.body.dataset.sse = "open"; };
  events.onerror = () => { document.body.dataset.sse = "retrying"; };
  events.addEventListener("view", (event) => {
    live.innerHTML = event.data;
  });
  const timeline = document.querySelector("#timeline[data-live]");
  events.addEventListener("history", (event) => {
    if (timeline) timeline.innerHTML = event.data;
  });
})();
