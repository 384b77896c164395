// The reading room's own script: keyboard shortcuts, live progress, uploads, the heatmap.
// Every page works without it; nothing here stores anything in the browser.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- Keyboard: n / p confirm, h toggles the heatmap, arrows step through the ranking ---
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (target.closest && target.closest("input, select, textarea, [contenteditable]")) return;
  const click = (id) => {
    const element = document.getElementById(id);
    if (!element) return false;
    event.preventDefault();
    element.click();
    return true;
  };
  if (event.key === "n") click("confirm-normal");
  else if (event.key === "p") click("confirm-pneumonia");
  else if (event.key === "h") click("toggle-heatmap");
  else if (event.key === "ArrowLeft") click("previous");
  else if (event.key === "ArrowRight") click("next");
});

// --- The heatmap: asked of the API, which answers 202 until a worker has made it ---
async function loadHeatmap(overlay, status) {
  for (let attempt = 0; attempt < 90; attempt += 1) {
    const response = await fetch(overlay.dataset.src, { credentials: "same-origin" });
    if (response.status === 200) {
      overlay.src = URL.createObjectURL(await response.blob());
      status.textContent = "";
      return true;
    }
    if (response.status !== 202) {
      const body = await response.json().catch(() => ({}));
      status.textContent = "No heatmap: " + ((body.error && body.error.message) || response.status);
      return false;
    }
    status.textContent = "Making the heatmap…";
    await sleep(1000 * Number(response.headers.get("Retry-After") || 2));
  }
  status.textContent = "The heatmap is taking too long; try again later.";
  return false;
}

const toggle = document.getElementById("toggle-heatmap");
if (toggle) {
  const overlay = document.getElementById("heatmap");
  const status = document.getElementById("heatmap-status");
  toggle.addEventListener("click", async () => {
    const showing = toggle.getAttribute("aria-pressed") === "true";
    if (showing) {
      overlay.hidden = true;
      toggle.setAttribute("aria-pressed", "false");
      return;
    }
    toggle.setAttribute("aria-pressed", "true");
    if (overlay.src || (await loadHeatmap(overlay, status))) {
      overlay.hidden = toggle.getAttribute("aria-pressed") !== "true";
    }
  });
}

// --- Plots a version does not have (a training curve of an imported model) are left out ---
document.querySelectorAll("img[data-hide-missing]").forEach((image) => {
  image.addEventListener("error", () => { image.hidden = true; });
});

// --- Live progress of running jobs and training runs ---
function showProgress(row, fields) {
  for (const [name, value] of Object.entries(fields)) {
    const element = row.querySelector(`[data-field="${name}"]`);
    if (!element) continue;
    if (element.tagName === "PROGRESS") element.value = value;
    else element.textContent = value;
  }
}

async function follow(row, url, describe, finished) {
  for (;;) {
    await sleep(2000);
    let body;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) return;
      body = await response.json();
    } catch (error) {
      continue; // the API restarting: ask again
    }
    showProgress(row, describe(body));
    if (finished(body)) {
      if (row.hasAttribute("data-reload")) window.location.reload();
      return;
    }
  }
}

const jobDone = (job) => ["completed", "failed", "cancelled"].includes(job.status);
const describeJob = (job) => ({
  status: job.status + (job.waiting_for_model ? " (waiting for a model)" : ""),
  progress: job.progress,
  percent: Math.round(job.progress * 100) + " %",
  scored: job.total ? `${job.scored} / ${job.total}` : `${job.scored}`,
  errors: job.errors,
});
document.querySelectorAll("[data-job][data-live]").forEach((row) => {
  follow(row, `/v1/jobs/${row.dataset.job}`, describeJob, jobDone);
});
document.querySelectorAll("[data-run][data-live]").forEach((row) => {
  follow(row, `/v1/training-runs/${row.dataset.run}`, (run) => ({
    status: run.status, progress: run.progress, epoch: `${run.epoch} / ${run.epochs || "?"}`,
  }), (run) => !["queued", "running"].includes(run.status));
});

