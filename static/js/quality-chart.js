// Quality page charts, drawn from the JSON block the page carries (#quality-data).
// No inline script: CSP allows 'self' only; the data block is JSON, never executed.
(function () {
  "use strict";

  var COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9"];

  // Agreement (α) runs from -1 (systematic disagreement) to 1: its axis goes below 0 when a
  // value does; shares stay on 0 to 100.
  function bars(canvas, labels, sets, max, signed) {
    return new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: sets.map(function (set, i) {
          return { label: set[0], data: set[1], backgroundColor: COLORS[i % COLORS.length] };
        }),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { y: signed ? { suggestedMin: 0, max: max } : { min: 0, max: max } },
      },
    });
  }

  function draw() {
    var block = document.getElementById("quality-data");
    if (!block || !window.Chart) return;
    var data = JSON.parse(block.textContent);
    var charts = {
      bias: function (c) { return bars(c, data.annotators, [["Left chosen %", data.left], ["Longer chosen %", data.longer]], 100); },
      quality: function (c) { return bars(c, data.annotators, [["Gold right %", data.gold], ["With majority %", data.majority]], 100); },
      guidelines: function (c) { return bars(c, data.guidelines, [["α", data.guideline_alpha]], 1, true); },
      rounds: function (c) { return bars(c, data.rounds, [["α", data.round_alpha]], 1, true); },
    };
    document.querySelectorAll("[data-quality-chart]").forEach(function (canvas) {
      var make = charts[canvas.getAttribute("data-quality-chart")];
      if (make) make(canvas);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
