// brevpipe ui: charts, the compare toggle, the launch form's options, the image viewer.
// No inline scripts: the pages' Content-Security-Policy allows only files from here.
"use strict";

function drawCharts(root) {
  if (typeof vegaEmbed !== "function") return;
  root.querySelectorAll(".chart[data-spec]").forEach((element) => {
    if (element.dataset.drawn) return;
    element.dataset.drawn = "1";
    vegaEmbed(element, JSON.parse(element.dataset.spec), { actions: false }).catch((error) => {
      element.textContent = "chart not drawn: " + error.message;
    });
  });
}

function changesOnly() {
  const toggle = document.getElementById("changes-only");
  const table = document.getElementById("config-diff");
  if (!toggle || !table) return;
  toggle.addEventListener("change", () => {
    table.classList.toggle("changes-only", toggle.checked);
    const url = new URL(window.location.href);
    url.searchParams.set("changes", toggle.checked ? "1" : "0");
    window.history.replaceState(null, "", url);
  });
}

function launchChoices() {
  // picking another option shows that option's settings (the form is made by the server)
  document.querySelectorAll("select.choice").forEach((select) => {
    select.addEventListener("change", () => {
      const url = new URL("/launch", window.location.origin);
      const source = document.querySelector("input[name=from]");
      if (source && source.value) url.searchParams.set("from", source.value);
      document.querySelectorAll("select.choice").forEach((other) => {
        url.searchParams.set("choice:" + other.dataset.group, other.value);
      });
      window.location.assign(url);
    });
  });
}

function viewer() {
  const box = document.getElementById("viewer");
  if (!box) return;
  const links = Array.from(document.querySelectorAll("a.thumb"));
  const image = document.getElementById("viewer-image");
  const caption = document.getElementById("viewer-caption");
  let current = -1;
  function show(index) {
    if (index < 0 || index >= links.length) return;
    current = index;
    image.src = links[index].href;
    image.alt = links[index].querySelector("img").alt;
    caption.textContent = links[index].parentElement.querySelector("figcaption").textContent +
      "  (" + (index + 1) + "/" + links.length + ", arrows to move, Esc to close)";
    box.hidden = false;
  }
  links.forEach((link, index) => link.addEventListener("click", (event) => {
    event.preventDefault();
    show(index);
  }));
  document.getElementById("viewer-close").addEventListener("click", () => { box.hidden = true; });
  document.addEventListener("keydown", (event) => {
    if (box.hidden) return;
    if (event.key === "Escape") box.hidden = true;
    if (event.key === "ArrowRight") show(current + 1);
    if (event.key === "ArrowLeft") show(current - 1);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  changesOnly();
  launchChoices();
  viewer();
});
