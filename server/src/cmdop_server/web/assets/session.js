// The session page's terminal: xterm.js over one WebSocket (sessions/terminal.py). Binary
// frames are the PTY's bytes both ways; text frames are JSON (resize and close from here;
// status, refusals and records from the server). A file, not an inline script: the
// Content-Security-Policy allows no inline script. The server checks every frame itself;
// what this page does for an observer (no input) is only a courtesy.
(function () {
  "use strict";
  const box = document.getElementById("terminal"), state = document.getElementById("state");
  const closeButton = document.getElementById("close-session");
  const operator = box.dataset.role === "operator";
  const term = new Terminal({cursorBlink: operator, disableStdin: !operator,
                             convertEol: false, scrollback: 5000});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  // canvas, loaded before open(): the default DOM renderer injects <style> elements the CSP
  // refuses, and open() makes that renderer unless one is already waiting for the element
  term.loadAddon(new CanvasAddon.CanvasAddon());
  term.open(box);
  fit.fit();
  window.cmdopTerminal = term;  // tests and the accessibility check read the screen from here

  const encoder = new TextEncoder();
  let socket = null, ended = false, lastSize = "";

  function say(text) { state.textContent = text; }

  function sendResize() {
    const size = term.cols + "x" + term.rows;
    if (!operator || !socket || socket.readyState !== WebSocket.OPEN || size === lastSize) return;
    lastSize = size;
    socket.send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows}));
  }

  function onRecord(message) {
    if (message.type === "status") {
      if (message.status === "pending") { say("Waiting for the agent to open the session…"); return; }
      say("Connected (" + (message.role || "") + ")" + (operator ? "" : " · read-only"));
      if (message.role && message.role !== box.dataset.role) location.reload();
      sendResize();
    } else if (message.type === "refused" || message.type === "throttled") {
      say(message.detail);
    } else if (message.type === "dropped") {
      term.write("\r\n[" + message.detail + "]\r\n");
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + box.dataset.socketPath);
    socket.binaryType = "arraybuffer";
    socket.onopen = function () { lastSize = ""; };
    socket.onmessage = function (event) {
      if (typeof event.data === "string") onRecord(JSON.parse(event.data));
      else term.write(new Uint8Array(event.data));
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code >= 4000) {  // the server ended it: say why, do not retry
        ended = true;
        term.options.disableStdin = true;
        if (closeButton) closeButton.disabled = true;
        say(event.code === 4000 ? "Session ended." : (event.reason || "Refused."));
        return;
      }
      if (!ended) { say("Reconnecting…"); setTimeout(connect, 1000); }
    };
  }

  term.onData(function (data) {
    if (operator && socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  });
  term.onBinary(function (data) {
    if (!operator || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(Uint8Array.from(data, function (c) { return c.charCodeAt(0); }));
  });
  term.onResize(sendResize);
  let fitTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(fitTimer);
    fitTimer = setTimeout(function () { fit.fit(); }, 100);
  });
  if (closeButton) {
    closeButton.addEventListener("click", function () {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "close"}));
    });
  }
  connect();
  term.focus();
})();
