// BankMate web console: checks account numbers as they are typed (the same MOD 97-10
// check digits the branch checks), and stops a form being sent twice by a double click.
// The page works without it: the console checks everything again.
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

function sendOnce(form) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "yes";
    for (const b of form.querySelectorAll("button[type=submit]")) {
      b.disabled = true;
      b.textContent = "Sending…";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-account]").forEach(watchAccount);
  document.querySelectorAll("form[data-once]").forEach(sendOnce);
});
