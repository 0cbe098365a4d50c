async function post(url, body) {
  const opts = {method: "POST", headers: {}};
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const detail = data && data.detail ? data.detail : r.status + " " + r.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}
function showError(e) { document.getElementById("status").textContent = String(e.message || e); }
const logout = document.getElementById("logout");
if (logout) logout.addEventListener("click", () => post("/api/logout").then(() => location.assign("/")));
