// Weekly pattern form: say how many slots fit in a day and how many the categories
// add up to, as the user types (the server checks it again).
(function () {
  "use strict";
  var form = document.getElementById("pattern-form");
  var out = document.getElementById("counts-total");
  if (!form || !out) return;
  function minutes(v) { var m = /^(\d{1,2}):(\d{2})/.exec(v || ""); return m ? (+m[1]) * 60 + (+m[2]) : null; }
  function update() {
    var a = minutes(form.elements.day_start.value), b = minutes(form.elements.day_end.value);
    var len = parseInt(form.elements.minutes.value, 10);
    var sum = 0;
    form.querySelectorAll("input.count").forEach(function (i) { sum += parseInt(i.value, 10) || 0; });
    if (a === null || b === null || !(len > 0) || b <= a) { out.textContent = ""; return; }
    var fit = Math.floor((b - a) / len);
    out.textContent = (document.documentElement.lang === "pl" ? "Mieści się: " + fit + ", przydzielono: " : "Fit in a day: " + fit + ", assigned: ") + sum + ".";
  }
  form.addEventListener("input", update);
  update();
})();
