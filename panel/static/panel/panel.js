// What pages do in the browser beyond htmx. The Content-Security-Policy allows no inline
// script and no on*= handler, so behaviour is attached here through data- attributes.
"use strict";

document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("[data-print]") : null;
  if (target) {
    event.preventDefault();
    window.print();
  }
});
