// BankMate web console: checks account numbers as they are typed (the same MOD 97-10
// check digits the branch checks), stops a form being sent twice by a double click,
// says how long a money form may still take (with a link to its status at once),
// loads a bulk list from a CSV file, and shows times in the browser's time zone. The page works without it: the console
// checks everything again, and times are in UTC.
"use strict";

// "" when `text` is a valid account number, otherwise why not.
function accountProblem(text) {
  const m = /^(\d{3})-?(\d{8})-?(\d{2})$/.exec(text.trim());
  if (!m) return "must look like 001-00000042-20";
  if (m[1] === "000") return "branch code must be 001 to 999";
  if (m[2] === "00000000") return "serial must not be 0";
  let r = 0;
  for (const d of m[1] + m[2] + "00") r = (r * 10 + Number(d)) % 97;
  const check = 98 - r;
  if (check !== Number(m[3])) return "check digits do not match (mistyped?)";
  return "";
}

function watchAccount(input) {
  const hint = document.getElementById(input.getAttribute("aria-describedby"));
  const original = hint ? hint.textContent : "";
  const update = () => {
    const value = input.value.trim();
    if (value === "" && input.hasAttribute("data-optional")) {
      input.setCustomValidity("");
      if (hint) { hint.textContent = original; hint.className = ""; }
      return;
    }
    const problem = value === "" ? "" : accountProblem(value);
    input.setCustomValidity(problem);
    if (!hint) return;
    if (value === "") { hint.textContent = original; hint.className = ""; }
    else if (problem) { hint.textContent = problem; hint.className = "bad"; }
    else { hint.textContent = "account number looks right"; hint.className = "good"; }
  };
  input.addEventListener("input", update);
  update();
}

// While a money form waits for the bank: how much longer it may take, and where to
// ask about its id (in a new tab, so this request goes on).
function showProgress(form) {
  const wait = Number(form.dataset.wait || 0);
  const id = form.querySelector("input[name=id]");
  if (!wait || !id) return;
  const line = document.createElement("p");
  line.className = "progress";
  line.setAttribute("role", "status");
  const text = document.createElement("span");
  line.appendChild(text);
  const link = document.createElement("a");
  link.href = "/status?id=" + encodeURIComponent(id.value);
  link.target = "_blank";
  link.textContent = " Check its status";
  line.appendChild(link);
  form.appendChild(line);
  const started = Date.now();
  const tick = () => {
    const left = Math.max(0, wait - Math.floor((Date.now() - started) / 1000));
    text.textContent = left > 0
      ? "Still trying: the bank has up to " + left + " s more to answer."
      : "Waiting for the last answer…";
  };
  tick();
  setInterval(tick, 1000);
}

function sendOnce(form) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "yes";
    for (const b of form.querySelectorAll("button[type=submit]")) {
      b.disabled = true;
      b.textContent = "Sending…";
    }
    showProgress(form);
  });
}

// A file input that loads a CSV file into the list's text area (to check and send).
function csvFile(area) {
  const input = document.createElement("input");
  input.type = "file";
  input.accept = ".csv,text/csv,text/plain";
  input.setAttribute("aria-label", "Load the list from a CSV file");
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file) return;
    if (file.size > 2 * 1024 * 1024) { alert("The file is larger than 2 MiB."); return; }
    const reader = new FileReader();
    reader.onload = () => { area.value = String(reader.result); };
    reader.readAsText(file);
  });
  area.parentNode.insertBefore(input, area);
}

// A time in the browser's own time zone, to the second; UTC stays on hover.
function localTime(el) {
  const at = new Date(el.getAttribute("datetime"));
  if (isNaN(at)) return;
  const pad = (n) => String(n).padStart(2, "0");
  el.textContent = at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) +
    " " + pad(at.getHours()) + ":" + pad(at.getMinutes()) + ":" + pad(at.getSeconds());
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-account]").forEach(watchAccount);
  document.querySelectorAll("form[data-once]").forEach(sendOnce);
  document.querySelectorAll("time[datetime]").forEach(localTime);
  document.querySelectorAll("textarea[data-csv-file]").forEach(csvFile);
});
