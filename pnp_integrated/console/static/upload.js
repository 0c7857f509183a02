// Image upload with progress: the file goes as the request's body (its name and version in the query), the session's
// CSRF token in a header; the node's answer names the MD5 and size it computed, which the page shows and lists.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const token = document.querySelector("meta[name=csrf-token]").content;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const query = new URLSearchParams({name: file.name});
    if (form.elements.version.value) query.set("version", form.elements.version.value);
    const request = new XMLHttpRequest();
    request.open("POST", `${form.action}?${query}`);
    request.setRequestHeader("X-CSRF-Token", token);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    progress.hidden = false;
    progress.value = 0;
    form.elements.upload.disabled = true;
    status.className = "meta";
    status.textContent = `Uploading ${file.name} (${file.size.toLocaleString()} bytes)…`;
    request.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      progress.value = Math.round((e.loaded / e.total) * 100);
      status.textContent = `Uploading ${file.name}: ${progress.value} % of ${e.total.toLocaleString()} bytes`;
    });
    request.addEventListener("load", () => {
      form.elements.upload.disabled = false;
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (e) { /* not JSON: say the status */ }
      if (request.status === 201) {
        progress.value = 100;
        status.className = "notice";
        status.id = "upload-status";
        status.textContent = `Uploaded ${body.name}: MD5 ${body.md5}, ${body.size.toLocaleString()} bytes`;
        addRow(body);
        form.reset();
      } else {
        status.className = "problem";
        status.textContent = (body.error && body.error.message) || `The node answered ${request.status}`;
      }
    });
    request.addEventListener("error", () => {
      form.elements.upload.disabled = false;
      status.className = "problem";
      status.textContent = "The upload was interrupted (the node did not answer).";
    });
    request.send(file);
  });

  function addRow(image) {
    const body = document.querySelector("#images tbody");
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.dataset.image = image.name;
    const cells = [image.name, image.version, `${image.size.toLocaleString()} bytes`, image.md5,
                   (image.created_at || "").slice(0, 19).replace("T", " ")];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 3) cell.className = "md5";
      row.append(cell);
    });
    body.prepend(row);
  }
});
