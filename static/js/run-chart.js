// Training-run charts: loss (left axis) and reward accuracy (right axis, 0..1) by step.
// Every <canvas data-metrics-url="..."> gets a chart fed from that JSON endpoint
// ({"status": ..., "points": [{"step", "loss", "reward_accuracy", ...}]}), refreshed every
// 3 s while the run is queued or running. No inline script: CSP allows 'self' only.
(function () {
  "use strict";

  var REFRESH_MS = 3000;
  var ACTIVE = { queued: true, running: true };

  function numberOrNull(value) {
    return typeof value === "number" && isFinite(value) ? value : null;
  }

  function series(points, key) {
    return points.map(function (point) { return numberOrNull(point[key]); });
  }

  function createChart(canvas) {
    return new window.Chart(canvas, {
      type: "line",
      data: {
        labels: [],
        datasets: [
          {
            label: "Loss",
            data: [],
            yAxisID: "loss",
            borderColor: "#3b5bdb",
            backgroundColor: "rgba(59, 91, 219, 0.15)",
            borderWidth: 2,
            pointRadius: 0,
            tension: 0.2,
            spanGaps: true,
          },
          {
            label: "Reward accuracy",
            data: [],
            yAxisID: "accuracy",
            borderColor: "#2b8a3e",
            backgroundColor: "rgba(43, 138, 62, 0.15)",
            borderWidth: 2,
            pointRadius: 0,
            tension: 0.2,
            spanGaps: true,
          },
        ],
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { title: { display: true, text: "Step" } },
          loss: {
            type: "linear",
            position: "left",
            title: { display: true, text: "Loss" },
          },
          accuracy: {
            type: "linear",
            position: "right",
            min: 0,
            max: 1,
            title: { display: true, text: "Reward accuracy" },
            grid: { drawOnChartArea: false },
          },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function attach(canvas) {
    if (canvas.dataset.chartAttached === "1" || typeof window.Chart !== "function") {
      return;
    }
    canvas.dataset.chartAttached = "1";
    var url = canvas.dataset.metricsUrl;
    var chart = createChart(canvas);
    var timer = null;

    function schedule() {
      if (timer === null) {
        timer = window.setTimeout(function () { timer = null; refresh(); }, REFRESH_MS);
      }
    }

    function draw(points) {
      chart.data.labels = points.map(function (point, index) {
        var step = numberOrNull(point.step);
        return step === null ? index + 1 : step;
      });
      chart.data.datasets[0].data = series(points, "loss");
      chart.data.datasets[1].data = series(points, "reward_accuracy");
      chart.update();
    }

    function refresh() {
      if (!canvas.isConnected) {
        return; // the page moved on; stop polling
      }
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("metrics request failed: " + response.status);
          }
          return response.json();
        })
        .then(function (data) {
          draw(Array.isArray(data.points) ? data.points : []);
          canvas.dataset.runStatus = String(data.status || "");
          if (ACTIVE[data.status]) {
            schedule();
          }
        })
        .catch(function () {
          // A failed request (network blip, server restart) is retried; the run goes on.
          schedule();
        });
    }

    refresh();
  }

  function attachAll(root) {
    var scope = root && root.querySelectorAll ? root : document;
    scope.querySelectorAll("canvas[data-metrics-url]").forEach(attach);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { attachAll(document); });
  } else {
    attachAll(document);
  }
  // Canvases that htmx swaps in later get their chart too.
  document.addEventListener("htmx:load", function (event) { attachAll(event.target); });
})();
