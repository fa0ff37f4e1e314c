/* Upload of an image's next version: a resumable upload to the image's API URL (the
 * IETF resumable-upload draft: the POST creates an upload resource, PATCH requests send
 * the file, and a cut connection resumes by itself from the server's offset), with a
 * progress bar showing the rate and time left, drag and drop, and the API's JSON error
 * message shown.
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

  // --- Resumable upload (draft-ietf-httpbis-resumable-upload, interop version 8) ---
  // The form's fields become headers of the request that creates the upload resource;
  // the file goes in PATCH requests to it, resumed from the server's offset after a cut.
  var DRAFT = "8";
  var TYPES = { zst: "application/zstd", zstd: "application/zstd", gz: "application/gzip",
    simg: "application/vnd.android.sparse-image" };
  var RETRIES = 8;  // failed attempts in a row without progress before giving up
  var upload = null;  // the upload in progress: {file, url, offset, retries, cancelled}
  var rateBox = document.getElementById("upload-rate");
  var samples = [];  // [time in ms, bytes the server has] over the last few seconds

  function contentType(name) {
    var match = /\.([a-z0-9]+)$/i.exec(name);
    return (match && TYPES[match[1].toLowerCase()]) || "application/octet-stream";
  }

  function hexToBase64(hex) {
    var bytes = "";
    for (var i = 0; i < hex.length; i += 2) {
      bytes += String.fromCharCode(parseInt(hex.substr(i, 2), 16));
    }
    return btoa(bytes);
  }

  function duration(seconds) {
    if (!isFinite(seconds)) return "";
    seconds = Math.ceil(seconds);
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  // Rate over the last 5 seconds of progress, and the time left at that rate.
  function showRate(sent, total) {
    var now = Date.now();
    samples.push([now, sent]);
    while (samples.length > 2 && now - samples[0][0] > 5000) samples.shift();
    var first = samples[0];
    var seconds = (now - first[0]) / 1000;
    if (seconds < 0.2) return;
    var rate = (sent - first[1]) / seconds;
    if (rate <= 0) return;
    rateBox.textContent = size(rate) + "/s, " + duration((total - sent) / rate) + " left";
  }

  function request(method, url, headers) {
    var xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.setRequestHeader("X-CSRFToken", form.elements.csrfmiddlewaretoken.value);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Upload-Draft-Interop-Version", DRAFT);
    Object.keys(headers || {}).forEach(function (name) { xhr.setRequestHeader(name, headers[name]); });
    request.current = xhr;
    return xhr;
  }

  function failed(message) {
    request.current = null;
    upload = null;
    busy(false);
    progress.hidden = true;
    status.textContent = "";
    rateBox.textContent = "";
    showError(message);
  }

  // A cut connection or a server error: ask the server what it has, then go on from there.
  function retry(why) {
    if (!upload || upload.cancelled) return;
    upload.retries += 1;
    if (upload.retries > RETRIES) {
      failed("The connection to the server failed " + RETRIES + " times; " +
        "what arrived is kept for a day: try again later.");
      return;
    }
    var wait = Math.min(1000 * Math.pow(2, upload.retries - 1), 30000);
    status.textContent = why + " Resuming in " + Math.round(wait / 1000) + " s…";
    setTimeout(function () {
      if (!upload || upload.cancelled) return;
      var xhr = request("HEAD", upload.url);
      xhr.onload = function () {
        if (xhr.status === 204 || xhr.status === 200) {
          upload.offset = Number(xhr.getResponseHeader("Upload-Offset"));
          if (xhr.getResponseHeader("Upload-Complete") === "?1") {
            // It was committed but its answer was lost on the way: show the versions.
            request.current = null;
            upload = null;
            busy(false);
            setProgress(1);
            status.textContent = "Uploaded (the server's answer was lost; see the versions).";
            refreshVersions().catch(function () { window.location.reload(); });
            return;
          }
          append();
        } else if (xhr.status >= 500) {
          retry("The server is not answering.");
        } else {
          failed("The upload can no longer be resumed (HTTP " + xhr.status + "); start it again.");
        }
      };
      xhr.onerror = function () { retry("The connection to the server failed."); };
      xhr.send();
    }, wait);
  }

  function append() {
    var file = upload.file;
    var start = upload.offset;
    var xhr = request("PATCH", upload.url, {
      "Content-Type": "application/partial-upload",
      "Upload-Offset": String(start),
      "Upload-Complete": "?1"
    });
    status.textContent = (start ? "Resuming " + file.name + " at " + size(start) : "Uploading " +
      file.name) + "…";
    xhr.upload.onprogress = function (event) {
      var sent = start + event.loaded;
      if (sent > start) upload.retries = 0;  // progress: the next failure starts afresh
      setProgress(sent / Math.max(file.size, 1));
      showRate(sent, file.size);
      status.textContent = "Uploading " + file.name + ": " + size(sent) + " of " +
        size(file.size) + "…";
    };
    xhr.upload.onload = function () {
      setProgress(1);
      status.textContent = "Checking " + file.name + " on the server…";
    };
    xhr.onload = function () {
      if (xhr.status === 201) {
        var seconds = (Date.now() - upload.began) / 1000;
        if (seconds > 0) rateBox.textContent = size(file.size / seconds) + "/s on average";
        request.current = null;
        upload = null;
        busy(false);
        uploaded(xhr).catch(function () { window.location.reload(); });
      } else if (xhr.status === 409 || xhr.status >= 500) {
        retry(xhr.status === 409 ? "The server is still finishing the last attempt." :
          "The server failed (HTTP " + xhr.status + ").");
      } else {
        failed(apiMessage(xhr));
      }
    };
    xhr.onerror = function () { retry("The connection to the server was lost."); };
    xhr.onabort = function () {};
    xhr.send(file.slice(start));
  }

  function start(file) {
    clearError();
    if (file.size > maxSize + Math.floor(maxSize / 128)) {
      // A hint only: the server decides, and answers 413 itself.
      showError(REASONS[413] + ": " + file.name + " is " + size(file.size) +
        "; this server accepts images up to " + size(maxSize) + ".");
      return;
    }
    var headers = {
      "Upload-Complete": "?0",
      "Upload-Length": String(file.size),
      "Content-Type": contentType(file.name)
    };
    var sha256 = form.elements.sha256.value.trim();
    if (/^[0-9a-fA-F]{64}$/.test(sha256)) {
      headers["Repr-Digest"] = "sha-256=:" + hexToBase64(sha256) + ":";
    } else if (sha256) {
      showError("The expected SHA-256 is 64 hexadecimal digits.");
      return;
    }
    var note = form.elements.note.value;
    if (note) headers["BAAS-Note"] = encodeURIComponent(note);

    upload = { file: file, url: null, offset: 0, retries: 0, cancelled: false, began: Date.now() };
    samples = [];
    rateBox.textContent = "";
    setProgress(0);
    progress.hidden = false;
    status.textContent = "Uploading " + file.name + "…";
    busy(true);
    var xhr = request("POST", form.action, headers);
    xhr.onload = function () {
      if (xhr.status === 201 && xhr.getResponseHeader("Location")) {
        upload.url = xhr.getResponseHeader("Location");
        append();
      } else {
        failed(apiMessage(xhr));
      }
    };
    xhr.onerror = function () {
      failed("The connection to the server failed; nothing was stored. Try again.");
    };
    xhr.send();
  }

  function cancelUpload() {
    if (!upload) return;
    var url = upload.url;
    upload.cancelled = true;
    if (request.current) request.current.abort();
    request.current = null;
    upload = null;
    busy(false);
    progress.hidden = true;
    rateBox.textContent = "";
    status.textContent = "Upload cancelled; nothing was stored.";
    if (url) request("DELETE", url).send();  // abandon: the server removes what arrived
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (upload) return;
    if (!input.files.length) {
      showError("Choose an image file first.");
      input.focus();
      return;
    }
    start(input.files[0]);
  });

  cancel.addEventListener("click", cancelUpload);

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
    if (upload || !event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    start(event.dataTransfer.files[0]);
  });
  errorBox.tabIndex = -1;
})();
