// The inpainting page: pick an image, paint its hole, stream POST /v1/inpaint/stream, download a sample.
// The mask lives in `mask`, a canvas at the image's full size (white, alpha 0 or 255 = fill); the visible
// canvas only shows the image and the mask scaled to fit.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "onade-token";
const UNDO_DEPTH = 30;
const FIELDS = ["caption", "strategy", "steps", "guidance", "temperature", "top_p", "channels", "seed", "samples",
                "format"];

const state = {
  file: null,          // the picked File: uploaded as is (its name keys the seeds)
  image: null,         // its decoded <img>
  width: 0, height: 0, // the image's full size
  scale: 1,            // CSS pixels per image pixel on the visible canvas
  tool: "brush",
  undo: [],            // ImageData of the mask before each edit
  stroke: null,        // the edit under the pointer: {kind, x0, y0, x, y}
  pointer: null,       // the brush outline's place, image pixels
  limits: {},
  run: null,           // the running request's AbortController
  urls: [],            // object URLs of the current result, revoked on the next
  live: null,          // while a run streams: {window, img}, its latest state drawn into the hole
};

const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const mask = document.createElement("canvas");
const mctx = mask.getContext("2d", { willReadFrequently: true });
const overlay = document.createElement("canvas");
const octx = overlay.getContext("2d");

// ---- the server --------------------------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadModel() {
  let resp;
  try {
    resp = await fetch("v1/model", { headers: authHeaders() });
  } catch (e) {
    $("model-info").textContent = `The server did not answer: ${e.message}`;
    return;
  }
  const body = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (resp.status === 401) {
    askToken(sessionStorage.getItem(TOKEN_KEY) ? body.error : "");
    $("model-info").textContent = "This server needs a token.";
    return;
  }
  if (!resp.ok) {
    $("model-info").textContent = `GET /v1/model failed: ${body.error || resp.status}`;
    return;
  }
  $("token-form").hidden = true;
  applyModel(body);
  document.body.dataset.ready = "1";
}

function applyModel(m) {
  const d = m.defaults || {}, lim = m.limits || {};
  state.limits = lim;
  const strategy = $("strategy");
  if (d.strategy && ![...strategy.options].some((o) => o.value === d.strategy)) strategy.add(new Option(d.strategy));
  for (const k of ["strategy", "steps", "temperature", "top_p", "channels", "guidance"]) {
    if (d[k] !== undefined) $(k).value = d[k];
  }
  // guidance compares against the empty caption, which a model trained without caption dropout never saw
  $("guidance-note").hidden = m.caption_dropout !== 0;
  if (lim.max_steps) $("steps").max = lim.max_steps;
  if (lim.max_samples) $("samples").max = lim.max_samples;
  const params = m.parameters ? `${(m.parameters / 1e6).toFixed(m.parameters < 1e6 ? 3 : 1)}M parameters` : "";
  const step = m.train_step != null ? `trained ${m.train_step.toLocaleString()} steps` : "";
  $("model-info").textContent = [`${m.image_size}px model`, params, step, m.device, m.precision]
    .filter(Boolean).join(" · ");
}

function askToken(message) {
  $("token-form").hidden = false;
  showError("authorization", message);
  $("token").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  showError("authorization", "");
  loadModel();
});

// ---- errors in place -------------------------------------------------------------------------------

// A field the server names -> [its error box, its input]; fields without one report under the Inpaint button.
const ERROR_HOME = { image: ["err-image", "image-file"], mask: ["err-mask", "mask-file"],
                     hole: ["err-mask", "mask-file"], authorization: ["err-authorization", "token"] };

function errorBox(field) {
  const [box, input] = ERROR_HOME[field] || (FIELDS.includes(field) ? [`err-${field}`, field] : ["err-general"]);
  return [$(box), input ? $(input) : null];
}

