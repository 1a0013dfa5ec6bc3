// FulQrun Hub console: copy buttons, YAML checked as you type, live sync progress. No framework, no build.
"use strict";

document.addEventListener("click", (e) => {
  const button = e.target.closest("button.copy");
  if (!button) return;
  const text = document.getElementById(button.dataset.copy).textContent.trim();
  navigator.clipboard.writeText(text).then(
    () => { button.textContent = "Copied"; },
    () => { button.textContent = "Copy failed: select the text"; },
  );
});

function lineStart(text, line) {
  let at = 0;
  for (let n = 1; n < line; n++) at = text.indexOf("\n", at) + 1;
  return at;
}

function showErrors(list, area, errors) {
  list.replaceChildren();
  for (const err of errors) {
    const item = document.createElement("li");
    const jump = document.createElement("button");
    jump.type = "button";
    jump.className = "link";
    jump.textContent = `line ${err.line}, column ${err.column}`;
    jump.addEventListener("click", () => {
      const at = lineStart(area.value, err.line) + Math.max(0, err.column - 1);
      area.focus();
      area.setSelectionRange(at, at);
    });
    item.append(jump, `: ${err.field ? err.field + ": " : ""}${err.message}`);
    list.append(item);
  }
}

for (const form of document.querySelectorAll("form[data-validate]")) {
  const area = form.querySelector("textarea");
  const list = form.querySelector(".errors");
  let timer = null;
  let seq = 0;
  area.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      const r = await fetch(form.dataset.validate, {
        method: "POST", body: area.value, credentials: "same-origin",
        headers: {"Content-Type": "application/yaml", "X-CSRF-Token": form.dataset.csrf},
      });
      const report = await r.json();
      if (mine !== seq) return;  // a newer check is on its way
      if (!r.ok) showErrors(list, area, [{line: 1, column: 1, message: report.detail || r.statusText}]);
      else showErrors(list, area, report.errors || []);
      form.dataset.checked = String(mine);
    }, 400);
  });
}

const syncs = document.querySelector("table[data-poll]");
if (syncs) {
  const poll = async () => {
    const r = await fetch(syncs.dataset.poll, {credentials: "same-origin"});
    if (!r.ok) return;
    const body = await r.json();
    let running = false;
    for (const s of body.syncs) {
      const row = syncs.querySelector(`tr[data-model="${CSS.escape(s.model)}"]`);
      if (!row) continue;
      row.querySelector('[data-field="state"]').textContent = s.state;
      row.querySelector('[data-field="pages"]').textContent = s.run.pages;
      row.querySelector('[data-field="records"]').textContent = s.run.records;
      row.querySelector('[data-field="rate"]').textContent = s.run.records_per_second.toFixed(1);
      running = running || s.state === "running";
    }
    setTimeout(poll, running ? 2000 : 10000);
  };
  setTimeout(poll, 2000);
}
