document.getElementById("add").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = document.getElementById("name").value.trim();
  post("/api/admin/labelers", {name: name}).then((r) => {
    const out = document.getElementById("new-token");
    out.textContent = "";
    out.append("Token of " + r.name + " (shown once, give it to them): ");
    const code = document.createElement("code");
    code.textContent = r.token;
    out.append(code);
  }, showError);
});
