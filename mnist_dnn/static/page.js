// The drawing page of mnist_dnn.serve: draw with a mouse, a finger or a pen (pointer events),
// turn the drawing into a 28x28 image the way MNIST's digits were made, and show the
// model's probabilities, asked over TensorFlow Serving's REST API while you draw.
"use strict";

const MODEL = document.querySelector('meta[name="model-name"]').content;
const PREDICT_URL = `/v1/models/${encodeURIComponent(MODEL)}:predict`;
const STATUS_URL = `/v1/models/${encodeURIComponent(MODEL)}`;
const SIZE = 28, BOX = 20;   // MNIST: the digit fitted into 20x20, centred by its centre of mass in 28x28
const INK = 16;              // pixels above this count for the digit's bounding box
const MIN_INTERVAL_MS = 100; // at most ten requests a second while drawing
const PEN_WIDTH = 22;        // of the 280-pixel pad: about MNIST's stroke once fitted into 20x20

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const preview = document.getElementById("digit28").getContext("2d");
const statusLine = document.getElementById("status");
const bars = [];
let drawn = 0, answered = 0, cleared = 0, inFlight = false, lastSent = 0, timer = null;
let modelLine = "";          // "Model mnist, version 2": the status line when nothing went wrong

// --- Drawing -------------------------------------------------------------------------------

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  preview.clearRect(0, 0, SIZE, SIZE);
  showProbabilities(null);
  changed();
  cleared = drawn; // an answer still on its way is for the drawing just cleared
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [(event.clientX - rect.left) * pad.width / rect.width, (event.clientY - rect.top) * pad.height / rect.height];
}

let last = null;
function strokeTo(event) {
  const [x, y] = padPoint(event);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = PEN_WIDTH;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(last || [x, y]));
  ctx.lineTo(x, y);
  ctx.stroke();
  last = [x, y];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  last = null;
  strokeTo(event);
  changed();
});
pad.addEventListener("pointermove", (event) => {
  if (last === null) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) strokeTo(e);
  changed();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { last = null; changed(); });
}
document.getElementById("clear").addEventListener("click", clearPad);

// --- The MNIST way: fit into 20x20 (area averaging), centre by the centre of mass in 28x28 ------

function boundingBox(gray, width, height) {
  let top = height, left = width, bottom = -1, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > INK) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  return bottom < 0 ? null : { top, left, width: right - left + 1, height: bottom - top + 1 };
}

// For each of `to` cells, the [source index, weight] pairs covering it: `from` cells averaged.
function areaWeights(from, to) {
  const scale = from / to, weights = [];
  for (let i = 0; i < to; i++) {
    const start = i * scale, end = (i + 1) * scale, cell = [];
    for (let j = Math.floor(start); j < Math.min(Math.ceil(end), from); j++) {
      cell.push([j, (Math.min(end, j + 1) - Math.max(start, j)) / scale]);
    }
    weights.push(cell);
  }
  return weights;
}

function resize(gray, stride, box, width, height) {
  const across = areaWeights(box.width, width), down = areaWeights(box.height, height);
  const rows = new Float64Array(box.height * width);
  for (let y = 0; y < box.height; y++) {
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (const [j, w] of across[x]) sum += w * gray[(box.top + y) * stride + box.left + j];
      rows[y * width + x] = sum;
    }
  }
  const out = new Float64Array(width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (const [j, w] of down[y]) sum += w * rows[j * width + x];
      out[y * width + x] = sum;
    }
  }
  return out;
}

function toMnist() {
  const rgba = ctx.getImageData(0, 0, pad.width, pad.height).data;
  const gray = new Float64Array(pad.width * pad.height);
  for (let i = 0; i < gray.length; i++) gray[i] = rgba[4 * i];
  const box = boundingBox(gray, pad.width, pad.height);
  if (!box) return null;
  const scale = BOX / Math.max(box.width, box.height);
  const width = Math.max(1, Math.round(box.width * scale)), height = Math.max(1, Math.round(box.height * scale));
  const small = resize(gray, pad.width, box, width, height);
  let mass = 0, cx = 0, cy = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = small[y * width + x];
      mass += v; cx += v * x; cy += v * y;
    }
  }
  const dx = Math.round(SIZE / 2 - cx / mass), dy = Math.round(SIZE / 2 - cy / mass);
  const pixels = new Uint8Array(SIZE * SIZE);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const tx = x + dx, ty = y + dy;
      if (tx >= 0 && tx < SIZE && ty >= 0 && ty < SIZE) {
        pixels[ty * SIZE + tx] = Math.min(255, Math.max(0, Math.round(small[y * width + x])));
      }
    }
  }
  return pixels;
}

