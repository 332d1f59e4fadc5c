// sse-bridge dashboard: every run on the page over ONE EventSource (/v1/streams).
// Plain browser JavaScript, no build step; one library, vendored: fast-json-patch
// (static/vendor/README.md), which applies the bridge's RFC 6902 patches.
//
// Runs come from ?runs=a,b,c or the "Watch" box; without run ids, when the bridge follows
// the upstream's list of runs (BRIDGE_UPSTREAM_LIST_PATH), from /v1/events: every listed
// run appears by itself; else, in demo mode, from the simulated API (/demo/api/runs). The stream is reopened, with the last event id as cursor, whenever
// the set of unfinished runs changes; the bridge then replays only what the page lacks.
//
// A card shows the envelope's `state`, `progress` and `detail` (what the bridge's status
// filters read, for any configured API), never guesses from the upstream object: a bar
// when progress is a number, an indeterminate one when it is null, the detail (a stage,
// an error message) where seed 004's running nodes would be. Seed 004's extras (nodes,
// current node, outputs, timings) appear only where the status has those fields.
//
// Deltas: the streams are asked with delta=json-patch, so after a run's first whole status
// each later one comes as a `patch` envelope (DESIGN.md "Deltas"): its state, progress and
// detail whole, its data the patch from the run's previous status. The page keeps each
// run's last whole status as the base to apply the next patch to. A patch that cannot be
// applied (no base held, a failing `test`) drops every base and reopens the stream without
// a cursor, so each run comes whole again; the card never shows a status it cannot vouch
// for. After a few such failures the page stops asking for deltas (whole statuses only).
//
// A transient refusal (the upstream unreachable, the bridge full) reaches EventSource as
// a 200 with `retry:` and a comment naming the error, which EventSource never shows: the
// page asks once more and reads that comment, and the cards say why they wait.
"use strict";

