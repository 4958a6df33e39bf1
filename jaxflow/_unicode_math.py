r"""Docstring markup as terminal text: `$...$` LaTeX as Unicode math, `` `code` `` as code.

Docstrings keep their LaTeX for the documentation; the command line shows the same
sentences with the math in Unicode ($\tfrac12\|W\|_F^2$ becomes `½‖W‖_F²`). Only the
constructs found in jaxflow's docstrings need to read well: Greek letters, accents,
fractions, sub- and superscripts, norms, brackets, a few operators. Any other command
loses its backslash (`\foo` becomes `foo`), so no LaTeX ever reaches the terminal.
"""

from __future__ import annotations

import re

__all__ = ["docstring_text", "unicode_math"]

_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ",
    "tau": "τ", "upsilon": "υ", "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ",
    "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ",
    "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
}
_SYMBOLS = {
    **_GREEK,
    "|": "‖", "\\": " ", "Vert": "‖", "vert": "|", "{": "{", "}": "}", "$": "$", "%": "%", "_": "_",
    ",": " ", ";": " ", ":": " ", "!": "", " ": " ", "quad": "  ", "qquad": "    ",
    "dots": "…", "ldots": "…", "cdots": "⋯", "cdot": "·", "times": "×",
    "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠",
    "approx": "≈", "sim": "∼", "equiv": "≡", "to": "→", "rightarrow": "→", "mapsto": "↦",
    "in": "∈", "subset": "⊂", "infty": "∞", "pm": "±", "mp": "∓",
    "sum": "Σ", "prod": "Π", "int": "∫", "nabla": "∇", "partial": "∂",
    "langle": "⟨", "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉",
    "emptyset": "∅", "forall": "∀", "exists": "∃", "circ": "∘", "top": "ᵀ",
}
_ACCENTS = {"tilde": "\u0303", "widetilde": "\u0303", "hat": "\u0302", "widehat": "\u0302",
            "bar": "\u0304", "overline": "\u0305", "vec": "\u20d7", "dot": "\u0307",
            "ddot": "\u0308"}
_OPENING = {"langle", "lfloor", "lceil"}  # `\langle A` reads `⟨A`, as LaTeX sets it
# Commands whose argument is shown as it is.
_PLAIN = {"operatorname", "mathrm", "text", "textrm", "mathbf", "mathit", "mathsf", "mathcal",
          "boldsymbol", "bm", "mbox"}
# Commands that only size or space things.
_DROPPED = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
            "displaystyle", "textstyle", "limits", "nolimits"}
_FRACTIONS = {("1", "2"): "½", ("1", "3"): "⅓", ("2", "3"): "⅔", ("1", "4"): "¼",
              ("3", "4"): "¾", ("1", "5"): "⅕", ("1", "6"): "⅙", ("1", "8"): "⅛"}
_DOUBLE_STRUCK = dict(zip("RNZQCP", "ℝℕℤℚℂℙ", strict=True))
_SUPERSCRIPT = dict(zip(
    "0123456789+-=()abcdefghijklmnoprstuvwxyzABDEGHIJKLMNOPRTUVW",
    "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖʳˢᵗᵘᵛʷˣʸᶻᴬᴮᴰᴱᴳᴴᴵᴶᴷᴸᴹᴺᴼᴾᴿᵀᵁⱽᵂ", strict=True))
_SUBSCRIPT = dict(zip("0123456789+-=()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ",
                      strict=True))

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|.", re.DOTALL)


def _script(text: str, table: dict[str, str], marker: str) -> str:
    if text and all(c in table for c in text):
        return "".join(table[c] for c in text)
    if marker == "^" and text == "ᵀ":  # `^\top`
        return text
    return f"{marker}{text}" if len(text) == 1 else f"{marker}({text})"


def _fraction(num: str, den: str) -> str:
    if (num, den) in _FRACTIONS:
        return _FRACTIONS[(num, den)]
    def wrap(s: str) -> str:
        return s if len(s) == 1 or s.isdigit() else f"({s})"

    return f"{wrap(num)}/{wrap(den)}"


class _Converter:
    def __init__(self, math: str):
        self.tokens = _TOKEN.findall(math)
        self.pos = 0

    def run(self) -> str:
        return self._sequence(until_brace=False)

    def _sequence(self, *, until_brace: bool) -> str:
        out = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if tok == "}" and until_brace:
                self.pos += 1
                break
            out.append(self._unit())
        return "".join(out)

    def _argument_start(self) -> None:
        while self.pos < len(self.tokens) and self.tokens[self.pos].isspace():
            self.pos += 1

    def _argument(self) -> str:
        self._argument_start()
        if self.pos >= len(self.tokens):
            return ""
        return self._unit()

    def _unit(self) -> str:
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok == "{":
            return self._sequence(until_brace=True)
        if tok == "}":
            return ""
        if tok in ("^", "_"):
            table = _SUPERSCRIPT if tok == "^" else _SUBSCRIPT
            return _script(self._argument(), table, tok)
        if not tok.startswith("\\") or len(tok) == 1:
            return tok
        name = tok[1:]
        if name in ("frac", "tfrac", "dfrac"):
            num = self._argument()
            return _fraction(num, self._argument())
        if name == "sqrt":
            arg = self._argument()
            return f"√{arg}" if len(arg) == 1 else f"√({arg})"
        if name in _ACCENTS:
            return self._argument() + _ACCENTS[name]
        if name == "mathbb":
            return "".join(_DOUBLE_STRUCK.get(c, c) for c in self._argument())
        if name in _PLAIN:
            return self._argument()
        if name in _DROPPED:
            return ""
        if name in _OPENING:
            self._argument_start()
            return _SYMBOLS[name]
        if name in _SYMBOLS:
            return _SYMBOLS[name]
        return name  # \max, \log, \exp, \sin, ... and anything unknown: the word itself


def unicode_math(math: str) -> str:
    r"""The LaTeX math `math` (without its `$`) as Unicode text: `e^b` → `eᵇ`, `\theta` → `θ`."""
    return _Converter(math).run()


_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.DOTALL)


def docstring_text(doc: str) -> str:
    """A docstring's text for a terminal: `$...$` math in Unicode, code without backticks."""
    text = _MATH.sub(lambda m: unicode_math(m.group(1) or m.group(2)), doc)
    return text.replace("`", "")
