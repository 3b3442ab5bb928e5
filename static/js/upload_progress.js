// Forms with a file input: send them with XHR to show upload progress (the server streams the
// upload to disk), then show the page the server answered with. Without JS the form posts normally.
(function () {
  "use strict";
  document.querySelectorAll("form[data-upload-progress]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      const file = form.querySelector("input[type=file]");
      // getAttribute, not form.dataset / form.action: a form's controls shadow its properties by
      // name, and the upload form has a field named "dataset".
      const bar = document.getElementById(form.getAttribute("data-upload-progress"));
      if (!file || !file.files.length || !bar) return;
      event.preventDefault();
      const xhr = new XMLHttpRequest();
      bar.hidden = false;
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
      xhr.onload = () => {
        // The XHR already followed the redirect: show the page it got (with its one-time flash
        // messages) at its own address, rather than fetching it a second time.
        if (xhr.responseURL && xhr.responseURL !== location.href) history.replaceState(null, "", xhr.responseURL);
        document.open(); document.write(xhr.responseText); document.close();
      };
      xhr.open("POST", form.getAttribute("action") || location.href);
      xhr.send(new FormData(form));
    });
  });
})();
