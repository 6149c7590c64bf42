// relkd in the browser: reads a NIfTI volume, applies the preprocessing recorded in the model's
// metadata, segments every axial slice with ONNX Runtime Web and returns the mask on the source
// grid. The arithmetic repeats relkd-core's (nifti_io.rs, transforms.rs, segment.rs) operation for
// operation, in float32 where Rust uses f32 (Math.fround after each step), so that the mask is
// the one `infer --provider cpu` writes, voxel for voxel.
"use strict";

const f32 = Math.fround;

// ---- NIfTI-1 ---------------------------------------------------------------------------------

const DATATYPES = { 2: ["uint8", 1], 4: ["int16", 2], 8: ["int32", 4], 16: ["float32", 4], 64: ["float64", 8], 512: ["uint16", 2] };

async function gunzip(bytes, name) {
  try {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new Error(`${name}: the gzip data is corrupt or truncated (${e.message || e})`);
  }
}

/** A 3D NIfTI-1 volume: dims [nx, ny, nz], voxels as float32 (x fastest), the raw header. */
async function readNifti(buffer, name) {
  let bytes = new Uint8Array(buffer);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) bytes = await gunzip(bytes, name);
  if (bytes.length < 348) throw new Error(`${name} is not a NIfTI file (${bytes.length} bytes, a header alone is 348)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le = true;
  if (view.getInt32(0, true) !== 348) {
    if (view.getInt32(0, false) !== 348) throw new Error(`${name} is not a NIfTI-1 file (no 348-byte header)`);
    le = false;
  }
  const magic = String.fromCharCode(bytes[344], bytes[345], bytes[346]);
  if (magic !== "n+1") {
    throw new Error(`${name}: ${magic === "ni1" ? "a .hdr/.img pair; a single .nii file is needed" : "not a NIfTI-1 file (bad magic)"}`);
  }
  const dim = Array.from({ length: 8 }, (_, i) => view.getInt16(40 + 2 * i, le));
  const ndim = Math.min(Math.max(dim[0], 0), 7);
  const dims = dim.slice(1, ndim + 1);
  while (dims.length > 3 && dims[dims.length - 1] === 1) dims.pop();
  if (dims.length !== 3) throw new Error(`${name} has dimensions ${dims.join("×") || "none"}; a 3D volume is needed`);
  if (dims.some((d) => d < 1)) throw new Error(`${name} has an empty dimension (${dims.join("×")})`);
  const code = view.getInt16(70, le);
  const type = DATATYPES[code];
  if (!type) throw new Error(`${name}: NIfTI datatype ${code} is not supported (uint8, int16, uint16, int32, float32, float64 are)`);
  const [typeName, size] = type;
  if (view.getInt16(72, le) !== 8 * size) throw new Error(`${name}: bitpix ${view.getInt16(72, le)} does not match ${typeName}`);
  const voxOffset = view.getFloat32(108, le);
  const offset = Number.isFinite(voxOffset) && voxOffset >= 352 ? Math.floor(voxOffset) : 352;
  const [nx, ny, nz] = dims;
  const count = nx * ny * nz;
  if (count * size > bytes.length - offset) {
    throw new Error(`${name} is truncated: ${Math.max(bytes.length - offset, 0)} bytes of voxel data, ${count * size} expected`);
  }
  const slope = view.getFloat32(112, le), inter = view.getFloat32(116, le);
  const read = {
    uint8: (o) => view.getUint8(o), int16: (o) => view.getInt16(o, le), uint16: (o) => view.getUint16(o, le),
    int32: (o) => view.getInt32(o, le), float32: (o) => view.getFloat32(o, le), float64: (o) => view.getFloat64(o, le),
  }[typeName];
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const v = f32(read(offset + i * size));
    data[i] = slope === 0 ? v : f32(f32(v * slope) + inter);
    if (!Number.isFinite(data[i])) throw new Error(`${name} holds non-finite values (the first at voxel ${i})`);
  }
  return { name, dims, data, header: bytes.slice(0, 348), le };
}

/** A uint8 mask on the grid of `source`, as gzip-compressed NIfTI-1 bytes. */
async function writeMask(mask, source) {
  const out = new Uint8Array(352 + mask.length);
  out.set(source.header, 0);
  const view = new DataView(out.buffer);
  const le = source.le;
  const [nx, ny, nz] = source.dims;
  [3, nx, ny, nz, 1, 1, 1, 1].forEach((d, i) => view.setInt16(40 + 2 * i, d, le));
  view.setInt16(70, 2, le); // uint8
  view.setInt16(72, 8, le);
  view.setFloat32(108, 352, le);
  view.setFloat32(112, 1, le);
  view.setFloat32(116, 0, le);
  view.setFloat32(124, 1, le); // cal_max
  view.setFloat32(128, 0, le); // cal_min
  out.set(mask, 352);
  const stream = new Blob([out]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// ---- preprocessing (relkd_core::transforms) ---------------------------------------------------

/** Per-volume z-score: mean and standard deviation in float64, the result in float32. */
function zscore(data) {
  const n = data.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += data[i];
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) {
    const d = data[i] - mean;
    sq += d * d;
  }
  const std = Math.sqrt(sq / n);
  const scale = std > 0 ? 1 / std : 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (data[i] - mean) * scale;
  return out;
}

/** Half-pixel bilinear taps (lower, upper, weight of upper) per destination index. */
function taps(src, dst) {
  const scale = f32(src / dst);
  const result = [];
  for (let i = 0; i < dst; i++) {
    const c = Math.min(Math.max(f32(f32(f32(i + 0.5) * scale) - 0.5), 0), src - 1);
    const lo = Math.floor(c);
    result.push([lo, Math.min(lo + 1, src - 1), f32(c - lo)]);
  }
  return result;
}

/** Bilinear resize of an h × w plane (row-major, starting at `at` in `src`) to oh × ow. */
function resize(src, at, h, w, oh, ow) {
  if (h === oh && w === ow) return src.slice(at, at + h * w);
  const rows = taps(h, oh), cols = taps(w, ow);
  const out = new Float32Array(oh * ow);
  let k = 0;
  for (const [r0, r1, fy] of rows) {
    const a = at + r0 * w, b = at + r1 * w;
    for (const [c0, c1, fx] of cols) {
      const top = f32(src[a + c0] + f32(f32(src[a + c1] - src[a + c0]) * fx));
      const bottom = f32(src[b + c0] + f32(f32(src[b + c1] - src[b + c0]) * fx));
      out[k++] = f32(top + f32(f32(bottom - top) * fy));
    }
  }
  return out;
}

// ---- the model -------------------------------------------------------------------------------

/** ModelProto.metadata_props (field 14: key 1, value 2), read from the protobuf directly. */
function onnxMetadata(bytes) {
  let pos = 0;
  const varint = (end) => {
    let value = 0, shift = 0, byte;
    do {
      if (pos >= end) throw new Error("model.onnx is truncated");
      byte = bytes[pos++];
      value += (byte & 0x7f) * 2 ** shift;
      shift += 7;
    } while (byte & 0x80);
    return value;
  };
  const fields = (start, end, each) => {
    pos = start;
    while (pos < end) {
      const key = varint(end), field = Math.floor(key / 8), wire = key % 8;
      if (wire === 0) varint(end);
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const length = varint(end), begin = pos;
        pos += length;
        each(field, begin, pos);
      } else throw new Error(`model.onnx is not an ONNX file (wire type ${wire})`);
    }
  };
  const text = (a, b) => new TextDecoder().decode(bytes.subarray(a, b));
  const entries = [];
  fields(0, bytes.length, (field, a, b) => { if (field === 14) entries.push([a, b]); });
  const meta = {};
  for (const [a, b] of entries) {
    let key = "", value = "";
    fields(a, b, (field, x, y) => { if (field === 1) key = text(x, y); else if (field === 2) value = text(x, y); });
    meta[key] = value;
  }
  return meta;
}

async function loadModel(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const meta = onnxMetadata(bytes);
  const size = Number(meta["relkd.input_size"]), context = Number(meta["relkd.context"] ?? 0);
  if (!Number.isInteger(size) || size < 1 || meta["relkd.normalization"] !== "z-score per volume") {
    throw new Error(`${url} holds no relkd preprocessing metadata (relkd.input_size, relkd.normalization); export it with relkd's export`);
  }
  ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; a plain static server is not
  ort.env.wasm.wasmPaths = new URL("./", location.href).href;
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { session, meta, size, context, input: session.inputNames[0], output: session.outputNames[0] };
}

