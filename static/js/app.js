// Site-wide behaviour: every htmx request carries the session's CSRF token.
(function () {
  "use strict";
  // A refused request answers htmx with an error fragment and its 4xx status (app.deps): swap it in where
  // the answer goes, so the message shows, instead of htmx's default of ignoring 4xx bodies.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "4..", swap: true, error: true },
    { code: "...", swap: false, error: true },
  ];
  const meta = document.querySelector('meta[name="csrf-token"]');
  document.addEventListener("htmx:configRequest", function (event) {
    if (meta && meta.content) {
      event.detail.headers["X-CSRF-Token"] = meta.content;
    }
  });
  // A form that failed is shown again from its POST (with the errors); the address bar shows the page's
  // own address, so that reloading or sharing it does not resubmit the form.
  const pageUrl = document.querySelector('meta[name="page-url"]');
  if (pageUrl && location.pathname !== pageUrl.content) {
    history.replaceState(null, "", pageUrl.content);
  }
  // Confirmation for destructive buttons: <button data-confirm="Really?">
  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