function showError(field, message) {
  const [box, input] = errorBox(field);
  const elsewhere = box.id === "err-general" && field !== "general";
  box.textContent = message && elsewhere ? `${field}: ${message}` : message || "";
  box.hidden = !message;
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

function clearErrors() {
  for (const el of document.querySelectorAll(".error")) {
    el.textContent = "";
    el.hidden = true;
  }
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showServerError(body) {
  const field = body.field || "general";
  showError(field, body.error || `error ${body.status || ""}`);
  if (field === "authorization" || body.status === 401) askToken(body.error);
  const [box] = errorBox(field);
  const details = box.closest("details");
  if (details) details.open = true;
  box.scrollIntoView({ block: "nearest" });
  setStatus("");
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- the image ---------------------------------------------------------------------------------------

// A picked file as the browser decodes it, or null with the error shown beside `field`; the caller owns the
// object URL in its src.
async function decodeFile(file, field) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
    return img;
  } catch {
    URL.revokeObjectURL(url);
    showError(field, `${file.name}: the browser cannot read this image`);
    return null;
  }
}

async function pickImage(file) {
  if (!file) return;
  showError("image", "");
  if (!file.type.startsWith("image/") && file.type !== "") {
    showError("image", `${file.name} is not an image (${file.type})`);
    return;
  }
  const img = await decodeFile(file, "image");
  if (!img) return;
  const url = img.src;
  const w = img.naturalWidth, h = img.naturalHeight;
  if (state.limits.max_pixels && w * h > state.limits.max_pixels) {
    showError("image", `${w}x${h} is ${(w * h).toLocaleString()} pixels; this server takes at most ` +
              `${state.limits.max_pixels.toLocaleString()}`);
    URL.revokeObjectURL(url);
    return;
  }
  if (state.image) URL.revokeObjectURL(state.image.src);
  Object.assign(state, { file, image: img, width: w, height: h, undo: [] });
  mask.width = w;
  mask.height = h;
  $("stage-empty").hidden = true;
  canvas.hidden = false;
  canvas.dataset.size = `${w}x${h}`;
  showError("mask", "");
  fit();
  holeInfo();
}

$("image-file").addEventListener("change", (e) => pickImage(e.target.files[0]));

for (const zone of [$("drop"), $("stage")]) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) pickImage(file);
    else showError("image", "drop an image file");
  });
}

// The visible canvas: the image's aspect, as wide as its box and at most 65% of the window high.
function fit() {
  if (!state.image) return;
  const box = $("stage").clientWidth;
  const scale = Math.min(box / state.width, (window.innerHeight * 0.65) / state.height);
  const dpr = window.devicePixelRatio || 1;
  state.scale = scale;
  canvas.style.width = `${Math.floor(state.width * scale)}px`;
  canvas.style.height = `${Math.floor(state.height * scale)}px`;
  canvas.width = overlay.width = Math.max(1, Math.round(state.width * scale * dpr));
  canvas.height = overlay.height = Math.max(1, Math.round(state.height * scale * dpr));
  draw();
}

window.addEventListener("resize", fit);

let checker = null;

function checkerPattern() {
  if (!checker) {
    const c = document.createElement("canvas");
    c.width = c.height = 16;
    const g = c.getContext("2d");
    g.fillStyle = "#d8d8d8";
    g.fillRect(0, 0, 16, 16);
    g.fillStyle = "#8a8a8a";
    g.fillRect(0, 0, 8, 8);
    g.fillRect(8, 8, 8, 8);
    checker = octx.createPattern(c, "repeat");
  }
  return checker;
}

// The image, the hole over it (a translucent checkerboard, or the streamed state of the model's window while a
// run goes), and what the pointer is doing.
function draw() {
  if (!state.image) return;
  const W = canvas.width, H = canvas.height, k = W / state.width;
  const live = state.live && state.live.img;
  ctx.drawImage(state.image, 0, 0, W, H);
  octx.globalCompositeOperation = "source-over";
  octx.clearRect(0, 0, W, H);
  octx.drawImage(mask, 0, 0, W, H);
  octx.globalCompositeOperation = "source-in";
  if (live) {
    const w = state.live.window;
    octx.drawImage(live, w.left * k, w.top * k, w.side * k, w.side * k);
  } else {
    octx.fillStyle = checkerPattern();
    octx.fillRect(0, 0, W, H);
  }
  ctx.globalAlpha = live ? 1 : 0.8;
  ctx.drawImage(overlay, 0, 0);
  ctx.globalAlpha = 1;
  const s = state.stroke;
  if (s && s.kind === "box") {
    const [x, y, w, h] = boxOf(s);
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x * k, y * k, w * k, h * k);
    ctx.strokeStyle = "#000";
    ctx.lineDashOffset = 5;
    ctx.strokeRect(x * k, y * k, w * k, h * k);
    ctx.setLineDash([]);
    ctx.lineDashOffset = 0;
  } else if (state.pointer && state.tool !== "box") {
    ctx.beginPath();
    ctx.arc(state.pointer.x * k, state.pointer.y * k, (brushSize() / 2) * k, 0, 2 * Math.PI);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = state.tool === "erase" ? "#ff5a5a" : "#fff";
    ctx.stroke();
  }
}

