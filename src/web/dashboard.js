// nightshift's dashboard: live updates over server-sent events. The pages work without this file.
(function () {
  "use strict";
  if (!window.EventSource) {
    return;
  }
  var jobs = document.getElementById("jobs");
  if (jobs && jobs.dataset.events) {
    var table = new EventSource(jobs.dataset.events);
    // The rows as the server rendered them (every value escaped there).
    table.addEventListener("rows", function (e) {
      jobs.innerHTML = JSON.parse(e.data);
    });
  }
  var log = document.getElementById("log");
  if (log && log.dataset.events) {
    var lines = new EventSource(log.dataset.events);
    lines.addEventListener("line", function (e) {
      var line = JSON.parse(e.data);
      var span = document.createElement("span");
      span.className = line.s === "err" || line.s === "ns" ? line.s : "out";
      span.textContent = line.l + "\n";
      log.appendChild(span);
    });
    lines.addEventListener("end", function () {
      lines.close();
      // The job ended: its state, outputs and buttons are on the page again.
      window.location.reload();
    });
  }
})();
