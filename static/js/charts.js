// Training curves with Chart.js (installed from npm into /static/vendor): the live charts of a job page,
// refreshed whenever htmx re-polls the job's live panel, and the comparison chart of several runs.
(function () {
  "use strict";

  const GROUPS = [
    ["KL", /(^|[^a-z])kl([^a-z]|$)|approxkl/i],
    ["Accuracy", /acc|auroc/i],
    ["Reward", /reward|score/i],
    ["Loss", /loss/i],
    ["Throughput", /per_second|step_time/i],
    ["Learning rate", /learning_rate|(^|\/)lr$/i],
    ["Gradient norm", /grad_norm/i],
  ];
  const COLORS = ["#b3261e", "#0b57d0", "#1e7b34", "#9a6700", "#6a1b9a", "#00838f", "#5d4037", "#c2185b"];

  // A metric of no known family gets a panel of its own: metrics of unrelated scales (a gradient norm
  // of 1,300 beside a margin of 0.2) on one axis would flatten all but the largest.
  function groupOf(name) {
    for (const [group, pattern] of GROUPS) {
      if (pattern.test(name)) return group;
    }
    return name;
  }

  function lineChart(canvas, title) {
    return new window.Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        parsing: false,
        responsive: true,
        maintainAspectRatio: false,
        elements: { point: { radius: 0 } },
        interaction: { mode: "nearest", intersect: false },
        scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        plugins: { title: { display: Boolean(title), text: title }, legend: { position: "bottom" } },
      },
    });
  }

  function addDataset(chart, label) {
    const color = COLORS[chart.data.datasets.length % COLORS.length];
    const dataset = { label: label, data: [], borderColor: color, backgroundColor: color, borderWidth: 1.5 };
    chart.data.datasets.push(dataset);
    return dataset;
  }

  // Insert or replace the point at `step`, keeping the series ordered by step.
  function upsert(data, step, value) {
    let i = data.length;
    while (i > 0 && data[i - 1].x > step) i--;
    if (i > 0 && data[i - 1].x === step) data[i - 1].y = value;
    else data.splice(i, 0, { x: step, y: value });
  }

  function JobCharts(container) {
    this.container = container;
    this.url = container.dataset.metricsUrl;
    this.cursor = 0;
    this.points = 0;
    this.charts = {};
    this.series = {};
    this.busy = false;
    this.again = false;
  }

  JobCharts.prototype.chartFor = function (group) {
    if (!this.charts[group]) {
      const box = document.createElement("div");
      box.className = "chart-box";
      box.dataset.group = group;
      const canvas = document.createElement("canvas");
      canvas.setAttribute("aria-label", group + " curves");
      box.appendChild(canvas);
      const empty = this.container.querySelector(".charts-empty");
      if (empty) empty.remove();
      this.container.appendChild(box);
      this.charts[group] = lineChart(canvas, group);
    }
    return this.charts[group];
  };

  JobCharts.prototype.add = function (points) {
    const touched = new Set();
    for (const [name, step, value] of points) {
      const chart = this.chartFor(groupOf(name));
      if (!this.series[name]) this.series[name] = addDataset(chart, name);
      upsert(this.series[name].data, step, value);
      touched.add(chart);
    }
    touched.forEach(function (chart) { chart.update("none"); });
    this.points += points.length;
    this.container.dataset.points = String(this.points);
  };

  JobCharts.prototype.refresh = function () {
    if (this.busy) {
      this.again = true; // asked while a fetch is in flight: fetch once more after it, never drop it
      return;
    }
    this.busy = true;
    this.again = false;
    const self = this;
    fetch(this.url + "?after=" + this.cursor, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("metrics: HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        self.cursor = body.cursor;
        if (body.points.length) self.add(body.points);
      })
      .catch(function (error) { console.error(error); })
      .finally(function () {
        self.busy = false;
        if (self.again) self.refresh();
      });
  };

  function startJobCharts() {
    const container = document.querySelector("[data-job-charts]");
    if (!container) return;
    const charts = new JobCharts(container);
    charts.refresh();
    // The live panel is the page's only htmx swap: it is re-polled while the job runs, and each swap
    // (the last one included, which carries the final status) pulls the points logged since the last.
    document.body.addEventListener("htmx:afterSwap", function () { charts.refresh(); });
  }

  function startCompareChart() {
    const canvas = document.querySelector("[data-compare-chart]");
    const source = document.getElementById("compare-data");
    if (!canvas || !source) return;
    const spec = JSON.parse(source.textContent);
    const chart = lineChart(canvas, "");
    spec.series.forEach(function (series) {
      const dataset = addDataset(chart, series.label);
      series.points.forEach(function (point) { dataset.data.push({ x: point[0], y: point[1] }); });
    });
    chart.options.scales.y = { title: { display: true, text: spec.metrics.join(", ") } };
    chart.update();
    canvas.dataset.series = String(spec.series.length);
  }

  document.addEventListener("DOMContentLoaded", function () {
    startJobCharts();
    startCompareChart();
  });
})();