// ---- the hole ----------------------------------------------------------------------------------------

// The brush's diameter in image pixels: the slider is in screen pixels, so the outline matches at any zoom.
function brushSize() {
  return Math.max(1, Number($("brush-size").value) / state.scale);
}

function toImage(e) {
  const r = canvas.getBoundingClientRect();
  return { x: ((e.clientX - r.left) / r.width) * state.width, y: ((e.clientY - r.top) / r.height) * state.height };
}

function boxOf(s) {
  const x0 = Math.max(0, Math.min(s.x0, s.x)), y0 = Math.max(0, Math.min(s.y0, s.y));
  const x1 = Math.min(state.width, Math.max(s.x0, s.x)), y1 = Math.min(state.height, Math.max(s.y0, s.y));
  return [Math.round(x0), Math.round(y0), Math.round(x1) - Math.round(x0), Math.round(y1) - Math.round(y0)];
}

function pushUndo() {
  state.undo.push(mctx.getImageData(0, 0, state.width, state.height));
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
}

function undo() {
  const prev = state.undo.pop();
  if (!prev) return;
  mctx.putImageData(prev, 0, 0);
  draw();
  holeInfo();
}

function paintSegment(a, b) {
  mctx.globalCompositeOperation = state.tool === "erase" ? "destination-out" : "source-over";
  mctx.strokeStyle = mctx.fillStyle = "#fff";
  mctx.lineWidth = brushSize();
  mctx.lineCap = mctx.lineJoin = "round";
  mctx.beginPath();
  if (a.x === b.x && a.y === b.y) {
    mctx.arc(a.x, a.y, brushSize() / 2, 0, 2 * Math.PI);
    mctx.fill();
  } else {
    mctx.moveTo(a.x, a.y);
    mctx.lineTo(b.x, b.y);
    mctx.stroke();
  }
  mctx.globalCompositeOperation = "source-over";
}

// Anti-aliased edges made hard: what is shown is then exactly the mask that is sent (alpha >= 128 = fill).
function binarize() {
  const data = mctx.getImageData(0, 0, state.width, state.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i + 3] >= 128 ? 255 : 0;
    px[i] = px[i + 1] = px[i + 2] = px[i + 3] = v;
  }
  mctx.putImageData(data, 0, 0);
}

function holePixels() {
  if (!state.image) return 0;
  const px = mctx.getImageData(0, 0, state.width, state.height).data;
  let n = 0;
  for (let i = 3; i < px.length; i += 4) n += px[i] >= 128;
  return n;
}

function holeInfo() {
  const n = holePixels();
  $("hole-info").textContent = state.image
    ? `${state.width}x${state.height} image; hole ${n.toLocaleString()} pixels` : "";
  canvas.dataset.hole = n;
}

