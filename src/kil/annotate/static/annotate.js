// kil annotate: click, name, move and delete reference keypoints per category and instance.
// State mirrors the server's /api/spec: categories[{name, prompt, references[{keypoints[{name,u,v}]}]}].
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const HIT_RADIUS = 8;  // pixels: a click this close to a keypoint grabs it
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const image = new Image();
let state = { task: "", categories: [] };
let active = { category: -1, reference: 0 };
let selected = -1;  // index of the selected keypoint in the active reference
let dragging = false;

function setStatus(text, kind) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = kind || "";
}

function activeReference() {
  const cat = state.categories[active.category];
  return cat ? cat.references[active.reference] : null;
}

function draw() {
  ctx.drawImage(image, 0, 0);
  state.categories.forEach((cat, c) => cat.references.forEach((ref, r) => ref.keypoints.forEach((kp, k) => {
    const isActive = c === active.category && r === active.reference;
    ctx.beginPath();
    ctx.arc(kp.u + 0.5, kp.v + 0.5, isActive ? 5 : 4, 0, 2 * Math.PI);
    ctx.fillStyle = PALETTE[k % PALETTE.length];
    ctx.globalAlpha = isActive ? 1.0 : 0.5;
    ctx.fill();
    ctx.lineWidth = isActive && k === selected ? 3 : 1;
    ctx.strokeStyle = isActive && k === selected ? "#ff0000" : "#ffffff";
    ctx.stroke();
    ctx.globalAlpha = 1.0;
    ctx.font = "12px sans-serif";
    ctx.fillStyle = "#ffffff";
    const label = cat.references.length > 1 ? `${cat.name}[${r}]/${kp.name}` : `${cat.name}/${kp.name}`;
    ctx.fillText(label, kp.u + 7, kp.v - 6);
  })));
}

function el(tag, props, children) {
  const node = Object.assign(document.createElement(tag), props || {});
  (children || []).forEach((child) => node.appendChild(child));
  return node;
}

function render() {
  document.getElementById("task").value = state.task;
  const list = document.getElementById("categories");
  list.replaceChildren();
  state.categories.forEach((cat, c) => {
    const box = el("div", { className: "category" + (c === active.category ? " active" : "") });
    box.dataset.category = c;
    const name = el("input", { value: cat.name, className: "category-name", placeholder: "category name" });
    name.oninput = () => { cat.name = name.value; draw(); };
    const prompt = el("input", { value: cat.prompt, className: "category-prompt", placeholder: "text prompt" });
    prompt.oninput = () => { cat.prompt = prompt.value; };
    const remove = el("button", { textContent: "remove", className: "remove-category" });
    remove.onclick = () => { state.categories.splice(c, 1); active = { category: Math.min(c, state.categories.length - 1), reference: 0 }; selected = -1; render(); };
    box.appendChild(el("div", { className: "row" }, [name, remove]));
    box.appendChild(el("div", { className: "row" }, [el("span", { textContent: "prompt" }), prompt]));
    const instances = el("div", { className: "row" });
    cat.references.forEach((_, r) => {
      const pick = el("button", { textContent: `instance ${r}`, className: "instance" });
      if (c === active.category && r === active.reference) pick.style.fontWeight = "bold";
      pick.onclick = () => { active = { category: c, reference: r }; selected = -1; render(); };
      instances.appendChild(pick);
    });
    const addInstance = el("button", { textContent: "add instance", className: "add-instance" });
    addInstance.onclick = () => { cat.references.push({ keypoints: [] }); active = { category: c, reference: cat.references.length - 1 }; selected = -1; render(); };
    instances.appendChild(addInstance);
    box.appendChild(instances);
    if (cat.other_references) box.appendChild(el("small", { textContent: `+ ${cat.other_references} reference(s) on other images, kept` }));
    if (c === active.category) {
      const ref = activeReference();
      (ref ? ref.keypoints : []).forEach((kp, k) => {
        const row = el("div", { className: "row kp" + (k === selected ? " selected" : "") });
        const swatch = el("span", { className: "swatch" });
        swatch.style.background = PALETTE[k % PALETTE.length];
        const kpName = el("input", { value: kp.name, className: "kp-name" });
        kpName.oninput = () => { kp.name = kpName.value; draw(); };
        kpName.onfocus = () => { selected = k; draw(); };
        const coords = el("small", { textContent: `(${kp.u.toFixed(1)}, ${kp.v.toFixed(1)})`, className: "kp-coords" });
        const del = el("button", { textContent: "×", className: "kp-delete", title: "delete keypoint" });
        del.onclick = () => { ref.keypoints.splice(k, 1); selected = -1; render(); };
        row.append(swatch, kpName, coords, del);
        box.appendChild(row);
      });
    }
    box.onclick = (event) => {
      if (event.target === box) { active = { category: c, reference: Math.min(active.reference, cat.references.length - 1) }; render(); }
    };
    list.appendChild(box);
  });
  draw();
}

