// The job page's log is a tail: keep it scrolled to the newest line after every live-panel refresh,
// unless the reader has scrolled up to read something.
(function () {
  "use strict";
  let follow = true;

  function scrollToEnd() {
    const log = document.getElementById("job-log");
    if (!log) return;
    if (follow) log.scrollTop = log.scrollHeight;
    log.addEventListener("scroll", function () {
      follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    });
  }

  document.addEventListener("DOMContentLoaded", scrollToEnd);
  document.addEventListener("htmx:afterSwap", scrollToEnd);
})();
