// gatekeeper: a dismissible notice of scheduled maintenance (from
// `maintenance.announce` before it starts) or of read-only maintenance, in the
// visitor's local time. No dependencies; the app's pages include it with
// <script src="/.gatekeeper/banner.js" defer></script>.
(function () {
  "use strict";
  var KEY = "gatekeeper-banner-dismissed", ID = "gatekeeper-banner",
    // Where the script came from: the status is asked there (it allows any origin).
    me = document.currentScript && /^(.*)\/\.gatekeeper\/banner\.js/.exec(document.currentScript.src),
    base = me ? me[1] : "";
  function fmt(t, day, zone) {
    var o = { hour: "numeric", minute: "2-digit" };
    if (day) { o.weekday = "short"; o.month = "short"; o.day = "numeric"; }
    if (zone) o.timeZoneName = "short";
    return new Date(t).toLocaleString(undefined, o);
  }
  function span(s) {
    if (!s.until) return fmt(s.from, 1, 1);
    // "Sat, Dec 5, 2:00 AM to 2:30 AM EST"; the date again only when it changes.
    var same = new Date(s.from).toDateString() === new Date(s.until).toDateString();
    return fmt(s.from, 1, !same) + " to " + fmt(s.until, !same, 1);
  }
  function text(s, now) {
    if (s.maintenance === "read-only") {
      return "Maintenance: the site is read-only for now, changes cannot be saved." +
        (s.until ? " Back to normal by " + fmt(s.until, 1, 1) + "." : "");
    }
    var ahead = (Date.parse(s.from) - now) / 1000;
    if (s.maintenance === "scheduled" && ahead > 0 && ahead <= s.announce) {
      return "Scheduled maintenance from " + span(s) + "." + (s.message ? " " + s.message : "");
    }
    return "";
  }
  var CSS = "#ID{position:relative;z-index:2147483647;display:flex;flex-wrap:wrap;gap:.4em 1em;" +
    "align-items:center;justify-content:center;margin:0;padding:.6em 1em;background:#fff4ce;color:#3b2f00;" +
    "border-bottom:1px solid #e8cf6d;font:15px/1.45 system-ui,sans-serif;" +
    "text-align:center}#ID button{font:inherit;color:inherit;background:transparent;" +
    "border:1px solid currentColor;border-radius:6px;padding:.15em .8em;cursor:pointer}" +
    "#ID button:focus-visible{outline:2px solid #b35c00;outline-offset:2px}" +
    "@media (prefers-color-scheme:dark){#ID{background:#3a2f0b;color:#ffe8a3;border-color:#5c4a12}}" +
    "@media print{#ID{display:none}}";
  function show(msg, key) {
    try { if (sessionStorage.getItem(KEY) === key) return; } catch (e) {}
    if (document.getElementById(ID)) return;
    var b = document.createElement("div"), st = document.createElement("style"),
      p = document.createElement("span"), x = document.createElement("button");
    st.textContent = CSS.replace(/ID/g, ID);
    b.id = ID;
    // A polite live region: read out once, without taking the focus.
    b.setAttribute("role", "status");
    p.textContent = msg;
    x.type = "button";
    x.textContent = "Dismiss";
    x.setAttribute("aria-label", "Dismiss this maintenance notice");
    x.onclick = function () {
      // Remembered for this window (tab) only: a new window shows it again.
      try { sessionStorage.setItem(KEY, key); } catch (e) {}
      b.remove();
    };
    b.append(st, p, x);
    document.body.prepend(b);
  }
  function start() {
    fetch(base + "/.gatekeeper/status", { cache: "no-store" })
      .then(function (r) {
        // The server's clock, not the visitor's, decides whether the window is near.
        var now = Date.parse(r.headers.get("date")) || Date.now();
        return r.ok ? r.json().then(function (s) { return [s, now]; }) : null;
      })
      .then(function (a) {
        var msg = a && text(a[0], a[1]);
        if (msg) show(msg, a[0].maintenance + a[0].from + a[0].until);
      })
      .catch(function () {});
  }
  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
