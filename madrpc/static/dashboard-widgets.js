/* The dashboard's two widgets: a <table> sorted by the heading last clicked, and the
 * req/s chart drawn on a <canvas>. They know nothing of polling or of the page around. */
"use strict";

window.MaDRPC = window.MaDRPC || {};

(() => {
  const { isNumber, format } = window.MaDRPC;
  const HISTORY_S = 300;            // the chart keeps up to five minutes of per-second counts
  const MIN_SPAN_S = 60;            // ... and shows at least one (the first snapshot's)
  const EXPOSED_POINTS = 10;        // the chart's last points, in data-points (for tests)

  const collator = new Intl.Collator(undefined, { numeric: true });

  /** A <table> of rows, sorted by the column whose heading was clicked (again: reversed).
   * A column is {key, title, text, value(row) to sort by, show(row), tip(row), cls(row)}. */
  class SortedTable {
    constructor(table, columns, options) {
      this.table = table;
      this.columns = columns;
      this.idKey = options.idKey;             // the row's name, and the tie-break
      this.idAttr = options.idAttr;           // tr[data-worker-id], tr[data-method]
      this.rowClass = options.rowClass || (() => "");
      this.empty = options.empty;
      this.sort = { key: options.sortKey, descending: true };
      this.rows = [];
      table.tHead.addEventListener("click", (event) => {
        const th = event.target.closest("th[data-sort]");
        if (th) this.sortBy(th.dataset.sort);
      });
      this.renderHead();
    }

    sortBy(key) {
      const column = this.columns.find((c) => c.key === key);
      const again = this.sort.key === key;
      // First click: names A to Z, figures largest first (as top sorts); again: reversed.
      this.sort = { key, descending: again ? !this.sort.descending : !column.text };
      this.renderHead();
      this.renderBody();
    }

    update(rows) {
      this.rows = rows;
      this.renderBody();
    }

    compare(column) {
      const sign = this.sort.descending ? -1 : 1;
      const rank = (v) => (v === null || v === undefined ? -Infinity : v);
      return (a, b) => {
        const va = rank(column.value(a));
        const vb = rank(column.value(b));
        let order = 0;
        if (typeof va === "string" || typeof vb === "string") {
          order = collator.compare(String(va), String(vb));
        } else if (va !== vb) {
          order = va < vb ? -1 : 1;
        }
        return order * sign || collator.compare(String(a[this.idKey]), String(b[this.idKey]));
      };
    }

    renderHead() {
      const tr = document.createElement("tr");
      for (const column of this.columns) {
        const th = document.createElement("th");
        th.dataset.sort = column.key;
        th.scope = "col";
        if (column.text) th.className = "text";
        const button = document.createElement("button");
        button.type = "button";
        const arrow = document.createElement("span");
        arrow.className = "arrow";
        arrow.setAttribute("aria-hidden", "true");
        if (this.sort.key === column.key) {
          th.setAttribute("aria-sort", this.sort.descending ? "descending" : "ascending");
          arrow.textContent = this.sort.descending ? "▼" : "▲";
        }
        button.append(column.title, arrow);
        th.append(button);
        tr.append(th);
      }
      this.table.tHead.replaceChildren(tr);
    }

    renderBody() {
      const column = this.columns.find((c) => c.key === this.sort.key) || this.columns[0];
      const rows = [...this.rows].sort(this.compare(column)).map((row) => this.renderRow(row));
      if (!rows.length) {
        const tr = document.createElement("tr");
        const td = document.createElement("td");
        td.colSpan = this.columns.length;
        td.className = "empty";
        td.textContent = this.empty;
        tr.append(td);
        rows.push(tr);
      }
      this.table.tBodies[0].replaceChildren(...rows);
    }

    renderRow(row) {
      const tr = document.createElement("tr");
      tr.setAttribute(this.idAttr, String(row[this.idKey]));
      tr.className = this.rowClass(row);
      for (const column of this.columns) {
        const td = document.createElement("td");
        const value = column.value(row);
        td.dataset.col = column.key;
        td.dataset.value = value === null || value === undefined ? "" : String(value);
        td.textContent = column.show(row);
        td.className = [column.text ? "text" : "", column.cls ? column.cls(row) : ""].join(" ").trim();
        const tip = column.tip(row);
        if (tip) td.title = tip;
        tr.append(td);
      }
      return tr;
    }
  }

  /** Requests per second over the last HISTORY_S seconds, drawn on a canvas. Points are
   * keyed by the broker's clock: each snapshot's rate_history (complete seconds, oldest
   * first) adds the seconds not seen yet, so the first snapshot seeds the chart and a count,
   * once seen, is kept (the broker's history of older seconds is not always complete). */
  class RateChart {
    constructor(canvas) {
      this.canvas = canvas;
      this.points = new Map();   // broker second -> requests in it
      this.latest = null;
      new ResizeObserver(() => this.draw()).observe(canvas);
    }

    add(snapshot) {
      const history = snapshot.rate_history || [];
      if (!isNumber(snapshot.time)) return;
      const last = Math.floor(snapshot.time) - 1;   // history's last entry: a complete second
      if (this.latest !== null && last < this.latest - 1) this.points.clear();  // another clock
      history.forEach((count, i) => {
        const second = last - (history.length - 1 - i);
        if (!this.points.has(second)) this.points.set(second, count);
      });
      this.latest = Math.max(this.latest ?? last, last);
      for (const second of this.points.keys()) {
        if (second <= this.latest - HISTORY_S) this.points.delete(second);
      }
      const recent = [];
      for (let s = this.latest - EXPOSED_POINTS + 1; s <= this.latest; s++) {
        recent.push(this.points.has(s) ? this.points.get(s) : "");
      }
      this.canvas.dataset.points = recent.join(",");
      const peak = Math.max(0, ...this.points.values());
      this.canvas.setAttribute("aria-label", `Requests per second, ${this.spanText()}: ` +
        `now ${this.points.get(this.latest) ?? 0}, peak ${peak}`);
      this.draw();
    }

    /** Seconds shown: those known, from MIN_SPAN_S to HISTORY_S. */
    span() {
      const earliest = Math.min(...this.points.keys());
      return Math.max(MIN_SPAN_S, Math.min(HISTORY_S, this.latest - earliest + 1));
    }

    /** "last 72 s", "last 5 min". */
    spanText() {
      const seconds = this.span();
      return `last ${seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`}`;
    }

    draw() {
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const [width, height] = [canvas.clientWidth, canvas.clientHeight];
      if (!width || !height) return;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      const style = getComputedStyle(canvas);
      const color = (name) => style.getPropertyValue(name).trim();
      const top = niceCeiling(Math.max(0, ...this.points.values()));
      const span = this.span();
      const box = { left: 48, right: width - 8, top: 8, bottom: height - 20 };
      const x = (second) => box.left + (box.right - box.left) *
        (1 - (this.latest - second) / (span - 1));
      const y = (value) => box.bottom - (box.bottom - box.top) * (value / top);

      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = color("--chart-text");
      ctx.strokeStyle = color("--chart-grid");
      ctx.lineWidth = 1;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (const value of [0, top / 2, top]) {
        const gy = Math.round(y(value)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(box.left, gy);
        ctx.lineTo(box.right, gy);
        ctx.stroke();
        ctx.fillText(format.axis(value), box.left - 6, gy);
      }
      if (this.latest === null) return;
      ctx.textBaseline = "alphabetic";
      const step = span <= 90 ? 15 : span <= 180 ? 30 : 60;
      for (let ago = Math.floor((span - 1) / step) * step; ago >= 0; ago -= step) {
        ctx.textAlign = ago ? "center" : "right";
        ctx.fillText(ago ? "-" + format.ago(ago) : "now",
          ago ? x(this.latest - ago) : box.right, height - 4);
      }
      this.drawLine(ctx, x, y, box.bottom, span, color);
    }

    /** One path per run of consecutive seconds: a gap (no data) stays a gap. */
    drawLine(ctx, x, y, bottom, span, color) {
      const runs = [];
      for (let s = this.latest - span + 1; s <= this.latest; s++) {
        if (!this.points.has(s)) continue;
        if (!runs.length || !this.points.has(s - 1)) runs.push([]);
        runs[runs.length - 1].push([x(s), y(this.points.get(s))]);
      }
      ctx.strokeStyle = color("--chart-line");
      ctx.fillStyle = color("--chart-fill");
      ctx.lineWidth = 1.5;
      for (const run of runs) {
        ctx.beginPath();
        run.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
        ctx.stroke();
        ctx.lineTo(run[run.length - 1][0], bottom);
        ctx.lineTo(run[0][0], bottom);
        ctx.closePath();
        ctx.fill();
      }
    }
  }

  /** The smallest round figure (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten) at or
   * above `value`, at least 1: the chart's top. */
  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((step) => step * power)
      .find((limit) => limit >= value);
  }

  Object.assign(window.MaDRPC, { SortedTable, RateChart });
})();
