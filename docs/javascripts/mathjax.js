// Math on the docs pages: pymdownx.arithmatex (generic mode) wraps it in `arithmatex`
// spans, typeset by MathJax 3 loaded by the reader's browser (building the site needs no
// network). Notebook pages (mkdocs-jupyter) bring their own MathJax, so this one stays
// off there: two MathJax versions on one page would fight over `window.MathJax`.
(function () {
  if (document.querySelector(".jp-Notebook")) {
    return;
  }
  window.MathJax = {
    tex: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
    },
    options: {
      ignoreHtmlClass: ".*|",
      processHtmlClass: "arithmatex",
    },
  };
  var script = document.createElement("script");
  script.src = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js";
  script.async = true;
  document.head.appendChild(script);
})();
