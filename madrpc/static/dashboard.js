/* The MaDRPC dashboard: the grid at a glance, as `madrpc top` shows it.
 *
 * Polls api/metrics (relative, so the page works behind a path prefix) once a second,
 * one request at a time, and shows the broker's totals, the req/s chart and the tables
 * of workers and methods (dashboard-widgets.js, with figures from dashboard-format.js).
 * When the broker does not answer, a banner says so and the last data stays, greyed out;
 * when the gateway wants an API key, a form asks for it and keeps it for the session.
 * Plain JavaScript, no dependencies: the gateway's Content-Security-Policy runs nothing
 * inline, so all of it is in these files.
 */
"use strict";

(() => {
  const { DASH, isNumber, format, workerState, workerHealth, circuitState, SortedTable,
    RateChart } = window.MaDRPC;
  const POLL_INTERVAL_MS = 1000;
  const FETCH_TIMEOUT_MS = 5000;
  const KEY_STORAGE = "madrpc.apiKey";

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ table columns

  /** A figure's column: sorts by the raw number, shows it readable, the exact one as a tip. */
  function figure(key, title, show, extra = {}) {
    return {
      key, title, text: false,
      value: (row) => (isNumber(row[key]) ? row[key] : null),
      show: (row) => show(row[key]),
      tip: (row) => (isNumber(row[key]) ? String(row[key]) : ""),
      ...extra,
    };
  }

  /** A column of text (a name, a state). */
  function label(key, title, value, extra = {}) {
    return { key, title, text: true, value, show: value, tip: () => "", ...extra };
  }

  const byCode = (counts) => Object.entries(counts || {}).map(([c, n]) => `${c}: ${n}`).join(", ");
  const errorClass = (row) => (row.errors > 0 ? "errors-nonzero" : "");
  const versionText = (w) => (w.script_error ? "error" : format.version(w.script_version));

  /** As `madrpc top`'s: WORKER INFL REQ/S REQS ERR P99 CPU% RSS HB STATE CIRCUIT VERSION. */
  const WORKER_COLUMNS = [
    label("id", "WORKER", (w) => String(w.id), {
      tip: (w) => `${w.host || "?"} pid ${w.pid ?? "?"} · ${w.contexts ?? "?"} contexts, ` +
        `${w.busy ?? 0} busy · credit ${w.credit ?? "?"}`,
    }),
    figure("in_flight", "INFL", format.count),
    figure("req_per_s", "REQ/S", format.rate),
    figure("requests", "REQS", format.count),
    figure("errors", "ERR", format.count, { cls: errorClass }),
    figure("p99_ms", "P99", format.ms, {
      tip: (w) => `p50 ${format.ms(w.p50_ms)} · p95 ${format.ms(w.p95_ms)} · ` +
        `p99 ${format.ms(w.p99_ms)}`,
    }),
    figure("cpu_percent", "CPU%", format.percent),
    figure("rss_bytes", "RSS", format.bytes),
    figure("heartbeat_age_s", "HB", format.seconds, {
      tip: (w) => `last heartbeat ${w.heartbeat_age_s} s ago, ` +
        `${w.missed_heartbeats || 0} missed`,
    }),
    label("state", "STATE", workerState, { cls: (w) => "state-" + workerState(w) }),
    label("circuit", "CIRCUIT", circuitState, { cls: (w) => "circuit-" + circuitState(w) }),
    label("version", "VERSION", versionText, {
      cls: (w) => (w.script_error ? "script-error" : ""),
      tip: (w) => w.script_error ||
        `${w.script_version || "no version"}${w.deployed ? " (deployed)" : " (its --script)"}`,
    }),
  ];

  const METHOD_COLUMNS = [
    label("name", "METHOD", (m) => String(m.name)),
    figure("requests", "REQS", format.count),
    figure("errors", "ERR", format.count, { cls: errorClass, tip: (m) => byCode(m.errors_by_code) }),
    figure("p50_ms", "P50", format.ms),
    figure("p99_ms", "P99", format.ms),
    figure("workers", "WORKERS", format.count),
    figure("queued", "QUEUED", format.count),
  ];

  // ------------------------------------------------------------------ showing a snapshot

  const workers = new SortedTable($("workers"), WORKER_COLUMNS, {
    idKey: "id", idAttr: "data-worker-id", sortKey: "req_per_s",
    rowClass: (w) => "health-" + workerHealth(w), empty: "no workers registered",
  });
  const methods = new SortedTable($("methods"), METHOD_COLUMNS, {
    idKey: "name", idAttr: "data-method", sortKey: "requests", empty: "no methods yet",
  });
  const chart = new RateChart($("rate-chart"));
  let lastGood = null;      // performance.now() of the last snapshot shown

  /** Text in element `id`, the raw figure in its data-value, details in its tooltip. */
  function setText(id, text, value, tip) {
    const element = $(id);
    element.textContent = text;
    if (value !== undefined) element.dataset.value = value === null ? "" : String(value);
    element.title = tip || "";
    return element;
  }

  function setStatus(state, text) {
    const badge = $("status");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  /** [shown, tooltip]: the grid's deployed version, else the one the workers all run. */
  function scriptVersion(metrics) {
    if (metrics.script_version) return [format.version(metrics.script_version),
      `${metrics.script_version} (deployed)`];
    const versions = [...new Set((metrics.workers || []).map((w) => w.script_version)
      .filter(Boolean))];
    if (versions.length > 1) return [`${versions.length} versions`, versions.join(", ")];
    return versions.length ? [format.version(versions[0]), `${versions[0]} (the workers')`]
      : [DASH, ""];
  }

  function showHeader(reply, metrics) {
    setText("broker-endpoint", reply.broker || DASH);
    if (!metrics) return;
    const broker = metrics.broker || {};
    setText("broker-run", broker.instance || DASH, broker.instance || null,
      broker.pid ? `broker pid ${broker.pid}` : "");
    setText("broker-uptime", format.duration(broker.uptime_s), broker.uptime_s ?? null);
    const [version, tip] = scriptVersion(metrics);
    setText("script-version", version, undefined, tip);
  }

  function showTotals(metrics) {
    const b = metrics.broker || {};
    const latency = b.latency || {};
    const count = (id, n, tip) => setText(id, format.count(n), n ?? null,
      tip || (isNumber(n) ? String(n) : ""));
    count("total-requests", b.requests);
    setText("req-rate", format.rate(b.req_per_s), b.req_per_s ?? null,
      "mean over the last few complete seconds");
    count("total-in-flight", b.in_flight);
    count("total-queued", b.queue_depth);
    count("total-workers", b.workers);
    count("total-contexts", b.contexts);
    count("total-errors", b.errors, byCode(b.errors_by_code)).classList.toggle("bad", b.errors > 0);
    setText("latency-p50", format.ms(latency.p50_ms), latency.p50_ms ?? null);
    setText("latency-p99", format.ms(latency.p99_ms), latency.p99_ms ?? null,
      `p95 ${format.ms(latency.p95_ms)} · mean ${format.ms(latency.mean_ms)}`);
  }

  function showGateway(gateway) {
    if (!gateway) return;
    const responses = Object.entries(gateway.responses || {})
      .map(([status, n]) => `${status}: ${format.count(n)}`).join(", ");
    $("gateway-info").textContent = `gateway up ${format.duration(gateway.uptime_s)} · ` +
      `${gateway.in_flight} calls in flight · HTTP responses ${responses || "none yet"}`;
  }

  function showData(reply) {
    const metrics = reply.metrics;
    lastGood = performance.now();
    document.body.classList.remove("stale", "no-data");
    $("banner").hidden = true;
    $("key-form").hidden = true;
    setStatus("live", "live");
    showHeader(reply, metrics);
    showTotals(metrics);
    chart.add(metrics);
    $("chart-span").textContent = chart.spanText();
    workers.update(metrics.workers || []);
    $("workers-hint").textContent = `${(metrics.workers || []).length} · click a heading to sort`;
    methods.update(Object.entries(metrics.methods || {}).map(([name, m]) => ({ ...m, name })));
    showGateway(reply.gateway);
  }

  function showUnreachable(error, reply) {
    document.body.classList.add("stale");
    $("banner").hidden = false;
    $("banner-error").textContent = error;
    setStatus("unreachable", "broker unreachable");
    if (reply) {
      showHeader(reply, null);
      showGateway(reply.gateway);
    }
    showAge();
  }

  function showAge() {
    if ($("banner").hidden) return;
    $("banner-age").textContent = lastGood === null ? "no data yet"
      : `last update ${format.duration((performance.now() - lastGood) / 1000)} ago`;
  }

  // ------------------------------------------------------------------ the API key

  /** The key, kept for this tab's session (in memory too, should storage be off). */
  const apiKey = {
    typed: null,
    get() {
      try { return sessionStorage.getItem(KEY_STORAGE) || this.typed; } catch { return this.typed; }
    },
    set(key) {
      this.typed = key;
      try { sessionStorage.setItem(KEY_STORAGE, key); } catch { /* kept in memory only */ }
    },
    clear() {
      this.typed = null;
      try { sessionStorage.removeItem(KEY_STORAGE); } catch { /* nothing kept */ }
    },
  };

  function askForKey(refused) {
    apiKey.clear();
    setStatus("key", "API key needed");
    if (lastGood !== null) document.body.classList.add("stale");
    $("banner").hidden = true;
    $("key-message").textContent = refused ? "That key was refused: check it and try again." : "";
    if ($("key-form").hidden) {
      $("key-form").hidden = false;
      $("api-key").focus();
    }
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    apiKey.set(key);
    $("api-key").value = "";
    $("key-form").hidden = true;
    setStatus("connecting", "connecting…");
    poller.now();
  });

  // ------------------------------------------------------------------ polling

  /** One api/metrics request, shown; false when polling should wait (for an API key). */
  async function refresh() {
    const key = apiKey.get();
    const headers = { Accept: "application/json" };
    if (key) headers["X-API-Key"] = key;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    let response;
    let body = null;
    try {
      response = await fetch("api/metrics", { headers, cache: "no-store", signal: controller.signal });
      body = await response.json().catch(() => null);
    } catch (error) {
      showUnreachable(error.name === "AbortError"
        ? `the gateway did not answer within ${FETCH_TIMEOUT_MS / 1000} s`
        : `cannot reach the gateway (${error.message})`);
      return true;
    } finally {
      clearTimeout(timer);
    }
    if (response.status === 401) {
      askForKey(Boolean(key));
      return false;
    }
    if (response.ok && body && body.metrics) {
      showData(body);
    } else {
      // /api/metrics says why in `error`; the gateway's other errors are JSON-RPC errors.
      const detail = body && body.error;
      showUnreachable(typeof detail === "string" ? detail : (detail && detail.message) ||
        `the gateway answered HTTP ${response.status}`, body);
    }
    return true;
  }

  /** Polls every POLL_INTERVAL_MS, never two requests at once. */
  const poller = {
    timer: null,
    busy: false,
    again: false,
    now() {
      if (this.busy) {
        this.again = true;
        return;
      }
      clearTimeout(this.timer);
      this.run();
    },
    async run() {
      this.busy = true;
      const started = performance.now();
      let next = true;
      try {
        next = await refresh();
      } catch (error) {
        showUnreachable(`the dashboard failed: ${error.message}`);
      } finally {
        this.busy = false;
      }
      if (this.again || next) {
        const wait = this.again ? 0 : POLL_INTERVAL_MS - (performance.now() - started);
        this.again = false;
        this.timer = setTimeout(() => this.now(), Math.max(0, wait));
      }
    },
  };

  setInterval(showAge, 1000);
  poller.now();
})();
