// repid dashboard: the overview's live chart (polls /api/overview) and action confirmations.
(function () {
  "use strict";
  document.querySelectorAll("form[method=post] button.danger").forEach(function (b) {
    b.form.addEventListener("submit", function (e) {
      if (b.form.querySelector("input[name=confirm]")) return;  // the confirmation page itself
      if (!window.confirm(b.textContent + "?")) e.preventDefault();
    });
  });
  var canvas = document.getElementById("chart");
  if (!canvas) return;
  var series = { ready: [], delayed: [], dead: [] };
  var colours = { ready: "#2c5fd6", delayed: "#f0b429", dead: "#b3261e" };
  var last = null, lastAt = 0, keep = 150;
  function total(queues, key) {
    return queues.reduce(function (n, q) { return n + (q[key] || 0); }, 0);
  }
  function draw() {
    var ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    var max = 1;
    Object.keys(series).forEach(function (k) {
      series[k].forEach(function (v) { max = Math.max(max, Math.abs(v)); });
    });
    ctx.strokeStyle = "#d9dde4"; ctx.beginPath(); ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2); ctx.stroke();
    Object.keys(series).forEach(function (k, i) {
      var s = series[k];
      ctx.strokeStyle = colours[k]; ctx.beginPath();
      s.forEach(function (v, j) {
        var x = w - (s.length - 1 - j) * (w / keep), y = h / 2 - (v / max) * (h / 2 - 4);
        if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      ctx.fillStyle = colours[k]; ctx.fillText(k + " " + (s.length ? s[s.length - 1].toFixed(1) : "0") + "/s", 8 + i * 110, 12);
    });
  }
  function update(queues) {
    document.querySelectorAll("#queues tr[data-queue]").forEach(function (tr) {
      var q = queues.find(function (x) { return x.name === tr.dataset.queue; });
      if (!q) return;
      ["ready", "delayed", "dead"].forEach(function (k) {
        var cell = tr.querySelector("td." + k);
        if (cell) cell.textContent = q[k];
      });
    });
  }
  function poll() {
    fetch(canvas.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        var now = Date.now() / 1000;
        var cur = { ready: total(data.queues, "ready"), delayed: total(data.queues, "delayed"), dead: total(data.queues, "dead") };
        if (last) {
          var dt = Math.max(0.001, now - lastAt);
          Object.keys(series).forEach(function (k) {
            series[k].push((cur[k] - last[k]) / dt);
            if (series[k].length > keep) series[k].shift();
          });
        }
        last = cur; lastAt = now;
        update(data.queues); draw();
      })
      .catch(function () {});
  }
  poll(); draw();
  setInterval(poll, 2000);
})();
