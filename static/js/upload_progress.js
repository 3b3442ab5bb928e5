// Forms with a file input: send them with XHR to show upload progress (the server streams the
// upload to disk), then show the page the server answered with. Without JS the form posts normally.
(function () {
  "use strict";
  document.querySelectorAll("form[data-upload-progress]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      const file = form.querySelector("input[type=file]");
      if (!file || !file.files.length) return;
      event.preventDefault();
      const bar = document.getElementById(form.dataset.uploadProgress), xhr = new XMLHttpRequest();
      bar.hidden = false;
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
      xhr.onload = () => {
        if (xhr.responseURL && xhr.responseURL !== location.href) { location.assign(xhr.responseURL); return; }
        document.open(); document.write(xhr.responseText); document.close();
      };
      xhr.open("POST", form.action || location.href);
      xhr.send(new FormData(form));
    });
  });
})();
