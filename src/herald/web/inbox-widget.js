/* Herald in-site inbox widget, served at /inbox/widget.js. A store embeds it with a contact token
 * its backend got from POST /api/v1/inbox/{contact_id}/token:
 *
 *   <script src="https://herald.example/inbox/widget.js" data-token="…" async></script>
 *
 * Optional attributes: data-target="#css-selector" puts the bell inside that element (default: a
 * floating button in the bottom right corner); data-label="Messages" names it for screen readers.
 *
 * It shows a bell with the unread count and a panel of items, marks them read when the panel opens,
 * and receives new items over server-sent events (EventSource, which reconnects by itself and
 * resumes after the last item it got). No dependencies; everything from the server is put on the
 * page with textContent (never innerHTML), and links only when they are http(s). */
(function () {
  "use strict";

  var script = document.currentScript ||
    document.querySelector('script[data-token][src*="/inbox/widget.js"]');
  if (!script || !script.src) { return; }
  var token = script.getAttribute("data-token") || "";
  if (!/^[A-Za-z0-9_-]{20,400}$/.test(token)) {
    if (window.console) { window.console.warn("Herald inbox: the data-token attribute is missing or malformed"); }
    return;
  }
  var base = new URL(token, script.src).href;          // https://herald.example/inbox/<token>
  var targetSelector = script.getAttribute("data-target");
  var label = script.getAttribute("data-label") || "Messages";
  var PAGE = 20;
  var SVG = "http://www.w3.org/2000/svg";

  var state = { items: [], byId: {}, unread: 0, nextCursor: null, open: false, failed: false, marking: false };
  var ui = {};

  // ---- data ------------------------------------------------------------------------------------

  function request(url, options) {
    options = options || {};
    options.credentials = "omit";
    return fetch(url, options).then(function (response) {
      if (!response.ok) { throw new Error("Herald inbox: HTTP " + response.status); }
      return response.json();
    });
  }

  function safeUrl(value) {
    if (typeof value !== "string") { return null; }
    try {
      var url = new URL(value);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  // Keeps the items newest first (ids sort in creation order) and each id once.
  function add(item) {
    if (!item || typeof item.id !== "string" || state.byId[item.id]) { return false; }
    state.byId[item.id] = item;
    var at = 0;
    while (at < state.items.length && state.items[at].id > item.id) { at += 1; }
    state.items.splice(at, 0, item);
    return true;
  }

  function loadPage(cursor) {
    var url = base + "?limit=" + PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    return request(url, { headers: { "Accept": "application/json" } }).then(function (page) {
      (page.data || []).forEach(add);
      state.unread = page.unread | 0;
      state.nextCursor = page.next_cursor || null;
      render();
      return page;
    });
  }

  function markAllRead() {
    if (state.marking || !state.unread || !state.items.length) { return; }
    var newest = state.items[0].id;
    state.marking = true;
    request(base + "/read", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ up_to: newest })
    }).then(function (result) {
      var now = new Date().toISOString();
      state.items.forEach(function (item) { if (item.id <= newest && !item.read_at) { item.read_at = now; } });
      state.unread = result.unread | 0;
    }).catch(function () { /* left unread; tried again on the next opening */ })
      .then(function () {
        state.marking = false;
        render();
        // an item that arrived while this request was out is read too if the panel is still open
        if (state.open && state.items.length && state.items[0].id > newest) { markAllRead(); }
      });
  }

  function listen(lastEventId) {
    if (!window.EventSource) { return; }
    var url = base + "/stream" + (lastEventId ? "?last_event_id=" + encodeURIComponent(lastEventId) : "");
    var source = new window.EventSource(url);
    source.addEventListener("item", function (event) {
      var item;
      try { item = JSON.parse(event.data); } catch (e) { return; }
      if (!add(item)) { return; }
      if (!item.read_at) { state.unread += 1; }
      render();
      if (state.open) { markAllRead(); }
    });
    // A refused connection (an expired token: 401) closes the source for good; other errors reconnect.
    source.addEventListener("error", function () {
      if (source.readyState === window.EventSource.CLOSED) { source.close(); }
    });
  }

  // ---- view ------------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function bellIcon() {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "22");
    svg.setAttribute("height", "22");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 " +
      "1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z");
    svg.appendChild(path);
    return svg;
  }

  var STYLE = [
    ":host{all:initial;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328}",
    ".wrap{position:relative;display:inline-block}",
    ".bell{position:relative;display:inline-flex;align-items:center;justify-content:center;width:44px;height:44px;",
    "border:0;border-radius:50%;background:#fff;color:#1f2328;cursor:pointer;box-shadow:0 2px 8px rgba(0,0,0,.18)}",
    ".bell:focus-visible{outline:2px solid #0969da;outline-offset:2px}",
    ".badge{position:absolute;top:-2px;right:-2px;min-width:18px;height:18px;padding:0 5px;box-sizing:border-box;",
    "border-radius:9px;background:#cf222e;color:#fff;font-size:11px;font-weight:600;line-height:18px;text-align:center}",
    ".badge[hidden],.panel[hidden],.more[hidden],.empty[hidden]{display:none}",
    ".panel{position:absolute;right:0;bottom:52px;width:320px;max-width:calc(100vw - 24px);max-height:420px;",
    "overflow:auto;background:#fff;border-radius:10px;box-shadow:0 8px 28px rgba(0,0,0,.22);text-align:left}",
    ".inline .panel{bottom:auto;top:52px}",
    ".head{margin:0;padding:12px 14px;font-size:15px;font-weight:600;border-bottom:1px solid #eaeef2}",
    ".list{list-style:none;margin:0;padding:0}",
    ".item{padding:10px 14px;border-bottom:1px solid #eaeef2}",
    ".item.unread{background:#f3f8ff}",
    ".title{display:block;font-weight:600}",
    ".body{margin:4px 0;white-space:pre-line;word-wrap:break-word}",
    ".meta{display:flex;justify-content:space-between;gap:8px;color:#656d76;font-size:12px}",
    ".meta a{color:#0969da}",
    ".empty{margin:0;padding:16px 14px;color:#656d76}",
    ".more{display:block;width:100%;padding:10px;border:0;background:none;color:#0969da;cursor:pointer}"
  ].join("");

  function mount() {
    var host = el("div");
    host.setAttribute("data-herald-inbox", "");
    var container = targetSelector ? document.querySelector(targetSelector) : null;
    if (!container) {
      container = document.body;
      host.style.position = "fixed";
      host.style.right = "20px";
      host.style.bottom = "20px";
      host.style.zIndex = "2147483000";
    }
    var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
    var style = el("style", null, STYLE);
    var wrap = el("div", container === document.body ? "wrap" : "wrap inline");
    ui.bell = el("button", "bell");
    ui.bell.type = "button";
    ui.bell.setAttribute("aria-haspopup", "true");
    ui.bell.setAttribute("aria-expanded", "false");
    ui.bell.appendChild(bellIcon());
    ui.badge = el("span", "badge");
    ui.badge.hidden = true;
    ui.bell.appendChild(ui.badge);
    ui.panel = el("div", "panel");
    ui.panel.hidden = true;
    ui.panel.setAttribute("role", "region");
    ui.panel.setAttribute("aria-label", label);
    ui.panel.appendChild(el("h2", "head", label));
    ui.list = el("ul", "list");
    ui.empty = el("p", "empty", "No messages yet.");
    ui.more = el("button", "more", "Show older messages");
    ui.more.type = "button";
    ui.panel.appendChild(ui.list);
    ui.panel.appendChild(ui.empty);
    ui.panel.appendChild(ui.more);
    wrap.appendChild(ui.bell);
    wrap.appendChild(ui.panel);
    root.appendChild(style);
    root.appendChild(wrap);
    container.appendChild(host);

    ui.bell.addEventListener("click", function () { toggle(!state.open); });
    ui.more.addEventListener("click", function () {
      if (state.nextCursor) { loadPage(state.nextCursor).catch(function () { /* the button stays */ }); }
    });
    wrap.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && state.open) { toggle(false); ui.bell.focus(); }
    });
  }

  function toggle(open) {
    state.open = open;
    render();
    if (open) { markAllRead(); }
  }

  function renderItem(item) {
    var li = el("li", item.read_at ? "item" : "item unread");
    li.appendChild(el("span", "title", item.title));
    if (item.body) { li.appendChild(el("p", "body", item.body)); }
    var meta = el("div", "meta");
    var when = new Date(item.created_at);
    meta.appendChild(el("time", null, isNaN(when.getTime()) ? "" : when.toLocaleString()));
    var href = safeUrl(item.url);
    if (href) {
      var link = el("a", null, "Open");
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      meta.appendChild(link);
    }
    li.appendChild(meta);
    return li;
  }

  function render() {
    if (!ui.bell) { return; }
    var count = state.unread > 99 ? "99+" : String(state.unread);
    ui.badge.textContent = count;
    ui.badge.hidden = !state.unread;
    ui.bell.setAttribute("aria-label", state.unread ? label + " (" + count + " unread)" : label);
    ui.bell.setAttribute("aria-expanded", state.open ? "true" : "false");
    ui.panel.hidden = !state.open;
    while (ui.list.firstChild) { ui.list.removeChild(ui.list.firstChild); }
    state.items.forEach(function (item) { ui.list.appendChild(renderItem(item)); });
    ui.empty.textContent = state.failed ? "Messages are unavailable right now." : "No messages yet.";
    ui.empty.hidden = state.items.length > 0;
    ui.more.hidden = !state.nextCursor;
  }

  function start() {
    mount();
    render();
    loadPage(null).then(function (page) { listen(page.last_event_id); }, function () {
      state.failed = true;
      render();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
