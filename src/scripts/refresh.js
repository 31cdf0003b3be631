// gatekeeper: reload this maintenance page once maintenance is over.
// Polls /.gatekeeper/status every 10-30 s (jittered, so a crowd of open pages
// does not poll in step), backs off while the status cannot be read, and
// reloads only on a clear "it is over" - never into a loop.
(function () {
  "use strict";
  var wait = 10000, failures = 0, KEY = "gatekeeper-reloads";
  function recentReloads() {
    try {
      var r = JSON.parse(sessionStorage.getItem(KEY) || "[]"), now = Date.now();
      return r.filter(function (t) { return now - t < 120000; });
    } catch (e) { return []; }
  }
  function reload() {
    var r = recentReloads();
    // Three reloads in two minutes that came back here: stop trying.
    if (r.length >= 3) return;
    r.push(Date.now());
    try { sessionStorage.setItem(KEY, JSON.stringify(r)); } catch (e) {}
    location.replace(location.href);
  }
  function schedule() {
    setTimeout(poll, wait + Math.random() * 20000 * Math.min(1 + failures, 16));
  }
  function poll() {
    fetch("/.gatekeeper/status", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (s) {
        failures = 0;
        if (s.maintenance !== "on" && s.maintenance !== "paused") reload();
        else schedule();
      })
      .catch(function () { failures++; schedule(); });
  }
  schedule();
})();