function showPreview(pixels) {
  const image = preview.createImageData(SIZE, SIZE);
  pixels.forEach((v, i) => { image.data.set([v, v, v, 255], 4 * i); });
  preview.putImageData(image, 0, 0);
}

// --- Asking the model, throttled: one request at a time, at most one per MIN_INTERVAL_MS --------

function changed() {
  drawn += 1;
  document.body.dataset.drawn = drawn;
  schedule();
}

function schedule() {
  if (inFlight || timer) return;
  const wait = lastSent + MIN_INTERVAL_MS - performance.now();
  timer = setTimeout(() => { timer = null; predict(); }, Math.max(0, wait));
}

async function predict() {
  const generation = drawn, pixels = toMnist();
  if (!pixels) {
    answered = generation;
    document.body.dataset.answered = answered;
    return;
  }
  showPreview(pixels);
  const rows = [];
  for (let y = 0; y < SIZE; y++) rows.push(Array.from(pixels.subarray(y * SIZE, (y + 1) * SIZE), (v) => [v]));
  inFlight = true;
  lastSent = performance.now();
  try {
    const response = await fetch(PREDICT_URL, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ signature_name: "serving_default", instances: [rows] }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    if (generation >= cleared) showProbabilities(answer.predictions[0].probabilities);
    showStatus(modelLine);
  } catch (error) {
    showStatus(`The server did not answer: ${error.message}`, true);
  } finally {
    inFlight = false;
    answered = Math.max(answered, generation);
    document.body.dataset.answered = answered;
    if (drawn !== answered) schedule();
  }
}

// --- Showing the answer --------------------------------------------------------------------

function buildBars() {
  const list = document.getElementById("bars");
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.innerHTML = `<span class="digit">${digit}</span><span class="bar"><span class="fill"></span></span>` +
                     `<span class="value"></span>`;
    list.appendChild(item);
    bars.push(item);
  }
}

function showProbabilities(probabilities) {
  const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
  bars.forEach((item, digit) => {
    const p = probabilities ? probabilities[digit] : 0;
    item.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    item.querySelector(".value").textContent = probabilities ? `${(100 * p).toFixed(1)}%` : "";
    item.classList.toggle("best", digit === best);
  });
  document.getElementById("answer").textContent = best < 0 ? "\u2013" : String(best);
  document.getElementById("confidence").textContent = best < 0 ? "" : `${(100 * probabilities[best]).toFixed(1)}% sure`;
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function showModel() {
  try {
    const status = await (await fetch(STATUS_URL)).json();
    modelLine = `Model ${MODEL}, version ${status.model_version_status[0].version}`;
    if (!statusLine.classList.contains("error")) showStatus(modelLine);
  } catch (error) {
    showStatus(`The server did not answer: ${error.message}`, true);
  }
}

// --- An image file: dropped or chosen, made light on dark (as MNIST), drawn on the pad ---------

async function drawFile(file) {
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    showStatus(`${file.name} is not an image this browser can read`, true);
    return;
  }
  const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
  const width = Math.round(bitmap.width * scale), height = Math.round(bitmap.height * scale);
  const left = (pad.width - width) >> 1, top = (pad.height - height) >> 1;
  ctx.fillStyle = "#fff"; // transparent pixels count as white, as a viewer shows them
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.drawImage(bitmap, left, top, width, height);
  const image = ctx.getImageData(left, top, width, height), data = image.data;
  let border = 0, count = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      data[i] = data[i + 1] = data[i + 2] = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
      if (y === 0 || x === 0 || y === height - 1 || x === width - 1) { border += data[i]; count++; }
    }
  }
  const invert = border / count > 127; // dark digit on a light background: make it light on dark
  if (invert) for (let i = 0; i < data.length; i += 4) data[i] = data[i + 1] = data[i + 2] = 255 - data[i];
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.putImageData(image, left, top);
  changed();
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  drawFile(event.dataTransfer.files[0]);
});
document.getElementById("file").addEventListener("change", (event) => drawFile(event.target.files[0]));

buildBars();
clearPad();
showModel();
setInterval(showModel, 5000);
