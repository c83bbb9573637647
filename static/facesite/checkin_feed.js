// Staff check-in feed: today's latest check-ins on connect, then each new one from /ws/checkins/ at
// the top. Reconnects after a dropped connection, but not after a refusal (signed out, not staff).
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const feed = document.getElementById("feed"), empty = document.getElementById("empty");
  const status = document.getElementById("status");
  const shown = new Set();

  function entry(checkin) {
    if (shown.has(checkin.id)) return null;
    shown.add(checkin.id);
    const item = document.createElement("li");
    const time = new Date(checkin.checked_in_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const name = document.createElement("strong");
    name.textContent = checkin.name || "(erased)";
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = ` ${time} · ${checkin.kiosk ? "kiosk " + checkin.kiosk : checkin.device}`;
    item.append(name, meta);
    return item;
  }

  function show(checkins, atTop) {
    for (const checkin of checkins) {
      const item = entry(checkin);
      if (item) atTop ? feed.prepend(item) : feed.append(item);
    }
    empty.hidden = feed.children.length > 0;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "ready") {
        status.textContent = "Live.";
        show(message.recent, false);
      } else if (message.type === "checkin") {
        show([message], true);
      } else if (message.type === "error") {
        status.textContent = message.message;
      }
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4403) return;  // refused: the message says why
      status.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, 3000);
    };
  }

  connect();
})();
