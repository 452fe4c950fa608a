// The ldmkit serve page: plain DOM code over the A1111-compatible API. Every piece of user or
// server text is set with textContent or as a property, never parsed as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
const $$ = (selector) => Array.from(document.querySelectorAll(selector));

const state = {
  tab: "txt2img",
  model: null, // /ldmkit/v1/model
  samplers: [], // /sdapi/v1/samplers
  init: null, // the input image: {data (a data: URL), width, height}
  control: null, // the ControlNet's hint, a data: URL
  strength: { img2img: 0.6, inpaint: 1.0 },
  lastSeed: null,
  busy: false,
  pngParameters: null,
};

// ---- the API ---------------------------------------------------------------------------------
async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const detail = data && (data.detail || data.errors || data.error);
    throw new Error(typeof detail === "string" ? detail : `${response.status} ${response.statusText}`);
  }
  return data;
}

const base64Of = (dataUrl) => dataUrl.slice(dataUrl.indexOf(",") + 1);
const pngUrl = (base64) => `data:image/png;base64,${base64}`;

function showError(error) {
  const box = $("#error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function setStatus(text) {
  $("#status").textContent = text || "";
}

// ---- small images shown enlarged, pixel for pixel ----------------------------------------------
function enlarge(img, target) { // shown at a whole multiple of its size, about `target` px wide
  const fit = () => {
    const w = img.naturalWidth;
    if (!w) return;
    const scale = Math.max(1, Math.floor(target / w));
    img.classList.toggle("pixelated", scale > 1);
    img.style.width = `${w * scale}px`;
  };
  if (img.complete) fit();
  img.addEventListener("load", fit);
}

// ---- tabs ------------------------------------------------------------------------------------
const TASK_TABS = { // what each kind of model can do, for a hint (the server is the judge)
  generation: ["txt2img", "img2img", "inpaint", "outpaint"],
  inpainting: ["inpaint", "outpaint"],
  upscaling: [],
};

function selectTab(tab) {
  if (state.tab === "img2img" || state.tab === "inpaint") state.strength[state.tab] = $("#denoise").value;
  state.tab = tab;
  if (tab in state.strength) $("#denoise").value = state.strength[tab];
  for (const button of $$("[data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  for (const element of $$("[data-show]")) element.hidden = !element.dataset.show.split(" ").includes(tab);
  $("#generate").textContent = tab === "upscale" ? "Upscale" : "Generate";
  document.body.dataset.current = tab;
  updateHint();
  updateInitSize();
  if (tab === "inpaint") sizeMask();
}

function updateHint() {
  const hint = $("#task-hint");
  const task = state.model && state.model.task;
  const can = TASK_TABS[task];
  const tab = state.tab;
  if (!can || tab === "upscale" || tab === "pnginfo" || can.includes(tab)) {
    hint.hidden = true;
    return;
  }
  hint.textContent = task === "upscaling"
    ? `${state.model.name} is an upscaler: use it from the upscale tab, or pick another model.`
    : `${state.model.name} is an ${task} model: it works from the ${can.join(" and ")} tabs.`;
  hint.hidden = false;
}

// ---- models, samplers, LoRAs, upscalers --------------------------------------------------------
function fillSelect(select, items, selected) {
  select.replaceChildren(...items.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    option.selected = value === selected;
    return option;
  }));
}

async function loadModel() {
  const model = await api("/ldmkit/v1/model");
  state.model = model;
  const m = model.multiple || 8;
  for (const id of ["#width", "#height"]) {
    Object.assign($(id), { step: m, min: m, max: model.max_side, value: model.image_size });
  }
  for (const id of ["#pad-left", "#pad-right", "#pad-top", "#pad-bottom", "#upscale-factor"]) $(id).step = m;
  $("#steps").max = model.max_steps;
  $("#batch-size").max = model.max_images;
  $("#batch-count").max = model.max_images;
  const d = model.defaults || {};
  if (d.steps) $("#steps").value = d.steps;
  if (d.guidance !== undefined && d.guidance !== null) $("#cfg-scale").value = d.guidance;
  if (d.sampler) $("#sampler").value = samplerName(d.sampler);
  const classes = model.class_names || [];
  const picker = $("#class-picker");
  fillSelect(picker, [["", "insert a class…"], ...classes.map((c) => [c, c])], "");
  picker.hidden = classes.length === 0;
  const kind = model.channels === 1 ? "gray" : "colour";
  $("#model-info").textContent = `${model.task}, ${model.image_size} px ${kind}`;
  updateHint();
}

async function loadModels() {
  const [models, options] = await Promise.all([api("/sdapi/v1/sd-models"), api("/sdapi/v1/options")]);
  fillSelect($("#model"), models.map((m) => [m.model_name, m.title]), options.sd_model_checkpoint);
}

async function switchModel() {
  const name = $("#model").value;
  $("#model").disabled = true;
  setStatus(`loading ${name}…`);
  try {
    await api("/sdapi/v1/options", { sd_model_checkpoint: name });
    await loadModel();
    showError(null);
  } catch (error) {
    showError(error);
    await loadModels().catch(() => {});
  } finally {
    $("#model").disabled = false;
    setStatus("");
  }
}

function samplerName(name) { // an A1111 name or an ldmkit one ("dpmpp_2m") -> the option's value
  const found = state.samplers.find((s) => s.name === name || (s.aliases || []).includes(name));
  return found ? found.name : name;
}

async function loadLists() {
  const [samplers, schedulers, loras, upscalers, steering] = await Promise.all([
    api("/sdapi/v1/samplers"), api("/sdapi/v1/schedulers"), api("/sdapi/v1/loras"), api("/sdapi/v1/upscalers"),
    api("/ldmkit/v1/steering"),
  ]);
  const named = (names, none) => [["", none], ...names.map((n) => [n, n])];
  fillSelect($("#controlnet"), named(steering.controlnets, "none"), "");
  fillSelect($("#classifier"), named(steering.classifiers, "none"), "");
  fillSelect($("#clip"), named(steering.clips, "default"), "");
  state.samplers = samplers;
  fillSelect($("#sampler"), samplers.map((s) => [s.name, s.name]), null);
  fillSelect($("#scheduler"), schedulers.map((s) => [s.name, s.label || s.name]), "automatic");
  const picker = $("#lora-picker");
  fillSelect(picker, [["", loras.length ? "add a LoRA…" : "no LoRAs"], ...loras.map((l) => [l.name, l.alias || l.name])], "");
  picker.disabled = loras.length === 0;
  const names = upscalers.map((u) => u.name);
  const best = names.find((n) => !["None", "Lanczos", "Nearest"].includes(n)) || "Lanczos";
  fillSelect($("#upscaler"), upscalers.map((u) => [u.name, u.scale && !["None", "Lanczos", "Nearest"].includes(u.name)
    ? `${u.name} (x${u.scale})` : u.name]), best);
}

function insertIntoPrompt(text, replace) {
  const prompt = $("#prompt");
  prompt.value = replace ? text : `${prompt.value.trimEnd()}${prompt.value.trim() ? " " : ""}${text}`;
  prompt.focus();
}

// ---- the input image and the inpainting mask ---------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot read this image"));
    img.src = src;
  });
}