// --- Uploads: a zip goes as the raw body (scored while it arrives); a folder goes as its
// files with their relative paths, or, past the API's per-request file limit, as a zip
// made here (stored, not compressed: X-ray files are compressed already) ---
const drop = document.getElementById("drop");
if (drop) {
  const maxFiles = Number(drop.dataset.maxFiles || 100);
  const statusBox = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const label = document.getElementById("upload-label");

  const send = (body, contentType, what, filename) => new Promise((resolve) => {
    const priority = document.getElementById("priority").value;
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/jobs" + (priority ? `?priority=${priority}` : ""));
    request.setRequestHeader("X-CSRFToken", csrfToken());
    if (contentType) request.setRequestHeader("Content-Type", contentType);
    if (filename) {
      request.setRequestHeader("Content-Disposition", `attachment; filename*=UTF-8''${encodeURIComponent(filename)}`);
    }
    statusBox.hidden = false;
    label.textContent = `Uploading ${what}`;
    bar.value = 0;
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        bar.value = Math.floor((100 * event.loaded) / event.total);
        text.textContent = `${bar.value} %`;
      }
    });
    request.addEventListener("load", () => {
      const answer = JSON.parse(request.responseText || "{}");
      if (request.status === 202 || request.status === 201) {
        bar.value = 100;
        text.textContent = `Uploaded: job ${answer.id.slice(0, 8)} queued.`;
        setTimeout(() => window.location.reload(), 600);
      } else {
        text.textContent = "Refused: " + ((answer.error && answer.error.message) || request.status);
      }
      resolve();
    });
    request.addEventListener("error", () => { text.textContent = "The upload failed: network error."; resolve(); });
    request.send(body);
  });

  const sendFolder = async (files) => {
    const what = `${files.length} files`;
    if (files.length <= maxFiles) {
      const form = new FormData();
      for (const { file, path } of files) form.append("images", file, path);
      return send(form, null, what);
    }
    label.textContent = `Packing ${what}`;
    statusBox.hidden = false;
    return send(await storedZip(files, (done) => {
      bar.value = Math.floor((100 * done) / files.length);
      text.textContent = `packing ${done} of ${files.length}`;
    }), "application/zip", what, files[0].path.split("/")[0] + ".zip");
  };

  const choose = (files) => {
    const list = Array.from(files);
    if (list.length === 1 && /\.zip$/i.test(list[0].name)) return send(list[0], "application/zip", list[0].name, list[0].name);
    return sendFolder(list.map((file) => ({ file, path: file.webkitRelativePath || file.name })));
  };

  document.getElementById("pick-zip").addEventListener("change", (event) => choose(event.target.files));
  document.getElementById("pick-folder").addEventListener("change", (event) => choose(event.target.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const entries = Array.from(event.dataTransfer.items || [])
      .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    if (entries.some((entry) => entry.isDirectory)) {
      const files = [];
      for (const entry of entries) await walk(entry, "", files);
      return sendFolder(files);
    }
    return choose(event.dataTransfer.files);
  });
}

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: prefix + entry.name });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) return;
    for (const child of batch) await walk(child, prefix + entry.name + "/", out);
  }
}

// A zip of stored (uncompressed) members, UTF-8 names, built as a Blob of the files' own bytes.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
const DOS_DATE = (0 << 9) | (1 << 5) | 1; // 1980-01-01: the members' dates say nothing
async function storedZip(files, progress) {
  if (files.length > 65535) throw new Error("more than 65,535 files: send them as a zip");
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (let index = 0; index < files.length; index += 1) {
    const { file, path } = files[index];
    const name = encoder.encode(path);
    const crc = crc32(new Uint8Array(await file.arrayBuffer()));
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // names in UTF-8
    local.setUint16(12, DOS_DATE, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, file.size, true);
    local.setUint32(22, file.size, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, file);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(14, DOS_DATE, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, file.size, true);
    entry.setUint32(24, file.size, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(42, offset, true);
    central.push(entry, name);
    offset += 30 + name.length + file.size;
    progress(index + 1);
  }
  const size = central.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}