(() => {
  const TERMINAL = new Set(["complete", "error"]);
  const TIMELINE_MAX = 200; // derived events kept per run on the page
  const LOG_MAX = 1000; // log lines kept per run on the page
  const DELTA = "json-patch";
  const DELTA_FAILURES_MAX = 3; // patches that could not be applied before deltas are off
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);

  const state = {
    config: {
      demo: false, fleet: false, maxRuns: 50, pollInterval: 2, profile: null,
      // The stream's vocabulary (BRIDGE_EVENTS_FILE); the contract's names by default.
      events: { builtin: { progress: "progress", complete: "complete", error: "error" }, derived: [], lines: [] },
    },
    following: false, // every listed run, over /v1/events
    limit: 30,
    runs: new Map(), // id -> {id, status, state, progress, detail, data, event, finished,
    //                          refused, waiting, el}
    order: [], // newest first
    es: null,
    streamRuns: "", // the runs the open stream carries, comma-separated
    lastId: "", // the multi-stream cursor: covers every run received so far
    opened: false,
    gotEvent: false, // an event arrived since the stream (re)opened
    retryTimer: 0,
    failures: 0,
    dirty: new Set(),
    frame: 0,
    // Deltas on this page: whether the streams ask for them, and what came of them.
    delta: true,
    deltas: { patches: 0, applied: 0, failed: 0, resyncs: 0 },
  };
  // What the page did with deltas, for whoever looks (the browser tests read it).
  window.sseBridgeDeltas = state.deltas;

  // --- connection state ---------------------------------------------------------

  function setConnection(name, text) {
    const el = $("connection");
    if (el.dataset.state === name && el.querySelector(".label").textContent === text) return;
    el.dataset.state = name;
    el.querySelector(".label").textContent = text;
  }

  function notice(text) {
    const el = $("notice");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // --- the stream -----------------------------------------------------------------

  function unfinished() {
    return state.order.filter((id) => {
      const run = state.runs.get(id);
      return run && !run.finished && !run.refused;
    }).slice(0, state.config.maxRuns);
  }

  function streamUrl(ids) {
    let url = "/v1/streams?runs=" + ids.map(encodeURIComponent).join(",");
    if (state.delta) url += "&delta=" + DELTA;
    if (state.lastId) url += "&cursor=" + encodeURIComponent(state.lastId);
    return url;
  }

  // Open (or reopen) the stream for the runs still going; close it when none are.
  function connect() {
    clearTimeout(state.retryTimer);
    if (state.following) {
      if (state.es) return;
      const query = new URLSearchParams();
      if (state.delta) query.set("delta", DELTA);
      if (state.lastId) query.set("cursor", state.lastId);
      const url = "/v1/events" + (query.toString() ? "?" + query : "");
      listen(new EventSource(url), url, "");
      return;
    }
    const ids = unfinished();
    const wanted = ids.join(",");
    if (state.es && wanted === state.streamRuns) return;
    closeStream();
    if (!ids.length) {
      setConnection("idle", state.order.length ? "all runs finished" : "waiting for runs");
      return;
    }
    const url = streamUrl(ids);
    listen(new EventSource(url), url, wanted);
  }

  function listen(es, url, wanted) {
    state.es = es;
    state.streamRuns = wanted;
    state.opened = false;
    state.gotEvent = false;
    es.onopen = () => {
      if (state.es !== es) return;
      state.opened = true;
      state.gotEvent = false;
      state.failures = 0;
      notice("");
      setConnection("live", "live");
    };
    const events = state.config.events;
    // The built-in events under their configured names (null: turned off).
    for (const kind of ["progress", "complete", "error"]) {
      const name = events.builtin[kind];
      if (name && name !== "error") es.addEventListener(name, (e) => onRunEvent(es, kind, e));
    }
    // A later status as a patch (only ever sent instead of the built-in progress).
    const patches = state.delta && Boolean(events.builtin.progress);
    if (patches) es.addEventListener("patch", (e) => onPatch(es, e));
    for (const name of events.derived) {
      if (name === "error" || (patches && name === "patch")) continue;
      es.addEventListener(name, (e) => onDerived(es, name, e));
    }
    // "error" is both an event the stream may carry (a MessageEvent with data) and the
    // EventSource's own connection error (a plain Event).
    es.addEventListener("error", (e) => {
      if (typeof e.data !== "string") onConnectionError(es, url);
      else if (events.builtin.error === "error") onRunEvent(es, "error", e);
      else if (events.derived.includes("error")) onDerived(es, "error", e);
    });
    es.addEventListener("ping", () => { if (state.es === es) state.gotEvent = true; });
    es.addEventListener("timeout", () => {
      // The bridge ends streams after BRIDGE_STREAM_TIMEOUT: pick up where we are.
      if (state.es === es) { closeStream(); connect(); }
    });
  }

  function closeStream() {
    if (state.es) state.es.close();
    state.es = null;
    state.streamRuns = "";
  }

  // The run an envelope is about (in the fleet, a run first seen is added).
  function runOf(message) {
    if (state.following && typeof message.run_id === "string" && !state.runs.has(message.run_id)) {
      addRun(message.run_id, null, { front: true });
      trim();
      renderSummary();
    }
    return state.runs.get(message.run_id);
  }

  function onRunEvent(es, name, e) {
    if (state.es !== es) return;
    let message;
    try { message = JSON.parse(e.data); } catch { return; }
    if (e.lastEventId) state.lastId = e.lastEventId;
    state.gotEvent = true;
    const run = runOf(message);
    if (!run) return;
    const data = message.data && typeof message.data === "object" ? message.data : null;
    // The bridge patches only from a `progress`; after an end there is nothing to patch.
    run.base = name === "progress" ? data : null;
    showStatus(run, name, message, data || {});
  }

  // A `patch` envelope: the run's previous status, patched, is its new one.
  function onPatch(es, e) {
    if (state.es !== es) return;
    let message;
    try { message = JSON.parse(e.data); } catch { return; }
    state.gotEvent = true;
    state.deltas.patches += 1;
    const run = runOf(message);
    if (!run) return;
    let next = null;
    if (run.base && Array.isArray(message.data)) {
      try {
        // Validated, and on a copy: a patch failing half-way leaves the base as it was.
        // https://github.com/Starcounter-Jack/JSON-Patch#function-applypatch
        next = jsonpatch.applyPatch(run.base, message.data, true, false).newDocument;
      } catch {
        next = null;
      }
    }
    if (!next || typeof next !== "object") {
      resync(run, message);
      return;
    }
    if (e.lastEventId) state.lastId = e.lastEventId;
    state.deltas.applied += 1;
    run.base = next;
    showStatus(run, "progress", message, next);
  }

  // A patch could not be applied: show only what the envelope says whole, and reopen the
  // stream without a cursor, which sends each run's current status whole.
  function resync(run, message) {
    state.deltas.failed += 1;
    state.deltas.resyncs += 1;
    if (state.deltas.failed >= DELTA_FAILURES_MAX) state.delta = false;
    for (const r of state.runs.values()) r.base = null;
    showStatus(run, "progress", message, {});
    state.lastId = "";
    closeStream();
    connect();
  }

  function showStatus(run, name, message, data) {
    run.waiting = "";
    run.detail = typeof message.detail === "string" ? message.detail : "";
    run.data = data;
    run.event = name;
    run.eventId = typeof message.id === "string" ? message.id : "";
    run.state = typeof message.state === "string" && message.state ? message.state : null;
    run.progress = fraction(message.progress);
    // No state read: "unknown" while it goes on; at the end the outcome still shows.
    run.status = run.state || (name === "complete" ? "completed" : name === "error" ? "error" : "unknown");
    if (TERMINAL.has(name)) run.finished = true;
    markDirty(run);
    if (TERMINAL.has(name) && !state.following && !unfinished().length) {
      // Every run has ended: close before the browser tries to reconnect.
      closeStream();
      setConnection("idle", "all runs finished");
    }
  }

  // A derived event: what happened, added to the run's timeline (and its log, for the
  // events made of log lines). Bounded: a page left open for hours stays small.
  function onDerived(es, name, e) {
    if (state.es !== es) return;
    let message;
    try { message = JSON.parse(e.data); } catch { return; }
    if (e.lastEventId) state.lastId = e.lastEventId;
    const run = state.runs.get(message.run_id);
    if (!run) return;
    if (typeof message.state === "string" && message.state) run.status = run.state = message.state;
    if (message.progress !== undefined) run.progress = fraction(message.progress);
    const data = message.data;
    run.timeline.push({ name, data });
    if (run.timeline.length > TIMELINE_MAX) run.timeline.splice(0, run.timeline.length - TIMELINE_MAX);
    if (state.config.events.lines.includes(name) && data && typeof data.line === "string") {
      run.log.push(data.line);
      if (run.log.length > LOG_MAX) run.log.splice(0, run.log.length - LOG_MAX);
    }
    markDirty(run);
  }

  function onConnectionError(es, url) {
    if (state.es !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself and sends Last-Event-ID. Opened but closed
      // before any event: a refusal in EventSource's form; find out why.
      setConnection("reconnecting", "reconnecting…");
      if (state.opened && !state.gotEvent) explainWait(url);
      state.opened = false;
      return;
    }
    // The browser gave up (an HTTP error, or 204): find out why, then retry with backoff.
    closeStream();
    setConnection("reconnecting", "reconnecting…");
    diagnose(url).finally(() => scheduleRetry());
  }

  function scheduleRetry() {
    clearTimeout(state.retryTimer);
    state.failures += 1;
    const base = Math.min(1000 * 2 ** Math.min(state.failures - 1, 4), 10000);
    state.retryTimer = setTimeout(connect, base * (1 + Math.random() * 0.25));
  }

  // The refusal comment, ": <code>[ (run <id>)]: <sentence>", as one reason in the words
  // `sse-bridge watch` uses: "upstream unavailable: the upstream API could not be reached".
  const REFUSAL = /^: ?([a-z][a-z_]*)(?: \(run ([^)]*)\))?: (.+)$/m;

  function reasonOf(code, sentence) {
    let text = sentence.trim().replace(/\.$/, "");
    if (/^[A-Z][a-z]/.test(text)) text = text[0].toLowerCase() + text.slice(1);
    return code.replace(/_/g, " ") + ": " + text;
  }

  // Read the stream's first bytes again: a refusal's comment, or events (no refusal now).
  async function explainWait(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      const response = await fetch(url, {
        headers: { Accept: "text/event-stream" }, cache: "no-store", signal: abort.signal,
      });
      if (!response.ok || !response.body) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = "";
      while (text.length < 8192) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        if (/^(data|event|id):/m.test(text)) return; // it streams now
      }
      const match = text.match(REFUSAL);
      if (!match) return;
      const reason = reasonOf(match[1], match[3]);
      // The whole stream is refused, so every run on it waits; a run named in the
      // comment is the one whose upstream answer refused it.
      const named = match[2] || "";
      for (const id of state.streamRuns.split(",")) {
        const run = state.runs.get(id);
        if (run && !run.finished && !run.refused) {
          run.waiting = named && named !== id ? reason + " (run " + named + ")" : reason;
          markDirty(run);
        }
      }
    } catch {
      // Unreachable or aborted: the next reconnect will tell.
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  // EventSource hides the answer of a refused stream; ask once more to read its JSON.
  async function diagnose(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      const response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: abort.signal });
      if (response.ok) return;
      let body = {};
      try { body = await response.json(); } catch { /* not JSON */ }
      const run = body.run_id && state.runs.get(body.run_id);
      if (run && response.status >= 400 && response.status < 500) {
        // This run cannot be watched with our credentials: show why, keep the others.
        run.refused = body.message || "refused";
        run.status = body.error || "refused";
        markDirty(run);
        state.failures = 0;
      } else if (response.status === 204) {
        for (const id of state.streamRuns.split(",")) {
          const r = state.runs.get(id);
          if (r) r.finished = true;
        }
      } else if (body.message) {
        notice(body.message);
      }
    } catch {
      // The bridge is unreachable: the retry will tell.
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  // --- runs -----------------------------------------------------------------------

  function addRun(id, summary, { front = false } = {}) {
    if (state.runs.has(id)) return false;
    const run = {
      id,
      // The demo's run list says the state in the API's words until the stream does.
      status: (summary && (summary.state || summary.status)) || "unknown",
      state: null,
      progress: null,
      detail: "",
      waiting: "",
      data: summary || { id },
      event: "",
      finished: false,
      refused: "",
      base: null, // the last whole status from the stream: what the next patch applies to
      timeline: [], // derived events: {name, data}, oldest first
      log: [], // lines of the events made of log lines
      el: null,
    };
    state.runs.set(id, run);
    if (front) state.order.unshift(id);
    else state.order.push(id);
    markDirty(run);
    return true;
  }

  function trim() {
    // Keep at most `limit` cards: drop the oldest finished ones first.
    while (state.order.length > state.limit) {
      let index = -1;
      for (let i = state.order.length - 1; i >= 0; i--) {
        const run = state.runs.get(state.order[i]);
        if (run.finished || run.refused) { index = i; break; }
      }
      if (index < 0) index = state.order.length - 1;
      const [id] = state.order.splice(index, 1);
      const run = state.runs.get(id);
      if (run.el) run.el.remove();
      state.runs.delete(id);
    }
  }

  async function refreshDemoRuns() {
    let body;
    try {
      const response = await fetch("/demo/api/runs", { cache: "no-store" });
      if (!response.ok) return;
      body = await response.json();
    } catch {
      return;
    }
    const listed = Array.isArray(body.runs) ? body.runs.slice(0, state.limit) : [];
    let added = false;
    // The list is newest first; add unknown ones in that order at the right place.
    const fresh = listed.filter((r) => r && typeof r.id === "string" && !state.runs.has(r.id));
    for (const summary of fresh.reverse()) {
      added = addRun(summary.id, summary, { front: state.order.length > 0 }) || added;
    }
    if (added) {
      sortNewestFirst(listed.map((r) => r.id));
      trim();
      connect();
    }
  }

  function sortNewestFirst(listedIds) {
    const rank = new Map(listedIds.map((id, i) => [id, i]));
    state.order.sort((a, b) => (rank.get(a) ?? 1e9) - (rank.get(b) ?? 1e9));
    const container = $("runs");
    for (const id of state.order) {
      const run = state.runs.get(id);
      if (run.el) container.appendChild(run.el);
    }
  }

  async function startRun(outcome) {
    const button = $("start-run");
    button.disabled = true;
    try {
      const response = await fetch("/demo/api/runs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(outcome ? { outcome } : {}),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        notice(body.message || body.error || "Could not start a run.");
        return;
      }
      notice("");
      if (typeof body.id === "string" && addRun(body.id, body, { front: true })) {
        trim();
        connect();
      }
    } catch {
      notice("Could not reach the bridge to start a run.");
    } finally {
      button.disabled = false;
    }
  }

  async function cancelRun(id) {
    try {
      await fetch("/demo/api/runs/" + encodeURIComponent(id) + "/cancel", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
    } catch {
      // The stream shows what happened, or the next try will.
    }
  }

  // --- rendering (batched per animation frame) ---------------------------------------

  function markDirty(run) {
    state.dirty.add(run.id);
    if (state.frame) return;
    const flush = () => { state.frame = 0; render(); };
    state.frame = document.hidden ? setTimeout(flush, 50) : requestAnimationFrame(flush);
  }

  // The envelope's progress: a number from 0 to 1, or null (unknown).
  function fraction(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return null;
    return Math.max(0, Math.min(1, value));
  }

  // Where the run APIs the bridge meets put a failure's reason.
  function messageOf(data) {
    const nested = (key, field) => data[key] && typeof data[key] === "object" ? data[key][field] : null;
    const candidates = [
      data.errorMessage, data.error_message, data.message, data.error,
      nested("error", "message"), nested("status", "message"), nested("state", "state_message"),
    ];
    for (const value of candidates) {
      if (typeof value === "string" && value.trim()) return value;
    }
    return "";
  }

  function timeOf(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? t : null;
  }

  function describeWhen(data) {
    const started = timeOf(data.startedAt);
    const finished = timeOf(data.finishedAt);
    if (started !== null && finished !== null) {
      return "took " + Math.max(0, Math.round((finished - started) / 1000)) + " s";
    }
    if (started !== null) return "started " + new Date(started).toLocaleTimeString();
    return "";
  }

  function text(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  function card(run) {
    if (run.el) return run.el;
    const el = $("run-template").content.firstElementChild.cloneNode(true);
    el.dataset.runId = run.id;
    el.querySelector(".run-id").textContent = run.id;
    el.querySelector(".run-id").title = run.id;
    el.querySelector(".cancel").addEventListener("click", () => cancelRun(run.id));
    run.el = el;
    const container = $("runs");
    const index = state.order.indexOf(run.id);
    const next = state.order.slice(index + 1).map((id) => state.runs.get(id).el).find(Boolean);
    container.insertBefore(el, next || null);
    return el;
  }

  function render() {
    for (const id of state.dirty) {
      const run = state.runs.get(id);
      if (run) renderRun(run);
    }
    state.dirty.clear();
    renderSummary();
  }

  function renderRun(run) {
    const el = card(run);
    const data = run.data || {};
    const ended = run.finished || Boolean(run.refused);
    // A number: a real bar. Null: indeterminate while the run goes on; once it ended, a
    // full bar for a completed run and an ended (still) one otherwise.
    let mode = "determinate";
    let pct = null;
    if (run.progress !== null) pct = Math.round(run.progress * 100);
    else if (run.event === "complete") pct = 100;
    else mode = ended ? "ended" : "indeterminate";
    el.dataset.status = run.status;
    el.dataset.event = run.event;
    el.dataset.eventId = run.eventId || "";
    el.dataset.progress = pct === null ? "" : String(pct);
    el.dataset.outcome = run.refused || run.event === "error" ? "error" : run.finished ? "ok" : "";
    el.querySelector(".state").textContent = run.refused ? "refused" : run.status;
    const bar = el.querySelector(".bar");
    bar.dataset.mode = mode;
    bar.setAttribute("aria-label", run.id + " progress");
    const fill = el.querySelector(".fill");
    if (pct === null) {
      // An indeterminate bar has no value (ARIA); its motion is the stylesheet's.
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", ended ? run.status : "in progress, " + run.status);
      fill.style.transform = "";
    } else {
      bar.setAttribute("aria-valuenow", String(pct));
      bar.removeAttribute("aria-valuetext");
      fill.style.transform = "scaleX(" + pct / 100 + ")";
    }
    el.querySelector(".percent").textContent = pct === null ? "" : pct + " %";
    const nodes = Array.isArray(data.nodes) ? data.nodes : [];
    const running = nodes.filter((n) => n && n.status === "running").map((n) => text(n.id));
    const current = (data.currentNode ? text(data.currentNode) : running.join(", ")) || run.detail;
    el.querySelector(".current").textContent = current ? "▸ " + current : "";
    el.dataset.detail = run.detail || "";
    const waiting = el.querySelector(".waiting");
    waiting.textContent = run.waiting && !ended ? "Waiting — " + run.waiting + "; retrying…" : "";
    waiting.hidden = !waiting.textContent;
    el.querySelector(".when").textContent = describeWhen(data);
    const list = el.querySelector(".nodes");
    renderNodes(list, nodes);
    list.hidden = !nodes.length;
    renderResult(el.querySelector(".result"), run, data);
    renderTimeline(el.querySelector(".timeline"), run.timeline);
    renderLog(el.querySelector(".log"), run.log);
    el.querySelector(".cancel").hidden = !state.config.demo || ended;
  }

  function renderTimeline(list, timeline) {
    const shown = timeline.slice(-50);
    while (list.children.length > shown.length) list.firstElementChild.remove();
    shown.forEach((item, i) => {
      let li = list.children[i];
      if (!li) {
        li = document.createElement("li");
        li.append(document.createElement("span"), document.createElement("span"));
        li.firstChild.className = "name";
        list.appendChild(li);
      }
      const body = item.data && typeof item.data === "object" ? JSON.stringify(item.data) : text(item.data);
      li.dataset.event = item.name;
      li.firstChild.textContent = item.name;
      li.lastChild.textContent = body.length > 160 ? body.slice(0, 159) + "…" : body;
    });
    list.hidden = !shown.length;
    list.scrollTop = list.scrollHeight;
  }

  function renderLog(pre, log) {
    const body = log.join("\n");
    if (pre.textContent !== body) {
      pre.textContent = body;
      pre.scrollTop = pre.scrollHeight;
    }
    pre.hidden = !log.length;
  }

  function renderNodes(list, nodes) {
    while (list.children.length > nodes.length) list.lastElementChild.remove();
    nodes.forEach((node, i) => {
      let li = list.children[i];
      if (!li) { li = document.createElement("li"); list.appendChild(li); }
      const name = text(node && node.id);
      const status = text(node && node.status) || "pending";
      if (li.textContent !== name) li.textContent = name;
      if (li.dataset.status !== status) li.dataset.status = status;
      li.title = name + ": " + status;
    });
  }

  function renderResult(box, run, data) {
    box.replaceChildren();
    box.className = "result";
    if (run.refused) {
      box.classList.add("error");
      box.textContent = run.refused;
    } else if (run.finished && run.event === "error") {
      box.classList.add("error");
      box.textContent = run.detail || messageOf(data) || "Did not complete (" + run.status + ").";
    } else if (run.finished && data.outputs && typeof data.outputs === "object") {
      box.classList.add("outputs");
      const dl = document.createElement("dl");
      for (const [key, value] of Object.entries(data.outputs).slice(0, 8)) {
        const dt = document.createElement("dt");
        dt.textContent = key;
        const dd = document.createElement("dd");
        dd.textContent = Array.isArray(value) ? value.map(text).join("\n") : text(value);
        dl.append(dt, dd);
      }
      box.appendChild(dl);
    } else if (run.finished) {
      box.classList.add("done");
      box.textContent = "Completed (" + run.status + ").";
    }
    box.hidden = !box.firstChild;
  }

  function renderSummary() {
    const counts = {};
    for (const run of state.runs.values()) {
      const key = run.refused ? "refused" : run.status;
      counts[key] = (counts[key] || 0) + 1;
    }
    const parts = Object.entries(counts).sort().map(([k, n]) => n + " " + k);
    $("summary").textContent = state.runs.size
      ? state.runs.size + " runs · " + parts.join(" · ")
      : "";
    $("empty").hidden = state.runs.size > 0;
  }

  // --- start --------------------------------------------------------------------------

  function urlRuns() {
    return (params.get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  }

  async function main() {
    try {
      const response = await fetch("/dashboard/config.json", { cache: "no-store" });
      if (response.ok) Object.assign(state.config, await response.json());
    } catch { /* defaults */ }
    const limit = parseInt(params.get("limit") || "", 10);
    state.limit = Math.min(Number.isFinite(limit) && limit > 0 ? limit : 30, state.config.maxRuns);
    if (typeof state.config.profile === "string" && state.config.profile) {
      $("profile").textContent = state.config.profile;
      $("profile").title = "BRIDGE_PROFILE: how the bridge reads this API";
      $("profile").hidden = false;
    }

    for (const id of urlRuns()) addRun(id, null);
    state.following = state.config.fleet === true && !urlRuns().length;
    if (state.following) {
      setConnection("connecting", "following every listed run");
    }
    if (state.config.demo) {
      $("start").hidden = false;
      $("start").addEventListener("submit", (e) => {
        e.preventDefault();
        startRun($("outcome").value);
      });
      if (!state.following) {
        await refreshDemoRuns();
        const every = Math.max(1000, Math.min(5000, state.config.pollInterval * 1000));
        setInterval(refreshDemoRuns, every);
      }
    } else if (!state.following) {
      $("watch").hidden = false;
      $("watch").addEventListener("submit", (e) => {
        e.preventDefault();
        const input = $("run-id");
        const id = input.value.trim();
        if (!id) return;
        if (addRun(id, null, { front: true })) {
          const ids = [id, ...urlRuns().filter((r) => r !== id)];
          params.set("runs", ids.join(","));
          history.replaceState(null, "", "?" + params.toString());
          trim();
          connect();
        }
        input.value = "";
      });
    }
    trim();
    renderSummary();
    connect();
  }

  main();
})();
