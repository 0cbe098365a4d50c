const form = document.getElementById("vote");
if (form) {
  const questions = Array.from(document.querySelectorAll(".question"));
  const submitButton = document.getElementById("submit");
  const answers = {};
  let current = 0;
  let sending = false;
  function show() {
    questions.forEach((q, i) => {
      q.classList.toggle("selected", i === current);
      q.querySelectorAll("button").forEach((b) =>
        b.classList.toggle("chosen", b.dataset.value === answers[q.dataset.question]));
    });
    submitButton.disabled = sending || !(answers.alignment && answers.fidelity);
  }
  function answer(i, value) {
    answers[questions[i].dataset.question] = value;
    current = Math.min(i + 1, questions.length - 1);
    show();
  }
  function submit() {
    if (sending || !answers.alignment || !answers.fidelity) return;
    sending = true;
    show();
    const body = {query_id: Number(form.dataset.queryId), alignment: answers.alignment, fidelity: answers.fidelity};
    // a resend of the same vote is harmless: the server answers "unchanged"
    post("/api/compare/votes", body).then(() => location.reload(), (e) => { sending = false; show(); showError(e); });
  }
  questions.forEach((q, i) => {
    q.addEventListener("click", () => { current = i; show(); });
    q.querySelectorAll("button").forEach((b) => b.addEventListener("click", (ev) => {
      ev.stopPropagation(); answer(i, b.dataset.value);
    }));
  });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const values = {a: "A", b: "B", t: "tie"};
    if (values[ev.key]) answer(current, values[ev.key]);
    else if (ev.key === "1" || ev.key === "2") { current = Number(ev.key) - 1; show(); }
    else if (ev.key === "Enter") submit();
    else return;
    ev.preventDefault();
  });
  show();
}