/** Segments `volume` slice by slice (relkd_core::segment::segment_volume), batch 1. */
async function segment(model, volume, onSlice) {
  const [nx, ny, nz] = volume.dims;
  const plane = nx * ny, s = model.size, c = 2 * model.context + 1;
  const norm = zscore(volume.data);
  const mask = new Uint8Array(plane * nz);
  for (let z = 0; z < nz; z++) {
    const input = new Float32Array(c * s * s);
    for (let offset = 0; offset < c; offset++) {
      const zz = Math.min(Math.max(z + offset - model.context, 0), nz - 1);
      input.set(resize(norm, zz * plane, ny, nx, s, s), offset * s * s);
    }
    const result = await model.session.run({ [model.input]: new ort.Tensor("float32", input, [1, c, s, s]) });
    const logits = result[model.output].data;
    const k = logits.length / (s * s);
    const planes = Array.from({ length: k }, (_, cls) => resize(logits, cls * s * s, s, s, ny, nx));
    for (let p = 0; p < plane; p++) {
      let best = 0;
      for (let cls = 1; cls < k; cls++) if (planes[cls][p] > planes[best][p]) best = cls;
      mask[z * plane + p] = best !== 0 ? 1 : 0;
    }
    onSlice(z + 1, nz);
  }
  return mask;
}

