// Paper Digest: progressive enhancement only; every form works without this file.
(function () {
  "use strict";

  // Pre-select the browser's time zone on the subscribe form, if the list has it.
  function prefillTimeZone() {
    var select = document.querySelector("select[data-prefill=browser]");
    if (!select || !window.Intl) return;
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (!zone) return;
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === zone) { select.value = zone; return; }
    }
  }

  // Live preview: the papers the typed topics would have brought today (debounced).
  function livePreview() {
    var list = document.getElementById("preview-list");
    var topics = document.getElementById("topics");
    if (!list || !topics || !window.fetch) return;
    var status = document.getElementById("preview-status");
    var intro = document.getElementById("preview-intro");
    var timer = null, latest = 0;

    function setStatus(text) {
      if (!status) return;
      status.textContent = text;
      status.hidden = !text;
    }
    function empty(text) {
      list.replaceChildren();
      var li = document.createElement("li");
      li.className = "empty";
      li.textContent = text;
      list.appendChild(li);
    }
    function show(papers) {
      list.replaceChildren();
      papers.forEach(function (paper) {
        var li = document.createElement("li");
        var title = document.createElement(paper.url ? "a" : "span");
        title.className = "title";
        title.textContent = paper.title;
        if (paper.url) { title.href = paper.url; title.target = "_blank"; title.rel = "noopener noreferrer"; }
        li.appendChild(title);
        if (paper.why) {
          var why = document.createElement("span");
          why.className = "why";
          why.textContent = paper.why;
          li.appendChild(why);
        }
        list.appendChild(li);
      });
    }
    function update() {
      var text = topics.value.trim();
      if (!text) { list.replaceChildren(); setStatus(""); if (intro) intro.hidden = false; return; }
      var ticket = ++latest;
      setStatus("Searching…");
      fetch(list.dataset.endpoint + "?limit=5&topics=" + encodeURIComponent(text), {
        headers: { "Accept": "application/json" }, credentials: "same-origin"
      }).then(function (response) {
        if (!response.ok) throw new Error(response.status);
        return response.json();
      }).then(function (data) {
        if (ticket !== latest) return;  // an older answer arriving late
        if (intro) intro.hidden = true;
        if (data.papers.length) {
          show(data.papers);
          setStatus(data.papers.length + (data.papers.length === 1 ? " paper" : " papers"));
        } else {
          empty("Nothing today matches these topics yet. Your digest starts on the first day one does.");
          setStatus("0 papers");
        }
      }).catch(function () {
        if (ticket !== latest) return;
        empty("The preview is not available right now; you can still subscribe.");
        setStatus("");
      });
    }
    topics.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(update, 300);
    });
    if (topics.value.trim()) update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    prefillTimeZone();
    livePreview();
  });
})();