canvas.addEventListener("pointerdown", (e) => {
  if (!state.image || e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  pushUndo();
  const p = toImage(e);
  state.stroke = { kind: state.tool, x0: p.x, y0: p.y, x: p.x, y: p.y };
  if (state.tool !== "box") paintSegment(p, p);
  draw();
});

canvas.addEventListener("pointermove", (e) => {
  if (!state.image) return;
  const p = toImage(e);
  state.pointer = p;
  const s = state.stroke;
  if (s && s.kind !== "box") paintSegment({ x: s.x, y: s.y }, p);
  if (s) Object.assign(s, p);
  draw();
});

function endStroke() {
  const s = state.stroke;
  if (!s) return;
  state.stroke = null;
  if (s.kind === "box") {
    const [x, y, w, h] = boxOf(s);
    mctx.fillStyle = "#fff";
    if (w > 0 && h > 0) mctx.fillRect(x, y, w, h);
  }
  binarize();
  draw();
  holeInfo();
  showError("mask", "");
}

canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
canvas.addEventListener("pointerleave", () => {
  state.pointer = null;
  draw();
});

function setTool(tool) {
  state.tool = tool;
  for (const t of ["brush", "erase", "box"]) $(`tool-${t}`).setAttribute("aria-pressed", String(t === tool));
  canvas.style.cursor = tool === "box" ? "crosshair" : "none";
}

for (const t of ["brush", "erase", "box"]) $(`tool-${t}`).addEventListener("click", () => setTool(t));

$("brush-size").addEventListener("input", (e) => {
  $("brush-size-out").textContent = e.target.value;
});

$("undo").addEventListener("click", undo);

document.addEventListener("keydown", (e) => {
  // text fields keep their own Ctrl+Z
  if ((e.ctrlKey || e.metaKey) && !e.shiftKey && e.key.toLowerCase() === "z" &&
      !e.target.matches("input[type=text], input[type=number], input[type=password], textarea")) {
    e.preventDefault();
    undo();
  }
});

$("clear").addEventListener("click", () => {
  if (!state.image) return;
  pushUndo();
  mctx.clearRect(0, 0, state.width, state.height);
  draw();
  holeInfo();
});

// The server's `center` hole: the central square of half the shorter side (onade.holes).
$("centre").addEventListener("click", () => {
  if (!state.image) return;
  pushUndo();
  const side = Math.max(1, Math.floor(Math.min(state.width, state.height) / 2));
  mctx.fillStyle = "#fff";
  mctx.fillRect(Math.floor((state.width - side) / 2), Math.floor((state.height - side) / 2), side, side);
  draw();
  holeInfo();
  showError("mask", "");
});

$("mask-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  showError("mask", "");
  if (!state.image) {
    showError("mask", "pick the image first: a mask must have its image's size");
    return;
  }
  const img = await decodeFile(file, "mask");
  if (!img) return;
  URL.revokeObjectURL(img.src);  // decoded: drawing it needs the URL no more
  if (img.naturalWidth !== state.width || img.naturalHeight !== state.height) {
    showError("mask", `mask is ${img.naturalWidth}x${img.naturalHeight} but the image is ` +
              `${state.width}x${state.height}: a mask must have its image's size`);
    return;
  }
  pushUndo();
  mctx.clearRect(0, 0, state.width, state.height);
  mctx.drawImage(img, 0, 0);
  // white = fill, as the server reads it: grey level (of the opaque colour) over 127
  const data = mctx.getImageData(0, 0, state.width, state.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const a = px[i + 3] / 255;
    const grey = a * (0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
    const v = grey > 127 ? 255 : 0;
    px[i] = px[i + 1] = px[i + 2] = px[i + 3] = v;
  }
  mctx.putImageData(data, 0, 0);
  draw();
  holeInfo();
});

// The mask as the server and the batch job read it: an opaque PNG at the image's size, white = fill.
function maskBlob() {
  const c = document.createElement("canvas");
  c.width = state.width;
  c.height = state.height;
  const g = c.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, c.width, c.height);
  g.drawImage(mask, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "image";
}

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

$("download-mask").addEventListener("click", async () => {
  if (!state.image) return showError("mask", "pick an image and paint its hole first");
  saveBlob(await maskBlob(), `${stem(state.file.name)}.png`);
});

// ---- settings ----------------------------------------------------------------------------------------

$("random-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * 2 ** 32);
});

$("settings").addEventListener("submit", (e) => {
  e.preventDefault();
  submit();
});

$("stop").addEventListener("click", () => state.run && state.run.abort());

// ---- a run -------------------------------------------------------------------------------------------

async function submit() {
  if (state.run) return;
  clearErrors();
  if (!state.image) return showError("image", "pick an image first");
  if (holePixels() === 0) return showError("mask", "paint the hole to fill first (or press Centre hole)");
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("mask", await maskBlob(), "mask.png");
  for (const k of FIELDS) {
    const v = $(k).value.trim();
    if (v !== "" || k === "caption") form.append(k, v);
  }
  const run = new AbortController();
  state.run = run;
  $("submit").disabled = true;
  $("stop").hidden = false;
  startOutput();
  setStatus("Sending…");
  try {
    const resp = await fetch("v1/inpaint/stream", { method: "POST", body: form, headers: authHeaders(),
                                                    signal: run.signal });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
      showServerError({ status: resp.status, ...body });
      return;
    }
    let finished = false;
    for await (const event of lines(resp.body)) finished = onEvent(event) || finished;
    if (!finished) showServerError({ error: "the server closed the stream before the result" });
  } catch (e) {
    if (e.name === "AbortError") setStatus("Stopped.");
    else showServerError({ error: `the request failed: ${e.message}` });
  } finally {
    state.run = state.live = null;
    draw();
    $("submit").disabled = false;
    $("stop").hidden = true;
  }
}

