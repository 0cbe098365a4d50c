const cards = Array.from(document.querySelectorAll(".card"));
let selected = 0;
let queue = Promise.resolve();  // answers are sent one after another, in the order they were given
let pending = 0;  // answers given but not yet acknowledged by the server
function select(i) {
  if (i < 0 || i >= cards.length) return;
  selected = i;
  cards.forEach((c, j) => c.classList.toggle("selected", j === i));
}
function answer(i, value) {
  const card = cards[i];
  if (!card || card.dataset.answer) return;
  card.dataset.answer = value;
  card.querySelector(".answer").textContent = value + " ...";
  const next = cards.findIndex((c) => !c.dataset.answer);
  if (next >= 0) select(next);
  pending += 1;
  queue = queue.then(() => post("/api/labels", {image_id: Number(card.dataset.imageId), value: value}))
    .then(() => { card.querySelector(".answer").textContent = value; },
          (e) => { delete card.dataset.answer; card.querySelector(".answer").textContent = ""; select(i); showError(e); })
    .then(() => {
      pending -= 1;
      // the next screen only once every answer of this one is stored
      if (pending === 0 && cards.every((c) => c.dataset.answer)) location.reload();
    });
}
function undo() {
  queue = queue.then(() => post("/api/undo")).then(() => location.reload(), showError);
}
cards.forEach((card, i) => {
  card.addEventListener("click", () => select(i));
  card.querySelectorAll("button").forEach((b) => b.addEventListener("click", (ev) => {
    ev.stopPropagation(); select(i); answer(i, b.dataset.value);
  }));
});
document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const values = {g: "good", b: "bad", s: "skip"};
  if (["1", "2", "3"].includes(ev.key)) select(Number(ev.key) - 1);
  else if (values[ev.key]) answer(selected, values[ev.key]);
  else if (ev.key === "u") undo();
  else return;
  ev.preventDefault();
});
select(0);
