// Compare two faces: consent (recorded server-side), then both photos go to /api/v1/verify/ and the
// page shows each face boxed, same/different and the similarity. Nothing is stored.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const $ = (id) => document.getElementById(id);
  const agree = $("consent-agree"), age = $("consent-age"), start = $("consent-start");
  const form = $("compare"), verdict = $("verdict"), errorBox = $("compare-error");
  const progress = $("progress"), compareButton = $("compare-button");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const inputs = [form.image1, form.image2];
  const canvases = [$("canvas1"), $("canvas2")];
  const scales = [null, null];
  // Each comparison gets a number: an answer that arrives after the photos changed is dropped.
  let comparison = 0;

  const updateStart = () => { start.disabled = !(agree.checked && age.checked); };
  agree.addEventListener("change", updateStart);
  age.addEventListener("change", updateStart);

  start.addEventListener("click", async () => {
    const body = new FormData();
    body.append("notice_version", config.noticeVersion);
    body.append("age_confirmed", age.checked ? "yes" : "no");
    const response = await fetch(config.consentUrl, { method: "POST", body, headers: { "X-CSRFToken": csrf } });
    if (!response.ok) {
      const error = $("consent-error");
      error.textContent = (await response.json()).error.message;
      error.hidden = false;
      return;
    }
    $("consent").hidden = true;
    form.hidden = false;
  });

  function clearResult() {
    verdict.hidden = true;
    verdict.textContent = "";
    verdict.classList.remove("same", "different");
    errorBox.hidden = true;
  }

  // Draws the chosen photo (without boxes) and returns its scale, or clears the canvas.
  async function showImage(i) {
    const file = inputs[i].files[0], canvas = canvases[i];
    scales[i] = null;
    if (!file) {
      canvas.width = canvas.height = 0;
      return;
    }
    try {
      const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
      const scale = Math.min(1, 480 / bitmap.width);
      canvas.width = bitmap.width * scale;
      canvas.height = bitmap.height * scale;
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      scales[i] = scale;
    } catch (err) {
      canvas.width = canvas.height = 0;  // not a picture the browser can draw: the server says why
    }
  }

  function box(canvas, scale, face) {
    const ctx = canvas.getContext("2d");
    const [x, y, w, h] = face.box;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#0969da";
    ctx.strokeRect(x * scale, y * scale, w * scale, h * scale);
  }

  // A new photo: the old verdict and boxes no longer apply, and the preview shows at once.
  inputs.forEach((input, i) => input.addEventListener("change", () => {
    comparison += 1;
    clearResult();
    progress.hidden = true;
    compareButton.disabled = false;
    inputs.forEach((_, j) => showImage(j));
  }));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const mine = ++comparison;
    clearResult();
    await Promise.all(inputs.map((_, i) => showImage(i)));  // redraw without the previous boxes
    progress.hidden = false;
    compareButton.disabled = true;
    const body = new FormData();
    body.append("image1", inputs[0].files[0]);
    body.append("image2", inputs[1].files[0]);
    let response, answer;
    try {
      response = await fetch(config.verifyUrl, { method: "POST", body, headers: { "X-CSRFToken": csrf } });
      answer = await response.json().catch(() => ({}));
    } catch (err) {
      response = { ok: false, status: "network error" };
      answer = {};
    }
    if (mine !== comparison) return;  // the photos changed meanwhile
    progress.hidden = true;
    compareButton.disabled = false;
    if (!response.ok) {
      errorBox.textContent = answer.error ? answer.error.message : `The comparison failed (${response.status}).`;
      errorBox.hidden = false;
      return;
    }
    answer.faces.forEach((face, i) => { if (scales[i]) box(canvases[i], scales[i], face); });
    verdict.textContent = `${answer.verified ? "Same person" : "Different people"}: similarity ${answer.similarity.toFixed(2)} (threshold ${answer.threshold.toFixed(2)}).`;
    verdict.classList.add(answer.verified ? "same" : "different");
    verdict.hidden = false;
  });
})();
