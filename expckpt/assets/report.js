// expckpt report --html: draws the checkpoint tree, the detail panel and one chart per metric.
// Every string in the data came from Git: it enters the DOM only as text (textContent), never as HTML.
(function () {
  "use strict";
  var started = performance.now();
  var data = JSON.parse(document.getElementById("expckpt-data").textContent);
  var points = data.points, runs = data.runs;
  var pinned = null;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function fmt(v) {
    if (typeof v === "string") return v; // "nan", "inf", "-inf"
    return Number.isInteger(v) ? String(v) : Number(v).toPrecision(5).replace(/\.?0+$/, "");
  }
  function size(n) {
    var units = ["B", "kB", "MB", "GB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function runTitle(run) {
    var text = run.exp;
    if (run.source_commit) {
      text += (run.link === "initialized" ? " (init from " : " (from ") +
        (run.source || run.source_commit.slice(0, 7)) + ")";
    }
    return text;
  }

  // ---------------------------------------------------------------- detail panel
  function row(table, key, value) {
    var tr = el("tr");
    tr.appendChild(el("th", null, key));
    tr.appendChild(el("td", null, value));
    table.appendChild(tr);
  }
  function copy(text, button) {
    function done() { button.textContent = "copied"; }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else { fallback(); }
    function fallback() {
      var area = el("textarea"); area.value = text; document.body.appendChild(area);
      area.select(); try { document.execCommand("copy"); done(); } catch (e) { /* select it by hand */ }
      area.remove();
    }
  }
  function showDetail(i, pin) {
    if (pinned !== null && !pin) return;
    if (pin) pinned = (pinned === i ? null : i);
    var p = points[i], run = runs[p.run], panel = document.getElementById("detail");
    panel.replaceChildren();
    panel.appendChild(el("h2", null, p.name));
    var table = el("table");
    row(table, "experiment", runTitle(run));
    row(table, "step", p.step);
    row(table, "commit", p.commit);
    row(table, "created", new Date(p.time * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC");
    row(table, "size", size(p.size));
    row(table, "kept by", p.kept_by.length ? p.kept_by.join(", ") : "- (outside policy: gc would remove it)");
    if (p.marks.length) row(table, "marks", p.marks.join(", "));
    Object.keys(p.metrics).sort().forEach(function (m) { row(table, m, fmt(p.metrics[m])); });
    panel.appendChild(table);
    var diff = Object.keys(run.params_diff);
    panel.appendChild(el("h3", null, diff.length ? "params changed since " + run.params_against
                                                  : "params: as " + run.params_against));
    if (diff.length) {
      var params = el("table", "params");
      diff.forEach(function (k) {
        var pair = run.params_diff[k];
        row(params, k, (pair[0] === null ? "(unset)" : pair[0]) + " → " + (pair[1] === null ? "(unset)" : pair[1]));
      });
      panel.appendChild(params);
    }
    var command = el("div", "command");
    var code = el("code", null, p.apply);
    code.id = "apply-command";
    var button = el("button", null, "copy");
    button.type = "button";
    button.addEventListener("click", function () { copy(p.apply, button); });
    command.appendChild(code); command.appendChild(button);
    panel.appendChild(command);
    if (pinned === i) panel.appendChild(el("p", "hint", "pinned: click the checkpoint again to unpin"));
    document.querySelectorAll(".ckpt.current").forEach(function (n) { n.classList.remove("current"); });
    var node = document.getElementById("ckpt-" + i);
    if (node) node.classList.add("current");
  }

  // ---------------------------------------------------------------- tree
  function checkpointNode(i, index, count) {
    var p = points[i];
    var li = el("li", "ckpt");
    li.id = "ckpt-" + i;
    li.tabIndex = 0;
    li.dataset.name = p.name;
    li.appendChild(el("span", "glyph", count === 1 ? "═" : (index === 0 ? "╓" : (index === count - 1 ? "╨" : "╟"))));
    li.appendChild(el("span", "name", p.name));
    p.marks.forEach(function (m) { li.appendChild(el("span", "mark mark-" + m, m)); });
    li.appendChild(el("span", "kept", p.kept_by.length ? "kept by " + p.kept_by.join(",") : "outside policy"));
    if (data.monitor && p.metrics[data.monitor] !== undefined) {
      li.appendChild(el("span", "metric", data.monitor + " " + fmt(p.metrics[data.monitor])));
    }
    li.addEventListener("mouseenter", function () { showDetail(i, false); });
    li.addEventListener("focus", function () { showDetail(i, false); });
    li.addEventListener("click", function () { showDetail(i, true); });
    return li;
  }
  function runNode(r) {
    var run = runs[r];
    var box = el("div", "run");
    box.dataset.exp = run.exp;
    box.appendChild(el("div", "run-title" + (run.link ? " link-" + run.link : ""), runTitle(run)));
    var list = el("ol", "chain");
    var below = {};
    run.children.forEach(function (c) {
      var key = String(runs[c].source_point);
      (below[key] = below[key] || []).push(c);
    });
    var newestFirst = run.points.slice().reverse();
    newestFirst.forEach(function (i, index) {
      (below[String(i)] || []).forEach(function (c) {
        var fork = el("li", "fork");
        fork.appendChild(runNode(c));
        list.appendChild(fork);
      });
      list.appendChild(checkpointNode(i, index, newestFirst.length));
    });
    box.appendChild(list);
    return box;
  }
  function drawTree() {
    var tree = document.getElementById("tree");
    tree.appendChild(el("h2", null, "Checkpoint tree"));
    if (!points.length) tree.appendChild(el("p", null, "No checkpoint experiments yet."));
    data.groups.forEach(function (g) {
      var section = el("section", "group");
      section.appendChild(el("h3", null, (g.label || g.baseline.slice(0, 7)) + " (" + g.baseline.slice(0, 7) + ")"));
      g.runs.forEach(function (r) { section.appendChild(runNode(r)); });
      tree.appendChild(section);
    });
  }

  // ---------------------------------------------------------------- curves
  function seriesNames() {
    var count = {};
    runs.forEach(function (run) { count[run.exp] = (count[run.exp] || 0) + 1; });
    return runs.map(function (run) {
      return count[run.exp] > 1 ? run.exp + " (" + run.baseline.slice(0, 7) + ")" : run.exp;
    });
  }
  function rowsFor(metric, names) {
    var rows = [];
    runs.forEach(function (run, r) {
      var mine = run.points.filter(function (i) { return points[i].metrics[metric] !== undefined; });
      if (!mine.length) return;
      if (run.link === "resumed" && run.source_point !== null) { // the line forks off its parent's
        var src = points[run.source_point], v = src.metrics[metric];
        if (typeof v === "number") rows.push({series: names[r], step: src.step, v: v, i: run.source_point, fork: true});
      }
      mine.forEach(function (i) {
        var value = points[i].metrics[metric], finite = typeof value === "number";
        rows.push({series: names[r], step: points[i].step, v: finite ? value : null, i: i,
                   bad: finite ? null : value, fork: false});
      });
    });
    return rows;
  }
  function spec(metric, rows) {
    var x = {field: "step", type: "quantitative", title: "step"};
    var y = {field: "v", type: "quantitative", title: metric, scale: {zero: false}};
    var color = {field: "series", type: "nominal", title: "experiment", legend: {orient: "bottom", columns: 4}};
    return {
      width: 440, height: 220, title: metric,
      data: {values: rows},
      layer: [
        {mark: {type: "line", strokeWidth: 1.5}, encoding: {x: x, y: y, color: color}},
        {transform: [{filter: "!datum.fork && datum.v != null"}],
         mark: {type: "point", filled: true, size: 30, cursor: "pointer"}, encoding: {x: x, y: y, color: color}},
        {transform: [{filter: "datum.bad != null"}],
         mark: {type: "rule", color: "#d62728", strokeDash: [4, 3]}, encoding: {x: x}}
      ]
    };
  }
  function drawCurves() {
    var box = document.getElementById("curves");
    box.appendChild(el("h2", null, "Curves"));
    var names = seriesNames();
    var jobs = data.metrics.map(function (metric) {
      var rows = rowsFor(metric, names);
      var chart = el("div", "chart");
      chart.dataset.metric = metric;
      chart.dataset.series = String(new Set(rows.map(function (d) { return d.series; })).size);
      chart.dataset.gaps = String(rows.filter(function (d) { return d.bad !== null && d.bad !== undefined; }).length);
      box.appendChild(chart);
      var compiled = vegaLite.compile(spec(metric, rows)).spec;
      var view = new vega.View(vega.parse(compiled), {renderer: "svg", container: chart, hover: true});
      view.addEventListener("mouseover", function (event, item) {
        if (item && item.datum && typeof item.datum.i === "number") showDetail(item.datum.i, false);
      });
      view.addEventListener("click", function (event, item) {
        if (item && item.datum && typeof item.datum.i === "number") showDetail(item.datum.i, true);
      });
      return view.runAsync().then(function () { chart.dataset.rendered = "1"; });
    });
    return Promise.all(jobs);
  }

  document.getElementById("title").textContent = data.title;
  document.getElementById("summary").textContent = points.length + " checkpoints in " + runs.length +
    " experiments. Hover a checkpoint for its metrics and the command that gets it back; click to pin.";
  drawTree();
  drawCurves().then(function () {
    document.body.dataset.renderMs = String(Math.round(performance.now() - started));  // script start to drawn
    document.body.dataset.readyAt = String(Math.round(performance.now()));  // since navigation started
    document.body.dataset.ready = "1";
  }, function (error) {
    document.body.dataset.error = String(error);
    console.error(error);
  });
})();
