// Live check-in: consent first, then the camera; frames go to /ws/identify/ as JPEG, one in flight
// at a time, so the rate adapts to how fast the server answers. Faces come back and are drawn.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const $ = (id) => document.getElementById(id);
  const agree = $("consent-agree"), age = $("consent-age"), start = $("consent-start");
  const consentSection = $("consent"), consentError = $("consent-error"), live = $("live");
  const video = $("video"), overlay = $("overlay"), status = $("status"), rate = $("rate");
  const facesList = $("faces"), greeting = $("greeting"), challenge = $("challenge");
  const FRAME_WIDTH = 640;
  const capture = document.createElement("canvas");

  let socket = null, stream = null, inFlight = false, maxFps = 10, lastSent = 0, timer = null;
  let answered = [];
  let greetingTimer = null;

  const updateStart = () => { start.disabled = !(agree.checked && age.checked); };
  agree.addEventListener("change", updateStart);
  age.addEventListener("change", updateStart);

  function showConsentError(message) {
    consentError.textContent = message;
    consentError.hidden = false;
  }

  function setStatus(text) { status.textContent = text; }

  start.addEventListener("click", () => {
    consentError.hidden = true;
    start.disabled = true;
    connect();
  });

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => handle(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (stream) setStatus(`Disconnected (${event.code}).`);
      stopCamera();
      if (event.code === 4401) showConsentError("This device is not signed in: sign in or register it as a kiosk.");
      updateStart();
    };
  }

  function handle(message) {
    switch (message.type) {
      case "ready":
        maxFps = Math.min(message.limits.max_fps, 15);
        socket.send(JSON.stringify({ type: "consent", notice_version: config.noticeVersion, age_confirmed: age.checked }));
        break;
      case "consent_recorded":
        startCamera(); // only now is the camera touched
        break;
      case "faces":
        inFlight = false;
        answered.push(performance.now());
        draw(message);
        break;
      case "checked_in":
        greet(message);
        break;
      case "consent_withdrawn":
        setStatus("Consent withdrawn; the camera is off.");
        break;
      case "error":
        inFlight = false;
        if (!stream) showConsentError(message.message);
        else setStatus(message.message);
        break;
    }
  }

  async function startCamera() {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480, facingMode: "user" }, audio: false });
    } catch (err) {
      showConsentError(`The camera could not be opened: ${err.message}`);
      socket.send(JSON.stringify({ type: "withdraw" }));
      socket.close();
      return;
    }
    video.srcObject = stream;
    consentSection.hidden = true;
    live.hidden = false;
    setStatus("Looking for faces…");
    timer = setInterval(tick, 20);
  }

  function tick() {
    if (inFlight || !socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2) return;
    const now = performance.now();
    if (now - lastSent < 1000 / maxFps) return;
    const scale = Math.min(1, FRAME_WIDTH / video.videoWidth);
    capture.width = Math.round(video.videoWidth * scale);
    capture.height = Math.round(video.videoHeight * scale);
    capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
    inFlight = true;
    lastSent = now;
    capture.toBlob((blob) => {
      if (blob && socket && socket.readyState === WebSocket.OPEN) socket.send(blob);
      else inFlight = false;
    }, "image/jpeg", 0.8);
  }

  function label(face) {
    if (face.name) return `${face.name} ${face.similarity !== null ? face.similarity.toFixed(2) : ""}`.trim();
    return face.state === "unknown" ? "Unknown" : "…";
  }

  function draw(message) {
    const rect = video.getBoundingClientRect();
    overlay.width = rect.width;
    overlay.height = rect.height;
    const sx = rect.width / message.width, sy = rect.height / message.height;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    ctx.lineWidth = 3;
    ctx.font = "16px system-ui, sans-serif";
    facesList.replaceChildren();
    const drawn = [];
    for (const face of message.faces) {
      const [x, y, w, h] = face.box;
      const colour = face.state === "checked_in" ? "#1a7f37" : face.name ? "#0969da" : "#cf222e";
      ctx.strokeStyle = colour;
      ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
      const text = label(face);
      ctx.fillStyle = colour;
      const textWidth = ctx.measureText(text).width + 8;
      ctx.fillRect(x * sx, Math.max(0, y * sy - 22), textWidth, 22);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x * sx + 4, Math.max(16, y * sy - 6));
      drawn.push(text);
      const item = document.createElement("li");
      item.textContent = text;
      item.dataset.state = face.state;
      facesList.appendChild(item);
    }
    overlay.dataset.labels = JSON.stringify(drawn);
    if (message.challenge) {
      challenge.textContent = `Please turn your head slowly to your ${message.challenge.direction.toUpperCase()}.`;
      challenge.hidden = false;
    } else {
      challenge.hidden = true;
    }
    answered = answered.filter((t) => performance.now() - t < 3000);
    rate.textContent = `${(answered.length / 3).toFixed(1)} frames/s, server ${message.server_ms} ms`;
    setStatus(message.faces.length ? "" : "Looking for faces…");
  }

  function greet(message) {
    const at = new Date(message.checked_in_at).toLocaleTimeString();
    greeting.textContent = message.already
      ? `Welcome back, ${message.name}: you already checked in at ${at}.`
      : `Welcome, ${message.name}! You are checked in (${at}).`;
    greeting.hidden = false;
    // A kiosk greets the next person too: clear the greeting after a while.
    clearTimeout(greetingTimer);
    greetingTimer = setTimeout(() => { greeting.hidden = true; }, 10000);
  }

  function stopCamera() {
    clearInterval(timer);
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    inFlight = false;
  }

  $("stop").addEventListener("click", () => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "withdraw" }));
    stopCamera();
    if (socket) socket.close(1000);
    socket = null;
    live.hidden = true;
    consentSection.hidden = false;
    agree.checked = false;
    updateStart();
  });
})();