async function setInitImage(dataUrl) {
  const img = await loadImage(dataUrl);
  state.init = { data: dataUrl, width: img.naturalWidth, height: img.naturalHeight };
  const preview = $("#init-preview");
  preview.src = dataUrl;
  const scale = Math.max(1, Math.floor(256 / Math.max(img.naturalWidth, img.naturalHeight)));
  const w = img.naturalWidth * scale;
  const h = img.naturalHeight * scale;
  const stage = $("#stage"); // at most the panel's width; the mask's coordinates follow its shown size
  stage.style.width = `${w}px`;
  stage.style.aspectRatio = `${w} / ${h}`;
  const side = Math.max(img.naturalWidth, img.naturalHeight);
  const brush = $("#brush-size");
  brush.max = Math.max(8, Math.round(side / 2));
  brush.value = Math.max(1, Math.round(side / 8));
  preview.classList.toggle("pixelated", scale > 1);
  stage.hidden = false;
  const canvas = $("#mask-canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  mask.undo = [];
  updateInitSize();
}

function updateInitSize() {
  const init = state.init;
  if (!init) {
    $("#init-size").textContent = "";
    return;
  }
  const n = (id) => Math.max(0, parseInt($(id).value, 10) || 0);
  let [w, h] = [init.width, init.height];
  if (state.tab === "outpaint") [w, h] = [w + n("#pad-left") + n("#pad-right"), h + n("#pad-top") + n("#pad-bottom")];
  if (state.tab === "upscale") [w, h] = [Math.round(w * num("#upscale-factor")), Math.round(h * num("#upscale-factor"))];
  const size = `${init.width}×${init.height}`;
  $("#init-size").textContent = w !== init.width || h !== init.height ? `${size} → ${w}×${h}` : size;
}

const mask = { drawing: false, last: null, undo: [] };

function sizeMask() {
  const canvas = $("#mask-canvas");
  if (state.init && (canvas.width !== state.init.width || canvas.height !== state.init.height)) {
    canvas.width = state.init.width;
    canvas.height = state.init.height;
  }
}

function canvasPoint(event) {
  const canvas = $("#mask-canvas");
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function stroke(from, to) {
  const ctx = $("#mask-canvas").getContext("2d");
  ctx.globalCompositeOperation = $("#eraser").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#ff3b3b";
  ctx.lineWidth = Number($("#brush-size").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
}

function pushUndo() {
  const canvas = $("#mask-canvas");
  mask.undo.push(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height));
  if (mask.undo.length > 30) mask.undo.shift();
}

function setupMask() {
  const canvas = $("#mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.init) return;
    canvas.setPointerCapture(event.pointerId);
    pushUndo();
    mask.drawing = true;
    mask.last = canvasPoint(event);
    stroke(mask.last, mask.last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!mask.drawing) return;
    const point = canvasPoint(event);
    stroke(mask.last, point);
    mask.last = point;
  });
  const end = () => { mask.drawing = false; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("#mask-undo").addEventListener("click", () => {
    const previous = mask.undo.pop();
    if (previous) canvas.getContext("2d").putImageData(previous, 0, 0);
  });
  $("#mask-clear").addEventListener("click", () => {
    pushUndo();
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  });
}

function maskPng() { // white where painted, black elsewhere, at the image's size; null if empty
  const canvas = $("#mask-canvas");
  const alpha = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = false;
  for (let i = 3; i < alpha.length && !painted; i += 4) painted = alpha[i] > 0;
  if (!painted) return null;
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(canvas, 0, 0);
  ctx.globalCompositeOperation = "source-in"; // the painted pixels, white
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-over"; // on black
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  return base64Of(out.toDataURL("image/png"));
}

// ---- generation ------------------------------------------------------------------------------
const int = (id) => parseInt($(id).value, 10);
const num = (id) => Number($(id).value);

function common() {
  return {
    prompt: $("#prompt").value, negative_prompt: $("#negative-prompt").value,
    sampler_name: $("#sampler").value, scheduler: $("#scheduler").value,
    steps: int("#steps"), cfg_scale: num("#cfg-scale"), seed: Number.isFinite(int("#seed")) ? int("#seed") : -1,
    batch_size: int("#batch-size") || 1, n_iter: int("#batch-count") || 1,
  };
}

function steering() { // txt2img's ControlNet, classifier and CLIP settings, only those in use
  const body = {};
  const controlnet = $("#controlnet").value;
  if (controlnet) {
    if (!state.control) throw new Error("pick a control image for the ControlNet");
    Object.assign(body, { controlnet, control_image: base64Of(state.control), control_scale: num("#control-scale") });
  }
  const classifier = $("#classifier").value;
  if (classifier) Object.assign(body, { classifier, classifier_scale: num("#classifier-scale") });
  const clipGuidance = num("#clip-guidance") || 0;
  const rerank = int("#rerank") || 1;
  if (clipGuidance) body.clip_guidance = clipGuidance;
  if (rerank > 1) body.rerank = rerank;
  if ($("#clip").value && (clipGuidance || rerank > 1)) body.clip = $("#clip").value;
  return body;
}

function request() { // [path, body] for the current tab
  const tab = state.tab;
  if (tab === "txt2img") {
    return ["/sdapi/v1/txt2img", { ...common(), width: int("#width"), height: int("#height"), ...steering() }];
  }
  if (!state.init) throw new Error("pick an input image first");
  const image = base64Of(state.init.data);
  if (tab === "upscale") {
    return ["/sdapi/v1/extra-single-image", { image, upscaler_1: $("#upscaler").value, upscaling_resize: num("#upscale-factor") }];
  }
  if (tab === "outpaint") {
    const pads = { left: int("#pad-left") || 0, right: int("#pad-right") || 0, top: int("#pad-top") || 0, bottom: int("#pad-bottom") || 0 };
    if (!(pads.left || pads.right || pads.top || pads.bottom)) throw new Error("give the pixels to add on at least one side");
    return ["/ldmkit/v1/outpaint", { ...common(), image, ...pads }];
  }
  const body = { ...common(), init_images: [image], denoising_strength: num("#denoise") };
  if (tab === "inpaint") {
    body.mask = maskPng();
    if (!body.mask) throw new Error("paint the part to repaint on the image first");
  }
  return ["/sdapi/v1/img2img", body];
}

async function generate() {
  if (state.busy) return;
  let path, body;
  try {
    [path, body] = request();
  } catch (error) {
    showError(error);
    return;
  }
  showError(null);
  setBusy(true);
  const polling = pollProgress();
  try {
    const data = await api(path, body);
    if (path.endsWith("extra-single-image")) showResults([data.image], [], []);
    else {
      const info = data.info ? JSON.parse(data.info) : {};
      if (info.seed !== undefined) state.lastSeed = info.seed;
      showResults(data.images, info.infotexts || [], info.all_seeds || []);
      if (!data.images.length) showError(info.interrupted ? "cancelled before any image was finished" : "no images came back");
    }
    loadGallery();
  } catch (error) {
    showError(error);
  } finally {
    state.busy = false; // ends the polling; the buttons come back once it has
    await polling;
    resetProgress();
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("#generate").disabled = busy;
  $("#cancel").disabled = !busy;
  $("#model").disabled = busy;
  document.body.classList.toggle("busy", busy);
}

async function pollProgress() {
  const preview = $("#preview");
  while (state.busy) {
    await new Promise((resolve) => setTimeout(resolve, 400));
    if (!state.busy) break;
    try {
      const p = await api("/sdapi/v1/progress?skip_current_image=false");
      const s = p.state || {};
      let label = "waiting…";
      if (s.job) {
        label = s.sampling_steps ? `step ${s.sampling_step}/${s.sampling_steps}` : s.job;
        if (s.job_count > 1) label += ` · batch ${s.job_no + 1}/${s.job_count}`;
        if (p.eta_relative > 0.5) label += ` · ${Math.round(p.eta_relative)} s left`;
        if (s.interrupted) label = "cancelling…";
      }
      if (p.textinfo) label += ` · ${p.textinfo}`;
      setProgress(p.progress || 0, label);
      if (p.current_image && state.busy) {
        preview.onload = () => preview.classList.toggle("pixelated", preview.naturalWidth < 256);
        preview.src = pngUrl(p.current_image);
        preview.hidden = false;
      }
    } catch (error) {
      setProgress(0, "no progress (the server did not answer)");
    }
  }
}

function setProgress(fraction, label) {
  const percent = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
  const bar = $("#progress");
  bar.querySelector(".bar").style.width = `${percent}%`;
  bar.querySelector(".label").textContent = label;
  bar.setAttribute("aria-valuenow", String(percent));
}

function resetProgress() {
  setProgress(0, "idle");
  $("#preview").hidden = true;
  $("#preview").removeAttribute("src");
}

async function cancel() {
  $("#cancel").disabled = true;
  try {
    await api("/sdapi/v1/interrupt", {});
  } catch (error) {
    showError(error);
  }
}

function showResults(images, infotexts, seeds) {
  const results = $("#results");
  results.replaceChildren();
  images.forEach((base64, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = pngUrl(base64);
    img.alt = infotexts[i] || "result";
    enlarge(img, 256);
    figure.append(img);
    const caption = document.createElement("figcaption");
    if (seeds[i] !== undefined) {
      const seed = document.createElement("span");
      seed.textContent = `seed ${seeds[i]}`;
      caption.append(seed);
    }
    for (const tab of ["img2img", "inpaint", "upscale"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `→ ${tab}`;
      button.title = `use this image as the ${tab} input`;
      button.addEventListener("click", () => sendImageTo(img.src, tab));
      caption.append(button);
    }
    figure.append(caption);
    figure.addEventListener("click", (event) => {
      if (event.target.tagName !== "BUTTON") showInfo(infotexts[i]);
    });
    results.append(figure);
  });
  showInfo(infotexts[0]);
}

function showInfo(text) {
  const info = $("#result-info");
  info.textContent = text || "";
  info.hidden = !text;
}

async function sendImageTo(src, tab) {
  try {
    await setInitImage(src);
    selectTab(tab);
  } catch (error) {
    showError(error);
  }
}

// ---- settings into the form (gallery restore, PNG info) ----------------------------------------
function applySettings(s) {
  const set = (id, value) => {
    if (value !== undefined && value !== null && value !== "") $(id).value = value;
  };
  if (s.prompt !== undefined) $("#prompt").value = s.prompt;
  if (s.negative_prompt !== undefined) $("#negative-prompt").value = s.negative_prompt;
  if (s.sampler) {
    const name = samplerName(s.sampler);
    if (state.samplers.some((x) => x.name === name)) $("#sampler").value = name;
  }
  $("#scheduler").value = s.spacing === "karras" ? "karras" : "automatic";
  set("#steps", s.steps);
  set("#cfg-scale", s.guidance);
  set("#seed", s.seed);
  const [w, h] = String(s.size || "").split("x").map(Number);
  const task = s.task || "txt2img";
  if (task === "txt2img" && w && h) {
    $("#width").value = w;
    $("#height").value = h;
  }
  if (s.strength && (task === "img2img" || task === "inpaint")) state.strength[task] = s.strength;
  for (const side of ["left", "right", "top", "bottom"]) if (task === "outpaint") set(`#pad-${side}`, s[side]);
  const notes = [];
  if (task === "txt2img") { // the named models, where this server has them; the hint itself is not in a PNG
    for (const [id, name] of [["#controlnet", "controlnet"], ["#classifier", "classifier"], ["#clip", "clip"]]) {
      const known = Array.from($(id).options).some((o) => o.value === (s[name] || ""));
      $(id).value = known ? s[name] || "" : "";
      if (s[name] && !known) notes.push(`${name} ${s[name]} is not on this server`);
    }
    $("#control-scale").value = s.control_scale ?? 1;
    $("#classifier-scale").value = s.classifier_scale ?? 1;
    $("#clip-guidance").value = s.clip_guidance ?? 0;
    $("#rerank").value = s.rerank ?? 1;
    if (s.controlnet && !state.control) notes.push("pick the control image again");
  }
  if (s.model && state.model && s.model !== state.model.name) notes.push(`made with ${s.model}, not the current model`);
  return { task: ["txt2img", "img2img", "inpaint", "outpaint"].includes(task) ? task : "txt2img", notes };
}

// ---- PNG info --------------------------------------------------------------------------------
async function readPngInfo(file) {
  if (!file) return;
  const text = $("#png-info-text");
  text.textContent = "reading…";
  $("#send-to-txt2img").disabled = true;
  state.pngParameters = null;
  try {
    const dataUrl = await readFile(file);
    const img = $("#png-image");
    img.src = dataUrl;
    img.hidden = false;
    enlarge(img, 128);
    const data = await api("/sdapi/v1/png-info", { image: base64Of(dataUrl) });
    const lines = [data.info || "(no generation settings in this PNG)"];
    for (const [key, value] of Object.entries(data.items || {})) {
      if (!["prompt", "negative_prompt", "software"].includes(key) && !(data.info || "").includes(`${key}: `)) { // not said above
        lines.push(`${key}: ${value}`);
      }
    }
    text.textContent = lines.join("\n");
    if (data.parameters && Object.keys(data.parameters).length) {
      state.pngParameters = data.parameters;
      $("#send-to-txt2img").disabled = false;
    }
  } catch (error) {
    text.textContent = "";
    showError(error);
  }
}

// ---- gallery ---------------------------------------------------------------------------------
async function loadGallery() {
  let items;
  try {
    items = await api("/ldmkit/v1/gallery");
  } catch (error) {
    showError(error);
    return;
  }
  const gallery = $("#gallery");
  gallery.replaceChildren(...items.map((item) => {
    const figure = document.createElement("figure");
    figure.dataset.id = item.id;
    const link = document.createElement("a");
    link.href = item.url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = document.createElement("img");
    img.src = item.url;
    img.loading = "lazy";
    img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 128));
    img.alt = item.settings.prompt || "(no prompt)";
    img.title = item.infotext || "";
    link.append(img);
    const caption = document.createElement("figcaption");
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = `${item.settings.task || "txt2img"}: ${item.settings.prompt || "(no prompt)"}`;
    const restore = document.createElement("button");
    restore.type = "button";
    restore.className = "restore";
    restore.textContent = "restore";
    restore.title = "put this image's settings into the form";
    restore.addEventListener("click", () => {
      const { task, notes } = applySettings(item.settings);
      selectTab(task);
      setStatus(notes.join("; "));
    });
    caption.append(prompt, restore);
    figure.append(link, caption);
    return figure;
  }));
  if (!items.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "nothing yet: results of this server appear here";
    gallery.append(empty);
  }
}

// ---- wiring ----------------------------------------------------------------------------------
function wire() {
  for (const button of $$("[data-tab]")) button.addEventListener("click", () => selectTab(button.dataset.tab));
  $("#generate").addEventListener("click", generate);
  $("#cancel").addEventListener("click", cancel);
  $("#model").addEventListener("change", switchModel);
  $("#seed-random").addEventListener("click", () => { $("#seed").value = -1; });
  $("#seed-reuse").addEventListener("click", () => {
    if (state.lastSeed !== null) $("#seed").value = state.lastSeed;
  });
  $("#lora-picker").addEventListener("change", (event) => {
    if (event.target.value) insertIntoPrompt(`<lora:${event.target.value}:1>`, false);
    event.target.value = "";
  });
  $("#class-picker").addEventListener("change", (event) => {
    if (event.target.value) insertIntoPrompt(event.target.value, true);
    event.target.value = "";
  });
  for (const id of ["#prompt", "#negative-prompt"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        generate();
      }
    });
  }
  $("#init-image").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      await setInitImage(await readFile(file));
      showError(null);
    } catch (error) {
      showError(error);
    }
  });
  $("#control-image").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      const dataUrl = await readFile(file);
      await loadImage(dataUrl); // the browser can read it
      state.control = dataUrl;
      const preview = $("#control-preview");
      preview.src = dataUrl;
      preview.hidden = false;
      showError(null);
    } catch (error) {
      showError(error);
    }
  });
  for (const id of ["#pad-left", "#pad-right", "#pad-top", "#pad-bottom", "#upscale-factor"]) $(id).addEventListener("input", updateInitSize);
  setupMask();
  $("#png-file").addEventListener("change", (event) => readPngInfo(event.target.files[0]));
  const drop = $("#png-drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    readPngInfo(event.dataTransfer.files[0]);
  });
  $("#send-to-txt2img").addEventListener("click", () => {
    if (!state.pngParameters) return;
    const { notes } = applySettings({ ...state.pngParameters, task: "txt2img" });
    selectTab("txt2img");
    setStatus(notes.join("; "));
  });
  $("#gallery-refresh").addEventListener("click", loadGallery);
}

async function start() {
  wire();
  selectTab("txt2img");
  setBusy(false);
  resetProgress();
  try {
    await loadLists();
    await Promise.all([loadModels(), loadModel()]);
  } catch (error) {
    showError(error);
  }
  await loadGallery();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
