// Prefloop: keyboard shortcuts and focus handling. No inline script anywhere (CSP).
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Shortcuts act only while the pair, or nothing, has the focus. On a link, a button or a form
  // field, keys do what the browser does: Tab (onto a link) then → must not judge. Esc hands the
  // keys back to the pair.
  var INTERACTIVE = "a[href], button, input, select, textarea, summary, [contenteditable], " +
    "[tabindex]:not([tabindex='-1'])";

  function onControl(target) {
    return !!(target && target.closest && target.closest(INTERACTIVE));
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

  function focusPair() {
    var pair = document.getElementById("pair");
    if (pair) pair.focus({ preventScroll: true });
    return pair;
  }

  // A form that undoes work asks first (data-confirm); no inline script under the CSP.
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // A form's method-specific fields ([data-methods]) show only while one of their methods is
  // chosen in its "method" field.
  function methodFieldsShow(form) {
    var method = form.querySelector("[name=method]");
    if (!method) return;
    var chosen = method.tagName === "SELECT" ? method.value :
      (form.querySelector("[name=method]:checked") || {}).value;
    form.querySelectorAll("[data-methods]").forEach(function (input) {
      var field = input.closest(".field") || input;
      field.hidden = input.getAttribute("data-methods").split(" ").indexOf(chosen) === -1;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.name === "method" && event.target.form) methodFieldsShow(event.target.form);
  });
  function methodFormsShow() {
    document.querySelectorAll("form").forEach(methodFieldsShow);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", methodFormsShow);
  else methodFormsShow();

  // Skip: S shows the reasons by the choice buttons; a reason's number (or a click) skips
  // with it, Esc closes them.
  function skipReasons() {
    return document.querySelector("[data-skip-reasons]");
  }
  function skipOpen(open) {
    var reasons = skipReasons();
    if (!reasons) return;
    reasons.classList.toggle("open", open);
    var opener = document.querySelector("[data-skip-open]");
    if (opener) opener.setAttribute("aria-expanded", open ? "true" : "false");
  }

  // With strength on, the side comes first: its key marks the side and asks, by the buttons,
  // how much better; 7/8/9 then sends both. A strength chosen first sends at the side's key.
  var pendingSide = null;
  function pendingSet(button) {
    pendingClear();
    pendingSide = button;
    button.setAttribute("aria-pressed", "true");
    var fieldset = button.form && button.form.querySelector("[data-strength]");
    if (!fieldset) return;
    fieldset.classList.add("asking");
    var prompt = fieldset.querySelector("[data-strength-prompt]");
    if (prompt) {
      prompt.textContent = (button.value === "left" ? "Left" : "Right") +
        " is better. How much better? Press 7, 8 or 9 (Esc: cancel).";
    }
  }
  function pendingClear() {
    if (!pendingSide) return;
    pendingSide.removeAttribute("aria-pressed");
    var fieldset = pendingSide.form && pendingSide.form.querySelector("[data-strength]");
    if (fieldset) fieldset.classList.remove("asking");
    pendingSide = null;
  }
  document.addEventListener("submit", function (event) {
    var submitter = event.submitter;
    if (!submitter || !submitter.hasAttribute("data-side-choice")) return;
    var form = event.target;
    if (!form.querySelector("[data-strength]") || form.querySelector("input[name=strength]:checked")) return;
    // Before htmx sees it (htmx listens on the form): no request without a strength.
    event.preventDefault();
    event.stopImmediatePropagation();
    pendingSet(submitter);
  }, true);
  document.addEventListener("change", function (event) {
    if (event.target.name !== "strength" || !pendingSide) return;
    var side = pendingSide;
    pendingClear();
    side.click();  // a click, as htmx reads the pressed button from it
  });
  document.addEventListener("htmx:beforeSwap", function () {
    pendingSide = null;
  });

  // A ranking (form[data-ranking]): a response's number (or a click on its button) gives it the
  // next rank; T makes the next pick level with the last; Backspace takes the last pick back;
  // Enter saves, ranking last the one response left. The ranks go in hidden inputs, one per
  // response in the order shown.
  var tiePending = false;
  function rankingForm() {
    return document.querySelector("form[data-ranking]");
  }
  function rankCards(form) {
    return Array.prototype.slice.call(form.querySelectorAll("[data-position]"));
  }
  function rankOf(card) {
    var value = card.querySelector("[data-rank-input]").value;
    return value ? parseInt(value, 10) : 0;
  }
  function rankingShow(form) {
    var cards = rankCards(form);
    var picked = cards.filter(rankOf).sort(function (a, b) { return rankOf(a) - rankOf(b); });
    cards.forEach(function (card) {
      var rank = rankOf(card);
      card.classList.toggle("selected", rank > 0);
      card.querySelector("[data-rank-badge]").textContent = rank ? "Rank " + rank : "";
    });
    var tie = form.querySelector("[data-rank-tie]");
    if (tie) tie.setAttribute("aria-pressed", tiePending ? "true" : "false");
    var status = form.querySelector("[data-ranking-status]");
    if (!status) return;
    // Best first, ">" between ranks, "=" between tied responses: "3 > 1 = 4 > 2".
    var order = "";
    picked.forEach(function (card, i) {
      if (i) order += rankOf(card) === rankOf(picked[i - 1]) ? " = " : " > ";
      order += card.getAttribute("data-position");
    });
    var left = cards.length - picked.length;
    status.textContent = !picked.length ? "Press the number of the best response, then the next best." :
      "Ranked: " + order + ". " + (left > 1 ? (tiePending ? "The next is level with the last." :
        "Press the number of the next best.") : left === 1 ? "Enter saves, the last one ranked last." :
        "Enter saves the ranking.");
  }
  function rankPick(form, position) {
    var card = form.querySelector("[data-position='" + position + "']");
    if (!card || rankOf(card)) return;
    var ranks = rankCards(form).map(rankOf);
    var last = Math.max.apply(null, ranks.concat([0]));
    var picked = ranks.filter(Boolean).length;
    // Ranks stay dense: a tie takes the last rank, the next pick the one after it.
    card.querySelector("[data-rank-input]").value = String(tiePending && last ? last : last + 1);
    card.setAttribute("data-picked", String(picked + 1));
    tiePending = false;
    rankingShow(form);
  }
  function rankBack(form) {
    var cards = rankCards(form).filter(rankOf);
    if (tiePending) { tiePending = false; rankingShow(form); return; }
    if (!cards.length) return;
    cards.sort(function (a, b) {
      return parseInt(b.getAttribute("data-picked"), 10) - parseInt(a.getAttribute("data-picked"), 10);
    });
    cards[0].querySelector("[data-rank-input]").value = "";
    cards[0].removeAttribute("data-picked");
    rankingShow(form);
  }
  function rankingStart() {
    var form = rankingForm();
    tiePending = false;
    if (!form) return;
    var earlier = (form.getAttribute("data-earlier-ranks") || "").split(" ").filter(Boolean);
    var cards = rankCards(form);
    if (earlier.length === cards.length) {
      cards.forEach(function (card, i) {
        card.querySelector("[data-rank-input]").value = earlier[i];
        card.setAttribute("data-picked", earlier[i]);
      });
    }
    rankingShow(form);
  }
  document.addEventListener("click", function (event) {
    var form = rankingForm();
    if (!form || !form.contains(event.target)) return;
    var pick = event.target.closest("[data-rank-pick]");
    if (pick) rankPick(form, pick.getAttribute("data-rank-pick"));
    if (event.target.closest("[data-rank-tie]")) {
      tiePending = !tiePending && rankCards(form).some(rankOf);
      rankingShow(form);
    }
    if (event.target.closest("[data-rank-back]")) rankBack(form);
    if ((pick || event.target.closest("[data-rank-tie], [data-rank-back]")) && event.detail > 0) focusPair();
  });
  // Saving: the one response left takes the next rank; with more left, nothing is sent.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-ranking")) return;
    if (event.submitter && event.submitter.name === "choice") return;  // all bad
    var cards = rankCards(form);
    var open = cards.filter(function (card) { return !rankOf(card); });
    if (open.length === 1) {
      tiePending = false;
      rankPick(form, open[0].getAttribute("data-position"));
      open = [];
    }
    if (open.length) {
      event.preventDefault();
      event.stopImmediatePropagation();
      var status = form.querySelector("[data-ranking-status]");
      if (status) status.textContent = "Rank every response first: " + open.length + " still unranked.";
    }
  }, true);
  document.addEventListener("htmx:afterSettle", rankingStart);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", rankingStart);
  else rankingStart();

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (onControl(event.target)) {
      if (event.key === "Escape" && document.getElementById("pair")) {
        event.target.blur();
        focusPair();
      }
      return;
    }
    var reasons = skipReasons();
    if (reasons && reasons.classList.contains("open")) {
      var pick = event.key === "Escape" ? null :
        reasons.querySelector("[data-skip-key='" + event.key + "']");
      if (event.key === "Escape" || pick) {
        event.preventDefault();
        skipOpen(false);
        if (pick) pick.click();
        return;
      }
    }
    if (event.key === "Escape" && pendingSide) {
      pendingClear();
      return;
    }
    var button = shortcutFor(event.key);
    if (!button) return;
    event.preventDefault();
    button.click();
  });

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-skip-open]");
    if (opener) {
      var reasons = skipReasons();
      skipOpen(!(reasons && reasons.classList.contains("open")));
    }
    var toggle = event.target.closest("[data-toggle-guidelines]");
    if (toggle) {
      var layout = document.getElementById("annotate-layout");
      if (!layout) return;
      var hidden = layout.classList.toggle("guidelines-hidden");
      toggle.setAttribute("aria-pressed", hidden ? "false" : "true");
    }
    // A pointer click on the guidelines toggle or a strength choice leaves the keys with the
    // pair (the browser would keep them on what was clicked, where arrows change the strength).
    var keyed = event.target.closest(
      "[data-toggle-guidelines], [data-skip-open], #pair input[data-shortcut]");
    if (keyed && event.detail > 0) focusPair();
  });

  // After a new pair is swapped in, keep the keyboard on it (the clicked button is gone) and
  // show it from its top, the prompt in view. Whatever held the focus before belonged to the
  // old pair or to nothing: unless the focus is already inside the new pair, it goes to the
  // pair.
  function keepFocusOnPair() {
    var pair = document.getElementById("pair");
    if (!pair) return;
    if (!pair.contains(document.activeElement)) focusPair();
    if (pair.getBoundingClientRect().top < 0) pair.scrollIntoView({ block: "start" });
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
