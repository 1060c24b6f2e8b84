// llm explain: renders the data of llm/explain/SCHEMA.md (the JSON in <script id="data">) into the page.
// Hand-written, no libraries, nothing fetched except POST /api/explain when served by `llm explain --serve`.
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const config = JSON.parse(document.getElementById("config").textContent);
  const state = {
    data: null,       // the current explain data
    layer: 0,         // the enlarged head
    head: 0,
    query: null,      // the hovered query position (row), or null
    selected: null,   // the token id whose neighbours are shown
    view: null,       // the embedding plot's visible data range {x0, x1, y0, y1}
    home: null,       // ... and its initial one
    enlargedBase: null,  // offscreen canvas of the enlarged map (without the row highlight)
    cell: 1,          // the enlarged map's cell size in pixels
  };

  // ---------- helpers ----------
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.setAttribute("class", v);
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
  }

  // A token's text with whitespace and control characters made visible.
  function visible(text) {
    if (text === null || text === undefined) return "?";
    const out = String(text)
      .replace(/ /g, "\u2423")
      .replace(/\n/g, "\u21b5")
      .replace(/\t/g, "\u21e5")
      .replace(/\r/g, "\u240d")
      .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g,
               (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
    return out === "" ? "\u2205" : out;
  }

  const hex = (bytes) => (bytes || []).map((b) => b.toString(16).padStart(2, "0")).join(" ");
  const fmt = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : String(x));
  const tokenHue = (i) => (i * 47) % 360;

  // Attention weight in [0, 1] -> [r, g, b], white to dark blue.
  function weightRGB(w) {
    const t = Math.max(0, Math.min(1, Number(w) || 0));
    return [255 + (8 - 255) * t, 255 + (48 - 255) * t, 255 + (107 - 255) * t];
  }

  // Cosine in [-1, 1] -> [r, g, b], red (negative) through white to blue (positive).
  function divergingRGB(v) {
    const t = Math.max(-1, Math.min(1, Number(v) || 0));
    return t >= 0 ? [255 - 222 * t, 255 - 153 * t, 255 - 75 * t] : [255 - 27 * -t, 255 - 210 * -t, 255 - 212 * -t];
  }

  const MASK_A = [168, 168, 168];
  const MASK_B = [218, 218, 218];
  const allowed = (mask, q, k) => !mask || !mask[q] || mask[q][k] !== 0;

  // A T x T canvas (one pixel a cell): weights shaded, masked cells a grey checker.
  function heatImage(rows, mask, colour) {
    const T = rows.length;
    const c = document.createElement("canvas");
    c.width = Math.max(T, 1);
    c.height = Math.max(T, 1);
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(c.width, c.height);
    for (let q = 0; q < T; q++) {
      for (let k = 0; k < T; k++) {
        const rgb = allowed(mask, q, k) ? colour(rows[q][k]) : ((q + k) % 2 ? MASK_A : MASK_B);
        const i = (q * T + k) * 4;
        img.data[i] = rgb[0];
        img.data[i + 1] = rgb[1];
        img.data[i + 2] = rgb[2];
        img.data[i + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function hatchPattern(ctx) {
    const p = document.createElement("canvas");
    p.width = 6;
    p.height = 6;
    const g = p.getContext("2d");
    g.fillStyle = "#d6d6d6";
    g.fillRect(0, 0, 6, 6);
    g.strokeStyle = "#9a9a9a";
    g.lineWidth = 1.2;
    g.beginPath();
    g.moveTo(0, 6);
    g.lineTo(6, 0);
    g.moveTo(-1, 1);
    g.lineTo(1, -1);
    g.moveTo(5, 7);
    g.lineTo(7, 5);
    g.stroke();
    return ctx.createPattern(p, "repeat");
  }

  const tokenLabel = (t) => (t.partial ? "\u2039" + hex(t.bytes) + "\u203a" : visible(t.text));

  function idLabel(id) {
    const d = state.data;
    const tok = d.tokens.find((t) => t.id === id);
    if (tok) return tokenLabel(tok);
    const i = embeddingIndex().get(id);
    if (i !== undefined) return visible(d.embeddings.labels[i]);
    const top = ((d.prediction || {}).top || []).find((t) => t.id === id);
    if (top) return visible(top.text);
    return "#" + id;
  }

  let embeddingIndexCache = null;
  function embeddingIndex() {
    if (!embeddingIndexCache || embeddingIndexCache.data !== state.data) {
      const m = new Map();
      ((state.data.embeddings || {}).ids || []).forEach((id, i) => m.set(id, i));
      embeddingIndexCache = { data: state.data, map: m };
    }
    return embeddingIndexCache.map;
  }

  // ---------- header ----------
  function renderHeader(d) {
    const m = d.model || {};
    $("#title-prompt").textContent = d.prompt !== undefined ? JSON.stringify(d.prompt).slice(0, 200) : "";
    $("#title-prompt").title = d.prompt || "";
    const facts = [
      ["workdir", m.workdir],
      ["step", m.step],
      ["layers", m.n_layers],
      ["heads", m.kv_heads !== undefined && m.kv_heads !== m.n_heads ? `${m.n_heads} (kv ${m.kv_heads})` : m.n_heads],
      ["d_model", m.d_model],
      ["context", m.max_len],
      ["vocab", m.vocab_size],
      ["positions", m.position],
      ["window", m.window === null || m.window === undefined ? "none" : m.window],
      ["attention", m.attention_impl],
      ["tokenizer", m.tokenizer],
      ["weights", m.weights_source],
    ];
    const box = $("#model");
    box.replaceChildren(...facts.map(([k, v]) =>
      el("span", { class: "fact", "data-key": k }, el("b", { text: k }), String(v === undefined ? "?" : v))));
    const note = $("#model-note");
    if (m.weights_source === "recomputed") {
      note.textContent = m.note || "The attention weights were recomputed outside the model's attention kernel.";
      note.hidden = false;
    } else {
      note.textContent = "";
      note.hidden = true;
    }
  }

  // ---------- tokens ----------
  function renderTokens(d) {
    const strip = $("#tokens");
    strip.replaceChildren(...d.tokens.map((t, i) => {
      const title = `position ${i} · id ${t.id} · bytes ${hex(t.bytes)}` + (t.partial ? " (part of a character)" : "");
      const node = el("span", {
        class: "token" + (t.partial ? " partial" : ""), "data-index": i, "data-id": t.id, title,
        onmouseenter: () => setQuery(i), onmouseleave: () => setQuery(null),
        onclick: () => selectToken(t.id),
      }, el("span", { class: "token-text", text: tokenLabel(t) }), el("span", { class: "token-id", text: t.id }));
      node.style.background = `hsl(${tokenHue(i)}, 70%, 88%)`;
      return node;
    }));
    delete strip.dataset.query;

    const box = $("#tokenizers");
    const current = (d.model || {}).tokenizer;
    box.replaceChildren(...Object.entries(d.tokenizers || {}).map(([name, pieces]) =>
      el("div", { class: "tokenizer" + (name === current ? " current" : ""), "data-name": name },
         el("span", { class: "name", text: `${name} (${pieces.length})` + (name === current ? " ← model" : "") }),
         ...pieces.map((p, i) => el("span", { class: "piece", "data-index": i, "data-id": p.id, title: `id ${p.id}` },
                                    visible(p.text), el("sub", { text: p.id }))))));
  }

  // ---------- embeddings ----------
  const PLOT_W = 560;
  const PLOT_H = 420;

  function renderEmbeddings(d) {
    const svg = $("#embedding-plot");
    const emb = d.embeddings || { ids: [], labels: [], points: [] };
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${PLOT_W} ${PLOT_H}`);
    const xs = emb.points.map((p) => p[0]);
    const ys = emb.points.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (!Number.isFinite(x0)) [x0, x1, y0, y1] = [-1, 1, -1, 1];
    if (x1 - x0 < 1e-9) { x0 -= 1; x1 += 1; }
    if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
    const px = (x1 - x0) * 0.06;
    const py = (y1 - y0) * 0.06;
    state.home = { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
    state.view = { ...state.home };
    const promptIds = new Set(d.tokens.map((t) => t.id));
    const pointsG = svgEl("g", { class: "points" });
    const labelsG = svgEl("g", { class: "labels" });
    emb.points.forEach((p, i) => {
      const id = emb.ids[i];
      const c = svgEl("circle", {
        class: "point" + (promptIds.has(id) ? " in-prompt" : ""), "data-id": id, "data-index": i,
        r: promptIds.has(id) ? 4.5 : 2.8,
      });
      const title = svgEl("title");
      title.textContent = `${visible(emb.labels[i])}  (id ${id})`;
      c.append(title);
      pointsG.append(c);
    });
    svg.append(pointsG, labelsG);
    const ex = emb.explained || [];
    $("#embedding-caption").textContent =
      `${(emb.method || "pca").toUpperCase()} of the token-embedding table: ${emb.points.length} tokens; ` +
      `the axes explain ${fmt(100 * (ex[0] || 0), 1)} % and ${fmt(100 * (ex[1] || 0), 1)} % of the variance. ` +
      "Orange: the prompt's tokens. Scroll to zoom, drag to pan, double-click to reset.";
    layoutPlot();
  }

  function toScreen(p) {
    const v = state.view;
    return [(p[0] - v.x0) / (v.x1 - v.x0) * PLOT_W, PLOT_H - (p[1] - v.y0) / (v.y1 - v.y0) * PLOT_H];
  }

  function layoutPlot() {
    const emb = state.data.embeddings;
    if (!emb) return;
    for (const c of $$("#embedding-plot .point")) {
      const [x, y] = toScreen(emb.points[Number(c.dataset.index)]);
      c.setAttribute("cx", x.toFixed(2));
      c.setAttribute("cy", y.toFixed(2));
    }
    const labelsG = $("#embedding-plot .labels");
    const labelled = new Set(state.data.tokens.map((t) => t.id));
    const neighbors = state.selected === null ? [] : (emb.neighbors || {})[String(state.selected)] || [];
    for (const [id] of neighbors) labelled.add(id);
    if (state.selected !== null) labelled.add(state.selected);
    const strong = new Set([state.selected, ...neighbors.map((n) => n[0])]);
    const all = emb.points.length <= 150;
    const labels = [];
    emb.ids.forEach((id, i) => {
      if (!all && !labelled.has(id)) return;
      const [x, y] = toScreen(emb.points[i]);
      if (x < -20 || x > PLOT_W + 20 || y < -20 || y > PLOT_H + 20) return;
      const t = svgEl("text", {
        class: "point-label" + (strong.has(id) ? " strong" : ""), x: (x + 5).toFixed(1), y: (y - 4).toFixed(1),
        "data-id": id,
      });
      t.textContent = visible(emb.labels[i]);
      labels.push(t);
    });
    labelsG.replaceChildren(...labels);
  }

  function bindPlot() {
    const svg = $("#embedding-plot");
    const dataAt = (ev) => {
      const r = svg.getBoundingClientRect();
      const sx = (ev.clientX - r.left) / r.width;
      const sy = (ev.clientY - r.top) / r.height;
      const v = state.view;
      return [v.x0 + sx * (v.x1 - v.x0), v.y1 - sy * (v.y1 - v.y0)];
    };
    svg.addEventListener("wheel", (ev) => {
      if (!state.view) return;
      ev.preventDefault();
      const f = ev.deltaY < 0 ? 0.8 : 1.25;
      const [cx, cy] = dataAt(ev);
      const v = state.view;
      state.view = { x0: cx + (v.x0 - cx) * f, x1: cx + (v.x1 - cx) * f, y0: cy + (v.y0 - cy) * f,
                     y1: cy + (v.y1 - cy) * f };
      layoutPlot();
    }, { passive: false });
    let drag = null;
    svg.addEventListener("mousedown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, view: { ...state.view }, moved: false };
    });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      const r = svg.getBoundingClientRect();
      const dx = (ev.clientX - drag.x) / r.width;
      const dy = (ev.clientY - drag.y) / r.height;
      if (Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) > 3) drag.moved = true;
      if (!drag.moved) return;
      const v = drag.view;
      const w = v.x1 - v.x0;
      const h = v.y1 - v.y0;
      state.view = { x0: v.x0 - dx * w, x1: v.x1 - dx * w, y0: v.y0 + dy * h, y1: v.y1 + dy * h };
      layoutPlot();
    });
    window.addEventListener("mouseup", (ev) => {
      if (drag && !drag.moved) {
        const target = ev.target;
        if (target && target.classList && target.classList.contains("point")) selectToken(Number(target.dataset.id));
      }
      drag = null;
    });
    svg.addEventListener("dblclick", () => {
      state.view = { ...state.home };
      layoutPlot();
    });
  }

  // Show the nearest neighbours of token `id` and highlight it in the plot and the prompt.
  function selectToken(id) {
    state.selected = id;
    const emb = state.data.embeddings || {};
    const neighbors = (emb.neighbors || {})[String(id)];
    const list = $("#neighbors");
    list.dataset.for = id;
    $("#neighbors-of").textContent = `${idLabel(id)} (id ${id})`;
    if (neighbors) {
      list.replaceChildren(...neighbors.map(([nid, cos]) =>
        el("li", { class: "neighbor", "data-id": nid, "data-cosine": cos, onclick: () => selectToken(nid) },
           idLabel(nid), el("span", { class: "cos", text: `cos ${fmt(cos, 3)}` }), el("span", {
             class: "cos", text: `id ${nid}` }))));
    } else {
      list.replaceChildren(el("li", {
        class: "empty", text: "neighbours are listed for the prompt's tokens; click one of those" }));
    }
    const near = new Set((neighbors || []).map((n) => n[0]));
    for (const c of $$("#embedding-plot .point")) {
      const pid = Number(c.dataset.id);
      c.classList.toggle("selected", pid === id);
      c.classList.toggle("neighbor", near.has(pid));
      if (pid === id || near.has(pid)) c.parentNode.append(c);  // drawn on top
    }
    for (const t of $$("#tokens .token")) t.classList.toggle("selected", Number(t.dataset.id) === id);
    layoutPlot();
  }

  // ---------- positions ----------
  function renderPositions(d) {
    const pos = d.positions || { kind: null, similarity: [] };
    const canvas = $("#positions-map");
    const readout = $("#positions-readout");
    readout.textContent = "";
    if (!pos.kind || !pos.similarity || !pos.similarity.length) {
      const kind = (d.model || {}).position || "none";
      $("#positions-caption").textContent =
        `This model's positions are "${kind}": there are no position vectors to compare.`;
      canvas.hidden = true;
      canvas.width = 0;
      canvas.height = 0;
      return;
    }
    canvas.hidden = false;
    const T = pos.similarity.length;
    const cell = Math.max(1, Math.min(24, Math.floor(320 / T)));
    canvas.width = T * cell;
    canvas.height = T * cell;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(heatImage(pos.similarity, null, divergingRGB), 0, 0, T * cell, T * cell);
    canvas.dataset.kind = pos.kind;
    $("#positions-caption").textContent =
      `Cosine similarity of the ${pos.kind} position vectors of the prompt's ${T} positions (blue +1, red -1).`;
    canvas.onmousemove = (ev) => {
      const q = Math.floor(ev.offsetY / cell);
      const k = Math.floor(ev.offsetX / cell);
      if (q < 0 || k < 0 || q >= T || k >= T) return;
      readout.textContent = `position ${q} vs ${k}: cos ${fmt(pos.similarity[q][k], 3)}`;
    };
    canvas.onmouseleave = () => { readout.textContent = ""; };
  }

  // ---------- attention ----------
  const SMALL = 84;

  function renderAttention(d) {
    const att = d.attention;
    const grid = $("#head-grid");
    grid.style.gridTemplateColumns = `repeat(${att.heads}, auto)`;
    const maps = [];
    for (let l = 0; l < att.layers; l++) {
      for (let h = 0; h < att.heads; h++) {
        const canvas = el("canvas", { width: SMALL, height: SMALL });
        const ent = (att.entropy[l] || [])[h];
        const node = el("div", {
          class: "head-map", "data-layer": l, "data-head": h, "data-entropy": ent,
          title: `layer ${l}, head ${h}: mean row entropy ${fmt(ent, 3)} nats`,
          onclick: () => selectHead(l, h),
        }, canvas, el("span", { class: "head-name", text: `L${l} H${h}` }),
        el("span", { class: "entropy", text: `H=${fmt(ent, 2)}` }));
        const T = att.weights[l][h].length;
        const ctx = canvas.getContext("2d");
        ctx.imageSmoothingEnabled = T > SMALL;
        ctx.drawImage(heatImage(att.weights[l][h], att.mask, weightRGB), 0, 0, SMALL, SMALL);
        maps.push(node);
      }
    }
    grid.replaceChildren(...maps);
    if (state.layer >= att.layers || state.head >= att.heads) {
      state.layer = 0;
      state.head = 0;
    }
    selectHead(state.layer, state.head);
  }

  function selectHead(l, h) {
    state.layer = l;
    state.head = h;
    const d = state.data;
    const att = d.attention;
    const W = att.weights[l][h];
    const T = W.length;
    for (const m of $$("#head-grid .head-map")) {
      m.classList.toggle("selected", Number(m.dataset.layer) === l && Number(m.dataset.head) === h);
    }
    const box = $("#enlarged");
    box.dataset.layer = l;
    box.dataset.head = h;
    $("#enlarged-title").textContent =
      `Layer ${l}, head ${h} — mean row entropy ${fmt(att.entropy[l][h], 3)} nats`;
    const cell = Math.max(1, Math.min(32, Math.floor(560 / Math.max(T, 1))));
    state.cell = cell;
    const base = document.createElement("canvas");
    base.width = T * cell;
    base.height = T * cell;
    const bctx = base.getContext("2d");
    bctx.imageSmoothingEnabled = false;
    bctx.drawImage(heatImage(W, att.mask, weightRGB), 0, 0, T * cell, T * cell);
    if (att.mask && cell >= 4) {  // hatch the masked cells, one rectangle per run in a row
      bctx.fillStyle = hatchPattern(bctx);
      for (let q = 0; q < T; q++) {
        let k = 0;
        while (k < T) {
          if (allowed(att.mask, q, k)) { k++; continue; }
          const k0 = k;
          while (k < T && !allowed(att.mask, q, k)) k++;
          bctx.fillRect(k0 * cell, q * cell, (k - k0) * cell, cell);
        }
      }
    }
    if (cell >= 6) {  // grid lines between cells
      bctx.strokeStyle = "rgba(255, 255, 255, 0.6)";
      bctx.lineWidth = 1;
      bctx.beginPath();
      for (let i = 1; i < T; i++) {
        bctx.moveTo(i * cell + 0.5, 0);
        bctx.lineTo(i * cell + 0.5, T * cell);
        bctx.moveTo(0, i * cell + 0.5);
        bctx.lineTo(T * cell, i * cell + 0.5);
      }
      bctx.stroke();
    }
    state.enlargedBase = base;
    const canvas = $("#enlarged-map");
    canvas.width = base.width;
    canvas.height = base.height;

    const fontPx = Math.max(6, Math.min(12, cell - 2));
    const grid = $("#enlarged .enlarged-grid");
    grid.classList.toggle("labels-hidden", cell < 7);
    $("#col-labels").replaceChildren(...d.tokens.map((t, i) => {
      const s = el("span", { class: "col-label", "data-index": i, title: `key ${i}: ${tokenLabel(t)}`,
                             text: tokenLabel(t) });
      s.style.width = `${cell}px`;
      s.style.fontSize = `${fontPx}px`;
      s.style.lineHeight = `${cell}px`;
      return s;
    }));
    $("#row-labels").replaceChildren(...d.tokens.map((t, i) => {
      const s = el("span", { class: "row-label", "data-index": i, title: `query ${i}: ${tokenLabel(t)}`,
                             text: tokenLabel(t), onmouseenter: () => setQuery(i),
                             onmouseleave: () => setQuery(null) });
      s.style.height = `${cell}px`;
      s.style.fontSize = `${fontPx}px`;
      s.style.lineHeight = `${cell}px`;
      return s;
    }));
    setQuery(state.query);
  }

  function drawEnlarged() {
    const canvas = $("#enlarged-map");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (state.enlargedBase) ctx.drawImage(state.enlargedBase, 0, 0);
    if (state.query !== null) {
      const c = state.cell;
      ctx.strokeStyle = "#e8590c";
      ctx.lineWidth = 2;
      ctx.strokeRect(1, state.query * c + 1, canvas.width - 2, Math.max(c - 2, 1));
    }
  }

  function bindEnlarged() {
    const canvas = $("#enlarged-map");
    canvas.addEventListener("mousemove", (ev) => {
      const d = state.data;
      const T = d.tokens.length;
      const q = Math.floor(ev.offsetY / state.cell);
      const k = Math.floor(ev.offsetX / state.cell);
      if (q < 0 || q >= T || k < 0 || k >= T) return;
      if (q !== state.query) setQuery(q);
      const w = d.attention.weights[state.layer][state.head][q][k];
      const what = allowed(d.attention.mask, q, k) ? `weight ${fmt(w, 4)}` : "masked";
      $("#enlarged-readout").textContent =
        `query ${q} ${tokenLabel(d.tokens[q])} → key ${k} ${tokenLabel(d.tokens[k])}: ${what}`;
    });
    canvas.addEventListener("mouseleave", () => {
      setQuery(null);
      $("#enlarged-readout").textContent = "";
    });
  }

  // Highlight query row q of the enlarged head: the token strip and the key labels shaded by its weights.
  function setQuery(q) {
    const d = state.data;
    if (q !== null && (q < 0 || q >= d.tokens.length)) q = null;
    state.query = q;
    const strip = $("#tokens");
    const box = $("#enlarged");
    const row = q === null ? null : d.attention.weights[state.layer][state.head][q];
    const mask = d.attention.mask;
    for (const t of $$("#tokens .token")) {
      const k = Number(t.dataset.index);
      t.classList.toggle("query", k === q);
      if (row === null) {
        delete t.dataset.weight;
        delete t.dataset.masked;
        t.style.background = `hsl(${tokenHue(k)}, 70%, 88%)`;
        t.style.color = "";
      } else {
        const w = row[k];
        t.dataset.weight = String(w);
        t.dataset.masked = allowed(mask, q, k) ? "0" : "1";
        const [r, g, b] = weightRGB(w);
        t.style.background = `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
        t.style.color = w > 0.55 ? "#fff" : "";
      }
    }
    for (const s of $$("#col-labels .col-label")) {
      const k = Number(s.dataset.index);
      if (row === null) {
        delete s.dataset.weight;
        s.style.background = "";
        s.style.color = "";
      } else {
        const [r, g, b] = weightRGB(row[k]);
        s.dataset.weight = String(row[k]);
        s.style.background = `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
        s.style.color = row[k] > 0.55 ? "#fff" : "";
      }
    }
    for (const s of $$("#row-labels .row-label")) s.classList.toggle("query", Number(s.dataset.index) === q);
    if (q === null) {
      delete strip.dataset.query;
      delete box.dataset.query;
    } else {
      strip.dataset.query = q;
      box.dataset.query = q;
    }
    drawEnlarged();
  }

  // ---------- prediction ----------
  // softmax(logits / T), then top-k, then top-p (as llm.sampling does it); the kept tokens, renormalised.
  function distribution(top, temperature, topK, topP) {
    // t.prob, when the data has it, is the token's probability at temperature 1 over the whole vocabulary.
    const items = top.map((t) => ({ ...t, vocabProb: t.prob })).sort((a, b) => b.logit - a.logit);
    if (!items.length) return [];
    if (!(temperature > 0)) return [{ ...items[0], prob: 1 }];  // greedy
    let scaled = items.map((t) => t.logit / temperature);
    let n = items.length;
    if (topK > 0 && topK < n) {
      const kth = scaled[topK - 1];
      n = scaled.filter((s) => s >= kth).length;  // ties with the k-th stay, as in llm.sampling
    }
    scaled = scaled.slice(0, n);
    const softmax = (xs) => {
      const m = Math.max(...xs);
      const e = xs.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      return e.map((x) => x / z);
    };
    let probs = softmax(scaled);
    if (topP < 1) {
      let before = 0;
      let cutoff = scaled[0];
      for (let i = 0; i < n; i++) {
        if (before < topP) cutoff = scaled[i];
        before += probs[i];
      }
      n = scaled.filter((s) => s >= cutoff).length;
      scaled = scaled.slice(0, n);
      probs = softmax(scaled);
    }
    return items.slice(0, n).map((t, i) => ({ ...t, prob: probs[i] }));
  }

  function controls() {
    return {
      temperature: Number($("#temperature").value),
      topK: Number($("#top-k").value),
      topP: Number($("#top-p").value),
    };
  }

  function renderPrediction() {
    const top = ((state.data.prediction || {}).top) || [];
    const kInput = $("#top-k");
    kInput.max = String(Math.max(top.length, 1));
    if (Number(kInput.value) > top.length) kInput.value = "0";
    const c = controls();
    $("#temperature-value").textContent = c.temperature > 0 ? c.temperature.toFixed(2) : "0 (greedy)";
    $("#top-k-value").textContent = c.topK > 0 ? String(c.topK) : "off";
    $("#top-p-value").textContent = c.topP < 1 ? c.topP.toFixed(2) : "off";
    const dist = distribution(top, c.temperature, c.topK, c.topP);
    const maxProb = Math.max(...dist.map((x) => x.prob), 1e-12);
    const box = $("#prediction");
    box.dataset.temperature = c.temperature;
    box.dataset.topK = c.topK;
    box.dataset.topP = c.topP;
    box.replaceChildren(...dist.map((t, i) => {
      const fill = el("div", { class: "bar-fill" });
      fill.style.width = `${(100 * t.prob / maxProb).toFixed(2)}%`;
      return el("div", { class: "bar", "data-id": t.id, "data-prob": String(t.prob), "data-rank": i,
                         "data-logit": t.logit,
                         title: `id ${t.id}, logit ${fmt(t.logit, 4)}` + (t.vocabProb === undefined ? "" :
                           `; probability at temperature 1 over the whole vocabulary ${fmt(t.vocabProb, 6)}`) },
                el("span", { class: "bar-label" }, visible(t.text), el("span", { class: "bar-id", text: t.id })),
                el("div", { class: "bar-track" }, fill),
                el("span", { class: "bar-value", text: `${fmt(100 * t.prob, 2)} %` }),
                el("span", { class: "bar-logit", text: fmt(t.logit, 2) }));
    }));
    $("#prediction-caption").textContent =
      `${dist.length} of the ${top.length} most likely next tokens (the largest logits), their probabilities ` +
      "renormalised over those: softmax(logit / temperature), then top-k, then top-p.";
  }

  // ---------- the whole page ----------
  function render(d) {
    state.data = d;
    state.query = null;
    renderHeader(d);
    renderTokens(d);
    renderEmbeddings(d);
    renderPositions(d);
    renderAttention(d);
    renderPrediction();
    const last = d.tokens.length ? d.tokens[d.tokens.length - 1].id : null;
    if (last !== null) selectToken(last);
    document.body.dataset.rendered = String((Number(document.body.dataset.rendered) || 0) + 1);
  }

  function showError(message) {
    const e = $("#error");
    e.textContent = message || "";
    e.hidden = !message;
  }

  function bindForm() {
    if (!config.api) return;
    const form = $("#prompt-form");
    form.hidden = false;
    const input = $("#prompt-input");
    if (state.data) input.value = state.data.prompt;
    if (config.error) showError(config.error);
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = $("#explain-button");
      button.disabled = true;
      $("#status").textContent = "computing…";
      $("#content").classList.add("busy");
      showError("");
      try {
        const response = await fetch(config.api, {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prompt: input.value }),
        });
        let body = null;
        try { body = await response.json(); } catch (_) { body = null; }
        if (!response.ok) {
          showError((body && body.error) || `the server answered ${response.status} ${response.statusText}`);
        } else {
          render(body);
          $("#content").hidden = false;
        }
      } catch (err) {
        showError(`could not reach the server: ${err}`);
      } finally {
        button.disabled = false;
        $("#status").textContent = "";
        $("#content").classList.remove("busy");
      }
    });
  }

  function init() {
    const data = JSON.parse(document.getElementById("data").textContent);
    bindPlot();
    bindEnlarged();
    for (const id of ["#temperature", "#top-k", "#top-p"]) {
      $(id).addEventListener("input", () => { if (state.data) renderPrediction(); });
    }
    if (data) {
      const s = data.sampling;  // the controls start where `llm explain --temperature/--top-k/--top-p` put them
      if (s) {
        $("#temperature").value = String(s.temperature);
        $("#top-k").value = String(s.top_k);
        $("#top-p").value = String(s.top_p);
      }
      render(data);
    } else {
      $("#content").hidden = true;
    }
    bindForm();
  }

  window.llmExplain = { render, distribution, state };
  init();
})();
