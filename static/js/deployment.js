// The deployment page: polls GET /api/deployment/<id> every second while the
// deployment runs, and updates the state, a progress bar per image and the
// event log in place. Polling stops once the deployment is done, failed or
// cancelled. Without JavaScript the page still shows the state at load time.
(function () {
  "use strict";

  var FINAL = ["done", "failed", "cancelled"];
  var INTERVAL_MS = 1000;
  var root = document.getElementById("deployment");
  if (!root) return;

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : {};
  }
  var names = readJson("deployment-image-names");
  var stateLabels = readJson("deployment-state-labels");

  // Django's filesizeformat: binary multiples, one decimal, KB/MB/GB labels.
  function size(bytes) {
    bytes = Number(bytes) || 0;
    if (bytes < 1024) return bytes + (bytes === 1 ? "\u00a0byte" : "\u00a0bytes");
    var units = ["KB", "MB", "GB", "TB", "PB"];
    var value = bytes / 1024;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return value.toFixed(1) + "\u00a0" + units[unit];
  }

  function label(item) {
    var name = names[item.image] || "a deleted image";
    if (item.direction === "sync") return "Bring back " + item.disk + " as " + name;
    return "Write " + name + " v" + item.version + " to " + item.disk;
  }

  function bytesText(item, running) {
    var text = size(item.bytes_done) + " of " + size(item.bytes_total);
    if (item.phase) text += " · " + item.phase;
    if (running && item.rate > 0 && item.bytes_done < item.bytes_total) {
      text += " · " + size(item.rate) + "/s";
    }
    return text;
  }

  function imageRow(index) {
    var li = document.createElement("li");
    li.className = "image-progress";
    li.dataset.index = String(index);
    var span = document.createElement("span");
    span.className = "label";
    span.id = "image-label-" + index;
    var bar = document.createElement("progress");
    bar.setAttribute("aria-labelledby", span.id);
    bar.setAttribute("aria-describedby", "image-bytes-" + index);
    var bytes = document.createElement("span");
    bytes.className = "bytes";
    bytes.id = "image-bytes-" + index;
    li.append(span, bar, bytes);
    return li;
  }

  function renderImages(images, running) {
    var list = document.getElementById("deployment-images");
    var rows = list.querySelectorAll("li.image-progress");
    if (rows.length !== images.length) {
      list.replaceChildren.apply(list, images.map(function (_, i) { return imageRow(i); }));
      rows = list.querySelectorAll("li.image-progress");
    }
    images.forEach(function (item, i) {
      var row = rows[i];
      row.querySelector(".label").textContent = label(item);
      var bar = row.querySelector("progress");
      bar.max = Math.max(item.bytes_total, 1);
      bar.value = Math.min(item.bytes_done, bar.max);
      row.querySelector(".bytes").textContent = bytesText(item, running);
      row.classList.toggle("complete", item.bytes_total > 0 && item.bytes_done >= item.bytes_total);
    });
  }

  function renderEvents(events) {
    var list = document.getElementById("deployment-events");
    var shown = list.children.length;
    events.slice(shown).forEach(function (event) {
      var li = document.createElement("li");
      var time = document.createElement("time");
      var when = new Date(event.created_at);
      time.dateTime = event.created_at;
      time.textContent = when.toTimeString().slice(0, 8);
      var action = document.createElement("strong");
      action.textContent = event.action;
      li.append(time, " ", action);
      if (event.message) li.append(" — " + event.message);
      list.append(li);
    });
  }

  function renderState(data) {
    var state = document.getElementById("deployment-state");
    if (root.dataset.state !== data.state) {
      state.textContent = stateLabels[data.state] || data.state;
      state.className = "state state-" + data.state;
      root.dataset.state = data.state;
    }
    var position = document.getElementById("deployment-position");
    position.textContent = data.state === "queued" && data.position
      ? "(number " + data.position + " in the queue)" : "";
    var failure = document.getElementById("deployment-failure");
    failure.textContent = data.failure_reason || "";
    failure.hidden = !data.failure_reason;
    var cancel = document.getElementById("cancel-form");
    if (cancel) cancel.hidden = FINAL.indexOf(data.state) !== -1;
    var again = document.getElementById("boot-again-form");
    if (again) again.hidden = FINAL.indexOf(data.state) !== -1;
  }

  function render(data) {
    var finished = FINAL.indexOf(data.state) !== -1;
    renderState(data);
    renderImages(data.images || [], !finished);
    renderEvents(data.events || []);
    root.dataset.finished = finished ? "true" : "false";
    return finished;
  }

  function poll() {
    fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 403 || response.status === 404) return null; // signed out, or gone
        return response.ok ? response.json() : undefined;
      })
      .then(function (data) {
        if (data === null) return;
        if (data !== undefined && render(data)) return;
        window.setTimeout(poll, INTERVAL_MS);
      })
      .catch(function () {
        window.setTimeout(poll, INTERVAL_MS); // the server restarts: keep trying
      });
  }

  if (root.dataset.finished !== "true") window.setTimeout(poll, INTERVAL_MS);
})();
