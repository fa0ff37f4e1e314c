/* The partition table editor of a setup page: "Add a partition" adds a blank row
 * in place instead of sending the form (which, without this script, the server
 * answers with the rows sent and one more). The row comes from the page's
 * <template> (Django's empty form, "__prefix__" for its index); the formset's
 * TOTAL_FORMS count follows. */
(function () {
  "use strict";

  var form = document.querySelector("form[data-partition-rows]");
  if (!form) return;
  var rows = form.querySelector("[data-rows]");
  var template = form.querySelector("template[data-row-template]");
  var total = form.querySelector("input[name$='-TOTAL_FORMS']");
  var add = form.querySelector("[data-add-row]");
  if (!rows || !template || !total || !add) return;

  add.addEventListener("click", function (event) {
    event.preventDefault();
    var index = Number(total.value);
    var html = template.innerHTML
      .replace(/__prefix__/g, String(index))
      .replace(/__number__/g, String(rows.rows.length + 1));
    rows.insertAdjacentHTML("beforeend", html);
    total.value = String(index + 1);
    var label = rows.rows[rows.rows.length - 1].querySelector("input[type=text]");
    if (label) label.focus();
  });
})();
