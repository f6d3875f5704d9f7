/* router web console: plain JavaScript, no framework, no build step, nothing fetched
 * but this node's own /v1/console. It polls the document, keeps the totals' samples for
 * the charts, and renders only what is visible (one page of the endpoint table), so
 * 5 000 endpoints stay interactive. See docs/console.md. */
"use strict";

(function () {
  const PAGE_SIZE = 50;
  const BANNER_ITEMS = 6;            // problems shown before the fold
  const MAX_SAMPLES = 300;           // ten minutes at 2 s
  const MIN_POLL_MS = 2000;
  const TOKEN_KEY = "router-console-token";
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    doc: null, cols: {}, rows: [], samples: [], lastSample: null,
    search: "", stateFilter: "", zoneFilter: "", sortKey: "connected", sortDir: 1,
    page: 0, polling: false, failures: 0, timer: null, problemsOpen: false,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- formatting

  function si(value, unit) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const abs = Math.abs(value);
    const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [f, p] of steps) {
      if (abs >= f) return (value / f).toFixed(abs >= 10 * f ? 0 : 1) + " " + p + (unit || "");
    }
    if (Number.isInteger(value)) return value + (unit ? " " + unit : "");
    const digits = abs >= 10 || abs === 0 ? 0 : (abs >= 1 ? 1 : 2);
    return value.toFixed(digits) + (unit ? " " + unit : "");
  }
  function bytes(value) { return si(value, "B"); }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, seconds);
    if (s < 120) return s.toFixed(0) + " s";
    if (s < 7200) return (s / 60).toFixed(0) + " min";
    if (s < 2 * 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(0) + " d";
  }
  function ago(ts, now) { return ts ? duration(now - ts) + " ago" : "–"; }
  function version(v) {
    if (!v) return "–";
    const major = Math.floor(v / 10000), minor = Math.floor(v / 100) % 100, patch = v % 100;
    return major + "." + minor + "." + patch;
  }
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const k in attrs) {
      if (k === "class") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    if (attrs) for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function setText(id, text) { const node = $(id); if (node) node.textContent = text; }

  // ---------------------------------------------------------------- fetching

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  async function poll() {
    if (state.polling) return;
    state.polling = true;
    let delay = MIN_POLL_MS;
    try {
      const since = state.lastSample !== null ? "?since=" + state.lastSample : "";
      const t0 = performance.now();
      const resp = await fetch("v1/console" + since, { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const doc = await resp.json();
      const t1 = performance.now();
      apply(doc);
      // what the last refresh cost in this browser (read by the scale test)
      window.consoleTimings = { fetch_ms: t1 - t0, render_ms: performance.now() - t1,
                                server_build_ms: doc.build_ms };
      state.failures = 0;
      $("live").className = "live ok";
      $("live").textContent = "live";
      // never take more than ~5 % of the node's loop: a slow build polls less often
      delay = Math.max(MIN_POLL_MS, (doc.build_ms || 0) * 20);
    } catch (err) {
      state.failures += 1;
      $("live").className = "live err";
      $("live").textContent = "no answer (" + err.message + "), retrying";
      delay = Math.min(30000, MIN_POLL_MS * (1 + state.failures));
    } finally {
      state.polling = false;
    }
    if (document.hidden) delay = Math.max(delay, 10000);
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, delay);
  }

  // after an action: fetch now (one polling chain: poll() replaces the pending timer)
  function refreshNow() {
    clearTimeout(state.timer);
    poll();
  }

  function apply(doc) {
    state.doc = doc;
    state.cols = {};
    doc.endpoint_columns.forEach((name, i) => { state.cols[name] = i; });
    state.rows = doc.endpoints;
    if (doc.samples.length && state.lastSample !== null && doc.samples[0][0] <= state.lastSample) {
      // the node's clock stepped back: it sent all its samples again, on the new timeline
      state.samples = []; state.lastSample = null;
    }
    for (const s of doc.samples) {
      if (state.lastSample === null || s[0] > state.lastSample) {
        state.samples.push(s);
        state.lastSample = s[0];
      }
    }
    if (state.samples.length > MAX_SAMPLES) state.samples.splice(0, state.samples.length - MAX_SAMPLES);
    render();
    document.body.dataset.generated = String(doc.generated);
    if (!document.body.dataset.ready) {
      // ms from navigation start until the first complete render: time to interactive
      document.body.dataset.readyAt = String(Math.round(performance.now()));
    }
    document.body.dataset.ready = "1";
  }

  // ---------------------------------------------------------------- rendering

  function render() {
    const doc = state.doc;
    renderHeader(doc);
    renderProblems(doc);
    renderCards(doc);
    renderCharts();
    renderTopology(doc);
    renderZones(doc);
    renderZoneFilter(doc);
    renderEndpoints();
    renderKV("sessions", doc.connections, "no sessions");
    renderKV("handshakes", doc.handshake_failures, "no handshake failures");
    renderKV("refusals", doc.refusals, "no refused messages");
    renderKV("disconnects", doc.disconnects, "no disconnects");
    renderKV("checks", doc.checks, "no check executors on this node");
    renderWriters(doc.writers);
    renderReload(doc.reload);
    renderRequests(doc);
  }

  function renderHeader(doc) {
    const n = doc.node;
    setText("node-name", n.name);
    setText("node-meta", n.role + " in zone " + n.zone + " · router " + n.version +
      " · up " + duration(n.uptime) + (n.cert_expiry ? " · certificate expires in " +
      duration(n.cert_expiry - doc.generated) : ""));
    document.title = n.name + " · router console";
    const mode = $("mode");
    if (doc.admin) {
      mode.textContent = token() ? "admin" : "admin token set";
      mode.className = "badge admin";
      $("admin-toggle").hidden = false;
    } else {
      mode.textContent = "read-only";
      mode.className = "badge";
      mode.title = "no admin token configured: actions are off";
      $("admin-toggle").hidden = true;
      $("admin").hidden = true;
    }
    setText("footer", "document built in " + doc.build_ms + " ms · " +
      new Date(doc.generated * 1000).toLocaleTimeString());
  }

  function renderProblems(doc) {
    const box = $("problems");
    box.replaceChildren();
    const items = doc.problems.items;
    if (!items.length) {
      box.append(el("p", { class: "ok-line", id: "no-problems" }, "No problems: every zone connected, nothing lagging, no certificate expiring within 30 days, last reload fine."));
      return;
    }
    const list = el("ul", { id: "problem-list" });
    // the first few always in sight; the rest folded (state kept across refreshes)
    let target = list;
    items.forEach((p, i) => {
      if (i === BANNER_ITEMS) {
        const fold = el("details", { id: "more-problems" });
        fold.open = state.problemsOpen;
        fold.addEventListener("toggle", () => { state.problemsOpen = fold.open; });
        fold.append(el("summary", null, (items.length - BANNER_ITEMS) + " more problems"));
        target = el("ul");
        fold.append(target);
        const li = el("li", { class: "fold" });
        li.append(fold);
        list.append(li);
      }
      const li = el("li", { class: p.severity, "data-kind": p.kind });
      const link = el("a", { href: "#" }, p.text);
      link.addEventListener("click", (ev) => { ev.preventDefault(); jumpTo(p); });
      li.append(link);
      target.append(li);
    });
    const counts = doc.problems.counts;
    for (const kind in counts) {
      const shown = items.filter((p) => p.kind === kind).length;
      if (counts[kind] > shown) {
        const li = el("li", { class: "more" });
        const link = el("a", { href: "#" }, "… and " + (counts[kind] - shown) + " more (" + kind.replace("_", " ") + ")");
        link.addEventListener("click", (ev) => {
          ev.preventDefault();
          if (kind === "zone_down" || kind === "zone_degraded") {
            state.stateFilter = "down"; $("state-filter").value = "down"; state.page = 0;
            renderEndpoints(); $("endpoints-panel").scrollIntoView();
          }
        });
        li.append(link);
        list.append(li);
      }
    }
    box.append(list);
  }

  function jumpTo(problem) {
    if (problem.zone) {
      const row = document.querySelector('#zones tr[data-zone="' + CSS.escape(problem.zone) + '"]');
      state.zoneFilter = problem.zone; $("zone-filter").value = problem.zone; state.page = 0;
      renderEndpoints();
      if (row) { flash(row); row.scrollIntoView({ block: "center" }); }
    } else if (problem.endpoint) {
      state.search = problem.endpoint; $("search").value = problem.endpoint; state.page = 0;
      renderEndpoints();
      $("endpoints-panel").scrollIntoView();
      const row = document.querySelector('#endpoints tr[data-name="' + CSS.escape(problem.endpoint) + '"]');
      if (row) flash(row);
    } else if (problem.writer) {
      const row = document.querySelector('#writers tr[data-writer="' + CSS.escape(problem.writer) + '"]');
      if (row) { row.scrollIntoView({ block: "center" }); flash(row); }
    } else if (problem.reload) {
      const panel = $("reload-status");
      panel.scrollIntoView({ block: "center" });
      flash(panel);
    }
  }

  function flash(node) {
    node.classList.add("hl");
    setTimeout(() => node.classList.remove("hl"), 2500);
  }

  function renderCards(doc) {
    const t = doc.totals;
    setText("t-connected", t.connected + " / " + t.configured);
    setText("t-msgs_in_rate", si(t.msgs_in_rate));
    setText("t-msgs_out_rate", si(t.msgs_out_rate));
    setText("t-bytes_in_rate", bytes(t.bytes_in_rate));
    setText("t-bytes_out_rate", bytes(t.bytes_out_rate));
    setText("t-msgs_in", si(t.msgs_in) + " total");
    setText("t-msgs_out", si(t.msgs_out) + " total");
    setText("t-bytes_in", bytes(t.bytes_in) + " total");
    setText("t-bytes_out", bytes(t.bytes_out) + " total");
    setText("t-queue_bytes", bytes(t.queue_bytes));
    setText("t-check_results", si(t.check_results) + " check results");
    $("t-msgs_in").dataset.value = String(t.msgs_in);
    $("t-msgs_out").dataset.value = String(t.msgs_out);
    const index = {};
    doc.sample_columns.forEach((name, i) => { index[name] = i; });
    for (const card of document.querySelectorAll(".card[data-series]")) {
      const i = index[card.dataset.series];
      const values = state.samples.map((s) => s[i]);
      drawLines(card.querySelector("svg"), [[values, ""]], 120, 28, false);
    }
  }

  function renderCharts() {
    const times = state.samples.map((s) => s[0]);
    const col = (i) => state.samples.map((s) => s[i]);
    drawLines($("chart-msgs"), [[col(1), "in"], [col(2), "out"]], 600, 140, true, times, si);
    drawLines($("chart-bytes"), [[col(3), "in"], [col(4), "out"]], 600, 140, true, times, bytes);
  }

  function drawLines(box, series, w, h, axes, times, fmt) {
    box.replaceChildren();
    let max = 0, n = 0;
    for (const [values] of series) {
      n = Math.max(n, values.length);
      for (const v of values) if (v > max) max = v;
    }
    if (max <= 0) max = 1;
    const top = axes ? 14 : 2;
    if (axes) {
      for (const f of [0.5, 1]) {
        const y = h - (h - top) * f;
        box.append(svg("line", { class: "grid", x1: 0, x2: w, y1: y, y2: y }));
        box.append(svg("text", { x: 4, y: y - 3 }, fmt(max * f)));
      }
      if (times && times.length > 1) {
        box.append(svg("text", { x: w - 4, y: h - 4, "text-anchor": "end" },
          duration(times[times.length - 1] - times[0]) + " shown"));
      }
    }
    if (n < 2) return;
    // the newest sample at the right edge; at least a minute's width (30 samples)
    const slots = Math.max(n, 30);
    const step = w / (slots - 1);
    for (const [values, cls] of series) {
      const offset = (slots - values.length) * step;
      const points = values.map((v, i) => (offset + i * step).toFixed(1) + "," +
        (h - 1 - (h - top - 1) * (v / max)).toFixed(1)).join(" ");
      box.append(svg("polyline", { points: points, class: cls }));
    }
  }

  // the zone tree: ancestors above, our zone, children below (grouped when many),
  // global zones at the side
  function renderTopology(doc) {
    const box = $("topology");
    box.replaceChildren();
    const zones = {};
    for (const z of doc.zones) zones[z.name] = z;
    const local = zones[doc.node.zone];
    if (!local) return;
    const ancestors = [];
    for (let z = local; z && z.parent && zones[z.parent]; z = zones[z.parent]) ancestors.unshift(zones[z.parent]);
    const children = doc.zones.filter((z) => z.parent === local.name && !z.global);
    const globals = doc.zones.filter((z) => z.global);
    const W = 900, boxW = 150, boxH = 40;
    const levels = [...ancestors.map((z) => [z]), [local]];
    const rowH = 62;
    const height = (levels.length + (children.length ? 1 : 0)) * rowH + 24 +
      (children.length > 6 ? 12 : 0);
    const needed = Math.max(height, 20 + globals.length * 50);
    box.setAttribute("viewBox", "0 0 " + W + " " + needed);
    box.style.height = needed + "px";
    const centre = (W - 170) / 2;
    const pos = {};
    levels.forEach((level, i) => {
      const z = level[0];
      pos[z.name] = [centre - boxW / 2, 10 + i * rowH];
    });
    const childY = 10 + levels.length * rowH + 10;
    const drawn = children.length <= 6 ? children : null;
    // edges first
    const edge = (from, x, y) => {
      const [fx, fy] = pos[from];
      box.append(svg("path", { class: "edge", d: "M" + (fx + boxW / 2) + " " + (fy + boxH) +
        " C" + (fx + boxW / 2) + " " + (fy + boxH + 20) + " " + x + " " + (y - 20) + " " + x + " " + y }));
    };
    levels.forEach((level, i) => { if (i > 0) edge(levels[i - 1][0].name, centre, pos[level[0].name][1]); });
    if (drawn) {
      const span = (W - 170) / Math.max(1, drawn.length);
      drawn.forEach((z, i) => {
        const x = span * i + span / 2;
        edge(local.name, x, childY);
        pos[z.name] = [x - Math.min(boxW, span - 10) / 2, childY];
      });
    } else if (children.length) {
      edge(local.name, centre, childY);
    }
    const zoneBox = (z, x, y, w, label, sub, health) => {
      const g = svg("g", { class: "zone " + health, "data-zone": z ? z.name : "" });
      g.append(svg("rect", { x: x, y: y, width: w, height: boxH, rx: 6 }));
      g.append(svg("rect", { x: x, y: y, width: 5, height: boxH, rx: 2, class: "bar-" + health }));
      g.append(svg("text", { x: x + 12, y: y + 17 }, label));
      g.append(svg("text", { x: x + 12, y: y + 32, class: "small" }, sub));
      const title = svg("title", {}, label + ": " + sub);
      g.append(title);
      g.addEventListener("click", () => {
        const name = z ? z.name : "";
        state.zoneFilter = name; $("zone-filter").value = name; state.page = 0;
        if (!z) { state.stateFilter = ""; }
        renderEndpoints();
        $("endpoints-panel").scrollIntoView();
      });
      box.append(g);
    };
    const sub = (z) => (z.health === "self" ? "this node" : z.up + "/" + z.total + " connected") +
      (z.replay_records ? " · " + si(z.replay_records) + " queued" : "");
    for (const level of levels) {
      const z = level[0];
      const [x, y] = pos[z.name];
      zoneBox(z, x, y, boxW, z.name + (z === local ? " (us)" : ""), sub(z), z.health);
    }
    if (drawn) {
      for (const z of drawn) {
        const [x, y] = pos[z.name];
        const span = (W - 170) / drawn.length;
        zoneBox(z, x, y, Math.min(boxW, span - 10), z.name, sub(z), z.health);
      }
    } else if (children.length) {
      const counts = { all: 0, some: 0, none: 0 };
      for (const z of children) counts[z.health] = (counts[z.health] || 0) + 1;
      const health = counts.none ? (counts.all || counts.some ? "some" : "none") : (counts.some ? "some" : "all");
      const x = centre - 160;
      zoneBox(null, x, childY, 320, children.length + " child zones",
        counts.all + " all · " + counts.some + " some · " + counts.none + " none connected", health);
      // a bar of the children's health, to scale
      let bx = x + 10;
      for (const h of ["all", "some", "none"]) {
        const w = 300 * (counts[h] || 0) / children.length;
        if (w > 0) box.append(svg("rect", { x: bx, y: childY + boxH + 6, width: w, height: 6, class: "bar-" + h }));
        bx += w;
      }
    }
    globals.forEach((z, i) => {
      zoneBox(z, W - 160, 10 + i * 50, 150, z.name, "global zone", "empty");
    });
  }

  function renderZones(doc) {
    const body = document.querySelector("#zones tbody");
    // our own zone and its parents first, then the worst health first
    const near = { local: 0, parent: 0 };
    const rank = { none: 0, some: 1, all: 2, self: 3, empty: 4, other: 5 };
    const rows = doc.zones.slice().sort((a, b) =>
      ((near[a.relation] ?? 1) - (near[b.relation] ?? 1)) ||
      (rank[a.health] - rank[b.health]) || (a.name < b.name ? -1 : 1));
    const shown = rows.slice(0, 200);   // the table scrolls; the worst first
    const frag = document.createDocumentFragment();
    for (const z of shown) {
      const tr = el("tr", { "data-zone": z.name });
      tr.append(el("td", null, z.name), el("td", null, z.relation), el("td", null, z.parent || "–"));
      const h = el("td"); h.append(el("span", { class: "health " + z.health }, z.health)); tr.append(h);
      tr.append(el("td", { class: "num" }, z.health === "self" || z.health === "empty" || z.health === "other" ? "–" : z.up + "/" + z.total));
      tr.append(lagCell(z.log_lag), el("td", { class: "num" }, z.replay_records === null ? "–" : si(z.replay_records) + " (" + bytes(z.replay_bytes) + ")"), lagCell(z.replay_lag));
      frag.append(tr);
    }
    body.replaceChildren(frag);
    setText("zone-count", doc.zones.length + (rows.length > shown.length ? " (worst " + shown.length + " shown)" : ""));
  }

  function lagCell(lag) {
    const td = el("td", { class: "num" });
    if (lag === null || lag === undefined) { td.textContent = "–"; return td; }
    td.append(el("span", { class: lag > 300 ? "crit" : (lag > 60 ? "warn" : "") }, lag ? duration(lag) : "0"));
    return td;
  }

  function renderZoneFilter(doc) {
    const select = $("zone-filter");
    let names = doc.zones.filter((z) => !z.global).map((z) => z.name);
    // thousands of agent zones make a useless list: then only the zones with children
    // and our own are offered (zone:NAME in the search box and the topology reach any)
    if (names.length > 200) {
      const parents = new Set(doc.zones.map((z) => z.parent));
      names = names.filter((n) => parents.has(n) || n === doc.node.zone);
    }
    if (select.dataset.zones === String(names.length)) return;
    select.dataset.zones = String(names.length);
    const keep = select.value;
    const frag = document.createDocumentFragment();
    frag.append(el("option", { value: "" }, "all zones"));
    for (const name of names.sort()) frag.append(el("option", { value: name }, name));
    select.replaceChildren(frag);
    select.value = keep;
  }

  // ---------------------------------------------------------------- endpoint table

  function filtered() {
    const c = state.cols;
    let terms = state.search.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let stateWanted = state.stateFilter, zoneWanted = state.zoneFilter;
    const words = [];
    for (const t of terms) {
      if (t.startsWith("zone:")) zoneWanted = t.slice(5);
      else if (t.startsWith("state:")) stateWanted = /^(up|connected)$/.test(t.slice(6)) ? "up" : "down";
      else words.push(t);
    }
    terms = words;
    const me = state.doc.node.name;
    const out = [];
    for (const row of state.rows) {
      if (row[c.name] === me) continue;
      const up = row[c.connected] === 1;
      const away = !up && row[c.relation] === "other";   // not adjacent: never connected to
      if (stateWanted === "up" && !up) continue;
      if (stateWanted === "down" && (up || away)) continue;
      if (zoneWanted && String(row[c.zone]).toLowerCase() !== zoneWanted.toLowerCase()) continue;
      if (terms.length) {
        const hay = (row[c.name] + " " + row[c.zone]).toLowerCase();
        if (!terms.every((t) => hay.includes(t))) continue;
      }
      out.push(row);
    }
    const i = c[state.sortKey], dir = state.sortDir;
    const nameIdx = c.name;
    out.sort((a, b) => {
      let x = a[i], y = b[i];
      if (x === y) return a[nameIdx] < b[nameIdx] ? -1 : 1;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === "string") return dir * x.localeCompare(y);
      return dir * (x - y);
    });
    return out;
  }

  function renderEndpoints() {
    if (!state.doc) return;
    const c = state.cols;
    const rows = filtered();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    if (state.page >= pages) state.page = pages - 1;
    const start = state.page * PAGE_SIZE;
    const now = state.doc.generated;
    const frag = document.createDocumentFragment();
    for (const row of rows.slice(start, start + PAGE_SIZE)) {
      const up = row[c.connected] === 1;
      const away = !up && row[c.relation] === "other";
      const tr = el("tr", { "data-name": row[c.name], "data-state": up ? "up" : away ? "other" : "down" });
      const st = el("td", { class: "state" });
      st.append(el("span", { class: up ? "up" : away ? "other" : "down" },
        up ? "connected" : away ? "not adjacent" : "disconnected"));
      tr.append(st, el("td", null, row[c.name]), el("td", null, row[c.zone] || "–"),
        el("td", null, row[c.direction] || "–"),
        el("td", { title: row[c.connected_since] ? new Date(row[c.connected_since] * 1000).toLocaleString() : "" },
          up && row[c.connected_since] ? duration(now - row[c.connected_since]) : "–"),
        el("td", null, version(row[c.icinga_version])));
      const cert = el("td");
      const exp = row[c.cert_expiry];
      if (exp) {
        const left = exp - now;
        cert.append(el("span", { class: left < 7 * 86400 ? "crit" : (left < 30 * 86400 ? "warn" : "") }, duration(left)));
      } else cert.textContent = "–";
      tr.append(cert,
        // the node sends counts over the last minute: per second is that / 60
        el("td", { class: "num" }, si(row[c.msgs_in_1m] / 60)), el("td", { class: "num" }, si(row[c.msgs_out_1m] / 60)),
        el("td", { class: "num" }, bytes(row[c.bytes_in_1m] / 60)), el("td", { class: "num" }, bytes(row[c.bytes_out_1m] / 60)),
        el("td", { class: "num", title: row[c.queue_messages] + " messages" }, bytes(row[c.queue_bytes])),
        lagCell(row[c.replay_lag]),
        el("td", null, ago(row[c.last_message_received], now)));
      frag.append(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: 14, class: "none" }, state.rows.length > 1 ?
        "no endpoint matches the search and filters" : "no other endpoints configured"));
      frag.append(tr);
    }
    document.querySelector("#endpoints tbody").replaceChildren(frag);
    const total = state.rows.length - 1;
    setText("ep-count", rows.length === total ? total + " endpoints" : rows.length + " of " + total + " endpoints");
    setText("page-info", " page " + (state.page + 1) + " of " + pages + " ");
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    for (const th of document.querySelectorAll("#endpoints th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === state.sortKey);
      th.classList.toggle("asc", state.sortDir === 1);
      th.classList.toggle("desc", state.sortDir === -1);
    }
  }

  // ---------------------------------------------------------------- side panels

  function renderKV(id, obj, empty) {
    const body = document.querySelector("#" + id + " tbody");
    const frag = document.createDocumentFragment();
    const keys = obj ? Object.keys(obj).filter((k) => obj[k] !== null && obj[k] !== undefined &&
      typeof obj[k] !== "object") : [];
    if (!keys.length) {
      const tr = el("tr"); tr.append(el("td", { class: "none" }, empty)); frag.append(tr);
    }
    for (const k of keys) {
      const tr = el("tr"); tr.append(el("td", null, k.replace(/_/g, " ")), el("td", null, typeof obj[k] === "number" ? si(obj[k]) : obj[k]));
      frag.append(tr);
    }
    body.replaceChildren(frag);
  }

  // writers: one row per writer (connected, backlog, lag, written, errors) when the
  // status document's "writers" section has that shape, else its figures as they come
  function renderWriters(writers) {
    const table = $("writers");
    const names = writers && typeof writers === "object" && !Array.isArray(writers) ?
      Object.keys(writers).filter((k) => writers[k] && typeof writers[k] === "object") : [];
    if (names.length && names.every((n) => "lag_seconds" in writers[n])) {
      table.className = "data";
      const head = el("thead"), tr = el("tr");
      for (const h of ["writer", "type", "state", "backlog", "lag", "written", "errors"]) tr.append(el("th", null, h));
      head.append(tr);
      const body = el("tbody");
      for (const name of names.sort()) {
        const w = writers[name];
        const errors = Object.values(w.errors || {}).reduce((a, b) => a + b, 0);
        const row = el("tr", { "data-writer": name });
        const state = el("td");
        state.append(el("span", { class: w.connected ? "" : "crit" }, w.connected ? "connected" : (w.process_running === false ? "stopped" : "disconnected")));
        row.append(el("td", null, name), el("td", null, w.type || "–"), state,
          el("td", { class: "num" }, si(w.backlog)), lagCell(w.lag_seconds),
          el("td", { class: "num" }, si(w.written)), el("td", { class: "num" }, si(errors)));
        body.append(row);
      }
      table.replaceChildren(head, body);
      table.closest("section").classList.add("wide");
      return;
    }
    table.closest("section").classList.remove("wide");
    table.className = "kv";
    if (!table.tBodies.length) table.replaceChildren(el("tbody"));
    const flat = {};
    const walk = (value, prefix) => {
      if (value === null || value === undefined) return;
      if (Array.isArray(value)) {
        value.forEach((v, i) => walk(v, prefix + (v && v.name ? v.name : String(i)) + " "));
      } else if (typeof value === "object") {
        for (const k in value) if (k !== "name") walk(value[k], prefix + k.replace(/_/g, " ") + " ");
      } else {
        flat[prefix.trim()] = value;
      }
    };
    walk(writers, "");
    const keys = Object.keys(flat).sort((a, b) => (b.includes("lag") - a.includes("lag")) || a.localeCompare(b));
    const ordered = {};
    for (const k of keys.slice(0, 40)) ordered[k] = flat[k];
    renderKV("writers", keys.length ? ordered : null, "no writers on this node");
  }

  function renderReload(reload) {
    if (!reload) { renderKV("reload-status", null, "no reload information"); return; }
    const last = reload.last || {};
    renderKV("reload-status", {
      phase: reload.phase, last_result: last.result || "none yet", last_trigger: last.trigger,
      last_error: last.error, last_ok: reload.last_ok ? new Date(reload.last_ok * 1000).toLocaleString() : "never",
    }, "");
  }

  function renderRequests(doc) {
    const certs = doc.certificates;
    const body = document.querySelector("#requests tbody");
    const frag = document.createDocumentFragment();
    setText("req-count", certs.pending + " pending" + (certs.signer ? "" : " (this node cannot sign: no CA key)"));
    if (!certs.requests.length) {
      const tr = el("tr"); tr.append(el("td", { colspan: 5, class: "none" }, "no pending certificate requests")); frag.append(tr);
    }
    const canSign = doc.admin && certs.signer && token();
    for (const r of certs.requests) {
      const tr = el("tr", { "data-fingerprint": r.fingerprint });
      tr.append(el("td", null, r.cn), el("td", { class: "mono", title: r.fingerprint }, r.fingerprint.slice(0, 16) + "…"),
        el("td", null, ago(r.received, doc.generated)), el("td", null, r.ticket ? "yes" : "no"));
      const act = el("td");
      if (canSign) {
        const b = el("button", { type: "button", class: "sign" }, "Sign");
        b.addEventListener("click", () => sign(r.fingerprint, r.cn, b));
        act.append(b);
      }
      tr.append(act);
      frag.append(tr);
    }
    body.replaceChildren(frag);
  }

  // ---------------------------------------------------------------- actions

  async function action(path, what) {
    const msg = $("admin-msg");
    try {
      const resp = await fetch(path, { method: "POST", headers: { Authorization: "Bearer " + token() } });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(body.error || ("HTTP " + resp.status));
      msg.className = "msg";
      msg.textContent = what + ": done";
      return body;
    } catch (err) {
      msg.className = "msg err";
      msg.textContent = what + " failed: " + err.message;
      $("admin").hidden = false;
      return null;
    } finally {
      refreshNow();
    }
  }

  async function sign(fingerprint, cn, button) {
    button.disabled = true;
    const body = await action("v1/console/actions/sign?fingerprint=" + encodeURIComponent(fingerprint), "signing " + cn);
    if (body) $("admin-msg").textContent = "signed " + body.cn + " (valid until " + body.not_after + ")";
    else button.disabled = false;
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    let timer = null;
    $("search").addEventListener("input", (ev) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.search = ev.target.value; state.page = 0; renderEndpoints(); }, 80);
    });
    $("state-filter").addEventListener("change", (ev) => { state.stateFilter = ev.target.value; state.page = 0; renderEndpoints(); });
    $("zone-filter").addEventListener("change", (ev) => { state.zoneFilter = ev.target.value; state.page = 0; renderEndpoints(); });
    $("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderEndpoints(); });
    $("next").addEventListener("click", () => { state.page += 1; renderEndpoints(); });
    for (const th of document.querySelectorAll("#endpoints th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        if (state.sortKey === key) state.sortDir = -state.sortDir;
        else { state.sortKey = key; state.sortDir = key === "name" || key === "zone" || key === "connected" ? 1 : -1; }
        renderEndpoints();
      });
    }
    $("admin-toggle").addEventListener("click", () => { $("admin").hidden = !$("admin").hidden; });
    $("admin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      $("admin-msg").className = "msg";
      $("admin-msg").textContent = "token kept for this browser tab; actions are checked by the node";
      if (state.doc) render();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("admin-msg").textContent = "token forgotten";
      if (state.doc) render();
    });
    $("reload").addEventListener("click", () => action("v1/console/actions/reload", "reload"));
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("q")) { state.search = hash.get("q"); $("search").value = state.search; }
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
