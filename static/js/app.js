// Prefloop: keyboard shortcuts and focus handling. No inline script anywhere (CSP).
(function () {
  "use strict";

  // Keys typed into a text field are text; on a radio or checkbox only the arrows stay native.
  function typing(target, key) {
    if (!target) return false;
    if (target.isContentEditable || /^(TEXTAREA|SELECT)$/.test(target.tagName)) return true;
    if (target.tagName !== "INPUT") return false;
    if (/^(radio|checkbox)$/.test(target.type)) return /^Arrow/.test(key) || key === " ";
    return true;
  }

  function shortcutFor(key) {
    var wanted = key.length === 1 ? key.toLowerCase() : key;
    var buttons = document.querySelectorAll("[data-shortcut]");
    for (var i = 0; i < buttons.length; i++) {
      var keys = buttons[i].getAttribute("data-shortcut").split(" ");
      if (keys.indexOf(wanted) !== -1 && !buttons[i].disabled) return buttons[i];
    }
    return null;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target, event.key)) return;
    var button = shortcutFor(event.key);
    if (!button) return;
    event.preventDefault();
    button.click();
  });

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-toggle-guidelines]");
    if (!toggle) return;
    var layout = document.getElementById("annotate-layout");
    if (!layout) return;
    var hidden = layout.classList.toggle("guidelines-hidden");
    toggle.setAttribute("aria-pressed", hidden ? "false" : "true");
  });

  // After a new pair is swapped in, keep the keyboard on it (the clicked button is gone).
  // Whatever held the focus before belonged to the old pair or to nothing: unless the focus
  // is already inside the new pair, it goes to the pair.
  function keepFocusOnPair() {
    var pair = document.getElementById("pair");
    if (pair && !pair.contains(document.activeElement)) {
      pair.focus();
    }
  }
  // htmx's settle step makes swapped content live (its forms submit through htmx); the page
  // sets the settle delay to 0 so it runs in the same task as the swap. With htmx's default
  // 20 ms, a key pressed in that gap clicked a button of a form htmx had not taken yet: the
  // browser submitted it natively and reloaded the page, losing the focus.
  document.addEventListener("htmx:afterSettle", keepFocusOnPair);
  // The session timer: time since this page was opened, so annotators can pace themselves.
  var started = Date.now();
  function tick() {
    var timer = document.querySelector("[data-session-timer]");
    if (!timer) return;
    var seconds = Math.floor((Date.now() - started) / 1000);
    var minutes = Math.floor(seconds / 60);
    var hours = Math.floor(minutes / 60);
    var text = (hours ? hours + ":" + String(minutes % 60).padStart(2, "0") : String(minutes)) +
      ":" + String(seconds % 60).padStart(2, "0");
    timer.textContent = text;
  }
  setInterval(tick, 1000);

  // htmx does not swap error responses by default; a rejected judgment (422) carries the message.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status === 422) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
