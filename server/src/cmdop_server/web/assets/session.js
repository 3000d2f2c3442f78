// Live output of a session page through the cursor API. Output is untrusted: it is only
// ever set as text. A file, not an inline script: the Content-Security-Policy allows no
// inline script.
(function () {
  const pane = document.getElementById("output"), state = document.getElementById("state");
  const url = pane.dataset.outputUrl;
  const decoder = new TextDecoder();
  let cursor = "";
  async function poll() {
    try {
      const r = await fetch(url + "?wait=20&cursor=" + encodeURIComponent(cursor),
                            {credentials: "same-origin"});
      const body = await r.json();
      if (!r.ok) { state.textContent = body.detail || body.error; return; }
      for (const item of body.items) {
        if (item.type === "output") {
          const bytes = Uint8Array.from(atob(item.data_b64), c => c.charCodeAt(0));
          pane.append(decoder.decode(bytes, {stream: true}));
        } else if (item.type === "dropped") {
          pane.append("\n[" + item.detail + "]\n");
        } else if (item.type === "status") {
          state.textContent = "Session " + item.status;
        } else {
          pane.append("\n[" + item.type + " " + JSON.stringify(item) + "]\n");
        }
      }
      cursor = body.cursor;
      pane.scrollTop = pane.scrollHeight;
      setTimeout(poll, 0);
    } catch (e) { state.textContent = "reconnecting…"; setTimeout(poll, 2000); }
  }
  poll();
})();
