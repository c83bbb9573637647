// Staff check-in feed: today's latest check-ins on connect, then each new one from /ws/checkins/ at
// the top. Reconnects after a dropped connection, but not after a refusal (signed out, not staff).
// "Not this person" rejects a check-in through the API (session + CSRF); every open feed drops the
// row when the server announces the removal.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const feed = document.getElementById("feed"), empty = document.getElementById("empty");
  const status = document.getElementById("status");
  const shown = new Set();
  const csrf = document.querySelector("#corrections [name=csrfmiddlewaretoken]").value;

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
    const reject = document.createElement("button");
    reject.type = "button";
    reject.className = "link reject";
    reject.textContent = "Not this person";
    reject.addEventListener("click", () => rejectCheckin(checkin, item, reject));
    item.dataset.checkin = checkin.id;
    item.append(name, meta, " ", reject);
    return item;
  }

  async function rejectCheckin(checkin, item, button) {
    if (!confirm(`Remove this check-in? It was not ${checkin.name || "this person"}.`)) return;
    button.disabled = true;
    const url = config.rejectUrl.replace("/0/", `/${checkin.id}/`);
    let response;
    try {
      response = await fetch(url, { method: "POST", headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
    } catch (err) {
      response = null;
    }
    if (response && (response.ok || response.status === 404)) {  // 404: someone else removed it first
      drop(checkin.id);
    } else {
      button.disabled = false;
      status.textContent = "The check-in could not be removed; try again.";
    }
  }

  function drop(id) {
    const item = feed.querySelector(`li[data-checkin="${id}"]`);
    if (item) item.remove();
    empty.hidden = feed.children.length > 0;
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
      } else if (message.type === "removed") {
        drop(message.id);
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
