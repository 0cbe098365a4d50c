document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  post("/api/login", {token: token}).then(() => location.reload(), showError);
});
