// gatekeeper: a dismissible banner announcing scheduled maintenance, or saying
// that the site is read-only. Include with <script src="/.gatekeeper/banner.js" defer>.
(function () {
  "use strict";
  var KEY = "gatekeeper-banner-dismissed";
  function when(t) {
    try {
      return new Date(t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (e) { return t; }
  }
  function text(s) {
    if (s.maintenance === "read-only") {
      return "Maintenance: the site is read-only for now; changes cannot be saved." +
        (s.until ? " Back to normal by " + when(s.until) + "." : "");
    }
    if (s.maintenance === "scheduled" && s.from) {
      var ahead = (Date.parse(s.from) - Date.now()) / 1000;
      if (ahead > 0 && ahead <= (s.announce || 0)) {
        return "Scheduled maintenance from " + when(s.from) +
          (s.until ? " to " + when(s.until) : "") + "." + (s.message ? " " + s.message : "");
      }
    }
    return "";
  }
  function show(msg, id) {
    try { if (sessionStorage.getItem(KEY) === id) return; } catch (e) {}
    var b = document.createElement("div");
    b.setAttribute("role", "status");
    b.id = "gatekeeper-banner";
    b.style.cssText = "position:sticky;top:0;z-index:2147483647;display:flex;gap:1em;align-items:center;" +
      "justify-content:center;padding:.6em 1em;background:#fff4ce;color:#3b2f00;border-bottom:1px solid #e0c96b;" +
      "font:15px/1.4 system-ui,sans-serif";
    var p = document.createElement("span");
    p.textContent = msg;
    var x = document.createElement("button");
    x.type = "button";
    x.textContent = "Dismiss";
    x.setAttribute("aria-label", "Dismiss this notice");
    x.style.cssText = "font:inherit;border:1px solid #b59b2f;background:transparent;border-radius:4px;padding:.1em .6em;cursor:pointer";
    x.onclick = function () {
      try { sessionStorage.setItem(KEY, id); } catch (e) {}
      b.remove();
    };
    b.appendChild(p);
    b.appendChild(x);
    document.body.insertBefore(b, document.body.firstChild);
  }
  fetch("/.gatekeeper/status", { cache: "no-store", credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : null; })
    .then(function (s) {
      var msg = s && text(s);
      if (msg) show(msg, s.maintenance + (s.from || "") + (s.until || ""));
    })
    .catch(function () {});
})();