function dice(pred, truth) {
  let inter = 0, sum = 0;
  for (let i = 0; i < pred.length; i++) {
    const p = pred[i] !== 0, t = truth[i] !== 0;
    inter += p && t;
    sum += p + t;
  }
  return sum === 0 ? 1 : (2 * inter) / sum;
}

// ---- the page --------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const state = { model: null, volume: null, truth: null, mask: null, maskBytes: null };

function showError(error) {
  $("message").textContent = error.message || String(error);
  $("message").hidden = false;
  $("progress").hidden = true;
  $("status").textContent = "";
}

function draw() {
  const { volume, mask, truth } = state;
  const [nx, ny] = volume.dims;
  const z = Number($("slice").value);
  const at = z * nx * ny;
  const slice = volume.data.subarray(at, at + nx * ny);
  const sorted = Float32Array.from(slice).sort();
  const pick = (q) => sorted[Math.floor((sorted.length - 1) * q)];
  const lo = pick(0.01), span = pick(0.99) > lo ? pick(0.99) - lo : 1;
  const canvas = $("canvas");
  canvas.width = nx;
  canvas.height = ny;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(nx, ny);
  const boundary = (m, y, x) => m[at + y * nx + x] !== 0 && (y === 0 || x === 0 || y === ny - 1 || x === nx - 1 ||
    !m[at + (y - 1) * nx + x] || !m[at + (y + 1) * nx + x] || !m[at + y * nx + x - 1] || !m[at + y * nx + x + 1]);
  for (let y = 0; y < ny; y++) {
    for (let x = 0; x < nx; x++) {
      const v = Math.round(Math.min(Math.max((slice[y * nx + x] - lo) / span, 0), 1) * 255);
      let rgb = [v, v, v];
      if (truth && boundary(truth.data, y, x)) rgb = [224, 0, 0];
      if (boundary(mask, y, x)) rgb = [0, 224, 0];
      image.data.set([...rgb, 255], 4 * (y * nx + x));
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.style.width = `${Math.min(640, nx * Math.max(1, Math.floor(640 / nx)))}px`;
  $("slice-label").textContent = `${z + 1} / ${volume.dims[2]}`;
}

async function run(volumeBuffer, volumeName, labelBuffer, labelName) {
  $("message").hidden = true;
  $("viewer").hidden = true;
  $("status").textContent = `reading ${volumeName} …`;
  const volume = await readNifti(volumeBuffer, volumeName);
  let truth = null;
  if (labelBuffer) {
    truth = await readNifti(labelBuffer, labelName);
    if (truth.dims.join() !== volume.dims.join()) {
      throw new Error(`${labelName} is ${truth.dims.join("×")}, the volume ${volume.dims.join("×")}: not its label`);
    }
  }
  if (!state.model) {
    $("status").textContent = "loading the model …";
    state.model = await loadModel("model.onnx");
    const m = state.model.meta;
    $("model").textContent = `Model: ${m["relkd.model"] ?? "?"} (${m["relkd.role"] ?? "?"}), trained on ${(m["relkd.training_sites"] || "?").split(",").join(", ")}` +
      `, input ${state.model.size}×${state.model.size}, ${2 * state.model.context + 1} slice(s); run ${m["relkd.run_id"] ?? "?"}.`;
  }
  const progress = $("progress");
  progress.hidden = false;
  progress.value = 0;
  const started = performance.now();
  const mask = await segment(state.model, volume, (done, total) => {
    progress.value = done / total;
    $("status").textContent = `segmenting ${volumeName}: slice ${done} of ${total}`;
  });
  Object.assign(state, { volume, truth, mask, maskBytes: await writeMask(mask, volume) });
  progress.hidden = true;
  const seconds = (performance.now() - started) / 1000;
  // (A headless screenshot's virtual clock reads no time at all: say nothing rather than 0 s.)
  const took = seconds >= 0.05 ? ` in ${seconds.toFixed(1)} s` : "";
  $("status").textContent = `${volumeName}: ${volume.dims.join("×")} voxels, ${volume.dims[2]} slices segmented${took}.`;
  $("dice").textContent = truth ? `Dice with ${labelName}: ${dice(mask, truth.data.map((v) => (v > 0 ? 1 : 0))).toFixed(4)}` : "";
  $("truth-key").hidden = $("truth-name").hidden = !truth;
  const slider = $("slice");
  slider.max = volume.dims[2] - 1;
  let best = 0, most = -1;
  for (let z = 0; z < volume.dims[2]; z++) {
    const n = mask.subarray(z * volume.dims[0] * volume.dims[1], (z + 1) * volume.dims[0] * volume.dims[1]).reduce((a, b) => a + b, 0);
    if (n > most) [best, most] = [z, n];
  }
  slider.value = best;
  $("viewer").hidden = false;
  draw();
}

function maskName() {
  return state.volume.name.replace(/\.nii(\.gz)?$/i, "") + "_mask.nii.gz";
}

function download() {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([state.maskBytes], { type: "application/gzip" }));
  link.download = maskName();
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function fromFiles(files) {
  try {
    files = Array.from(files);
    if (files.length === 0) return;
    const isLabel = (f) => /segmentation|label|mask/i.test(f.name);
    const volume = files.find((f) => !isLabel(f)) ?? files[0];
    const label = files.find((f) => f !== volume);
    await run(await volume.arrayBuffer(), volume.name, label && (await label.arrayBuffer()), label?.name);
  } catch (e) {
    showError(e);
  }
}

/** `?volume=URL[&label=URL][&report=URL]`: opens files from the server; with `report`, posts the
 * mask it would download (or the message it shows) there, for tests and scripted use. */
async function fromQuery(params) {
  const report = params.get("report");
  const get = async (url) => {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
    return r.arrayBuffer();
  };
  const post = (kind, body) => report && fetch(report, { method: "POST", headers: { "X-Relkd": kind }, body });
  try {
    const volume = params.get("volume"), label = params.get("label");
    await run(await get(volume), volume.split("/").pop(), label && (await get(label)), label?.split("/").pop());
    await post("mask", state.maskBytes);
  } catch (e) {
    showError(e);
    await post("error", $("message").textContent);
  }
}

$("files").addEventListener("change", (e) => fromFiles(e.target.files));
$("slice").addEventListener("input", draw);
$("download").addEventListener("click", download);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); fromFiles(e.dataTransfer.files); });
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
const query = new URLSearchParams(location.search);
if (query.has("volume")) fromQuery(query);