function imagePoint(event) {
  // Mouse positions are whole CSS pixels; CSS pixel x covers [x, x + 1), centre x + 0.5, and
  // image pixel u has its centre at u + 0.5 in image units (so at 1:1, u = x).
  const rect = canvas.getBoundingClientRect();
  const x = event.clientX - rect.left - canvas.clientLeft;
  const y = event.clientY - rect.top - canvas.clientTop;
  const u = (x + 0.5) * (canvas.width / canvas.clientWidth) - 0.5;
  const v = (y + 0.5) * (canvas.height / canvas.clientHeight) - 0.5;
  return { u: Math.min(Math.max(u, 0), canvas.width - 1), v: Math.min(Math.max(v, 0), canvas.height - 1) };
}

function nextName(cat, ref) {
  // Further instances name their points like the category's first one, in its order (that
  // may lie on another image: the server sends its names as `points`); a view's points are
  // the reference's.
  const template = cat.other_references || state.view_of ? (cat.points || [])
    : (ref !== cat.references[0] ? cat.references[0].keypoints.map((kp) => kp.name) : []);
  const taken = new Set(ref.keypoints.map((kp) => kp.name));
  const missing = template.find((n) => !taken.has(n));
  if (missing) return missing;
  let i = ref.keypoints.length;
  while (ref.keypoints.some((kp) => kp.name === `kp${i}`)) i++;
  return `kp${i}`;
}

canvas.addEventListener("mousedown", (event) => {
  const ref = activeReference();
  if (!ref) { setStatus("add a category first", "error"); return; }
  const p = imagePoint(event);
  const hit = ref.keypoints.findIndex((kp) => Math.hypot(kp.u - p.u, kp.v - p.v) <= HIT_RADIUS);
  if (hit >= 0) {
    selected = hit;
    dragging = true;
  } else {
    const cat = state.categories[active.category];
    ref.keypoints.push({ name: nextName(cat, ref), u: Math.round(p.u * 10) / 10, v: Math.round(p.v * 10) / 10 });
    selected = ref.keypoints.length - 1;
    render();
    const inputs = document.querySelectorAll(".category.active .kp-name");
    if (inputs[selected]) { inputs[selected].focus(); inputs[selected].select(); }
    return;
  }
  render();
});

canvas.addEventListener("mousemove", (event) => {
  if (!dragging) return;
  const ref = activeReference();
  const p = imagePoint(event);
  ref.keypoints[selected].u = Math.round(p.u * 10) / 10;
  ref.keypoints[selected].v = Math.round(p.v * 10) / 10;
  draw();
});

window.addEventListener("mouseup", () => { if (dragging) { dragging = false; render(); } });

window.addEventListener("keydown", (event) => {
  if ((event.key === "Delete" || event.key === "Backspace") && document.activeElement.tagName !== "INPUT" && selected >= 0) {
    activeReference().keypoints.splice(selected, 1);
    selected = -1;
    render();
  }
});

document.getElementById("task").oninput = (event) => { state.task = event.target.value; };

document.getElementById("add-category").onclick = () => {
  state.categories.push({ name: `object${state.categories.length}`, prompt: "", references: [{ keypoints: [] }], other_references: 0 });
  active = { category: state.categories.length - 1, reference: 0 };
  selected = -1;
  render();
};

document.getElementById("save").onclick = async () => {
  setStatus("saving…");
  const response = await fetch("/api/spec", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(state) });
  let result;
  try {
    result = await response.json();
  } catch (err) {
    result = { ok: false, error: `the server answered ${response.status} without a result` };
  }
  if (result.ok) setStatus(`saved ${result.path}`, "ok");
  else setStatus(result.error, "error");
};

async function load() {
  const loaded = await (await fetch("/api/spec")).json();
  if (loaded.ok === false) {
    setStatus(`cannot edit the existing spec: ${loaded.error}`, "error");
    return;
  }
  state = loaded;
  active = { category: state.categories.length ? 0 : -1, reference: 0 };
  image.onload = () => {
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    render();
    if (state.view_of) setStatus(`views of ${state.view_of}: click its points where it lies on this frame`);
    document.body.dataset.ready = "true";
  };
  image.src = "/image.png";
}

load();
