// Log on: the form goes as JSON with the log-on page's CSRF token (its cookie) in a header.
"use strict";
function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}
document.getElementById("logon").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error");
  error.textContent = "";
  const body = {};
  for (const key of ["member", "user", "secret"]) body[key] = document.getElementById(key).value;
  const response = await fetch("/api/login", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": cookie("etx_login")},
    body: JSON.stringify(body),
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { answer = {text: await response.text()}; }
  if (response.ok && answer.ok) { window.location.assign("/"); return; }
  error.textContent = answer.text || ("refused (" + response.status + ")");
});
