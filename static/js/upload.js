/* Upload of an image's next version: a multipart POST to the image's API URL,
 * with a progress bar, drag and drop, and the API's JSON error message shown.
 * Session authentication: the CSRF token goes in the X-CSRFToken header,
 * because the server streams the body and never parses it as a form. */
(function () {
  "use strict";

  var form = document.getElementById("upload");
  if (!form) return;
  var input = document.getElementById("upload-file");
  var zone = document.getElementById("dropzone");
  var button = document.getElementById("upload-button");
  var cancel = document.getElementById("upload-cancel");
  var progress = document.getElementById("upload-progress");
  var bar = document.getElementById("upload-bar");
  var percent = document.getElementById("upload-percent");
  var status = document.getElementById("upload-status");
  var errorBox = document.getElementById("upload-error");
  var maxSize = Number(form.dataset.maxSize);
  var request = null;

  var REASONS = {
    400: "The upload was refused",
    403: "You may not upload to this image",
    404: "The image no longer exists",
    409: "The upload conflicts with the image's state",
    411: "The server needs the upload's length",
    413: "The file is too large",
    415: "The compression is not supported",
    507: "The server is out of space"
  };

  // Powers of 1024 with the same names as the page's sizes (Django's filesizeformat).
  function size(bytes) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return (i === 0 ? bytes : bytes.toFixed(1)) + " " + units[i];
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    errorBox.focus();
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function busy(on) {
    button.disabled = on;
    input.disabled = on;
    cancel.hidden = !on;
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  function setProgress(fraction) {
    var value = Math.round(fraction * 100);
    bar.value = value;
    percent.textContent = value + "%";
  }

  function apiMessage(xhr) {
    var reason = REASONS[xhr.status] || "The upload failed (HTTP " + xhr.status + ")";
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.detail) return reason + ": " + body.detail;
    } catch (ignored) { /* not JSON: a proxy's page */ }
    return reason + ".";
  }

  // Swap in the versions table of a fresh copy of this page: one rendering, on the server.
  function refreshVersions() {
    return fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("versions");
        var current = document.getElementById("versions");
        if (fresh && current) current.replaceWith(fresh);
      });
  }

  function uploaded(xhr) {
    var version = JSON.parse(xhr.responseText);
    setProgress(1);
    status.textContent = "Version " + version.version + " uploaded (" + size(version.size) +
      "), SHA-256 " + version.sha256 + ".";
    form.reset();
    return refreshVersions();
  }

  function finished(xhr) {
    request = null;
    busy(false);
    if (xhr.status === 201) {
      uploaded(xhr).catch(function () { window.location.reload(); });
      return;
    }
    progress.hidden = true;
    status.textContent = "";
    showError(apiMessage(xhr));
  }

  function start(file) {
    clearError();
    if (file.size > maxSize + Math.floor(maxSize / 128)) {
      // A hint only: the server decides, and answers 413 itself.
      showError(REASONS[413] + ": " + file.name + " is " + size(file.size) +
        "; this server accepts images up to " + size(maxSize) + ".");
      return;
    }
    var data = new FormData(form);
    data.delete("csrfmiddlewaretoken");
    if (!data.get("sha256")) data.delete("sha256");
    if (!data.get("note")) data.delete("note");
    data.delete("file");
    data.append("file", file, file.name);  // last, so the fields arrive before the bytes

    var xhr = new XMLHttpRequest();
    request = xhr;
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-CSRFToken", form.elements.csrfmiddlewaretoken.value);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable) setProgress(event.loaded / event.total);
      status.textContent = "Uploading " + file.name + ": " + size(event.loaded) + " of " +
        size(event.total) + "…";
    };
    xhr.upload.onload = function () {
      setProgress(1);
      status.textContent = "Checking " + file.name + " on the server…";
    };
    xhr.onload = function () { finished(xhr); };
    xhr.onerror = function () {
      request = null;
      busy(false);
      progress.hidden = true;
      status.textContent = "";
      showError("The connection to the server failed; nothing was stored. Try again.");
    };
    xhr.onabort = function () {
      request = null;
      busy(false);
      progress.hidden = true;
      status.textContent = "Upload cancelled; nothing was stored.";
    };
    setProgress(0);
    progress.hidden = false;
    status.textContent = "Uploading " + file.name + "…";
    busy(true);
    xhr.send(data);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (request) return;
    if (!input.files.length) {
      showError("Choose an image file first.");
      input.focus();
      return;
    }
    start(input.files[0]);
  });

  cancel.addEventListener("click", function () { if (request) request.abort(); });

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (request || !event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    start(event.dataTransfer.files[0]);
  });
  errorBox.tabIndex = -1;
})();
