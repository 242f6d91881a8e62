// The minimal-edit editor: shortcuts, outcome buttons, and the effort measurements sent with a submit.
(function () {
  "use strict";
  const form = document.getElementById("editor-form");
  const editor = document.getElementById("editor");
  if (!form || !editor) return;
  const original = document.getElementById("original-text").content.textContent;
  // A model's suggestion, when the editor opened with one: the submit names it while the editor holds it
  // (not after a reset to the original), so the server measures the person's edit against it.
  const suggestionText = document.getElementById("suggestion-text");
  const suggestion = suggestionText ? suggestionText.content.textContent : null;
  const suggestionField = form.elements.suggestion_id || null;
  const suggestionId = suggestionField ? suggestionField.value : "";
  const note = document.getElementById("suggestion");
  const base = document.getElementById("editor-base");
  const skipForm = document.getElementById("skip-form");
  const IDLE_MS = 30000; // a pause longer than this is not counted as active editing
  const shownAt = performance.now();
  let firstKeyAt = null, lastActivity = null, activeMs = 0, keystrokes = 0, pastes = 0, sent = false;

  function activity() {
    const now = performance.now();
    if (firstKeyAt === null) firstKeyAt = now;
    if (lastActivity !== null) activeMs += Math.min(now - lastActivity, IDLE_MS);
    lastActivity = now;
  }
  editor.addEventListener("keydown", function (event) {
    if (event.key.length === 1 || event.key === "Backspace" || event.key === "Delete" || event.key === "Enter") {
      if (!(event.ctrlKey && event.key === "Enter")) keystrokes += 1;
    }
  });
  editor.addEventListener("paste", function () { pastes += 1; });
  // Any change of the text counts as activity: typing, pasting, dictation, drag and drop.
  editor.addEventListener("input", activity);

  function fillMetrics() {
    form.elements.time_to_first_key_ms.value = firstKeyAt === null ? "" : Math.round(firstKeyAt - shownAt);
    form.elements.active_ms.value = Math.round(activeMs);
    form.elements.keystrokes.value = keystrokes;
    form.elements.pastes.value = pastes;
  }
  function submitWith(outcome) {
    if (sent) return; // one click, one submit (the server is idempotent anyway)
    sent = true;
    form.elements.outcome.value = outcome;
    fillMetrics();
    form.requestSubmit ? form.requestSubmit() : form.submit();
  }
  function startFrom(text, fromSuggestion) {
    editor.value = text;
    if (suggestionField) {
      suggestionField.value = fromSuggestion ? suggestionId : "";
      const which = fromSuggestion ? "suggestion" : "original";
      note.dataset.base = base.dataset.base = which;
      base.textContent = base.dataset[which + "Text"];
    }
    editor.dispatchEvent(new Event("redline:reset"));
    editor.focus();
  }
  function reset() { startFrom(original, false); }
  function useSuggestion() { if (suggestion !== null) startFrom(suggestion, true); }
  function acceptSuggestion() {
    if (suggestion === null) return;
    startFrom(suggestion, true);
    submitWith("edited"); // the untouched suggestion; the server stores "no change needed" if it changes nothing
  }
  form.addEventListener("submit", function (event) {
    if (event.submitter && event.submitter.id === "submit") {
      if (sent) { event.preventDefault(); return; }
      sent = true;
      fillMetrics();
    }
  });
  document.getElementById("reset").addEventListener("click", reset);
  if (suggestion !== null) {
    document.getElementById("use-suggestion").addEventListener("click", useSuggestion);
    document.getElementById("accept-suggestion").addEventListener("click", acceptSuggestion);
  }
  document.getElementById("no-change").addEventListener("click", function () { submitWith("no_change_needed"); });
  document.getElementById("unfixable").addEventListener("click", function () { submitWith("unfixable"); });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey && event.key === "Enter") { event.preventDefault(); submitWith("edited"); }
    else if (event.altKey && !event.ctrlKey) {
      const key = event.key.toLowerCase();
      if (key === "r") { event.preventDefault(); reset(); }
      else if (key === "g" && suggestion !== null) { event.preventDefault(); useSuggestion(); }
      else if (key === "a" && suggestion !== null) { event.preventDefault(); acceptSuggestion(); }
      else if (key === "n") { event.preventDefault(); submitWith("no_change_needed"); }
      else if (key === "u") { event.preventDefault(); submitWith("unfixable"); }
      else if (key === "s") { event.preventDefault(); skipForm.requestSubmit(); }
    }
  });
  const timer = document.getElementById("lease-timer");
  if (timer) {
    const deadline = Date.now() + Number(timer.dataset.expiresIn) * 1000;
    setInterval(function () {
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      timer.textContent = left > 0 ? "lease expires in " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0")
                                   : "lease expired: submit may fail if the item was reassigned";
    }, 1000);
  }
  // "Next" swaps the editor in with htmx, which loads this script after the page is shown: say when
  // the shortcuts and measurements are live.
  form.dataset.ready = "true";
})();
