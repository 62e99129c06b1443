// Runs web/inbox-widget.js (as served by Herald) in Node against a live Herald, with a minimal
// fake DOM (no HTML parser at all: touching innerHTML throws) and a small EventSource over fetch.
// Driven by tests/api/test_inbox_widget.py through stdin/stdout, one JSON object per line.
// Usage: node inbox_widget_harness.mjs <widget.js URL> <token>
import readline from "node:readline";
import vm from "node:vm";

const [, , scriptUrl, token] = process.argv;
const WAIT_MS = 10000;

class FakeNode {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.children = [];
    this.attributes = {};
    this.style = {};
    this.listeners = {};
    this.ownText = "";
    this.hidden = false;
    this.className = "";
    this.shadow = null;
  }
  get firstChild() { return this.children[0] || null; }
  appendChild(child) { this.children.push(child); return child; }
  removeChild(child) { this.children.splice(this.children.indexOf(child), 1); return child; }
  set textContent(value) { this.children = []; this.ownText = String(value); }
  get textContent() { return this.ownText + this.children.map((c) => c.textContent).join(""); }
  set innerHTML(_) { throw new Error("the widget used innerHTML"); }
  get innerHTML() { throw new Error("the widget used innerHTML"); }
  setAttribute(name, value) { this.attributes[name] = String(value); }
  getAttribute(name) { return name in this.attributes ? this.attributes[name] : null; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  dispatch(type, event) { (this.listeners[type] || []).forEach((fn) => fn(event || {})); }
  focus() {}
  attachShadow() { this.shadow = new FakeNode("#shadow-root"); return this.shadow; }
  all(predicate, out = []) {
    if (predicate(this)) { out.push(this); }
    for (const child of this.shadow ? [this.shadow, ...this.children] : this.children) { child.all(predicate, out); }
    return out;
  }
}

const byClass = (name) => (node) => node.className.split(" ").includes(name);
const body = new FakeNode("body");
const script = new FakeNode("script");
script.src = scriptUrl;
script.setAttribute("data-token", token);
globalThis.window = globalThis;
globalThis.document = {
  readyState: "complete",
  currentScript: script,
  body,
  createElement: (tag) => new FakeNode(tag),
  createElementNS: (_ns, tag) => new FakeNode(tag),
  querySelector: () => null,
  addEventListener: () => {},
};

class FakeEventSource {
  static CLOSED = 2;
  static opened = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = {};
    this.live = false;
    this.abort = new AbortController();
    FakeEventSource.opened.push(this);
    this.run();
  }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  close() { this.readyState = 2; this.abort.abort(); }
  emit(type, event) { (this.listeners[type] || []).forEach((fn) => fn(event)); }
  async run() {
    try {
      const response = await fetch(this.url, { signal: this.abort.signal });
      if (response.status !== 200) { this.readyState = 2; this.emit("error", {}); return; }
      this.readyState = 1;
      const decoder = new TextDecoder();
      let buffer = "";
      for await (const chunk of response.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          this.block(buffer.slice(0, at));
          buffer = buffer.slice(at + 2);
        }
      }
    } catch (err) {
      if (this.readyState !== 2) { this.readyState = 2; this.emit("error", {}); }
    }
  }
  block(text) {
    let type = "message";
    const data = [];
    for (const line of text.split("\n")) {
      const at = line.indexOf(":");
      const name = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (name === "retry") { this.live = true; }
      if (name === "event") { type = value; }
      if (name === "data") { data.push(value); }
    }
    if (data.length) { this.emit(type, { data: data.join("\n") }); }
  }
}
globalThis.EventSource = FakeEventSource;

function say(object) { process.stdout.write(JSON.stringify(object) + "\n"); }

async function until(what, predicate) {
  const deadline = Date.now() + WAIT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) { say({ error: "timed out waiting for " + what }); process.exit(1); }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function view() {
  const badge = body.all(byClass("badge"))[0];
  return {
    badge: badge && !badge.hidden ? badge.textContent : null,
    titles: body.all(byClass("title")).map((n) => n.textContent),
    unreadItems: body.all(byClass("unread")).length,
    links: body.all((n) => n.tagName === "A").map((n) => n.href),
    panelOpen: !body.all(byClass("panel"))[0].hidden,
  };
}

const source = await (await fetch(scriptUrl)).text();
vm.runInThisContext(source, { filename: "inbox-widget.js" });
await until("the stream", () => FakeEventSource.opened.length === 1 && FakeEventSource.opened[0].live);
say({ step: "ready", ...view() });

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  if (command.wait_badge !== undefined) {
    await until("badge " + command.wait_badge, () => view().badge === command.wait_badge);
    say({ step: "badge", ...view() });
  } else if (command.click) {
    body.all(byClass("bell"))[0].dispatch("click");
    await until("everything read", () => view().badge === null && view().unreadItems === 0);
    say({ step: "clicked", ...view() });
  } else if (command.quit) {
    FakeEventSource.opened.forEach((s) => s.close());
    say({ step: "bye" });
    process.exit(0);
  }
}