// JSON lines of a streamed body, as they arrive.
async function* lines(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    buf += decoder.decode(value || new Uint8Array(), { stream: !done });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) yield parse(line);
    }
    if (done) break;
  }
  if (buf.trim()) yield parse(buf);
}

// Seeds are 64-bit: keep the digits of an integer a double cannot hold (where the browser gives the source).
function parse(line) {
  return JSON.parse(line, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^\d+$/.test(context.source)
      ? context.source : value);
}

function startOutput() {
  for (const u of state.urls) URL.revokeObjectURL(u);
  state.urls = [];
  $("output").hidden = false;
  $("previews").replaceChildren();
  $("previews").dataset.updates = "0";
  $("samples-list").replaceChildren();
  $("picked-figure").hidden = $("samples-box").hidden = $("command-box").hidden = true;
  $("progress").value = 0;
}

// Returns true once the run is over (a result or an error).
function onEvent(ev) {
  if (ev.event === "start") {
    $("progress").max = ev.passes || 1;
    state.live = ev.window ? { window: ev.window, img: null } : null;
    setStatus(`Filling ${ev.hole_pixels.toLocaleString()} pixels in ${ev.passes} passes…`);
  } else if (ev.event === "update") {
    showPreviews(ev);
  } else if (ev.event === "result") {
    showResult(ev);
    return true;
  } else if (ev.event === "error") {
    showServerError(ev);
    return true;
  }
  return false;
}

function showPreviews(ev) {
  const box = $("previews");
  box.dataset.updates = String(Number(box.dataset.updates) + 1);
  ev.samples.forEach((src, k) => {
    let img = box.children[k];
    if (!img) {
      img = document.createElement("img");
      img.alt = `Sample ${k + 1}: the model's window as it fills`;
      box.append(img);
    }
    img.src = src;
  });
  if (state.live && ev.samples.length) {
    const img = new Image();
    img.onload = () => {
      if (state.live) {
        state.live.img = img;
        draw();
      }
    };
    img.src = ev.samples[0];
  }
  $("progress").max = ev.of || 1;
  $("progress").value = ev.pass;
  setStatus(`Pass ${ev.pass} of ${ev.of}…`);
}

function showResult(r) {
  $("progress").value = $("progress").max;
  const list = $("samples-list");
  const mime = { png: "image/png", jpg: "image/jpeg", webp: "image/webp" };
  const samples = r.samples.map((s) => {
    const bytes = Uint8Array.from(atob(s.data), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: mime[s.format] || "application/octet-stream" }));
    state.urls.push(url);
    return { ...s, url };
  });
  list.replaceChildren(...samples.map((s, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "sample";
    b.setAttribute("aria-pressed", "false");
    b.setAttribute("aria-label", `Sample ${k + 1} (seed ${s.seed})`);
    const img = document.createElement("img");
    img.src = s.url;
    img.alt = "";
    b.append(img);
    b.addEventListener("click", () => pick(samples, k, r));
    return b;
  }));
  pick(samples, 0, r);
  $("command").value = r.command || "";
  $("command-box").hidden = !r.command;
  setStatus(`Done: ${samples.length} sample${samples.length > 1 ? "s" : ""}, ` +
            `${r.hole_pixels.toLocaleString("en-US")} hole pixels, in ${r.seconds} s ` +
            `(${r.forward_passes} forward passes, model ${r.model_seconds} s).` +
            (r.warnings || []).map((w) => ` ${w[0].toUpperCase()}${w.slice(1)}.`).join(""));
  document.body.dataset.result = String(Number(document.body.dataset.result || 0) + 1);
}

function pick(samples, k, r) {
  const s = samples[k];
  [...$("samples-list").children].forEach((b, i) => b.setAttribute("aria-pressed", String(i === k)));
  $("picked").src = s.url;
  $("picked-figure").hidden = false;
  const [w, h] = r.image_size || [state.width, state.height];
  $("picked-info").textContent = `Sample ${k + 1} of ${samples.length}, seed ${s.seed}, ${w}x${h}`;
  const a = $("download");
  a.href = s.url;
  a.download = `${stem(r.name || state.file.name)}.inpainted.${k}.${s.format}`;
  $("samples-box").hidden = false;
}

$("copy-command").addEventListener("click", async () => {
  const text = $("command").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API off a secure origin: select it, the browser's copy does the rest
    $("command").select();
    document.execCommand("copy");
  }
  setStatus("Command copied.");
});

setTool("brush");
loadModel();
