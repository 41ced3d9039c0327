// gpurun dashboard: live refresh (short polling of server-rendered, escaped fragments) and the charts.
// No inline script (the Content-Security-Policy forbids it); data comes in <script type="application/json">.
"use strict";
(function () {
  const pollMs = Number(document.body.dataset.pollMs || 2000);
  const charts = {};
  window.gpurunCharts = charts;  // the tests read what is drawn from here

  function timelineWidths() {
    // Each phase's share of the run's time; a phase of a few milliseconds still shows a sliver.
    const segs = Array.from(document.querySelectorAll(".timeline .seg"));
    const total = segs.reduce((sum, seg) => sum + (Number(seg.dataset.seconds) || 0), 0) || 1;
    for (const seg of segs) {
      seg.style.flexGrow = String(Math.max((Number(seg.dataset.seconds) || 0) / total, 0.02));
    }
  }

  const COLORS = { train: "#0b63c5", val: "#e07b00", tokens: "#1a7f37" };
  const SPECS = {
    steps: { x: "step", y: "loss", series: [["train loss", "train", COLORS.train], ["val loss", "val", COLORS.val]] },
    usd: { x: "USD spent", y: "loss", series: [["train loss", "train_usd", COLORS.train], ["val loss", "val_usd", COLORS.val]] },
    tokens: { x: "step", y: "tokens/s", series: [["tokens/s", "tokens", COLORS.tokens]] },
  };

  function datasets(spec, data) {
    return spec.series.map(([label, key, color]) => ({
      label, borderColor: color, backgroundColor: color, showLine: true, borderWidth: 1.5,
      pointRadius: (data[key] || []).length > 200 ? 0 : 2,
      data: (data[key] || []).map(([x, y]) => ({ x, y })),
    }));
  }

  function drawCharts(data) {
    if (!window.Chart) return;
    for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
      const name = canvas.dataset.chart, spec = SPECS[name];
      if (charts[name]) {
        const fresh = datasets(spec, data);
        charts[name].data.datasets.forEach((ds, i) => { ds.data = fresh[i].data; ds.pointRadius = fresh[i].pointRadius; });
        charts[name].update("none");
        continue;
      }
      charts[name] = new window.Chart(canvas, {
        type: "scatter",
        data: { datasets: datasets(spec, data) },
        options: {
          animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
          scales: { x: { type: "linear", title: { display: true, text: spec.x } },
                    y: { type: "linear", title: { display: true, text: spec.y } } },
          plugins: { legend: { position: "bottom" } },
        },
      });
    }
  }

  function pollRows(tbody) {
    setInterval(async () => {
      try {
        const res = await fetch(tbody.dataset.live, { credentials: "same-origin" });
        if (res.ok) { tbody.innerHTML = await res.text(); }
      } catch (e) { /* the server stopped: keep what is shown */ }
    }, pollMs);
  }

  function pollRun(head) {
    const timer = setInterval(async () => {
      try {
        const res = await fetch(head.dataset.live, { credentials: "same-origin" });
        if (!res.ok) return;
        const live = await res.json();
        head.innerHTML = live.head;
        if (live.curves) drawCharts(live.curves);
        if (!live.open) clearInterval(timer);
      } catch (e) { /* keep what is shown */ }
    }, pollMs);
  }

  document.addEventListener("DOMContentLoaded", () => {
    timelineWidths();
    const block = document.getElementById("curves");
    if (block) drawCharts(JSON.parse(block.textContent || "{}"));
    const rows = document.querySelector("tbody[data-live]");
    if (rows) pollRows(rows);
    const head = document.querySelector("#head[data-live]");
    if (head) pollRun(head);
  });
})();
