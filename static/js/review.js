// The review page's keyboard: A accept, F fix, R reject, N next; Ctrl+Enter sends the form being typed
// in; Esc leaves a text box. Letter keys never act while a text box has the focus.
(function () {
  "use strict";
  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.isContentEditable);
  }
  function click(id) {
    const element = document.getElementById(id);
    if (element) element.click();
  }
  function focus(id) {
    const element = document.getElementById(id);
    if (element) { element.focus(); element.scrollIntoView({ block: "center" }); }
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey && event.key === "Enter" && typing(event.target) && event.target.form) {
      event.preventDefault();
      const button = event.target.form.querySelector("button[name=verdict]");
      event.target.form.requestSubmit(button);
      return;
    }
    if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
    if (typing(event.target) || event.ctrlKey || event.altKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    const actions = { a: function () { click("accept"); }, f: function () { focus("fixed_text"); },
                      r: function () { focus("reject-comment"); }, n: function () { click("next-edit"); } };
    if (actions[key]) { event.preventDefault(); actions[key](); }
  });
  document.body.dataset.reviewKeys = "ready";
})();
