/* The dashboard's readable figures (1.2k, 12 ms, 180 MiB) and what a worker is doing,
 * as `madrpc top` tells it (madrpc/top_view.py). Pure: values in, text out. */
"use strict";

window.MaDRPC = window.MaDRPC || {};

(() => {
  const VERSION_CHARS = 7;          // a script version (a content hash), shortened as git does
  const DASH = "–";
  const COUNT_UNITS = [[1, ""], [1e3, "k"], [1e6, "M"], [1e9, "G"], [1e12, "T"]];
  const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"].map((unit, i) => [1024 ** i, " " + unit]);
  const MS_UNITS = [[1e-3, " µs"], [1, " ms"], [1e3, " s"], [6e4, " min"], [3.6e6, " h"]];

  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

  /** `value` in the largest unit it reaches, with a decimal below 10: 1.2k, 12k, 180 MiB
   * (1.0k, not 1k, so that 1,049 does not read as a round thousand). */
  function withUnit(value, units) {
    let i = 0;
    while (i + 1 < units.length && Math.abs(value) >= units[i + 1][0]) i++;
    for (;;) {
      const [factor, suffix] = units[i];
      const scaled = value / factor;
      let text = scaled.toFixed(1);
      if (Math.abs(Number(text)) >= 10) text = scaled.toFixed(0);   // 9.99k is 10k, not 10.0k
      if (factor === 1) text = text.replace(/\.0$/, "");
      if (Math.abs(Number(text)) < 1000 || i + 1 === units.length) return text + suffix;
      i++;   // rounding reached the next unit: 999.96k is 1.0M
    }
  }

  const format = {
    count: (n) => (isNumber(n) ? withUnit(Math.round(n), COUNT_UNITS) : DASH),
    rate: (r) => (!isNumber(r) ? DASH : r < 10 ? r.toFixed(1).replace(/\.0$/, "")
      : withUnit(r, COUNT_UNITS)),
    ms: (ms) => (isNumber(ms) ? withUnit(ms, MS_UNITS) : DASH),
    bytes: (b) => (isNumber(b) ? withUnit(b, BYTE_UNITS) : DASH),
    percent: (p) => (isNumber(p) ? p.toFixed(p < 10 ? 1 : 0).replace(/\.0$/, "") + "%" : DASH),
    seconds: (s) => (!isNumber(s) ? DASH : s < 60 ? s.toFixed(s < 10 ? 1 : 0) + " s"
      : format.duration(s)),
    duration(s) {
      if (!isNumber(s)) return DASH;
      const whole = Math.floor(s);
      const [d, h, m, sec] = [whole / 86400, (whole % 86400) / 3600, (whole % 3600) / 60,
        whole % 60].map(Math.floor);
      const two = (n) => String(n).padStart(2, "0");
      if (d) return `${d}d ${two(h)}h`;
      if (h) return `${h}h ${two(m)}m`;
      return m ? `${m}m ${two(sec)}s` : `${sec}s`;
    },
    version: (v) => (v ? String(v).slice(0, VERSION_CHARS) : DASH),
    /** An axis label, exact to two decimals of its unit: 750, 1.25k, 2M. */
    axis(value) {
      const [factor, suffix] = [...COUNT_UNITS].reverse().find(([f]) => value >= f) || [1, ""];
      return String(Number((value / factor).toFixed(2))) + suffix;
    },
    /** A time ago on an axis: 45 s, 1 min, 1m 15s. */
    ago(seconds) {
      if (seconds < 60) return `${seconds} s`;
      const [m, s] = [Math.floor(seconds / 60), seconds % 60];
      return s ? `${m}m ${s}s` : `${m} min`;
    },
  };

  /** As `madrpc top` says: draining, paused, lost (two heartbeats missed), late, busy, idle. */
  function workerState(w) {
    const missed = w.missed_heartbeats || 0;
    if (w.draining) return "draining";
    if (w.paused) return "paused";
    if (missed >= 2) return "lost";
    if (missed >= 1) return "late";
    return w.busy || w.in_flight ? "busy" : "idle";
  }

  /** bad (circuit not closed, or silent), warn (a missed heartbeat, errors), else ok. */
  function workerHealth(w) {
    const circuit = (w.circuit && w.circuit.state) || "closed";
    const missed = w.missed_heartbeats || 0;
    if (circuit !== "closed" || missed >= 2) return "bad";
    return missed >= 1 || w.errors > 0 ? "warn" : "ok";
  }

  /** closed, open, half-open. */
  const circuitState = (w) => String((w.circuit && w.circuit.state) || DASH).replace("_", "-");

  Object.assign(window.MaDRPC, { DASH, isNumber, format, workerState, workerHealth, circuitState });
})();
