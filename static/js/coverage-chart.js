// Coverage page charts, drawn from the JSON block the page carries (#coverage-data).
// No inline script: CSP allows 'self' only; the data block is JSON, never executed.
(function () {
  "use strict";

  var COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c",
    "#5f3dc4", "#66a80f", "#495057"];
  var BASE = { responsive: true, maintainAspectRatio: false, animation: false };

  function histogram(canvas, h, label) {
    var labels = (h.edges || []).slice(0, -1).map(function (edge, i) {
      return Math.round(edge) + "–" + Math.round(h.edges[i + 1]);
    });
    return new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: label, data: h.counts || [], backgroundColor: COLORS[0] }] },
      options: BASE,
    });
  }

  function map(canvas, m) {
    var byCluster = {};
    (m.x || []).forEach(function (x, i) {
      var c = m.cluster[i];
      (byCluster[c] = byCluster[c] || []).push({ x: x, y: m.y[i], text: m.text[i] });
    });
    var sets = Object.keys(byCluster).map(function (c) {
      return { label: "cluster " + c, data: byCluster[c], pointRadius: 2,
        backgroundColor: COLORS[Number(c) % COLORS.length] };
    });
    return new window.Chart(canvas, {
      type: "scatter",
      data: { datasets: sets },
      options: Object.assign({}, BASE, {
        plugins: { tooltip: { callbacks: { label: function (item) { return item.raw.text; } } } },
      }),
    });
  }

  function draw() {
    var block = document.getElementById("coverage-data");
    if (!block || !window.Chart) return;
    var data = JSON.parse(block.textContent);
    var charts = {
      map: function (c) { return map(c, data.map); },
      clusters: function (c) {
        return new window.Chart(c, {
          type: "bar",
          data: { labels: data.clusters, datasets: [
            { label: "% of prompts", data: data.cluster_share, backgroundColor: COLORS[0] },
            { label: "% of judged pairs", data: data.cluster_pair_share, backgroundColor: COLORS[1] },
          ] },
          options: BASE,
        });
      },
      prompt_chars: function (c) { return histogram(c, data.prompt_chars, "prompts"); },
      response_chars: function (c) { return histogram(c, data.response_chars, "responses"); },
      length_difference: function (c) { return histogram(c, data.length_difference, "pairs"); },
    };
    document.querySelectorAll("[data-coverage-chart]").forEach(function (canvas) {
      var make = charts[canvas.getAttribute("data-coverage-chart")];
      if (make) make(canvas);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
