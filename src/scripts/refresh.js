// gatekeeper: reload the maintenance page once maintenance is over.
// Include with <script src="/.gatekeeper/refresh.js" defer></script>.
// Polls /.gatekeeper/status every 10-30 s (jittered, so a crowd of open pages
// does not poll in step), backs off while the status cannot be read (gatekeeper
// or the network down: up to 8 minutes apart), and reloads only on a clear
// "it is over". Never into a loop: at most 3 reloads in 2 minutes per window.
// Opt-in touches for the page: an element with data-gatekeeper-reloads is
// unhidden (it can promise the reload), a <time datetime data-gatekeeper-local>
// shows its time in the visitor's time zone.
(function () {
  "use strict";
  var KEY = "gatekeeper-reloads", failures = 0,
    // Where the script came from: the status is asked there (it allows any origin).
    me = document.currentScript && /^(.*)\/\.gatekeeper\/refresh\.js/.exec(document.currentScript.src),
    base = me ? me[1] : "";
  function recent() {
    try {
      var now = Date.now();
      return JSON.parse(sessionStorage.getItem(KEY) || "[]").filter(function (t) { return now - t < 120000; });
    } catch (e) { return []; }
  }
  function reload() {
    var r = recent();
    // Back here three times in two minutes: the status and the page disagree
    // (another instance still in maintenance?). Wait longer and ask again.
    if (r.length >= 3) return retry();
    r.push(Date.now());
    try { sessionStorage.setItem(KEY, JSON.stringify(r)); } catch (e) {}
    // Without the fragment: the same URL with one would only scroll, not load.
    location.replace(location.href.split("#")[0]);
  }
  function schedule() {
    // 10-30 s, doubled for each failure in a row up to 16 times.
    setTimeout(poll, (10000 + Math.random() * 20000) * Math.pow(2, Math.min(failures, 4)));
  }
  function retry() { failures++; schedule(); }
  function poll() {
    fetch(base + "/.gatekeeper/status", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw r.status; return r.json(); })
      .then(function (s) {
        var m = s && s.maintenance;
        if (m === "on" || m === "paused") { failures = 0; schedule(); }
        // A GET of this URL reaches the app again.
        else if (m === "off" || m === "scheduled" || m === "read-only") reload();
        else retry();
      })
      .catch(retry);
  }
  function enhance() {
    var a = document.querySelector("[data-gatekeeper-reloads]");
    if (a) a.hidden = false;
    var t = document.querySelector("time[data-gatekeeper-local]"), d = t && Date.parse(t.getAttribute("datetime"));
    if (d) {
      t.textContent = new Date(d).toLocaleString(undefined, {
        weekday: "short", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", timeZoneName: "short"
      });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", enhance);
  else enhance();
  schedule();
})();
