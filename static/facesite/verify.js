// Compare two faces: consent (recorded server-side), then both photos go to /api/v1/verify/ and the
// page shows each face boxed, same/different and the similarity. Nothing is stored.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const $ = (id) => document.getElementById(id);
  const agree = $("consent-agree"), age = $("consent-age"), start = $("consent-start");
  const form = $("compare"), verdict = $("verdict"), errorBox = $("compare-error");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;

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

  function showImage(input, canvas) {
    const file = input.files[0];
    if (!file) return Promise.resolve(null);
    return createImageBitmap(file, { imageOrientation: "from-image" }).then((bitmap) => {
      const scale = Math.min(1, 480 / bitmap.width);
      canvas.width = bitmap.width * scale;
      canvas.height = bitmap.height * scale;
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      return scale;
    });
  }

  function box(canvas, scale, face) {
    const ctx = canvas.getContext("2d");
    const [x, y, w, h] = face.box;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#0969da";
    ctx.strokeRect(x * scale, y * scale, w * scale, h * scale);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    verdict.hidden = true;
    errorBox.hidden = true;
    const inputs = [form.image1, form.image2];
    const canvases = [$("canvas1"), $("canvas2")];
    const scales = await Promise.all(inputs.map((input, i) => showImage(input, canvases[i]).catch(() => null)));
    const body = new FormData();
    body.append("image1", inputs[0].files[0]);
    body.append("image2", inputs[1].files[0]);
    const response = await fetch(config.verifyUrl, { method: "POST", body, headers: { "X-CSRFToken": csrf } });
    const answer = await response.json();
    if (!response.ok) {
      errorBox.textContent = answer.error ? answer.error.message : `The comparison failed (${response.status}).`;
      errorBox.hidden = false;
      return;
    }
    answer.faces.forEach((face, i) => { if (scales[i]) box(canvases[i], scales[i], face); });
    verdict.textContent = `${answer.verified ? "Same person" : "Different people"}: similarity ${answer.similarity.toFixed(2)} (threshold ${answer.threshold.toFixed(2)}).`;
    verdict.hidden = false;
  });
})();
